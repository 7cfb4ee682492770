"""A trained GAN workdir, loaded once for sampling, evaluation and every tool.

`load_trained(workdir)` gives a `Trained`: config, data source, both networks, the restored
state and its step, with the EMA generator's mapping / generation / synthesis and the
attribute classifier (``WORKDIR/attr_classifier``, trained once and cached). Jitted functions
are shared by every `Trained` of the same generator, so loading a workdir twice compiles once.
`output_path` and `write_output` are the one writer of the tools' PNG + JSON + run.json files.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from experiments import workdir as W
from experiments.families.gan import model as B
from experiments.families.gan.config import GANConfig
from jaxgen import data as jdata
from jaxgen import gan
from jaxgen import metrics as M
from jaxgen.batching import map_batched
from jaxgen.nn import StyleGenerator
from jaxgen.nn.stylegan import broadcast_ws
from jaxgen.training import write_run_json

__all__ = ["CLASSIFIER_DIR", "CONFIDENT", "Trained", "attribute_classifier", "check_space",
           "command_result", "generate_fn", "load_trained", "logits_fn", "mapping_fn",
           "output_path", "synthesis_fn", "write_output"]

CLASSIFIER_DIR = "attr_classifier"
# the class probability above which a sample's attribute value counts as definite (evaluate's
# confident counts, arithmetic's groups, the edits' 'condition definite' readings)
CONFIDENT = 0.9


def attribute_classifier(workdir: str, config: GANConfig, source=None):
  """The attribute / feature classifier of a workdir (`experiments.workdir.cached_classifier`
  in ``WORKDIR/attr_classifier``): heads shape / color / size / position for ``shapes``,
  otherwise the dataset label; trained on the train split with key ``seed + 1000``."""
  source = source or W.build_source(config, "train")
  heads = B.attribute_heads(source)
  train = jdata.load_all(source)
  return W.cached_classifier(os.path.join(workdir, CLASSIFIER_DIR), train["image"],
                             {k: train[k] for k in heads}, heads=heads,
                             key=jax.random.key(config.seed + 1000),
                             num_steps=config.gan.classifier_steps, augment_noise=0.05,
                             augment_shift=0)


@functools.lru_cache(maxsize=None)
def mapping_fn(generator):
  """jit(variables, z [N, z_dim], psi) -> w [N, w_dim] of a style-based generator."""
  return jax.jit(lambda v, z, psi: generator.apply(v, z, psi, method="mapping"))


@functools.lru_cache(maxsize=None)
def generate_fn(generator):
  """`experiments.families.gan.model.make_generate_fn` of `generator`, built once."""
  return B.make_generate_fn(generator)


@functools.lru_cache(maxsize=None)
def synthesis_fn(generator):
  """jit(variables, w [B, D] (every layer) or W+ ws [B, L, D]) -> images in [-1, 1]."""
  def run(v, w):
    ws = w if w.ndim == 3 else broadcast_ws(w, generator.config.num_ws)
    return jnp.clip(generator.apply(v, ws, method="synthesis"), -1.0, 1.0)
  return jax.jit(run)


@functools.lru_cache(maxsize=None)
def logits_fn(classifier_config):
  """jit(params, images [B, H, W, C]) -> {head: logits [B, K]} of a classifier config."""
  module = classifier_config.module()
  return jax.jit(lambda p, x: module.apply(p, x, train=False)[0])


def check_space(t: "Trained", space: str) -> None:
  """Raises ValueError unless `space` is 'z', or 'w' of a style-based generator."""
  if space not in ("z", "w"):
    raise ValueError(f"latent space must be 'z' or 'w', got {space!r}.")
  if space == "w" and not t.style:
    raise ValueError("the W space needs a style-based generator; this workdir has a DCGAN "
                     "(use --space z).")


@dataclasses.dataclass
class Trained:
  """A loaded GAN workdir (`load_trained`).

  Attributes:
    workdir, config, source: the run directory, its typed config and its train split.
    generator, discriminator: the two networks.
    state: the restored `jaxgen.gan.GANState`; step: its training step.
    variables: the EMA generator's variables.
  """
  workdir: str
  config: GANConfig
  source: Any
  generator: Any
  discriminator: Any
  state: gan.GANState
  step: int
  variables: dict
  clf: Any = dataclasses.field(default=None, repr=False)

  @property
  def z_dim(self) -> int:
    return self.state.z_dim

  @property
  def style(self) -> bool:
    return isinstance(self.generator, StyleGenerator)

  @property
  def attributes(self) -> dict:
    """{attribute: value names} the classifier predicts (shapes' four, else 'label')."""
    attrs = getattr(self.source, "attributes", None)
    return dict(attrs) if attrs else {"label": tuple(self.source.class_names)}

  def classifier(self):
    """The attribute classifier (`attribute_classifier`), loaded or trained on first use."""
    if self.clf is None:
      self.clf = attribute_classifier(self.workdir, self.config, self.source)
    return self.clf

  def latents(self, z, space: str, psi: float = 1.0):
    """z [N, z_dim] -> latents [N, D] of `space` ('z' or 'w'; `psi` truncates w)."""
    check_space(self, space)
    if space == "z":
      return jnp.asarray(z)
    return mapping_fn(self.generator)(self.variables, jnp.asarray(z), jnp.float32(psi))

  def images(self, latents, space: str, psi: float = 1.0, batch_size: int = 256) -> np.ndarray:
    """Images [N, H, W, C] in [-1, 1] of latents [N, D] in `space` (truncation applies to z
    only); in 'w' the latents may also be W+ ws [N, num_ws, w_dim]. One compiled shape of
    `batch_size` rows serves every N."""
    check_space(self, space)
    latents = np.asarray(latents, np.float32)
    if space == "z":
      return generate_fn(self.generator)(self.variables, latents, psi, batch_size)
    synth = synthesis_fn(self.generator)
    return map_batched(lambda w: synth(self.variables, w), latents, batch_size=batch_size)

  def classifier_logits(self, images, batch_size: int = 500) -> dict:
    """The attribute classifier's logits on images [N, H, W, C]: {head: [N, K]}."""
    clf = self.classifier()
    fn = logits_fn(clf.config)
    return map_batched(lambda x: fn(clf.params, x), np.asarray(images, np.float32),
                       batch_size=batch_size)


def load_trained(workdir: str) -> Trained:
  """The newest readable checkpoint of a GAN workdir, as a `Trained`."""
  config = W.load_config(workdir)
  source = W.build_source(config, "train")
  generator, discriminator = B.build_models(config, source.image_shape)
  state, step = W.restore(workdir, lambda: B.init_state(config, generator, discriminator,
                                                        jax.random.key(0)))
  return Trained(workdir, config, source, generator, discriminator, state, step,
                 state.generator_variables())


def output_path(t: Trained, name: str, seed: int = 0) -> str:
  """WORKDIR/edits/<name>.png; a command run with another random seed (N > 0) writes
  <name>_seedN.png, so it does not overwrite the seed-0 outputs."""
  d = os.path.join(t.workdir, "edits")
  os.makedirs(d, exist_ok=True)
  return os.path.join(d, name + (f"_seed{seed}" if seed else "") + ".png")


def write_output(path: str, images, nrow: int, record: dict, t: Trained, command: str) -> str:
  """Writes the grid ``path`` of images [N, H, W, C], ``record`` beside it as JSON, and a
  ``.run.json`` (the command, the config, the checkpoint step and the record's plain values).
  Returns `path`."""
  M.save_image_grid(path, images, nrow=nrow)
  W.write_json(path[:-4] + ".json", record)
  write_run_json(path[:-4] + ".run.json", W.run_record(
      t.config, command, checkpoint_step=t.step,
      **{k: v for k, v in record.items() if isinstance(v, (int, float, str, list))}))
  return path


def flags(*specs):
  """``add_arguments`` for flags given as ``(name, type or tuple of choices, default)``."""
  def add_arguments(p) -> None:
    for name, kind, default in specs:
      if isinstance(kind, tuple):
        p.add_argument(name, choices=kind, default=default)
      else:
        p.add_argument(name, type=kind, default=default)
  return add_arguments


def tool_command(help_text: str, add_arguments, tool):
  """The runner command of a tool ``tool(trained, args) -> PNG path``: it loads the workdir and
  prints `command_result` of what the tool wrote."""
  from experiments.families import Command  # pylint: disable=import-outside-toplevel
  return Command(help_text, add_arguments,
                 lambda args: command_result(tool(load_trained(args.workdir), args)))


def command_result(path: str) -> dict:
  """What a tool command prints: {"output": path, **the JSON record beside it}."""
  with open(path[:-4] + ".json", encoding="utf-8") as f:
    return {"output": path, **json.load(f)}
