"""A small CNN classifier: feature network for "classifier FID" and attribute classifier.

Inception FID needs weights that cannot be downloaded here, so jaxgen's offline FID uses
the penultimate embedding of a small CNN trained on the embedded dataset (the idea of
"FID with a domain classifier", e.g. the LeNet-feature FID used for MNIST-like data).
The same network, with one head per attribute, measures conditional accuracy of samples.

Bundles are saved without pickle: `config.json` (architecture, heads, input shape,
training info) and `params.safetensors` (flat '/'-joined parameter names).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from jaxgen.batching import map_batched
from jaxgen.metrics.fid import feature_statistics, frechet_distance

__all__ = [
    "Classifier", "ClassifierConfig", "ClassifierBundle", "train_classifier",
    "save_classifier", "load_classifier", "classifier_features", "classifier_predict",
    "classifier_accuracy", "classifier_fid",
]

_FORMAT = "jaxgen.metrics.classifier"
_VERSION = 1


def _normalize_heads(heads) -> tuple[tuple[str, int], ...]:
  """{'label': 10} or (('label', 10), ...) -> (('label', 10), ...), validated."""
  items = list(heads.items()) if isinstance(heads, Mapping) else list(heads)
  if not items:
    raise ValueError("Classifier needs at least one head, e.g. heads={'label': 10}.")
  out = []
  for item in items:
    if not (isinstance(item, (tuple, list)) and len(item) == 2):
      raise TypeError(f"heads must be a dict name -> num_classes or a tuple of (name, "
                      f"num_classes) pairs; got the entry {item!r}.")
    name, k = item
    if not isinstance(name, str) or not name or "/" in name:
      raise ValueError(f"head names must be non-empty strings without '/', got {name!r}.")
    if not isinstance(k, (int, np.integer)) or k < 2:
      raise ValueError(f"head {name!r} needs an int number of classes >= 2, got {k!r}.")
    out.append((name, int(k)))
  if len({n for n, _ in out}) != len(out):
    raise ValueError(f"duplicate head names in {out}.")
  return tuple(out)


class Classifier(nn.Module):
  """Conv stages with 2x average pooling between them, global average pooling, an
  embedding layer and one linear head per attribute.

  Coordinate channels (CoordConv, Liu et al. 2018) are appended to the input so that
  global average pooling keeps absolute position (needed for e.g. a `position` head).
  Any input size works (8x8 to 64x64 and beyond), with 1 or 3 channels.

  Attributes:
    heads: dict name -> num_classes, or tuple of (name, num_classes) pairs.
    features: channels of each stage (two 3x3 convs per stage).
    embed_dim: size of the embedding returned as features.
    dropout: dropout rate on the embedding during training.
    coord_channels: append x/y coordinate maps in [-1, 1] to the input.
  """
  heads: Any
  features: Sequence[int] = (32, 64)
  embed_dim: int = 64
  dropout: float = 0.0
  coord_channels: bool = True

  @nn.compact
  def __call__(self, images, *, train: bool = False):
    """Args: images [B, H, W, C] float in [-1, 1]; train enables dropout (rng 'dropout').

    Returns:
      (logits: dict name -> [B, K], embedding [B, embed_dim]).
    """
    x = images
    b, h, w, _ = x.shape
    if self.coord_channels:
      ys = jnp.broadcast_to(jnp.linspace(-1.0, 1.0, h)[:, None], (h, w))
      xs = jnp.broadcast_to(jnp.linspace(-1.0, 1.0, w)[None, :], (h, w))
      coords = jnp.broadcast_to(jnp.stack([ys, xs], axis=-1), (b, h, w, 2))
      x = jnp.concatenate([x, coords.astype(x.dtype)], axis=-1)
    for i, f in enumerate(self.features):
      if i > 0 and min(x.shape[1], x.shape[2]) >= 2:
        x = nn.avg_pool(x, (2, 2), strides=(2, 2))
      x = nn.silu(nn.Conv(f, (3, 3), name=f"stage{i}_conv0")(x))
      x = nn.silu(nn.Conv(f, (3, 3), name=f"stage{i}_conv1")(x))
    x = jnp.mean(x, axis=(1, 2))  # [B, features[-1]]
    embedding = nn.silu(nn.Dense(self.embed_dim, name="embed")(x))  # [B, embed_dim]
    h = nn.Dropout(self.dropout, deterministic=not train)(embedding)
    logits = {name: nn.Dense(k, name=f"head_{name}")(h)
              for name, k in _normalize_heads(self.heads)}
    return logits, embedding


@dataclasses.dataclass(frozen=True)
class ClassifierConfig:
  """Hashable architecture description (all that is needed to rebuild the module)."""
  heads: tuple[tuple[str, int], ...]
  image_shape: tuple[int, int, int]  # (H, W, C) the classifier was trained on
  features: tuple[int, ...] = (32, 64)
  embed_dim: int = 64
  dropout: float = 0.0
  coord_channels: bool = True

  def module(self) -> Classifier:
    return Classifier(heads=self.heads, features=self.features, embed_dim=self.embed_dim,
                      dropout=self.dropout, coord_channels=self.coord_channels)

  def to_json(self) -> dict:
    d = dataclasses.asdict(self)
    d["heads"] = [list(h) for h in self.heads]
    return d

  @classmethod
  def from_json(cls, d: dict) -> "ClassifierConfig":
    return cls(heads=_normalize_heads([tuple(h) for h in d["heads"]]),
               image_shape=tuple(int(v) for v in d["image_shape"]),
               features=tuple(int(v) for v in d["features"]),
               embed_dim=int(d["embed_dim"]), dropout=float(d["dropout"]),
               coord_channels=bool(d["coord_channels"]))


@dataclasses.dataclass(frozen=True)
class ClassifierBundle:
  """A trained classifier: its config, its parameters and JSON-able training info."""
  config: ClassifierConfig
  params: Any  # the Flax variables {'params': ...}
  info: dict = dataclasses.field(default_factory=dict)


def _check_images(images, fn: str, image_shape=None) -> np.ndarray:
  x = np.asarray(images)
  if x.ndim != 4 or x.shape[-1] not in (1, 3):
    raise ValueError(f"{fn} expects images [N, H, W, C] with C in (1, 3), got shape "
                     f"{x.shape}.")
  if not np.issubdtype(x.dtype, np.floating):
    raise TypeError(f"{fn} expects float images in [-1, 1], got dtype {x.dtype}; "
                    "convert uint8 with x / 127.5 - 1.")
  if image_shape is not None and tuple(x.shape[1:]) != tuple(image_shape):
    raise ValueError(f"{fn}: the classifier was trained on images of shape "
                     f"{tuple(image_shape)} (H, W, C) but got {tuple(x.shape[1:])}; resize "
                     "the images or train a classifier for this size.")
  if not np.all(np.isfinite(x)):
    raise ValueError(f"{fn} got NaN or infinite pixels.")
  if x.size and np.abs(x).max() > 5.0:  # generated samples may overshoot [-1, 1] a little
    raise ValueError(f"{fn} expects images in [-1, 1], got values in [{x.min()}, "
                     f"{x.max()}]; convert [0, 255] data with x / 127.5 - 1.")
  return x.astype(np.float32, copy=False)


def _check_labels(labels, n: int, heads) -> tuple[dict, tuple]:
  if not isinstance(labels, Mapping):
    labels = {"label": labels}
  out = {}
  for name, y in labels.items():
    y = np.asarray(y)
    if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer):
      raise ValueError(f"labels[{name!r}] must be an int array of shape [{n}], got "
                       f"dtype {y.dtype} shape {y.shape}.")
    if y.min() < 0:
      raise ValueError(f"labels[{name!r}] has negative classes.")
    out[name] = y.astype(np.int32)
  if heads is None:
    heads = {name: max(int(y.max()) + 1, 2) for name, y in out.items()}
  heads = _normalize_heads(heads)
  if {n_ for n_, _ in heads} != set(out):
    raise ValueError(f"heads {[n_ for n_, _ in heads]} and labels {sorted(out)} name "
                     "different attributes.")
  for name, k in heads:
    if out[name].max() >= k:
      raise ValueError(f"labels[{name!r}] has class {out[name].max()} but the head has "
                       f"only {k} classes.")
  return out, heads


def train_classifier(images, labels, *, key, num_steps: int = 400, batch_size: int = 128,
                     learning_rate: float = 3e-3, augment_noise: float = 0.0,
                     augment_shift: int = 1, heads=None, features: Sequence[int] = (32, 64), embed_dim: int = 64,
                     dropout: float = 0.1, coord_channels: bool = True,
                     progress: bool = False, workdir: str | None = None) -> ClassifierBundle:
  """Trains a `Classifier` with Adam (cosine-decayed learning rate) on in-memory data.

  The loss is the sum over heads of the mean softmax cross-entropy. Batches are drawn
  uniformly with replacement on device; step s uses `fold_in(key, s)`.

  Args:
    images: [N, H, W, C] float32 in [-1, 1].
    labels: dict head name -> [N] int labels (a bare array means {'label': array}).
    key: a `jax.random.key`.
    num_steps: optimisation steps.
    batch_size: examples per step.
    learning_rate: peak Adam learning rate (cosine decay to 0).
    augment_noise: std of Gaussian noise added to training inputs (robustness to the
      noise left in generated samples).
    augment_shift: random translation of training inputs by up to this many pixels
      (edge padding); keep it below the scale that changes a label (e.g. position).
    heads: dict name -> num_classes; default max(label) + 1 per head.
    features, embed_dim, dropout, coord_channels: architecture (see `Classifier`).
    progress: show a tqdm progress bar.
    workdir: where `jaxgen.training.train_loop` keeps checkpoints (``workdir/checkpoints``)
      and ``metrics.jsonl``: a run stopped by SIGTERM resumes there exactly. None trains in
      memory. Either way a NaN loss stops training with `NonFiniteLossError`, and SIGTERM
      raises `jaxgen.training.Terminated` once the checkpoint is saved.

  Returns:
    A `ClassifierBundle`; `info` holds 'losses' (mean loss per 25-step window),
    'num_steps' and 'train_seconds'.
  """
  x = _check_images(images, "train_classifier")
  y, heads = _check_labels(labels, x.shape[0], heads)
  if num_steps < 1 or batch_size < 1:
    raise ValueError(f"need num_steps >= 1 and batch_size >= 1, got {num_steps}, "
                     f"{batch_size}.")
  if augment_noise < 0 or augment_shift < 0:
    raise ValueError(f"augment_noise and augment_shift must be >= 0, got {augment_noise}, "
                     f"{augment_shift}.")
  config = ClassifierConfig(heads=heads, image_shape=tuple(x.shape[1:]),
                            features=tuple(int(f) for f in features),
                            embed_dim=int(embed_dim), dropout=float(dropout),
                            coord_channels=bool(coord_channels))
  model = config.module()
  init_key, data_key = jax.random.split(key)
  params = jax.jit(lambda k, im: model.init(k, im))(init_key, x[:1])
  tx = optax.adam(optax.cosine_decay_schedule(learning_rate, num_steps))
  head_names = [name for name, _ in heads]

  def loss_fn(p, batch_x, batch_y, k):
    logits, _ = model.apply(p, batch_x, train=True, rngs={"dropout": k})
    losses = [optax.softmax_cross_entropy_with_integer_labels(logits[n], batch_y[n]).mean()
              for n in head_names]
    return sum(losses)

  @functools.partial(jax.jit, donate_argnums=0)
  def step(state, all_x, all_y):
    k_idx, k_noise, k_drop, k_shift = jax.random.split(jax.random.fold_in(data_key, state.step),
                                                       4)
    idx = jax.random.randint(k_idx, (batch_size,), 0, all_x.shape[0])
    bx = all_x[idx]
    if augment_shift > 0:
      bx = _random_shift(k_shift, bx, augment_shift)
    if augment_noise > 0:
      bx = bx + augment_noise * jax.random.normal(k_noise, bx.shape, bx.dtype)
    by = {n: all_y[n][idx] for n in head_names}
    loss, grads = jax.value_and_grad(loss_fn)(state.params, bx, by, k_drop)
    updates, o = tx.update(grads, state.opt_state, state.params)
    return _ClassifierState(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                            opt_state=o), {"loss": loss}

  all_x, all_y = jnp.asarray(x), {n: jnp.asarray(v) for n, v in y.items()}
  window, losses, done = [], [], []

  def run_step(state, _):  # no loader: the step draws its batch from state.step
    if not done:  # the first step of this run (a resumed one starts later)
      done.append(int(jax.device_get(state.step)))
    state, metrics = step(state, all_x, all_y)
    done[0] += 1
    window.append(metrics["loss"])
    if len(window) == 25 or done[0] == num_steps:
      losses.append(float(np.mean(jax.device_get(window))))
      window.clear()
    return state, metrics

  from jaxgen.training.loop import Terminated, train_loop  # pylint: disable=C0415
  start = time.perf_counter()
  result = train_loop(
      lambda: _ClassifierState(step=jnp.zeros((), jnp.int32), params=params,
                               opt_state=tx.init(params)),
      run_step, num_steps=num_steps, workdir=workdir, log_every=25,
      checkpoint_every=max(num_steps // 4, 100), max_to_keep=1, tensorboard=False,
      desc="classifier", progress=progress, hint="Lower learning_rate before training again.",
      run_record=None if workdir is None else {"command": "train_classifier",
                                               "config": config.to_json()})
  if result.terminated:
    raise Terminated(f"SIGTERM: the classifier's checkpoint at step {result.step} is saved in "
                     f"{workdir}; call train_classifier with the same arguments to resume")
  params = result.state.params
  info = {"losses": losses, "num_steps": int(num_steps),
          "train_seconds": round(time.perf_counter() - start, 3)}
  return ClassifierBundle(config=config, params=jax.device_get(params), info=info)


class _ClassifierState(struct.PyTreeNode):
  """The classifier's training state (what `train_loop` checkpoints)."""
  step: jax.Array                  # [] int32
  params: Any
  opt_state: Any

  def arrays(self) -> dict:
    return {"step": self.step, "params": self.params, "opt_state": self.opt_state}

  def replace_arrays(self, tree: dict) -> "_ClassifierState":
    return self.replace(**tree)


