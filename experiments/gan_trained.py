"""A trained GAN workdir loaded for the editing tools: `Trained` (generator, EMA variables,
attribute classifier) with jitted mapping / generation / synthesis shared across calls, and
the PNG + JSON + run.json writer every tool uses."""
from __future__ import annotations

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from experiments import common
from experiments import gan as G
from jaxgen import metrics as M
from jaxgen.nn import StyleGenerator
from jaxgen.nn.stylegan import broadcast_ws


@dataclasses.dataclass
class Trained:
  """A loaded workdir: generator, EMA variables, jitted generate / map / synthesise."""
  workdir: str
  config: object
  source: object
  generator: object
  variables: dict
  step: int
  z_dim: int
  _clf: object = None

  @classmethod
  def load(cls, workdir: str) -> "Trained":
    config, source, generator, state, step = G.load_trained(workdir)
    return cls(workdir, config, source, generator, state.generator_variables(), step,
               state.z_dim)

  @property
  def style(self) -> bool:
    return isinstance(self.generator, StyleGenerator)

  @property
  def attributes(self) -> dict:
    attrs = getattr(self.source, "attributes", None)
    return dict(attrs) if attrs else {"label": tuple(self.source.class_names)}

  def classifier(self):
    if self._clf is None:
      self._clf = G.attribute_classifier(self.workdir, self.config, self.source, self.config.seed)
    return self._clf

  def latents(self, z, space: str, psi: float = 1.0):
    """z [N, z_dim] -> latents of `space` ('z' or 'w')."""
    _check_space(self, space)
    if space == "z":
      return jnp.asarray(z)
    return _mapping(self.generator)(self.variables, jnp.asarray(z), jnp.float32(psi))

  def images(self, latents, space: str, psi: float = 1.0, batch_size: int = 256):
    """Images [N, H, W, C] in [-1, 1] of latents in `space` (truncation applies to z only);
    in 'w' the latents may also be W+ ws [N, num_ws, w_dim]. Chunks are padded to
    `batch_size`, so one compiled function serves every N."""
    _check_space(self, space)
    latents = np.asarray(latents, np.float32)
    out = []
    for s in range(0, latents.shape[0], batch_size):
      chunk = latents[s:s + batch_size]
      n = chunk.shape[0]
      chunk = np.concatenate([chunk, np.zeros((batch_size - n,) + chunk.shape[1:], chunk.dtype)])
      if space == "z":
        imgs = _generate(self.generator)(self.variables, chunk, psi, batch_size)
      else:
        imgs = _synthesis(self.generator)(self.variables, jnp.asarray(chunk))
      out.append(np.asarray(imgs)[:n])
    return np.concatenate(out)


_CACHE = {}


def _mapping(generator):
  key = ("map", generator)
  if key not in _CACHE:
    _CACHE[key] = jax.jit(lambda v, z, psi: generator.apply(v, z, psi, method="mapping"))
  return _CACHE[key]


def _generate(generator):
  key = ("gen", generator)
  if key not in _CACHE:
    _CACHE[key] = G.make_generate_fn(generator)
  return _CACHE[key]


def _synthesis(generator):
  key = ("synth", generator)
  if key not in _CACHE:
    def run(v, w):  # w [B, D] (broadcast to every layer) or W+ ws [B, L, D]
      ws = w if w.ndim == 3 else broadcast_ws(w, generator.config.num_ws)
      return jnp.clip(generator.apply(v, ws, method="synthesis"), -1.0, 1.0)
    _CACHE[key] = jax.jit(run)
  return _CACHE[key]


def _check_space(t: Trained, space: str):
  if space not in ("z", "w"):
    raise ValueError(f"latent space must be 'z' or 'w', got {space!r}.")
  if space == "w" and not t.style:
    raise ValueError("the W space needs a style-based generator; this workdir has a DCGAN "
                     "(use --space z).")


def _write(path: str, images, nrow: int, record: dict, t: Trained, command: str) -> str:
  M.save_image_grid(path, images, nrow=nrow)
  with open(path[:-4] + ".json", "w") as f:
    json.dump(record, f, indent=2, default=float)
  common.write_run_json(path[:-4] + ".run.json", t.config, command=command,
                        checkpoint_step=t.step, **{k: v for k, v in record.items()
                                                   if isinstance(v, (int, float, str, list))})
  return path


def _out(t: Trained, name: str, seed: int = 0) -> str:
  """WORKDIR/edits/<name>.png; a command run with another random seed (N > 0) writes
  <name>_seedN.png, so it does not overwrite the seed-0 outputs."""
  d = os.path.join(t.workdir, "edits")
  os.makedirs(d, exist_ok=True)
  return os.path.join(d, name + (f"_seed{seed}" if seed else "") + ".png")
