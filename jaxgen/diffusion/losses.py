"""Training losses and the variational bound.

* :func:`diffusion_loss`: L_simple of Ho et al. 2020 (Algorithm 1, eq. 14), with the target
  chosen by the prediction type (epsilon, x_0 or v; Salimans & Ho 2022 for v).
* :func:`vb_terms_bpd` / :func:`variational_bound_bpd`: the negative ELBO (Ho et al. eq. 5) in
  bits per dimension, with the discretized Gaussian decoder of sec. 3.3, for evaluation.
"""
from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp

from jaxgen.diffusion.process import (check_prediction_type, extract, predict_x0_eps,
                                      q_mean_variance, q_posterior_mean_variance, q_sample,
                                      v_from_x0_eps)
from jaxgen.diffusion.schedules import Schedule


def loss_target(schedule: Schedule, x0, t, noise, prediction_type: str):
  """The regression target of a prediction type: eps, x_0 or v."""
  check_prediction_type(prediction_type)
  if prediction_type == "epsilon":
    return noise
  if prediction_type == "sample":
    return x0
  return v_from_x0_eps(schedule, x0, t, noise)


def example_keys(key: jax.Array, batch_size: int, offset=0) -> jax.Array:
  """One key per example, ``fold_in(key, offset + i)``: the randomness of example i depends on
  its global index only, so a batch split over devices (sharded jit or pmap, where ``offset``
  is the shard's first index) draws exactly what one device would."""
  ids = jnp.asarray(offset, jnp.int32) + jnp.arange(batch_size, dtype=jnp.int32)
  return jax.vmap(jax.random.fold_in, (None, 0))(key, ids)


def sample_t_and_noise(key: jax.Array, shape, num_timesteps: int, offset=0):
  """Per-example t ~ U{0..T-1} [B] and eps ~ N(0, I) [B, ...] from :func:`example_keys`."""
  keys = example_keys(key, shape[0], offset)

  def one(k):
    tk, nk = jax.random.split(k)
    return (jax.random.randint(tk, (), 0, num_timesteps, jnp.int32),
            jax.random.normal(nk, tuple(shape[1:]), jnp.float32))

  return jax.vmap(one)(keys)


def diffusion_loss(model_fn: Callable, schedule: Schedule, x0: jax.Array, key: jax.Array, *,
                   prediction_type: str = "epsilon", example_offset=0) -> jax.Array:
  """L_simple per example (Ho et al. 2020, Algorithm 1):

    t ~ U{0..T-1}, eps ~ N(0, I), x_t = sqrt(ab_t) x_0 + sqrt(1 - ab_t) eps,
    loss = mean over pixels of || target - model_fn(x_t, t) ||^2.

  Args:
    model_fn: ``(x_t [B, ...], t [B] int32) -> output [B, ...]``.
    schedule: the noise schedule.
    x0: clean data [B, ...].
    key: PRNG key; example i draws from ``fold_in(key, example_offset + i)``.
    prediction_type: ``epsilon``, ``sample`` (x_0) or ``v_prediction``.
    example_offset: global index of this batch's first example (data-parallel shards).
  Returns:
    loss [B].
  """
  t, noise = sample_t_and_noise(key, x0.shape, schedule.num_timesteps, example_offset)
  noise = noise.astype(x0.dtype)
  x_t = q_sample(schedule, x0, t, noise)
  target = loss_target(schedule, x0, t, noise, prediction_type)
  out = model_fn(x_t, t)
  return jnp.mean(jnp.square(out - target).reshape(x0.shape[0], -1), axis=-1)


def normal_kl(mean1, logvar1, mean2, logvar2):
  """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) elementwise, in nats."""
  return 0.5 * (-1.0 + logvar2 - logvar1 + jnp.exp(logvar1 - logvar2)
                + jnp.square(mean1 - mean2) * jnp.exp(-logvar2))


def _std_normal_cdf(x):
  return 0.5 * (1.0 + jax.lax.erf(x / math.sqrt(2.0)))


