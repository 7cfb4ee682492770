"""Guidance runner: the ``cfg`` and ``classifier_guidance`` families and the guidance sweep.

  python -m experiments.main train --config experiments/configs/cfg_digits.py --workdir runs/cfg
  python -m experiments.main sweep --workdir runs/cfg --scales 0,1,3,5 [--guidance cfg|classifier|negative]

``cfg`` trains a class-conditional U-Net with condition dropout (experiments.train.train);
``classifier_guidance`` trains a diffusion model and a noise-aware classifier p(y | x_t, t).
The sweep samples every scale in one vmapped, compiled sampler (same noise for every scale),
and measures class accuracy under a held-out classifier and classifier-FID against the test
split (``DIR/sweep/<guidance>.json``, ``<guidance>_plot.png``, ``<guidance>_grid.png``).

Config ``options`` (all optional):
  condition: "label" (the dataset label) or "shapes_words" (shapes only: each training image is
    conditioned on one "word", its shape (0-2) or its colour (3-6), chosen once per image; this
    makes "a circle, not red" expressible for the negative-prompt experiment);
  scales: default sweep scales; sample_scale: scale of ``sample``;
  negative_scale: the positive CFG scale g of the negative-prompt sweep;
  classifier: the noise-aware classifier (NoisyClassifierConfig fields + num_steps, batch_size,
    learning_rate, warmup_steps, ema_decay).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from experiments import common
from experiments import guidance_report as report
from experiments.config import Config
from experiments.sample import load_trained
from experiments.train import train as train_diffusion
from jaxgen import data as jdata
from jaxgen import diffusion as D
from jaxgen import metrics as M
from jaxgen.data.shapes import SHAPES_ATTRIBUTES, SHAPES_SPLITS, make_shapes
from jaxgen.nn.noisy_classifier import (NoisyClassifier, NoisyClassifierConfig,
                                        init_noisy_classifier, noisy_classifier_param_shapes)
from jaxgen.training import (TrainState, make_classifier_train_step, make_optimizer,
                             restore_arrays, save)

GUIDANCE = ("cfg", "classifier", "negative")
CONDITIONS = ("label", "shapes_words")
NOISY_DIR = "noisy_classifier"
SWEEP_DIR = "sweep"
CLASSIFIER_TRAIN_KEYS = {"num_steps": 2000, "batch_size": 128, "learning_rate": 1e-3,
                         "warmup_steps": 100, "ema_decay": 0.999}
_SHAPE_NAMES, _COLOR_NAMES = SHAPES_ATTRIBUTES["shape"], SHAPES_ATTRIBUTES["color"]


# ----------------------------------------------------------------------------- conditions

def condition_kind(config: Config) -> str:
  kind = config.options.get("condition", "label")
  if kind not in CONDITIONS:
    raise ValueError(f"options.condition={kind!r}; expected one of {CONDITIONS}")
  if kind == "shapes_words" and config.data.name != "shapes":
    raise ValueError("options.condition='shapes_words' needs data.name='shapes'")
  return kind


def shapes_words_source(split: str, image_size: int | None) -> jdata.ArraySource:
  """``shapes`` with ``label`` = one word per image: its shape (0..2) or 3 + its colour
  (3..6), the choice fixed per image by a seeded coin (independent of any training seed)."""
  num, seed = SHAPES_SPLITS[split]
  data = make_shapes(num, 32 if image_size is None else image_size, seed)
  use_color = np.random.Generator(np.random.PCG64([seed, 7])).random(num) < 0.5
  word = np.where(use_color, 3 + data["color"], data["shape"]).astype(np.int32)
  fields = {"label": word, **{k: data[k] for k in SHAPES_ATTRIBUTES}}
  return jdata.ArraySource("shapes", split, data["image"], fields, num_classes=7,
                           class_names=_SHAPE_NAMES + _COLOR_NAMES)


@contextlib.contextmanager
def condition_sources(config: Config):
  """Inside, ``experiments.common.build_source`` returns the sources of ``options.condition``,
  so the shared training loop and loaders (which call it) see the right labels."""
  if condition_kind(config) == "label":
    yield
    return
  original = common.build_source
  common.build_source = lambda c, split: shapes_words_source(split, c.data.image_size)
  try:
    yield
  finally:
    common.build_source = original


def heldout_heads(kind: str, num_classes: int) -> dict:
  return {"label": num_classes} if kind == "label" else {"shape": 3, "color": 4}


def heldout_targets(kind: str, arrays: dict) -> dict:
  return ({"label": arrays["label"]} if kind == "label"
          else {"shape": arrays["shape"], "color": arrays["color"]})


def hits(kind: str, probs: dict, labels: np.ndarray) -> np.ndarray:
  """[N] bool: the held-out classifier sees the attribute each condition asks for."""
  labels = np.asarray(labels)
  if kind == "label":
    return probs["label"].argmax(-1) == labels
  return np.where(labels < 3, probs["shape"].argmax(-1) == labels,
                  probs["color"].argmax(-1) == labels - 3)


# ----------------------------------------------------------------------------- families

def _check_family(config: Config) -> None:
  condition_kind(config)
  if config.family == "cfg" and config.train.cond_drop_prob <= 0:
    raise ValueError("the cfg family trains for classifier-free guidance: set "
                     "train.cond_drop_prob > 0 (e.g. 0.1) so the model learns the null class")


def train(config: Config, workdir: str) -> dict:
  """Trains the diffusion model (and, for classifier_guidance, the noisy classifier)."""
  _check_family(config)
  with condition_sources(config):
    out = train_diffusion(config, workdir)
  if config.family == "classifier_guidance" and not out["terminated"]:
    out["noisy_classifier"] = train_noisy_classifier(config, workdir)
  return out


def _default_guidance(config: Config) -> str:
  return "classifier" if config.family == "classifier_guidance" else "cfg"


def sample(workdir: str, *, num: int = 64, sampler: str | None = None, steps: int | None = None,
           seed: int = 0, eta: float | None = None) -> str:
  """A grid of guided samples (rows: classes) at ``options.sample_scale``; returns its path."""
  config = common.load_workdir_config(workdir)
  guidance = _default_guidance(config)
  scale = float(config.options.get("sample_scale", 3.0))
  run = _Run(workdir, guidance, sampler, steps, eta)
  k = run.num_classes
  labels = np.arange(num) % k
  imgs = run.draw(jnp.asarray([scale]), labels, labels, seed)[0]
  name = f"guided_{guidance}{scale:g}_{run.method}{run.steps}_seed{seed}_step{run.step}"
  path = os.path.join(workdir, "samples", name + ".png")
  per = max(1, num // k)
  M.save_image_grid(path, report.by_class(imgs, k, per_class=per), nrow=per)
  np.savez_compressed(path[:-4] + ".npz", images=imgs, labels=labels)
  return path


def evaluate(workdir: str, *, num_samples: int | None = None) -> dict:
  """The guidance sweep over ``options.scales`` for the family's guidance."""
  config = common.load_workdir_config(workdir)
  return sweep(workdir, scales=config.options.get("scales", (0.0, 1.0, 3.0, 5.0)),
               guidance=_default_guidance(config), num=num_samples)


