"""The forward process, its Gaussian posterior, and conversions between parameterizations.

Every function takes the schedule as an argument and timesteps ``t`` as an int scalar or a
[B] array (one per example); coefficients broadcast over the trailing image axes.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.diffusion.schedules import Schedule

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")


def concrete_or_none(x):
  """``x`` as a numpy array if it is concrete (not traced), else None: checks run eagerly on
  concrete inputs and stay silent inside a user's jit."""
  try:
    return np.asarray(x)
  except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
    return None


def check_timesteps(t, num_timesteps: int, name: str = "t", allow_negative: bool = False):
  """Raises a clear error for concrete timesteps outside [0, T-1]. With ``allow_negative``
  any negative value is accepted: it means "past the last step" (the clean data, or the final
  alpha_bar a sampler was given), as in diffusers, whose ``t - T // n`` rule gives values such
  as -19 on the last step. JAX would silently clamp an index out of range."""
  v = concrete_or_none(t)
  if v is None or v.size == 0:
    return
  if allow_negative:
    if v.max() > num_timesteps - 1:
      raise ValueError(f"{name} must lie in [-1, {num_timesteps - 1}] for a schedule of "
                       f"{num_timesteps} timesteps (any negative value means past the last "
                       f"step), got values in [{v.min()}, {v.max()}]")
  elif v.min() < 0 or v.max() > num_timesteps - 1:
    raise ValueError(f"{name} must lie in [0, {num_timesteps - 1}] for a schedule of "
                     f"{num_timesteps} timesteps, got values in [{v.min()}, {v.max()}]")


def extract(coef: jax.Array, t, x: jax.Array) -> jax.Array:
  """``coef[t]`` shaped to broadcast against ``x`` ([B, ...]): scalar t -> scalar,
  [B] t -> [B, 1, ..., 1]."""
  t = jnp.asarray(t)
  check_timesteps(t, coef.shape[-1])
  if t.ndim > 1:
    raise ValueError(f"t must be a scalar or a [B] vector, got shape {t.shape}")
  if t.ndim == 1 and t.shape[0] != x.shape[0]:
    raise ValueError(f"t has {t.shape[0]} entries but x has batch size {x.shape[0]}")
  c = coef[t]
  return c.reshape(c.shape + (1,) * (x.ndim - c.ndim))


def alpha_bar_at(schedule: Schedule, t, final_alpha_bar=1.0) -> jax.Array:
  """alpha_bar at t; any t < 0 ("past the last step") gives ``final_alpha_bar``: 1 for the
  clean data (diffusers' ``set_alpha_to_one=True``), or e.g. ``alphas_cumprod[0]`` as diffusers
  uses with ``set_alpha_to_one=False``. ``final_alpha_bar`` may be an array (traced, or [B])."""
  t = jnp.asarray(t)
  check_timesteps(t, schedule.num_timesteps, allow_negative=True)
  final = jnp.asarray(final_alpha_bar, schedule.alphas_cumprod.dtype)
  return jnp.where(t >= 0, schedule.alphas_cumprod[jnp.maximum(t, 0)], final)


def _bcast(c: jax.Array, x: jax.Array) -> jax.Array:
  return c.reshape(c.shape + (1,) * (x.ndim - c.ndim))


def q_sample(schedule: Schedule, x0: jax.Array, t, noise: jax.Array) -> jax.Array:
  """The forward shortcut x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps.

  Ho et al. 2020, eq. 4 (q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I)).

  Args:
    schedule: the noise schedule.
    x0: clean data [B, ...].
    t: int timesteps, scalar or [B], in [0, T-1].
    noise: standard normal noise shaped like x0.
  Returns:
    x_t shaped like x0.
  """
  if noise.shape != x0.shape:
    raise ValueError(f"noise shape {noise.shape} must equal x0 shape {x0.shape}")
  return (extract(schedule.sqrt_alphas_cumprod, t, x0) * x0
          + extract(schedule.sqrt_one_minus_alphas_cumprod, t, x0) * noise)