def discretized_gaussian_log_likelihood(x, mean, log_scale, *, num_bins: int = 256):
  """log p(x) of data in [-1, 1] quantized to ``num_bins`` levels under N(mean, e^{2 log_scale})
  integrated over each bin, with open edge bins (Ho et al. 2020, eq. 13)."""
  half = 1.0 / (num_bins - 1)
  inv = jnp.exp(-log_scale)
  cdf_plus = _std_normal_cdf(inv * (x - mean + half))
  cdf_min = _std_normal_cdf(inv * (x - mean - half))
  log_cdf_plus = jnp.log(jnp.maximum(cdf_plus, 1e-12))
  log_one_minus_cdf_min = jnp.log(jnp.maximum(1.0 - cdf_min, 1e-12))
  log_delta = jnp.log(jnp.maximum(cdf_plus - cdf_min, 1e-12))
  return jnp.where(x < -0.999, log_cdf_plus,
                   jnp.where(x > 0.999, log_one_minus_cdf_min, log_delta))


def _mean_bits(x):
  return jnp.mean(x.reshape(x.shape[0], -1), axis=-1) / math.log(2.0)


def prior_bpd(schedule: Schedule, x0):
  """KL(q(x_T | x_0) || N(0, I)) in bits per dimension, [B] (L_T of eq. 5)."""
  t = jnp.full((x0.shape[0],), schedule.num_timesteps - 1, jnp.int32)
  mean, var = q_mean_variance(schedule, x0, t)
  return _mean_bits(normal_kl(mean, jnp.log(var), 0.0, 0.0))


def vb_terms_bpd(schedule: Schedule, x0, x_t, t, model_output, *,
                 prediction_type: str = "epsilon", variance_type: str = "fixed_small",
                 num_bins: int = 256):
  """One term of the variational bound in bits/dim, [B]: L_{t-1} = KL(q(x_{t-1}|x_t,x_0) ||
  p(x_{t-1}|x_t)) for t > 0, and the decoder NLL -log p(x_0|x_1) for t = 0 (eq. 5, 13)."""
  true_mean, _, true_logvar = q_posterior_mean_variance(schedule, x0, x_t, t)
  x0_hat, _ = predict_x0_eps(extract(schedule.alphas_cumprod, t, x_t), x_t, model_output,
                             prediction_type)
  model_mean, _, _ = q_posterior_mean_variance(schedule, jnp.clip(x0_hat, -1, 1), x_t, t)
  if variance_type == "fixed_small":
    model_logvar = extract(schedule.posterior_log_variance_clipped, t, x_t)
  else:
    # beta_t, with beta~_1 in place of beta_0 (the decoder variance), as in Ho et al.'s code.
    lv = jnp.log(jnp.concatenate([schedule.posterior_variance[1:2], schedule.betas[1:]]))
    model_logvar = extract(lv, t, x_t)
  kl = _mean_bits(normal_kl(true_mean, true_logvar, model_mean, model_logvar))
  nll = -_mean_bits(discretized_gaussian_log_likelihood(
      x0, model_mean, 0.5 * model_logvar, num_bins=num_bins))
  return jnp.where(jnp.asarray(t) == 0, nll, kl)


def variational_bound_bpd(model_fn: Callable, schedule: Schedule, x0: jax.Array,
                          key: jax.Array, *, prediction_type: str = "epsilon",
                          variance_type: str = "fixed_small", num_bins: int = 256):
  """The full negative ELBO in bits/dim, [B]: L_T + sum_t L_{t-1} + L_0, one ``lax.scan``
  over all T timesteps (T network evaluations per example)."""
  B = x0.shape[0]

  def body(total, t):
    noise = jax.random.normal(jax.random.fold_in(key, t), x0.shape, x0.dtype)
    t_vec = jnp.full((B,), t, jnp.int32)
    x_t = q_sample(schedule, x0, t_vec, noise)
    term = vb_terms_bpd(schedule, x0, x_t, t_vec, model_fn(x_t, t_vec),
                        prediction_type=prediction_type, variance_type=variance_type,
                        num_bins=num_bins)
    return total + term, None

  total, _ = jax.lax.scan(body, jnp.zeros((B,), jnp.float32),
                          jnp.arange(schedule.num_timesteps, dtype=jnp.int32))
  return total + prior_bpd(schedule, x0)