# ----------------------------------------------------------------------------- noisy classifier

def classifier_settings(config: Config, source) -> tuple[NoisyClassifierConfig, dict]:
  opts = dict(config.options.get("classifier", {}))
  train_opts = {k: opts.pop(k, v) for k, v in CLASSIFIER_TRAIN_KEYS.items()}
  opts = {k: tuple(v) if isinstance(v, list) else v for k, v in opts.items()}
  opts.setdefault("in_channels", source.image_shape[-1])
  return NoisyClassifierConfig(num_classes=source.num_classes, **opts), train_opts


def _classifier_state(model, params, lr, warmup, total):
  tx = make_optimizer(lr, warmup_steps=warmup, total_steps=total, decay="cosine")
  return TrainState.create(apply_fn=model.apply, params=params, tx=tx)


def train_noisy_classifier(config: Config, workdir: str) -> dict:
  """Trains (or resumes) p(y | x_t, t) on noised training images into ``DIR/noisy_classifier``;
  reports its test accuracy at a few noise levels."""
  if condition_kind(config) != "label":
    raise ValueError("classifier guidance needs options.condition='label' (one class per image)")
  with condition_sources(config):
    source = common.build_source(config, "train")
    test = jdata.load_all(common.build_source(config, "test"))
  if source.num_classes is None:
    raise ValueError(f"dataset {config.data.name!r} has no labels for a classifier")
  ncfg, topts = classifier_settings(config, source)
  schedule = common.build_schedule(config)
  model = NoisyClassifier(ncfg)
  path = os.path.join(workdir, NOISY_DIR)
  os.makedirs(path, exist_ok=True)
  key = jax.random.fold_in(jax.random.key(config.seed), 17)
  n = topts["num_steps"]
  state = _classifier_state(model, init_noisy_classifier(model, jax.random.fold_in(key, 0)),
                            topts["learning_rate"], topts["warmup_steps"], n)
  loader = jdata.Loader(source, topts["batch_size"], seed=config.seed + 1)
  manager, state, _ = common.restore_or_start(path, state, loader, max_to_keep=1)
  step_fn = jax.jit(make_classifier_train_step(model, schedule, ema_decay=topts["ema_decay"]),
                    donate_argnums=0)
  start, t0, it = int(state.step), time.perf_counter(), iter(loader)
  with open(os.path.join(path, "metrics.jsonl"), "a") as log:
    for s in tqdm(range(start, n), desc="noisy classifier", initial=start, total=n,
                  mininterval=1.0):
      batch = next(it)
      state, m = step_fn(state, {"image": batch["image"], "label": batch["label"]},
                         jax.random.fold_in(key, 1))
      if (s + 1) % 100 == 0 or s + 1 == n:
        log.write(json.dumps({"step": s + 1, **{k: float(v) for k, v in m.items()}}) + "\n")
  save(manager, state, loader.get_state())
  manager.wait_until_finished()
  manager.close()
  apply = jax.jit(lambda p, x, t: model.apply({"params": p}, x, t))
  T = schedule.num_timesteps
  accuracy = {}
  for t in sorted({0, T // 4, T // 2, 3 * T // 4, T - 1}):
    x = jnp.asarray(test["image"])
    noise = jax.random.normal(jax.random.fold_in(key, 2), x.shape)
    xt = D.q_sample(schedule, x, jnp.full((x.shape[0],), t), noise)
    pred = np.asarray(apply(state.ema_params, xt, jnp.full((x.shape[0],), t))).argmax(-1)
    accuracy[str(t)] = float(np.mean(pred == test["label"]))
  info = {"config": ncfg.to_dict(), "train": topts, "step": int(state.step),
          "train_seconds": round(time.perf_counter() - t0, 1), "test_accuracy_at_t": accuracy}
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(info, f, indent=2)
  return info


def load_noisy_classifier(workdir: str, config: Config):
  """(module, EMA params) of ``DIR/noisy_classifier``; trains it first when it is missing."""
  path = os.path.join(workdir, NOISY_DIR, "config.json")
  if not os.path.isfile(path):
    print(f"no noise-aware classifier in {workdir}; training one (options.classifier)")
    train_noisy_classifier(config, workdir)
  with open(path) as f:
    info = json.load(f)
  model = NoisyClassifier(NoisyClassifierConfig.from_dict(
      {k: tuple(v) if isinstance(v, list) else v for k, v in info["config"].items()}))
  params = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), noisy_classifier_param_shapes(model))
  tr = info["train"]
  state = _classifier_state(model, params, tr["learning_rate"], tr["warmup_steps"], tr["num_steps"])
  state, _ = restore_arrays(os.path.join(workdir, NOISY_DIR, "checkpoints"), state)
  return model, state.ema_params


