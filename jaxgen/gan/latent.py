"""Latent-space tools: latents from seeds, lerp / slerp interpolation, truncation, vector
arithmetic on group means. All pure and vmap-able; they work on z or w alike.

References:
  Radford, Metz, Chintala (2016), "Unsupervised Representation Learning with Deep
    Convolutional GANs", sec. 6 (walking the latent space; vector arithmetic on averaged z).
  White (2016), "Sampling Generative Networks" (slerp for Gaussian latents).
  Shoemake (1985), "Animating Rotation with Quaternion Curves" (slerp).
  Karras et al. (2019), "A Style-Based Generator", sec. 3 / appendix B (truncation in W).
"""
from __future__ import annotations

import functools
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.nn.stylegan import truncate  # re-exported as gan.truncate (the model uses it too)

__all__ = ["latents_from_seeds", "parse_seeds", "lerp", "slerp", "interpolate", "truncate",
           "group_mask", "group_mean", "latent_arithmetic"]


def latents_from_seeds(seeds, z_dim: int) -> jax.Array:
  """One standard-normal latent per integer seed: z_i = normal(key(seed_i), [z_dim]).

  Latent i depends only on seed i (not on the other seeds or their number), as
  StyleGAN's ``generate.py --seeds`` expects.

  Args:
    seeds: [N] non-negative ints.
    z_dim: latent size.

  Returns:
    [N, z_dim] float32.
  """
  seeds = np.asarray(seeds)
  if seeds.ndim != 1 or not np.issubdtype(seeds.dtype, np.integer) or (seeds < 0).any():
    raise ValueError(f"seeds must be a 1-D array of non-negative ints, got {seeds!r}.")
  return _latents_from_seeds(jnp.asarray(seeds, jnp.uint32), int(z_dim))


@functools.partial(jax.jit, static_argnums=1)
def _latents_from_seeds(seeds, z_dim):
  return jax.vmap(lambda s: jax.random.normal(jax.random.key(s), (z_dim,)))(seeds)


def parse_seeds(text: str) -> list[int]:
  """'1,3,10-12' -> [1, 3, 10, 11, 12] (the syntax of StyleGAN's --seeds)."""
  out = []
  for part in str(text).split(","):
    part = part.strip()
    lo, sep, hi = part.partition("-")
    try:
      out += list(range(int(lo), int(hi) + 1)) if sep else [int(part)]
    except ValueError as e:
      raise ValueError(f"bad seed list {text!r}: expected e.g. '0,3,10-15'.") from e
  if not out or min(out) < 0:
    raise ValueError(f"bad seed list {text!r}: expected non-negative seeds, e.g. '0-7'.")
  return out


def lerp(a, b, t):
  """Linear interpolation a + t (b - a).

  Args:
    a, b: latents of one shape [..., D].
    t: scalar (or broadcastable) weight; t=0 gives a, t=1 gives b.
  """
  return a + t * (b - a)


def slerp(a, b, t, eps: float = 1e-7):
  """Spherical linear interpolation (Shoemake 1985) along the last axis.

  slerp(a, b; t) = sin((1 - t) omega) / sin(omega) a + sin(t omega) / sin(omega) b with
  omega the angle between a and b. For |a| = |b| it stays on that sphere; it meets a at
  t=0 and b at t=1; for (anti)parallel inputs it falls back to `lerp`.

  Args:
    a, b: [..., D].
    t: scalar or broadcastable to [...].

  Returns:
    [..., D].
  """
  a, b = jnp.asarray(a), jnp.asarray(b)
  t = jnp.asarray(t, a.dtype)[..., None] if jnp.ndim(t) else jnp.asarray(t, a.dtype)
  na = jnp.linalg.norm(a, axis=-1, keepdims=True)
  nb = jnp.linalg.norm(b, axis=-1, keepdims=True)
  cos = jnp.sum(a * b, axis=-1, keepdims=True) / jnp.maximum(na * nb, eps)
  omega = jnp.arccos(jnp.clip(cos, -1.0, 1.0))
  sin = jnp.sin(omega)
  ok = sin > 1e-4
  safe_sin = jnp.where(ok, sin, 1.0)
  wa = jnp.where(ok, jnp.sin((1.0 - t) * omega) / safe_sin, 1.0 - t)
  wb = jnp.where(ok, jnp.sin(t * omega) / safe_sin, t)
  return wa * a + wb * b


def interpolate(a, b, num: int, method: str = "slerp"):
  """``num`` evenly spaced points from a to b (both included).

  Args:
    a, b: [..., D].
    num: number of points (>= 2).
    method: 'lerp' or 'slerp'.

  Returns:
    [num, ..., D].
  """
  if method not in ("lerp", "slerp"):
    raise ValueError(f"interpolation method must be 'lerp' or 'slerp', got {method!r}.")
  if num < 2:
    raise ValueError(f"interpolate needs num >= 2 points, got {num}.")
  fn = lerp if method == "lerp" else slerp
  return jax.vmap(lambda t: fn(a, b, t))(jnp.linspace(0.0, 1.0, num))


def group_mask(labels: Mapping[str, np.ndarray], query: Mapping[str, int]) -> np.ndarray:
  """Which examples match every ``name == value`` of ``query``.

  Args:
    labels: attribute name -> [N] int labels (e.g. classifier predictions of samples).
    query: attribute name -> value index; {} matches everything.

  Returns:
    [N] bool.

  Raises:
    ValueError: an attribute name of the query is not in ``labels``.
  """
  if not labels:
    raise ValueError("group_mask needs at least one attribute in labels.")
  n = len(next(iter(labels.values())))
  mask = np.ones(n, bool)
  for name, value in query.items():
    if name not in labels:
      raise ValueError(f"unknown attribute {name!r}; the labels have {sorted(labels)}.")
    mask &= np.asarray(labels[name]) == value
  return mask


def group_mean(latents, labels: Mapping[str, np.ndarray], query: Mapping[str, int],
               min_count: int = 1):
  """Mean latent of the examples matching ``query`` (DCGAN sec. 6.3 averages 3 samples).

  Args:
    latents: [N, ...].
    labels: attribute name -> [N] ints.
    query: attribute name -> value.
    min_count: raise ValueError if fewer examples match.

  Returns:
    [...] the mean latent.
  """
  mask = group_mask(labels, query)
  count = int(mask.sum())
  if count < min_count:
    raise ValueError(f"only {count} examples match {dict(query)} (need {min_count}); draw "
                     "more samples or relax the query.")
  return jnp.mean(jnp.asarray(latents)[np.flatnonzero(mask)], axis=0)


def latent_arithmetic(means: Sequence, signs: Sequence[float]):
  """sum_i sign_i * mean_i, e.g. [large red circle] - [red] + [blue] with signs (1, -1, 1).

  Args:
    means: group means, each [...].
    signs: one float per mean.
  """
  if len(means) != len(signs) or not means:
    raise ValueError(f"need as many signs as means (>= 1), got {len(means)} and {len(signs)}.")
  return sum(s * jnp.asarray(m) for s, m in zip(signs, means))
