"""Samplers: one ``lax.scan`` over a (padded) timestep table.

``denoise_fn(x_t, t) -> model_output`` is any pure function of a [B, ...] batch and [B] int
timesteps; guidance transforms (:mod:`jaxgen.diffusion.guidance`) wrap it, so every sampler
works with every guidance. DDPM and DDIM differ only in the step function.

The table is an array *argument*: pad it to a fixed length with
:func:`jaxgen.diffusion.pad_table` and one compiled sampler serves every number of steps
(padded entries are skipped with ``lax.cond``, which does no work for them).
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from jaxgen.diffusion.process import concrete_or_none
from jaxgen.diffusion.schedules import Schedule
from jaxgen.diffusion.steps import VARIANCE_TYPES, ddim_inverse_step, ddim_step, ddpm_step

DenoiseFn = Callable[[jax.Array, jax.Array], jax.Array]
METHODS = ("ddpm", "ddim")


def _prev_from_table(table: jax.Array) -> jax.Array:
  # The next entry of the table; padding (-1) after the last real step gives -1 (clean data).
  return jnp.concatenate([table[1:], jnp.full((1,), -1, table.dtype)])


def sample(denoise_fn: DenoiseFn, schedule: Schedule, key: jax.Array, shape, table, *,
           method: str = "ddim", prev_table=None, eta=0.0, prediction_type: str = "epsilon",
           variance_type: str = "fixed_small", clip_sample: bool = False, x_T=None,
           noise=None, return_trajectory: bool = False, guidance_grad_fn=None):
  """Draws samples by running the reverse process over ``table``.

  Args:
    denoise_fn: ``(x_t [B, ...], t [B] int32) -> model_output [B, ...]``.
    schedule: the training noise schedule.
    key: PRNG key. x_T comes from ``fold_in(key, 0)``-derived randomness and step i's noise
      from ``fold_in(step_key, i)``; no key is reused.
    shape: (B, H, W, C) of the samples.
    table: int [L] descending timesteps, optionally padded with -1 at the end.
    method: ``ddpm`` (ancestral) or ``ddim``.
    prev_table: int [L] the timestep each entry steps to; default: the next table entry
      (the papers' rule). Pass ``previous_timesteps(table, T, "diffusers")`` for diffusers'.
    eta: DDIM stochasticity (array-valued is fine).
    prediction_type, variance_type, clip_sample: see :func:`ddpm_step` / :func:`ddim_step`.
    x_T: optional starting noise [B, ...] (then `key` only draws the step noise).
    noise: optional per-step noise [L, B, ...] instead of drawing it from `key`.
    return_trajectory: also return x after every entry of the table, [L, B, ...].
    guidance_grad_fn: DDPM only, ``(x_t, t [B]) -> g grad_x log p(y | x_t)``: each step's mean
      moves by its variance times this (classifier guidance as in Dhariwal & Nichol 2021,
      Algorithm 1; :func:`jaxgen.diffusion.classifier_mean_shift`).
  Returns:
    x_0 [B, ...], or (x_0, trajectory) when return_trajectory.
  """
  if method not in METHODS:
    raise ValueError(f"unknown sampler {method!r}; expected one of {METHODS}")
  if guidance_grad_fn is not None and method != "ddpm":
    raise ValueError("guidance_grad_fn is the DDPM mean-shift form of classifier guidance; for "
                     "DDIM wrap the denoiser with jaxgen.diffusion.classifier_guidance instead")
  if variance_type not in VARIANCE_TYPES:
    raise ValueError(f"unknown variance_type {variance_type!r}; expected {VARIANCE_TYPES}")
  shape = tuple(int(s) for s in shape)
  table = jnp.asarray(table, jnp.int32)
  if table.ndim != 1:
    raise ValueError(f"table must be a 1-D array of timesteps, got shape {table.shape}")
  concrete = concrete_or_none(table)
  if concrete is not None and concrete.max(initial=-1) >= schedule.num_timesteps:
    raise ValueError(f"table has timestep {int(concrete.max())}, but the schedule has only "
                     f"{schedule.num_timesteps} timesteps (0..{schedule.num_timesteps - 1})")
  prev = _prev_from_table(table) if prev_table is None else jnp.asarray(prev_table, jnp.int32)
  if prev.shape != table.shape:
    raise ValueError(f"prev_table shape {prev.shape} must equal table shape {table.shape}")
  init_key, step_key = jax.random.split(key)
  if x_T is None:
    x_T = jax.random.normal(init_key, shape, jnp.float32)
  elif tuple(x_T.shape) != shape:
    raise ValueError(f"x_T shape {x_T.shape} must equal the sample shape {shape}")
  if noise is not None and tuple(noise.shape) != (table.shape[0],) + shape:
    raise ValueError(f"noise must have shape {(table.shape[0],) + shape} (one draw per table "
                     f"entry), got {noise.shape}")
  batch = shape[0]

  def step(x, t, t_prev, z):
    t_vec = jnp.full((batch,), t, jnp.int32)
    out = denoise_fn(x, t_vec)
    if method == "ddpm":
      grad = None if guidance_grad_fn is None else guidance_grad_fn(x, t_vec)
      return ddpm_step(schedule, x, t, out, z, prev_t=t_prev, prediction_type=prediction_type,
                       variance_type=variance_type, clip_sample=clip_sample,
                       guidance_grad=grad)
    return ddim_step(schedule, x, t, t_prev, out, z, eta=eta,
                     prediction_type=prediction_type, clip_sample=clip_sample)

  def body(x, inputs):
    i, t, t_prev = inputs[:3]

    def live():  # the noise is drawn inside the branch: padded entries cost nothing
      z = inputs[3] if noise is not None else jax.random.normal(
          jax.random.fold_in(step_key, i), shape, x.dtype)
      return step(x, t, t_prev, z)

    x = jax.lax.cond(t >= 0, live, lambda: x)
    return x, (x if return_trajectory else None)

  idx = jnp.arange(table.shape[0], dtype=jnp.int32)
  xs = (idx, table, prev) + ((jnp.asarray(noise),) if noise is not None else ())
  x0, traj = jax.lax.scan(body, x_T, xs)
  return (x0, traj) if return_trajectory else x0


def ddim_invert(denoise_fn: DenoiseFn, schedule: Schedule, x0: jax.Array, table, *,
                prediction_type: str = "epsilon", return_trajectory: bool = False):
  """Deterministic DDIM inversion: maps data x0 to the x_T from which DDIM (eta = 0) over the
  same ``table`` returns it (Song et al. 2021, sec. 4.3; exact as the step size goes to 0).

  Walks the table backwards; the step from timestep s to the next-noisier t evaluates the model
  at (x_s, t), the usual approximation (the model is not defined at the clean data).

  Args:
    denoise_fn, schedule: as for :func:`sample`.
    x0: data [B, ...].
    table: the descending table of the sampler to invert (padding -1 allowed).
  Returns:
    x_T [B, ...] (and the trajectory [L, B, ...] when asked).
  """
  table = jnp.asarray(table, jnp.int32)
  ascending = table[::-1]
  cur = jnp.concatenate([jnp.full((1,), -1, jnp.int32), ascending[:-1]])
  # Skip padding: a padded entry (-1) never becomes a target.
  batch = x0.shape[0]

  def body(x, inputs):
    s, t = inputs
    def go():
      out = denoise_fn(x, jnp.full((batch,), t, jnp.int32))
      return ddim_inverse_step(schedule, x, jnp.maximum(s, -1), t, out,
                               prediction_type=prediction_type)
    x = jax.lax.cond(t >= 0, go, lambda: x)
    return x, (x if return_trajectory else None)

  # After padding, `cur` for the first real entry is -1 (padding) or -1 (start): both mean clean.
  xT, traj = jax.lax.scan(body, x0, (cur, ascending))
  return (xT, traj) if return_trajectory else xT