# ----------------------------------------------------------------------------- guided sampling

def make_guided_sampler(model, schedule: D.Schedule, config: Config, *, guidance: str,
                        method: str, classifier=None):
  """jit ``run(params, cparams, key, labels [B], neg_labels [B], scales [S], g_pos, table, eta,
  shape) -> [S, B, H, W, C]``: one sampler vmapped over the scales, all with the same noise.

  guidance: ``cfg`` (scale = g), ``negative`` (the lecture's form; scale = g_neg, positive
  scale g_pos), ``negative_replace`` (scale = g) or ``classifier`` (scale = classifier g; the
  model is evaluated at the null class when it has one: DDPM uses Algorithm 1's mean shift,
  DDIM the score shift).
  """
  dc = config.diffusion
  null = common.null_label(model)

  @jax.jit
  def run(params, cparams, key, labels, neg_labels, scales, g_pos, table, eta, shape_ref):
    shape = shape_ref.shape

    def model_fn(x, t, y):
      return model.apply({"params": params}, x, t, y)

    def one(scale):
      grad_fn = None
      if guidance == "cfg":
        den = D.cfg(model_fn, labels, null, scale)
      elif guidance == "negative":
        den = D.cfg_negative(model_fn, labels, neg_labels, null, g_pos, scale)
      elif guidance == "negative_replace":
        den = D.cfg_negative_replace(model_fn, labels, neg_labels, scale)
      else:
        if null is None:
          base = lambda x, t: model.apply({"params": params}, x, t)
        else:
          base = lambda x, t: model_fn(x, t, jnp.full((x.shape[0],), null, jnp.int32))
        log_prob = D.log_prob_from_logits(
            lambda x, t: classifier.apply({"params": cparams}, x, t), labels)
        if method == "ddpm":
          den, grad_fn = base, D.classifier_mean_shift(log_prob, scale)
        else:
          den = D.classifier_guidance(base, log_prob, scale, schedule,
                                      prediction_type=dc.prediction_type)
      x = D.sample(den, schedule, key, shape, table, method=method, eta=eta,
                   prediction_type=dc.prediction_type, variance_type=dc.variance_type,
                   clip_sample=dc.clip_sample, guidance_grad_fn=grad_fn)
      return jnp.clip(x, -1.0, 1.0)

    return jax.vmap(one)(scales)

  return run