def _random_shift(key, images, max_shift: int):
  """Translates each image by a random integer offset in [-max_shift, max_shift]^2."""
  _, h, w, _ = images.shape
  m = max_shift
  padded = jnp.pad(images, ((0, 0), (m, m), (m, m), (0, 0)), mode="edge")
  offsets = jax.random.randint(key, (images.shape[0], 2), 0, 2 * m + 1)

  def crop(img, off):
    return jax.lax.dynamic_slice(img, (off[0], off[1], 0), (h, w, img.shape[-1]))

  return jax.vmap(crop)(padded, offsets)


def _flatten(tree, prefix=""):
  flat = {}
  for k, v in tree.items():
    name = f"{prefix}{k}"
    if isinstance(v, Mapping):
      flat.update(_flatten(v, name + "/"))
    else:
      flat[name] = v
  return flat


def _unflatten(flat):
  tree = {}
  for name, v in flat.items():
    *path, leaf = name.split("/")
    node = tree
    for p in path:
      node = node.setdefault(p, {})
    node[leaf] = v
  return tree


def save_classifier(path, bundle: ClassifierBundle) -> None:
  """Writes `config.json` and `params.safetensors` into directory `path` (no pickle)."""
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel

  os.makedirs(path, exist_ok=True)
  flat = {k: np.ascontiguousarray(v) for k, v in _flatten(bundle.params).items()}
  save_file(flat, os.path.join(path, "params.safetensors"))
  meta = {"format": _FORMAT, "version": _VERSION, "config": bundle.config.to_json(),
          "info": bundle.info}
  with open(os.path.join(path, "config.json"), "w", encoding="utf-8") as f:
    json.dump(meta, f, indent=2)


