"""DPM-Solver++ (2M): the multistep second-order solver of the diffusion ODE in data prediction.

Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic
Models", Algorithm 2. With alpha_t = sqrt(alpha_bar_t), sigma_t = sqrt(1 - alpha_bar_t), the
half log-SNR lambda_t = log(alpha_t / sigma_t) and the model's data prediction x0_i at the
i-th timestep, one step from s = t_{i-1} to t = t_i (h = lambda_t - lambda_s) is

  first order (eq. 5 with k = 1; the same as a DDIM step with eta = 0):
    x_t = (sigma_t / sigma_s) x_s - alpha_t (e^{-h} - 1) x0_s,
  second order (2M, Algorithm 2), with the previous prediction x0_{s'} at s' = t_{i-2},
  r = h' / h, h' = lambda_s - lambda_{s'}, D1 = (x0_s - x0_{s'}) / r:
    midpoint: x_t = (sigma_t / sigma_s) x_s - alpha_t (e^{-h} - 1) (x0_s + D1 / 2),
    heun:     x_t = (sigma_t / sigma_s) x_s - alpha_t (e^{-h} - 1) x0_s
                    + alpha_t ((e^{-h} - 1) / h + 1) D1
  (the two variants of diffusers' ``solver_type``; the paper's 2M is ``midpoint``).

The first step has no previous prediction and is first order; so is a step to the clean data
(sigma_t = 0, lambda_t = +inf), where the second-order correction would diverge. The sampler is
one ``lax.scan`` whose carry holds the previous x0 prediction and its lambda; ``denoise_fn`` is
any ``(x_t, t [B]) -> model output``, so every guidance transform of
:mod:`jaxgen.diffusion.guidance` works with it.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from jaxgen.diffusion.process import _bcast, alpha_bar_at, check_prediction_type, predict_x0_eps
from jaxgen.diffusion.schedules import Schedule

DenoiseFn = Callable[[jax.Array, jax.Array], jax.Array]
SOLVER_TYPES = ("midpoint", "heun")


def _check_solver_type(solver_type: str) -> None:
  if solver_type not in SOLVER_TYPES:
    raise ValueError(f"unknown DPM-Solver++ solver_type {solver_type!r}; expected one of "
                     f"{SOLVER_TYPES}")


def _alpha_sigma_lambda(ab):
  alpha, sigma = jnp.sqrt(ab), jnp.sqrt(1.0 - ab)
  return alpha, sigma, jnp.log(alpha) - jnp.log(sigma)  # lambda = +inf where sigma = 0


def dpmpp_2m_update(x_s: jax.Array, x0_s: jax.Array, ab_s, ab_t, *, x0_last=None,
                    lambda_last=None, second_order=True, solver_type: str = "midpoint"):
  """The DPM-Solver++ update x_s -> x_t from the data predictions (module docstring).

  Args:
    x_s: current sample [B, ...].
    x0_s: the data prediction at s, shaped like x_s.
    ab_s, ab_t: alpha_bar at s and at the target t (broadcastable to x_s; ab_t = 1 is the
      clean data).
    x0_last: the data prediction at the previous timestep s' (> s), or None (first order).
    lambda_last: lambda at s' (broadcastable), with x0_last.
    second_order: bool (traced allowed): use the 2M update; False, or ab_t = 1, gives first
      order.
    solver_type: ``midpoint`` (Algorithm 2) or ``heun``.
  Returns:
    x_t shaped like x_s.
  """
  _check_solver_type(solver_type)
  alpha_s, sigma_s, lambda_s = _alpha_sigma_lambda(ab_s)
  alpha_t, sigma_t, lambda_t = _alpha_sigma_lambda(ab_t)
  h = lambda_t - lambda_s
  e = jnp.exp(-h) - 1.0                       # -1 when sigma_t = 0 (h = +inf)
  first = (sigma_t / sigma_s) * x_s - (alpha_t * e) * x0_s
  if x0_last is None:
    return first
  # A repeated timestep (lambda_s = lambda_last) would divide by r = 0: first order there.
  use2 = jnp.asarray(second_order) & (sigma_t > 0) & (lambda_s > lambda_last)
  # Guarded values: the unused branch stays finite (no inf * 0 under jnp.where, nor in grads).
  h2 = jnp.where(use2, h, 1.0)
  r = jnp.where(use2, (lambda_s - lambda_last), 1.0) / h2
  d1 = (1.0 / r) * (x0_s - x0_last)
  if solver_type == "midpoint":
    second = first - 0.5 * (alpha_t * e) * d1
  else:
    second = first + (alpha_t * (e / h2 + 1.0)) * d1
  return jnp.where(use2, second, first)


def dpmpp_2m_sample(denoise_fn: DenoiseFn, schedule: Schedule, x_T: jax.Array, table, *,
                    prev_table=None, prediction_type: str = "epsilon",
                    solver_type: str = "midpoint", lower_order_final: bool = True,
                    first_order=None, final_alpha_bar=1.0, clip_sample: bool = False,
                    clip_sample_range=1.0, return_trajectory: bool = False):
  """DPM-Solver++(2M) over a timestep table, as one ``lax.scan`` (Lu et al. 2022, Algorithm 2).

  Args:
    denoise_fn: ``(x_t [B, ...], t [B] int32) -> model_output [B, ...]``.
    schedule: the training noise schedule.
    x_T: the starting sample [B, ...] at timestep table[0].
    table: int [L] descending timesteps, optionally padded with -1 at the end (skipped).
    prev_table: int [L] the timestep each entry steps to; default the next entry (-1, the
      clean data, after the last). Any negative value means ``final_alpha_bar``.
    prediction_type: the model's output: ``epsilon``, ``sample`` or ``v_prediction``.
    solver_type: ``midpoint`` or ``heun`` (module docstring).
    lower_order_final: make the last real entry a first-order step (a step to the clean data
      always is).
    first_order: optional bool [L]: entries forced to first order (diffusers' rules are built
      from it by :func:`jaxgen.diffusion.schedulers.scheduler_sample`). The first live entry is
      always first order: there is no previous prediction.
    final_alpha_bar: alpha_bar for negative targets (1: the clean data), scalar, traced allowed.
    clip_sample, clip_sample_range: clip the data prediction to [-r, r].
    return_trajectory: also return x after every entry, [L, B, ...].
  Returns:
    x [B, ...] after the last entry (and the trajectory).
  """
  check_prediction_type(prediction_type)
  _check_solver_type(solver_type)
  table = jnp.asarray(table, jnp.int32)
  if table.ndim != 1:
    raise ValueError(f"table must be a 1-D array of timesteps, got shape {table.shape}")
  nxt = jnp.concatenate([table[1:], jnp.full((1,), -1, jnp.int32)])
  prev = nxt if prev_table is None else jnp.asarray(prev_table, jnp.int32)
  if prev.shape != table.shape:
    raise ValueError(f"prev_table shape {prev.shape} must equal table shape {table.shape}")
  forced = jnp.zeros(table.shape, bool) if first_order is None else jnp.asarray(first_order, bool)
  if forced.shape != table.shape:
    raise ValueError(f"first_order shape {forced.shape} must equal table shape {table.shape}")
  if lower_order_final:
    forced = forced | (nxt < 0)
  batch = x_T.shape[0]

  def body(carry, inputs):
    x, x0_last, lambda_last, done = carry
    t, t_prev, force = inputs

    def live():
      out = denoise_fn(x, jnp.full((batch,), t, jnp.int32))
      if out.shape != x.shape:
        raise ValueError(f"denoise_fn returned shape {out.shape}, expected {x.shape}")
      ab_s = alpha_bar_at(schedule, t)
      ab_t = alpha_bar_at(schedule, t_prev, final_alpha_bar)
      x0, _ = predict_x0_eps(ab_s, x, out, prediction_type)
      if clip_sample:
        x0 = jnp.clip(x0, -clip_sample_range, clip_sample_range)
      x_new = dpmpp_2m_update(x, x0, ab_s, ab_t, x0_last=x0_last, lambda_last=lambda_last,
                              second_order=(done > 0) & ~force, solver_type=solver_type)
      return x_new.astype(x.dtype), x0.astype(x.dtype), _alpha_sigma_lambda(ab_s)[2], done + 1

    carry = jax.lax.cond(t >= 0, live, lambda: carry)
    return carry, (carry[0] if return_trajectory else None)

  init = (x_T, jnp.zeros_like(x_T), jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32))
  (x, *_), traj = jax.lax.scan(body, init, (table, prev, forced))
  return (x, traj) if return_trajectory else x


def dpmpp_2m_step(schedule: Schedule, x_s: jax.Array, s, t, model_output: jax.Array, *,
                  x0_last=None, s_last=None, prediction_type: str = "epsilon",
                  solver_type: str = "midpoint", final_alpha_bar=1.0) -> jax.Array:
  """One DPM-Solver++ step x_s -> x_t (t < s; negative t means ``final_alpha_bar``).

  Without ``x0_last`` it is the first-order step, which equals ``ddim_step`` with eta = 0.

  Args:
    schedule: the noise schedule.
    x_s: current sample [B, ...].
    s, t: int timesteps, scalar or [B].
    model_output: the network output for (x_s, s).
    x0_last: the data prediction at the previous timestep ``s_last`` (second order), or None.
    s_last: int timestep of x0_last.
    prediction_type, solver_type, final_alpha_bar: as :func:`dpmpp_2m_sample`.
  Returns:
    x_t shaped like x_s.
  """
  ab_s = _bcast(alpha_bar_at(schedule, s), x_s)
  ab_t = _bcast(alpha_bar_at(schedule, t, final_alpha_bar), x_s)
  x0, _ = predict_x0_eps(ab_s, x_s, model_output, prediction_type)
  lam = None
  if x0_last is not None:
    if s_last is None:
      raise ValueError("dpmpp_2m_step: x0_last needs s_last, the timestep it was predicted at")
    lam = _alpha_sigma_lambda(_bcast(alpha_bar_at(schedule, s_last), x_s))[2]
  return dpmpp_2m_update(x_s, x0, ab_s, ab_t, x0_last=x0_last, lambda_last=lam,
                         solver_type=solver_type)