class _Run:
  """A trained workdir ready for guided sampling (model, classifier, compiled sampler)."""

  def __init__(self, workdir, guidance, sampler=None, steps=None, eta=None):
    config = common.load_workdir_config(workdir)
    self.kind = condition_kind(config)
    if guidance in ("cfg", "negative") and config.train.cond_drop_prob <= 0:
      raise ValueError(
          f"{guidance!r} guidance needs a model trained with condition dropout (a learned null "
          f"class); {workdir} was trained with train.cond_drop_prob="
          f"{config.train.cond_drop_prob}. Train a cfg config (e.g. cfg_digits) or use "
          "--guidance classifier")
    with condition_sources(config):
      config, source, model, schedule, state, self.step = load_trained(workdir)
    self.config, self.source, self.model, self.params = config, source, model, state.ema_params
    self.num_classes = source.num_classes
    self.null = common.null_label(model)
    self.cparams, classifier = None, None
    if guidance == "classifier" and self.null is not None and config.train.cond_drop_prob <= 0:
      raise ValueError(f"{workdir} holds a class-conditional model without a learned null class "
                       "(train.cond_drop_prob=0): classifier guidance needs an unconditional model "
                       "or one trained with condition dropout")
    if guidance == "classifier":
      if self.kind != "label":
        raise ValueError("classifier guidance needs options.condition='label'")
      classifier, self.cparams = load_noisy_classifier(workdir, config)
    self.method = sampler or config.sample.sampler
    if self.method not in D.METHODS:
      raise ValueError(f"unknown sampler {self.method!r}; expected one of {D.METHODS}")
    self.steps = steps or config.sample.steps
    self.table = common.sampling_table(config, self.steps)  # checks steps <= T before compiling
    self.eta = config.sample.eta if eta is None else eta
    self.samplers = {g: make_guided_sampler(model, schedule, config, guidance=g,
                                            method=self.method, classifier=classifier)
                     for g in ((guidance,) if guidance != "negative"
                               else ("negative", "negative_replace"))}
    self.guidance = guidance

  def draw(self, scales, labels, neg_labels, seed, *, g_pos=1.0, form=None,
           null_ok=False) -> np.ndarray:
    """[S, N, H, W, C] samples, in chunks of sample.batch_size (chunk i: fold_in(key, i)).
    ``null_ok``: the positive labels may be the null class (only for negative prompting)."""
    labels = np.asarray(D.check_labels(labels, self.num_classes + int(null_ok)))
    neg_labels = np.asarray(D.check_labels(neg_labels, self.num_classes, name="neg_labels"))
    run = self.samplers[form or self.guidance]
    bs, key, out = self.config.sample.batch_size, jax.random.key(seed), []
    for i, s in enumerate(range(0, len(labels), bs)):
      y, yn = labels[s:s + bs], neg_labels[s:s + bs]
      out.append(np.asarray(run(self.params, self.cparams, jax.random.fold_in(key, i), y, yn,
                                jnp.asarray(scales, jnp.float32), jnp.float32(g_pos), self.table,
                                jnp.float32(self.eta), jax.ShapeDtypeStruct(
                                    (len(y),) + tuple(self.source.image_shape), jnp.float32))))
    return np.concatenate(out, axis=1)