def load_classifier(path) -> ClassifierBundle:
  """Reads a bundle written by `save_classifier`, checking parameter names and shapes."""
  from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel

  cfg_path = os.path.join(path, "config.json")
  par_path = os.path.join(path, "params.safetensors")
  for p in (cfg_path, par_path):
    if not os.path.isfile(p):
      raise FileNotFoundError(f"{p} not found: {path} is not a directory written by "
                              "save_classifier.")
  with open(cfg_path, encoding="utf-8") as f:
    meta = json.load(f)
  if meta.get("format") != _FORMAT or meta.get("version") != _VERSION:
    raise ValueError(f"{cfg_path} has format {meta.get('format')!r} version "
                     f"{meta.get('version')!r}; expected {_FORMAT!r} version {_VERSION}.")
  config = ClassifierConfig.from_json(meta["config"])
  params = _unflatten(load_file(par_path))
  dummy = jnp.zeros((1,) + config.image_shape, jnp.float32)
  expected = _flatten(jax.eval_shape(config.module().init, jax.random.key(0), dummy))
  got = _flatten(params)
  if set(expected) != set(got) or any(expected[k].shape != got[k].shape for k in got):
    raise ValueError(f"{par_path} does not match the architecture in {cfg_path}: "
                     f"expected {sorted((k, v.shape) for k, v in expected.items())}.")
  return ClassifierBundle(config=config, params=params, info=meta.get("info", {}))


