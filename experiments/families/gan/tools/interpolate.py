"""Interpolation between the latents of consecutive seeds.

  python -m experiments.main interpolate --workdir DIR --seeds 0-3 [--space z|w]
      [--method slerp|lerp] [--num 8] [--trunc 1.0]
"""
from __future__ import annotations

import jax
import numpy as np

from experiments.families.gan.trained import (Trained, tool_command,
                                              output_path, write_output)
from jaxgen import gan

__all__ = ["COMMAND", "interpolate"]


def interpolate(t: Trained, seeds, *, num: int = 8, space: str = "z", method: str = "slerp",
                psi: float = 1.0) -> str:
  """One strip of `num` images per consecutive pair of `seeds` (a grid of num columns), in
  latent `space` with `method` ('slerp' or 'lerp'); `psi` truncates W latents.

  Returns:
    The path ``WORKDIR/edits/interp_<space>_<method>_seeds<a>-<b>.png`` (+ .json, .run.json).
  """
  if len(seeds) < 2:
    raise ValueError("interpolation needs at least two seeds, e.g. --seeds 0-3.")
  lat = t.latents(gan.latents_from_seeds(seeds, t.z_dim), space, psi)
  strips = jax.vmap(lambda a, b: gan.interpolate(a, b, num, method))(lat[:-1], lat[1:])
  imgs = t.images(np.asarray(strips).reshape(-1, lat.shape[-1]), space,
                  psi if space == "z" else 1.0)
  path = output_path(t, f"interp_{space}_{method}_seeds{seeds[0]}-{seeds[-1]}")
  return write_output(path, imgs, num, {"seeds": list(seeds), "space": space, "method": method,
                                        "num": num, "truncation_psi": psi}, t, "interpolate")


def add_arguments(p) -> None:
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--space", choices=("z", "w"), default="z")
  p.add_argument("--seeds", default="0-3")
  p.add_argument("--num", type=int, default=8)
  p.add_argument("--method", choices=("slerp", "lerp"), default="slerp")
  p.add_argument("--trunc", type=float, default=1.0)


COMMAND = tool_command(
    "interpolate between the latents of consecutive seeds", add_arguments,
    lambda t, a: interpolate(t, gan.parse_seeds(a.seeds), num=a.num, space=a.space,
                             method=a.method, psi=a.trunc))