# ----------------------------------------------------------------------------- sweep

def heldout_classifier(workdir: str, run: _Run):
  """The evaluation classifier (not the guidance one), trained on the train split, cached."""
  path = os.path.join(workdir, SWEEP_DIR, "heldout_classifier")
  if os.path.isfile(os.path.join(path, "config.json")):
    return M.load_classifier(path)
  train_arrays = jdata.load_all(run.source)
  bundle = M.train_classifier(train_arrays["image"], heldout_targets(run.kind, train_arrays),
                              heads=heldout_heads(run.kind, run.num_classes),
                              key=jax.random.key(run.config.seed + 1000),
                              num_steps=run.config.eval.classifier_steps)
  M.save_classifier(path, bundle)
  return bundle


def parse_scales(scales) -> list[float]:
  if isinstance(scales, str):
    try:
      scales = [float(s) for s in scales.split(",") if s.strip()]
    except ValueError as e:
      raise ValueError(f"--scales must be comma-separated numbers like 0,1,3,5: {e}") from None
  scales = [float(s) for s in scales]
  if not scales or not all(math.isfinite(s) for s in scales):
    raise ValueError(f"need at least one finite guidance scale, got {scales}")
  return scales


def sweep(workdir: str, *, scales, guidance: str = "cfg", num: int | None = None,
          sampler: str | None = None, steps: int | None = None, seed: int = 0) -> dict:
  """Samples every scale with one compiled sampler and writes DIR/sweep/<guidance>.json, a plot
  and a grid. cfg/classifier: class accuracy under the held-out classifier and classifier-FID
  against the test split per scale. negative: how often samples show the negative condition."""
  if guidance not in GUIDANCE:
    raise ValueError(f"unknown guidance {guidance!r}; expected one of {GUIDANCE}")
  scales = parse_scales(scales)
  run = _Run(workdir, guidance, sampler, steps)
  n = num or run.config.eval.num_samples
  if n < run.num_classes:
    raise ValueError(f"--num must be at least the {run.num_classes} classes, got {n}")
  clf = heldout_classifier(workdir, run)
  with condition_sources(run.config):
    test = jdata.load_all(common.build_source(run.config, "test"))
  test_feats = M.classifier_features(clf, test["image"])

  def fid(images):
    return M.frechet_distance(*M.feature_statistics(M.classifier_features(clf, images)),
                              *M.feature_statistics(test_feats))

  t0 = time.perf_counter()
  result = {"guidance": guidance, "workdir": workdir, "checkpoint_step": run.step,
            "num_samples": n, "sampler": run.method, "steps": run.steps, "seed": seed,
            "heldout_test_accuracy": M.classifier_accuracy(
                clf, test["image"], heldout_targets(run.kind, test)),
            "fid_floor_train_vs_test": fid(jdata.load_all(run.source)["image"][:n])}
  out_dir = os.path.join(workdir, SWEEP_DIR)
  if guidance == "negative":
    result.update(_negative_sweep(run, clf, scales, n, seed, out_dir))
  else:
    labels = np.arange(n) % run.num_classes
    images = run.draw(scales, labels, labels, seed)
    rows = []
    for s, imgs in zip(scales, images):
      probs = M.classifier_predict(clf, imgs)
      rows.append({"scale": s, "accuracy": float(np.mean(hits(run.kind, probs, labels))),
                   "fid": fid(imgs)})
    result["per_scale"] = rows
    os.makedirs(out_dir, exist_ok=True)
    np.savez_compressed(os.path.join(out_dir, f"{guidance}_samples.npz"), images=images,
                        labels=labels, scales=np.asarray(scales))
    report.save_grid(os.path.join(out_dir, f"{guidance}_grid.png"),
                     [report.by_class(im, run.num_classes, per_class=8) for im in images],
                     [f"g={s:g}" for s in scales], nrow=8)
    report.save_plot(os.path.join(out_dir, f"{guidance}_plot.png"), rows,
                     title=f"{guidance} guidance, {run.config.name}")
  result["sample_seconds"] = round(time.perf_counter() - t0, 1)
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, f"{guidance}.json"), "w") as f:
    json.dump(result, f, indent=2)
  common.write_run_json(os.path.join(out_dir, f"{guidance}.run.json"), run.config,
                        command="sweep", guidance=guidance, scales=scales, seed=seed)
  return result