@functools.lru_cache(maxsize=16)
def _apply_fn(config: ClassifierConfig):
  model = config.module()

  @jax.jit
  def apply(params, images):
    logits, embedding = model.apply(params, images, train=False)
    return {k: jax.nn.softmax(v, axis=-1) for k, v in logits.items()}, embedding

  return apply


def _batched(bundle: ClassifierBundle, images, batch_size: int, fn: str):
  x = _check_images(images, fn, bundle.config.image_shape)
  if batch_size < 1:
    raise ValueError(f"{fn}: batch_size must be >= 1, got {batch_size}.")
  n = x.shape[0]
  if n == 0:
    raise ValueError(f"{fn} got no images.")
  apply = _apply_fn(bundle.config)
  probs, embs = map_batched(lambda chunk: apply(bundle.params, chunk), x,
                            batch_size=min(batch_size, n))
  return probs, embs.astype(np.float32)


def classifier_features(bundle: ClassifierBundle, images, batch_size: int = 500) -> np.ndarray:
  """Embeddings [N, embed_dim] (float32) of images [N, H, W, C] in [-1, 1]."""
  return _batched(bundle, images, batch_size, "classifier_features")[1]


def classifier_predict(bundle: ClassifierBundle, images,
                       batch_size: int = 500) -> dict[str, np.ndarray]:
  """Class probabilities: dict head name -> [N, K] (rows sum to 1)."""
  return _batched(bundle, images, batch_size, "classifier_predict")[0]


