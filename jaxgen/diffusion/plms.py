"""PLMS: the pseudo linear multistep sampler of PNDM (Liu et al. 2022, "Pseudo Numerical Methods
for Diffusion Models on Manifolds"), in the form diffusers' ``PNDMScheduler`` runs with
``skip_prk_steps=True`` (Stable Diffusion v1's default scheduler).

Every step uses PNDM's transfer part (eq. 9), which moves x_t to x_{t'} along the DDIM
direction of a noise estimate e:

  x_{t'} = sqrt(ab_{t'} / ab_t) x_t - (ab_{t'} - ab_t) e
           / (ab_t sqrt(1 - ab_{t'}) + sqrt(ab_t (1 - ab_t) ab_{t'})),

(algebraically DDIM's eta = 0 step), with e a linear multistep combination of the model outputs
(eq. 12, Adams-Bashforth). The PLMS table repeats its second timestep (n + 1 entries for n
steps, :func:`jaxgen.diffusion.plms_table`); with c the index of an entry in the run:

* c = 0: e = e_0 (the model at x, t); step t -> t'; the starting x is kept;
* c = 1: the model is evaluated at the new x, e = (e_0 + e_1) / 2 (a Heun-like warm-up instead
  of PNDM's Runge-Kutta steps), and the *first* step is redone from the kept x over a step of
  the same length that ends at this entry's timestep;
* c >= 2: the outputs are kept (up to 4) and e = (3 e_1 - e_2) / 2,
  (23 e_1 - 16 e_2 + 5 e_3) / 12, then (55 e_1 - 59 e_2 + 37 e_3 - 9 e_4) / 24 (newest first).

The combination is of raw model outputs; a ``v_prediction`` output is converted to the noise
after combining, at the step's starting timestep and sample (as diffusers does). One
``lax.scan`` carries x, the kept x and the last four outputs.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.diffusion.process import alpha_bar_at, check_prediction_type, predict_x0_eps
from jaxgen.diffusion.schedules import Schedule

DenoiseFn = Callable[[jax.Array, jax.Array], jax.Array]


def plms_table(table):
  """The PLMS table of a descending table [t_0, t_1, ..., t_{n-1}]: [t_0, t_1, t_1, t_2, ...]
  (n + 1 entries; a single-step table is unchanged), as diffusers' ``PNDMScheduler`` lays out
  its timesteps with ``skip_prk_steps=True``. Works on numpy and (padded, traced) jax arrays."""
  xp = jnp if isinstance(table, jax.Array) else np
  table = xp.asarray(table).astype(xp.int32)
  if table.ndim != 1:
    raise ValueError(f"table must be a 1-D array of timesteps, got shape {table.shape}")
  return xp.concatenate([table[:2], table[1:]])


def pndm_transfer(ab_t, ab_prev, x_t: jax.Array, eps: jax.Array) -> jax.Array:
  """PNDM's transfer part phi(x_t, e, t, t') (Liu et al. 2022, eq. 9); ab_* broadcastable."""
  denom = ab_t * jnp.sqrt(1.0 - ab_prev) + jnp.sqrt(ab_t * (1.0 - ab_t) * ab_prev)
  return jnp.sqrt(ab_prev / ab_t) * x_t - (ab_prev - ab_t) * eps / denom


def _combine(ets: jax.Array, count) -> jax.Array:
  """The multistep noise estimate from the kept outputs ets [4, ...] (newest last)."""
  e1, e2, e3, e4 = ets[3], ets[2], ets[1], ets[0]
  branches = [lambda: e1,
              lambda: (3 * e1 - e2) / 2,
              lambda: (23 * e1 - 16 * e2 + 5 * e3) / 12,
              lambda: (1 / 24) * (55 * e1 - 59 * e2 + 37 * e3 - 9 * e4)]
  return jax.lax.switch(jnp.clip(count, 1, 4) - 1, branches)


def plms_sample(denoise_fn: DenoiseFn, schedule: Schedule, x_T: jax.Array, table, *,
                prev_table=None, prediction_type: str = "epsilon", final_alpha_bar=1.0,
                return_trajectory: bool = False):
  """PLMS sampling over a PLMS table (module docstring), as one ``lax.scan``.

  Args:
    denoise_fn: ``(x_t [B, ...], t [B] int32) -> model_output [B, ...]``.
    schedule: the training noise schedule.
    x_T: the starting sample [B, ...] at timestep table[0].
    table: int [L] PLMS table (:func:`plms_table` of a descending table; the run's first two
      entries are the warm-up), optionally padded with -1 at the end (skipped).
    prev_table: int [L] the timestep each entry steps to (any negative value means
      ``final_alpha_bar``); default the next entry, -1 after the last. Entry 1 (the warm-up
      correction) ignores its own: it redoes step 0 over ``table[0] - prev_table[0]`` ending at
      ``table[1]``. diffusers' rule is ``prev_table = table - T // n``.
    prediction_type: ``epsilon``, ``v_prediction`` (diffusers' PNDM accepts these two) or
      ``sample``.
    final_alpha_bar: alpha_bar for negative targets (1: the clean data; Stable Diffusion v1's
      ``set_alpha_to_one=False`` means ``alphas_cumprod[0]``); traced allowed.
    return_trajectory: also return x after every entry, [L, B, ...].
  Returns:
    x [B, ...] after the last entry (and the trajectory).
  """
  check_prediction_type(prediction_type)
  table = jnp.asarray(table, jnp.int32)
  if table.ndim != 1:
    raise ValueError(f"table must be a 1-D array of timesteps, got shape {table.shape}")
  nxt = jnp.concatenate([table[1:], jnp.full((1,), -1, jnp.int32)])
  prev = nxt if prev_table is None else jnp.asarray(prev_table, jnp.int32)
  if prev.shape != table.shape:
    raise ValueError(f"prev_table shape {prev.shape} must equal table shape {table.shape}")
  batch = x_T.shape[0]

  def body(carry, inputs):
    x, kept, ets, count, gap = carry
    t, t_prev = inputs

    def live():
      out = denoise_fn(x, jnp.full((batch,), t, jnp.int32))
      if out.shape != x.shape:
        raise ValueError(f"denoise_fn returned shape {out.shape}, expected {x.shape}")
      warm = count == 1
      # Entry 1 keeps the outputs as they are; every other entry appends its output.
      new_ets = jnp.where(warm, ets, jnp.concatenate([ets[1:], out[None]]))
      n_ets = jnp.minimum(jnp.where(warm, 1, jnp.maximum(count, 1)), 4)
      e = jnp.where(warm, (out + ets[3]) / 2, _combine(new_ets, n_ets))
      x_from = jnp.where(warm, kept, x)
      t_from = jnp.where(warm, t + gap, t)
      t_to = jnp.where(warm, t, t_prev)
      ab_from = alpha_bar_at(schedule, t_from)
      ab_to = alpha_bar_at(schedule, t_to, final_alpha_bar)
      _, eps = predict_x0_eps(ab_from, x_from, e, prediction_type)
      x_new = pndm_transfer(ab_from, ab_to, x_from, eps).astype(x.dtype)
      first = count == 0
      return (x_new, jnp.where(first, x, kept), new_ets, count + 1,
              jnp.where(first, t - t_prev, gap))

    carry = jax.lax.cond(t >= 0, live, lambda: carry)
    return carry, (carry[0] if return_trajectory else None)

  zeros = jnp.zeros_like(x_T)
  init = (x_T, zeros, jnp.zeros((4,) + x_T.shape, x_T.dtype), jnp.zeros((), jnp.int32),
          jnp.zeros((), jnp.int32))
  (x, *_), traj = jax.lax.scan(body, init, (table, prev))
  return (x, traj) if return_trajectory else x
