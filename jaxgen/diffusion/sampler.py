"""Samplers: one ``lax.scan`` over a (padded) timestep table.

``denoise_fn(x_t, t) -> model_output`` is any pure function of a [B, ...] batch and [B] int
timesteps; guidance transforms (:mod:`jaxgen.diffusion.guidance`) wrap it, so every sampler
works with every guidance. DDPM and DDIM differ only in the step function; DPM-Solver++(2M)
(:mod:`jaxgen.diffusion.dpm_solver`) and PLMS (:mod:`jaxgen.diffusion.plms`) are multistep
methods whose scan also carries earlier model outputs.

The table is an array *argument*: pad it to a fixed length with
:func:`jaxgen.diffusion.pad_table` and one compiled sampler serves every number of steps
(padded entries are skipped with ``lax.cond``, which does no work for them).
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from jaxgen.diffusion.dpm_solver import dpmpp_2m_sample
from jaxgen.diffusion.plms import plms_sample, plms_table
from jaxgen.diffusion.process import concrete_or_none
from jaxgen.diffusion.schedules import Schedule
from jaxgen.diffusion.steps import VARIANCE_TYPES, ddim_inverse_step, ddim_step, ddpm_step

DenoiseFn = Callable[[jax.Array, jax.Array], jax.Array]
METHODS = ("ddpm", "ddim", "dpmpp_2m", "plms")


def _prev_from_table(table: jax.Array) -> jax.Array:
  # The next entry of the table; padding (-1) after the last real step gives -1 (clean data).
  return jnp.concatenate([table[1:], jnp.full((1,), -1, table.dtype)])


def sample(denoise_fn: DenoiseFn, schedule: Schedule, key: jax.Array | None, shape, table, *,
           method: str = "ddim", prev_table=None, eta=0.0, prediction_type: str = "epsilon",
           variance_type: str = "fixed_small", clip_sample: bool = False,
           clip_sample_range=1.0, final_alpha_bar=1.0, last_step_noise: bool = False,
           x_T=None, noise=None, return_trajectory: bool = False, guidance_grad_fn=None):
  """Draws samples by running the reverse process over ``table``.

  Args:
    denoise_fn: ``(x_t [B, ...], t [B] int32) -> model_output [B, ...]``.
    schedule: the training noise schedule.
    key: PRNG key. x_T comes from ``fold_in(key, 0)``-derived randomness and step i's noise
      from ``fold_in(step_key, i)``; no key is reused. May be None when x_T is given and
      nothing random is drawn (``noise`` given, DDIM with a concrete eta = 0, ``dpmpp_2m``,
      ``plms``).
    shape: (B, H, W, C) of the samples.
    table: int [L] descending timesteps, optionally padded with -1 at the end. For ``plms``
      the plain table: the sampler lays out its warm-up with :func:`plms_table` (L + 1 model
      calls, the trajectory has L + 1 entries).
    method: ``ddpm`` (ancestral), ``ddim``, ``dpmpp_2m`` (DPM-Solver++(2M), Lu et al. 2022;
      :func:`jaxgen.diffusion.dpmpp_2m_sample`) or ``plms`` (PNDM's PLMS, Liu et al. 2022;
      :func:`jaxgen.diffusion.plms_sample`). The last two are deterministic and ignore eta,
      variance_type and last_step_noise.
    prev_table: int [L] the timestep each entry steps to; default: the next table entry
      (the papers' rule). Pass ``previous_timesteps(table, T, "diffusers")`` for diffusers'
      DDIM rule. Any negative value means past the last step (``final_alpha_bar``).
    eta: DDIM stochasticity (array-valued is fine).
    prediction_type, variance_type, clip_sample, clip_sample_range, last_step_noise: see
      :func:`ddpm_step` / :func:`ddim_step` (``plms`` does not clip).
    final_alpha_bar: alpha_bar after the last step (1: the clean data), scalar, traced allowed.
    x_T: optional starting noise [B, ...] (then `key` only draws the step noise).
    noise: optional per-step noise [L, B, ...] instead of drawing it from `key` (DDPM, DDIM).
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
                     f"{method} wrap the denoiser with jaxgen.diffusion.classifier_guidance "
                     "instead")
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
  eta_value = concrete_or_none(eta)
  draws = noise is None and (method == "ddpm" or eta_value is None or eta_value.any())
  if key is None and (x_T is None or (draws and method in ("ddpm", "ddim"))):
    raise ValueError(f"sample(method={method!r}) needs a PRNG key to draw "
                     f"{'x_T' if x_T is None else 'the step noise'}; pass key=jax.random.key(...)"
                     " (or the noise itself)")
  init_key, step_key = jax.random.split(key) if key is not None else (None, None)
  if x_T is None:
    x_T = jax.random.normal(init_key, shape, jnp.float32)
  elif tuple(x_T.shape) != shape:
    raise ValueError(f"x_T shape {x_T.shape} must equal the sample shape {shape}")
  if method in ("dpmpp_2m", "plms"):
    if noise is not None:
      raise ValueError(f"{method} is deterministic: it takes no per-step noise")
    if method == "dpmpp_2m":
      return dpmpp_2m_sample(denoise_fn, schedule, x_T, table, prev_table=prev,
                             prediction_type=prediction_type, final_alpha_bar=final_alpha_bar,
                             clip_sample=clip_sample, clip_sample_range=clip_sample_range,
                             return_trajectory=return_trajectory)
    if clip_sample:
      raise ValueError("plms works on noise estimates and does not clip; use clip_sample=False")
    return plms_sample(denoise_fn, schedule, x_T, plms_table(table), prev_table=plms_table(prev),
                       prediction_type=prediction_type, final_alpha_bar=final_alpha_bar,
                       return_trajectory=return_trajectory)
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
                       clip_sample_range=clip_sample_range, final_alpha_bar=final_alpha_bar,
                       last_step_noise=last_step_noise, guidance_grad=grad)
    return ddim_step(schedule, x, t, t_prev, out, z, eta=eta,
                     prediction_type=prediction_type, clip_sample=clip_sample,
                     clip_sample_range=clip_sample_range, final_alpha_bar=final_alpha_bar)

  def body(x, inputs):
    i, t, t_prev = inputs[:3]

    def live():  # the noise is drawn inside the branch: padded entries cost nothing
      if noise is not None:
        z = inputs[3]
      elif draws:
        z = jax.random.normal(jax.random.fold_in(step_key, i), shape, x.dtype)
      else:  # DDIM with eta = 0: the noise is multiplied by 0
        z = jnp.zeros(shape, x.dtype)
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