def q_mean_variance(schedule: Schedule, x0: jax.Array, t):
  """Mean and variance of q(x_t | x_0) (Ho et al. eq. 4): (sqrt(ab) x0, 1 - ab)."""
  ab = extract(schedule.alphas_cumprod, t, x0)
  return jnp.sqrt(ab) * x0, jnp.broadcast_to(1.0 - ab, jnp.shape(ab))


def q_posterior_mean_variance(schedule: Schedule, x0: jax.Array, x_t: jax.Array, t):
  """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x_0), Ho et al. eq. 6-7:

    mu~ = sqrt(ab_{t-1}) beta_t / (1 - ab_t) x_0 + sqrt(alpha_t) (1 - ab_{t-1}) / (1 - ab_t) x_t
    beta~_t = (1 - ab_{t-1}) / (1 - ab_t) beta_t
  """
  mean = (extract(schedule.posterior_mean_coef1, t, x_t) * x0
          + extract(schedule.posterior_mean_coef2, t, x_t) * x_t)
  return (mean, extract(schedule.posterior_variance, t, x_t),
          extract(schedule.posterior_log_variance_clipped, t, x_t))


def check_prediction_type(prediction_type: str) -> None:
  if prediction_type not in PREDICTION_TYPES:
    raise ValueError(f"unknown prediction_type {prediction_type!r}; expected one of "
                     f"{PREDICTION_TYPES}")


def predict_x0_eps(alpha_bar: jax.Array, x_t: jax.Array, model_output: jax.Array,
                   prediction_type: str):
  """(x0, eps) implied by a model output, given alpha_bar broadcastable to x_t.

  epsilon: x0 = (x_t - sqrt(1 - ab) eps) / sqrt(ab)  (inverse of Ho et al. eq. 4);
  sample: the output is x0; eps = (x_t - sqrt(ab) x0) / sqrt(1 - ab);
  v_prediction (Salimans & Ho 2022, sec. 4): v = sqrt(ab) eps - sqrt(1 - ab) x0, so
  x0 = sqrt(ab) x_t - sqrt(1 - ab) v and eps = sqrt(1 - ab) x_t + sqrt(ab) v.
  """
  check_prediction_type(prediction_type)
  sa, s1 = jnp.sqrt(alpha_bar), jnp.sqrt(1.0 - alpha_bar)
  if prediction_type == "epsilon":
    return (x_t - s1 * model_output) / sa, model_output
  if prediction_type == "sample":
    return model_output, (x_t - sa * model_output) / s1
  return sa * x_t - s1 * model_output, s1 * x_t + sa * model_output


def x0_from_eps(schedule: Schedule, x_t, t, eps):
  return predict_x0_eps(extract(schedule.alphas_cumprod, t, x_t), x_t, eps, "epsilon")[0]


def eps_from_x0(schedule: Schedule, x_t, t, x0):
  return predict_x0_eps(extract(schedule.alphas_cumprod, t, x_t), x_t, x0, "sample")[1]


def v_from_x0_eps(schedule: Schedule, x0, t, eps):
  """The v-prediction target v = sqrt(ab) eps - sqrt(1 - ab) x0 (Salimans & Ho 2022)."""
  ab = extract(schedule.alphas_cumprod, t, x0)
  return jnp.sqrt(ab) * eps - jnp.sqrt(1.0 - ab) * x0


def convert_output(schedule: Schedule, x_t, t, model_output, from_type: str, to_type: str):
  """Converts a model output between ``epsilon``, ``sample`` and ``v_prediction``."""
  check_prediction_type(to_type)
  ab = extract(schedule.alphas_cumprod, t, x_t)
  x0, eps = predict_x0_eps(ab, x_t, model_output, from_type)
  if to_type == "epsilon":
    return eps
  if to_type == "sample":
    return x0
  return jnp.sqrt(ab) * eps - jnp.sqrt(1.0 - ab) * x0
