"""Unsupervised direction discovery (Voynov & Babenko 2020): directions and a reconstructor
trained jointly on the frozen generator, each direction then named by the attribute whose
predicted class it changes most.

  python -m experiments.main discover --workdir DIR [--directions 16] [--steps 1000] [--space z|w]
"""
from __future__ import annotations

import jax
import numpy as np
import optax

from experiments.families.gan.trained import (Trained, check_space, flags, tool_command,
                                              output_path, write_output)
from jaxgen import gan
from jaxgen import metrics as M
from jaxgen.nn import DirectionReconstructor
from jaxgen.nn.stylegan import broadcast_ws

__all__ = ["COMMAND", "discover"]


def discover(t: Trained, *, num_directions: int = 16, num_steps: int = 1000, space: str = "z",
             batch_size: int = 32, shift_scale: float = 6.0, seed: int = 0,
             num_eval: int = 100) -> str:
  """Trains `num_directions` directions + a reconstructor for `num_steps` steps; reports per
  direction the attribute whose predicted class changes most between shifts -shift_scale/2
  and +shift_scale/2 on `num_eval` latents.

  Returns:
    The grid's path ``WORKDIR/edits/discover_<space>.png`` (row k: seed 0 shifted along
    direction k); beside it the JSON record and the directions [K, D] as ``_directions.npy``.
  """
  check_space(t, space)
  gen = t.generator
  if space == "z":
    sample_fn = lambda v, k, b: jax.random.normal(k, (b, t.z_dim))
    generate_fn = lambda v, z: gen.apply(v, z) if not t.style else gen.apply(v, z, 1.0)
  else:
    sample_fn = lambda v, k, b: gen.apply(v, jax.random.normal(k, (b, t.z_dim)), method="mapping")
    generate_fn = lambda v, w: gen.apply(v, broadcast_ws(w, gen.config.num_ws),
                                         method="synthesis")
  dim = t.z_dim if space == "z" else gen.config.w_dim
  recon = DirectionReconstructor(num_directions=num_directions)
  key = jax.random.key(seed)
  state = gan.init_voynov(recon, jax.random.fold_in(key, 0), latent_dim=dim,
                          image_shape=t.source.image_shape, tx=optax.adam(1e-3))
  step = jax.jit(gan.make_voynov_step(sample_fn, generate_fn, batch_size=batch_size,
                                      shift_scale=shift_scale), donate_argnums=0)
  accs = []
  for _ in range(num_steps):
    state, m = step(state, t.variables, jax.random.fold_in(key, 1))
    accs.append(float(m["direction_accuracy"]))
  dirs = np.asarray(state.directions())
  lat = t.latents(jax.random.normal(jax.random.fold_in(key, 2), (num_eval, t.z_dim)), space)
  clf, shift = t.classifier(), shift_scale / 2
  changes = []
  for d in dirs:
    a, b = (M.classifier_predict(clf, t.images(np.asarray(lat) + s * d[None], space))
            for s in (-shift, shift))
    frac = {k: float(np.mean(a[k].argmax(-1) != b[k].argmax(-1))) for k in a}
    top = max(frac, key=frac.get)
    changes.append({"attribute": top, "changed_fraction": frac[top], "all": frac})
  show = np.linspace(-shift_scale, shift_scale, 7)
  z0 = t.latents(gan.latents_from_seeds([0], t.z_dim), space)
  grid = np.asarray(z0)[None] + show[None, :, None] * dirs[:, None, :]  # [K, 7, D]
  grid = grid.reshape(-1, dim)
  record = {"num_directions": num_directions, "num_steps": num_steps, "space": space,
            "reconstructor_accuracy_last100": float(np.mean(accs[-100:])),
            "directions": changes}
  path = output_path(t, f"discover_{space}", seed)
  np.save(path[:-4] + "_directions.npy", dirs)
  return write_output(path, t.images(grid, space), len(show), record, t, "discover")


COMMAND = tool_command(
    "unsupervised direction discovery (Voynov & Babenko)",
    flags(("--seed", int, 0), ("--space", ("z", "w"), "z"), ("--directions", int, 16),
          ("--steps", int, 1000)),
    lambda t, a: discover(t, num_directions=a.directions, num_steps=a.steps, space=a.space,
                          seed=a.seed))
