"""Single reverse steps: DDPM ancestral (Ho et al. 2020) and DDIM (Song et al. 2021).

Both work between any two timesteps ``t > prev_t`` (any ``prev_t < 0`` meaning past the last
step: alpha_bar_prev = ``final_alpha_bar``, 1 by default, the clean data), so sampling with
fewer steps than training uses the same functions: the DDPM step between t and prev_t is the
ancestral step of the respaced chain with alpha'_t = alpha_bar_t / alpha_bar_prev (Nichol &
Dhariwal 2021, sec. 4), which equals Ho et al.'s Algorithm 2 when prev_t = t - 1.

The noise is an argument, so that results can be compared bit for bit with another library.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxgen.diffusion.process import _bcast, alpha_bar_at, predict_x0_eps
from jaxgen.diffusion.schedules import Schedule

VARIANCE_TYPES = ("fixed_small", "fixed_large")


def _pair(schedule: Schedule, x_t: jax.Array, t, prev_t, final_alpha_bar=1.0):
  t = jnp.asarray(t)
  prev_t = t - 1 if prev_t is None else jnp.asarray(prev_t)
  for name, v in (("t", t), ("prev_t", prev_t)):
    if v.ndim > 1 or (v.ndim == 1 and v.shape[0] != x_t.shape[0]):
      raise ValueError(f"{name} must be a scalar or a [B={x_t.shape[0]}] vector, got shape "
                       f"{v.shape}")
    if not jnp.issubdtype(v.dtype, jnp.integer):
      raise TypeError(f"{name} must be an integer timestep, got dtype {v.dtype}")
  fab = jnp.asarray(final_alpha_bar, jnp.float32)
  if fab.ndim > 1 or (fab.ndim == 1 and fab.shape[0] != x_t.shape[0]):
    raise ValueError(f"final_alpha_bar must be a scalar or a [B={x_t.shape[0]}] vector, got "
                     f"shape {fab.shape}")
  ab_t = _bcast(alpha_bar_at(schedule, t), x_t)
  ab_prev = _bcast(alpha_bar_at(schedule, prev_t, fab), x_t)
  return t, prev_t, ab_t, ab_prev


def ddpm_step(schedule: Schedule, x_t: jax.Array, t, model_output: jax.Array,
              noise: jax.Array, *, prev_t=None, prediction_type: str = "epsilon",
              variance_type: str = "fixed_small", clip_sample: bool = False,
              clip_sample_range=1.0, final_alpha_bar=1.0, last_step_noise: bool = False,
              guidance_grad: jax.Array | None = None) -> jax.Array:
  """One ancestral sampling step x_t -> x_{prev_t} (Ho et al. 2020, Algorithm 2).

  With alpha' = ab_t / ab_prev and beta' = 1 - alpha' (alpha_t and beta_t when prev_t = t-1):
    x0^ from the model output; optionally clipped to [-r, r] (r = clip_sample_range);
    mean = sqrt(ab_prev) beta' / (1 - ab_t) x0^ + sqrt(alpha') (1 - ab_prev) / (1 - ab_t) x_t
      (eq. 7; without clipping this equals eq. 11,
       1/sqrt(alpha_t) (x_t - beta_t / sqrt(1 - ab_t) eps) — 1/sqrt(alpha_t), not
       1/sqrt(alpha_bar_t) as a lecture slide has it);
    variance = beta~ = (1 - ab_prev) / (1 - ab_t) beta' (``fixed_small``) or beta'
      (``fixed_large``), the two choices of sigma_t^2 in sec. 3.2;
    x_prev = mean + sigma z, with no noise when prev_t < 0 (the last step) unless
      ``last_step_noise``.

  Args:
    schedule: the noise schedule.
    x_t: current sample [B, ...].
    t: int timesteps, scalar or [B].
    model_output: the network output for (x_t, t), shaped like x_t.
    noise: standard normal z shaped like x_t (ignored on the last step).
    prev_t: the next timestep of the chain; defaults to t - 1; any negative value means past
      the last step.
    prediction_type: what the model predicts: ``epsilon``, ``sample`` or ``v_prediction``.
    variance_type: ``fixed_small`` or ``fixed_large``.
    clip_sample: clip the predicted x_0 to [-clip_sample_range, clip_sample_range].
    clip_sample_range: r of the clipping (diffusers' ``clip_sample_range``, 1 by default).
    final_alpha_bar: alpha_bar_prev for prev_t < 0 (1: the clean data); scalar or [B].
    last_step_noise: also add noise on a step to prev_t < 0 from t > 0, as diffusers'
      ``DDPMScheduler`` does (docs/differences_from_diffusers.md, item 3).
    guidance_grad: optional g grad_x log p(y | x_t) shaped like x_t: the mean moves by
      variance * guidance_grad (classifier guidance, Dhariwal & Nichol 2021, Algorithm 1; see
      :mod:`jaxgen.diffusion.guidance`).
  Returns:
    x_prev shaped like x_t.
  """
  if variance_type not in VARIANCE_TYPES:
    raise ValueError(f"unknown variance_type {variance_type!r}; expected one of "
                     f"{VARIANCE_TYPES}")
  _check_shapes(x_t, model_output, noise)
  t, prev_t, ab_t, ab_prev = _pair(schedule, x_t, t, prev_t, final_alpha_bar)
  x0, _ = predict_x0_eps(ab_t, x_t, model_output, prediction_type)
  if clip_sample:
    x0 = jnp.clip(x0, -clip_sample_range, clip_sample_range)
  alpha = ab_t / ab_prev
  beta = 1.0 - alpha
  mean = (jnp.sqrt(ab_prev) * beta / (1.0 - ab_t)) * x0 \
      + (jnp.sqrt(alpha) * (1.0 - ab_prev) / (1.0 - ab_t)) * x_t
  if variance_type == "fixed_small":
    var = jnp.maximum((1.0 - ab_prev) / (1.0 - ab_t) * beta, 1e-20)
  else:
    var = beta
  if guidance_grad is not None:
    if guidance_grad.shape != x_t.shape:
      raise ValueError(f"guidance_grad shape {guidance_grad.shape} must equal x_t shape "
                       f"{x_t.shape}")
    mean = mean + var * guidance_grad
  add = prev_t >= 0
  if last_step_noise:
    add = add | (t > 0)
  add = _bcast(add, x_t)
  return mean + jnp.where(add, jnp.sqrt(var), 0.0) * noise


def ddim_step(schedule: Schedule, x_t: jax.Array, t, prev_t, model_output: jax.Array,
              noise: jax.Array | None, *, eta=0.0, prediction_type: str = "epsilon",
              clip_sample: bool = False, clip_sample_range=1.0,
              final_alpha_bar=1.0) -> jax.Array:
  """One DDIM step x_t -> x_{prev_t} (Song et al. 2021, eq. 12 with sigma from eq. 16).

    x_prev = sqrt(ab_prev) x0^ + sqrt(1 - ab_prev - sigma^2) eps^ + sigma z,
    sigma = eta sqrt((1 - ab_prev) / (1 - ab_t)) sqrt(1 - ab_t / ab_prev).

  eta = 0 is the deterministic DDIM sampler; eta = 1 has DDPM's fixed_small variance. When
  clipping, eps^ stays the model's (diffusers' default ``use_clipped_model_output=False``).

  Args:
    schedule: the noise schedule.
    x_t: current sample [B, ...].
    t: int timesteps, scalar or [B].
    prev_t: int timesteps of the next (less noisy) sample; any negative value means past the
      last step: alpha_bar_prev = final_alpha_bar.
    model_output: the network output for (x_t, t).
    noise: standard normal z shaped like x_t, or None (only valid for eta = 0).
    eta: stochasticity; a traced array is fine (one compiled sampler serves every eta).
    prediction_type: ``epsilon``, ``sample`` or ``v_prediction``.
    clip_sample: clip the predicted x_0 to [-clip_sample_range, clip_sample_range].
    clip_sample_range: r of the clipping (1 by default).
    final_alpha_bar: alpha_bar_prev for prev_t < 0: 1 (the clean data; diffusers'
      ``set_alpha_to_one=True``) or ``alphas_cumprod[0]`` (``set_alpha_to_one=False``); scalar or
      [B], traced values allowed.
  Returns:
    x_prev shaped like x_t.
  """
  if noise is None:
    noise = jnp.zeros_like(x_t)
  _check_shapes(x_t, model_output, noise)
  _, _, ab_t, ab_prev = _pair(schedule, x_t, t, prev_t, final_alpha_bar)
  x0, eps = predict_x0_eps(ab_t, x_t, model_output, prediction_type)
  if clip_sample:
    x0 = jnp.clip(x0, -clip_sample_range, clip_sample_range)
  var = (1.0 - ab_prev) / (1.0 - ab_t) * (1.0 - ab_t / ab_prev)
  sigma = jnp.asarray(eta, x_t.dtype) * jnp.sqrt(var)
  direction = jnp.sqrt(jnp.maximum(1.0 - ab_prev - sigma ** 2, 0.0)) * eps
  return jnp.sqrt(ab_prev) * x0 + direction + sigma * noise


def ddim_inverse_step(schedule: Schedule, x_t: jax.Array, t, next_t, model_output: jax.Array,
                      *, prediction_type: str = "epsilon") -> jax.Array:
  """Deterministic DDIM inversion x_t -> x_{next_t} with next_t > t (Song et al. 2021,
  sec. 4.3: the eta = 0 ODE integrated forward); ``t < 0`` means the clean data."""
  _check_shapes(x_t, model_output, model_output)
  _, _, ab_t, ab_next = _pair(schedule, x_t, t, next_t)
  x0, eps = predict_x0_eps(ab_t, x_t, model_output, prediction_type)
  return jnp.sqrt(ab_next) * x0 + jnp.sqrt(1.0 - ab_next) * eps


def _check_shapes(x_t, model_output, noise):
  if model_output.shape != x_t.shape:
    raise ValueError(f"model_output shape {model_output.shape} must equal x_t shape "
                     f"{x_t.shape}")
  if noise.shape != x_t.shape:
    raise ValueError(f"noise shape {noise.shape} must equal x_t shape {x_t.shape}")