def _negative_sweep(run: _Run, clf, scales, n, seed, out_dir) -> dict:
  """Positive and negative conditions cycle over all pairs; reports how often the held-out
  classifier sees the negative attribute (lower is better) and the positive one."""
  if run.kind == "shapes_words":  # positive: a shape word; negative: a colour word
    pos, neg = np.arange(n) % 3, 3 + (np.arange(n) // 3) % 4
  else:  # positive: the null class (anything); negative: each class in turn
    pos, neg = np.full(n, run.null), np.arange(n) % run.num_classes
  g = float(run.config.options.get("negative_scale", 3.0))
  lecture = run.draw(scales, pos, neg, seed, g_pos=g, null_ok=True)
  replace = run.draw([g], pos, neg, seed, form="negative_replace", null_ok=True)[0]

  def stats(imgs):
    probs = M.classifier_predict(clf, imgs)
    out = {"negative_rate": float(np.mean(hits(run.kind, probs, neg)))}
    if run.kind == "shapes_words":
      out["positive_accuracy"] = float(np.mean(hits(run.kind, probs, pos)))
    return out

  os.makedirs(out_dir, exist_ok=True)
  np.savez_compressed(os.path.join(out_dir, "negative_samples.npz"), lecture=lecture,
                      replace=replace, labels=pos, neg_labels=neg, scales=np.asarray(scales))
  rows = [{"neg_scale": s, **stats(im)} for s, im in zip(scales, lecture)]
  panels = [report.by_class(im, run.num_classes, labels=neg, per_class=8) for im in lecture]
  titles = [f"g_neg={s:g}" for s in scales]
  panels.append(report.by_class(replace, run.num_classes, labels=neg, per_class=8))
  titles.append(f"replace g={g:g}")
  report.save_grid(os.path.join(out_dir, "negative_grid.png"), panels, titles, nrow=8)
  report.save_plot(os.path.join(out_dir, "negative_plot.png"),
                   [{"scale": r["neg_scale"], "negative_rate": r["negative_rate"]} for r in rows],
                   title="negative prompting (lecture form)",
                   metrics=(("negative_rate", "rate of the negative attribute"),))
  return {"positive_scale": g, "lecture": rows, "replace": {"scale": g, **stats(replace)}}