def classifier_accuracy(bundle: ClassifierBundle, images, labels,
                        batch_size: int = 500) -> dict[str, float]:
  """Top-1 accuracy per head; labels as in `train_classifier` (only the heads given)."""
  probs = classifier_predict(bundle, images, batch_size)
  labels = labels if isinstance(labels, Mapping) else {"label": labels}
  out = {}
  for name, y in labels.items():
    if name not in probs:
      raise ValueError(f"no head named {name!r}; the classifier has {sorted(probs)}.")
    y = np.asarray(y)
    if y.shape != (probs[name].shape[0],):
      raise ValueError(f"labels[{name!r}] must have shape [{probs[name].shape[0]}], got "
                       f"{y.shape}.")
    out[name] = float(np.mean(np.argmax(probs[name], axis=-1) == y))
  return out


def classifier_fid(bundle: ClassifierBundle, images_a, images_b,
                   batch_size: int = 500) -> float:
  """Fréchet distance between the classifier-embedding statistics of two image sets.

  Args:
    bundle: the feature network.
    images_a: [N, H, W, C] in [-1, 1], e.g. real images.
    images_b: [M, H, W, C] in [-1, 1], e.g. samples.
    batch_size: images per forward pass.

  Returns:
    `frechet_distance` of `feature_statistics` of both embeddings (float64).
  """
  mu_a, sigma_a = feature_statistics(classifier_features(bundle, images_a, batch_size))
  mu_b, sigma_b = feature_statistics(classifier_features(bundle, images_b, batch_size))
  return frechet_distance(mu_a, sigma_a, mu_b, sigma_b)
