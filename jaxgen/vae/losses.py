"""Losses of the autoencoder family: reconstruction, VAE ELBO terms, GAN hinge, VQGAN weight.

All functions are pure and take model outputs (never a module). Per-example functions
return `[B]` arrays summed over the example's dimensions, so that ELBOs are in nats per
example; the train steps average them over the batch.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

LIKELIHOODS = ("gaussian", "bernoulli")


def _per_example_sum(x: jax.Array) -> jax.Array:
  return jnp.sum(x.reshape(x.shape[0], -1), axis=-1)


def reconstruction_error(x: jax.Array, x_hat: jax.Array, kind: str = "mse") -> jax.Array:
  """Mean squared ("mse") or absolute ("l1") error per example (the AE loss of Hinton &
  Salakhutdinov 2006 is the mean of the squared error).

  Args:
    x: targets [B, ...].
    x_hat: reconstructions [B, ...].
    kind: "mse" or "l1".
  Returns:
    [B] mean over each example's dimensions.
  """
  if x.shape != x_hat.shape:
    raise ValueError(f"reconstruction_error: shapes differ, {x.shape} vs {x_hat.shape}")
  d = x_hat - x
  if kind == "mse":
    e = d * d
  elif kind == "l1":
    e = jnp.abs(d)
  else:
    raise ValueError(f"unknown reconstruction error {kind!r}; expected 'mse' or 'l1'")
  return jnp.mean(e.reshape(e.shape[0], -1), axis=-1)


def split_moments(moments: jax.Array) -> tuple[jax.Array, jax.Array]:
  """[..., 2L] encoder output -> (mean [..., L], log-variance [..., L])."""
  if moments.shape[-1] % 2:
    raise ValueError(f"Gaussian moments need an even last axis (mean, log-variance), got "
                     f"{moments.shape}")
  mean, logvar = jnp.split(moments, 2, axis=-1)
  return mean, logvar


def reparameterize(key: jax.Array, mean: jax.Array, logvar: jax.Array) -> jax.Array:
  """z = mean + exp(logvar / 2) * eps, eps ~ N(0, I) (Kingma & Welling 2014, eq. 10)."""
  eps = jax.random.normal(key, mean.shape, mean.dtype)
  return mean + jnp.exp(0.5 * logvar) * eps


def gaussian_kl(mean: jax.Array, logvar: jax.Array) -> jax.Array:
  """KL(N(mean, exp(logvar)) || N(0, I)) per example, in nats.

  Kingma & Welling 2014, appendix B: -KL = 1/2 sum_j (1 + log sigma_j^2 - mu_j^2 - sigma_j^2).

  Args:
    mean, logvar: [B, ...] diagonal Gaussian parameters.
  Returns:
    [B] summed over the latent dimensions.
  """
  kl = 0.5 * (mean * mean + jnp.exp(logvar) - 1.0 - logvar)
  return _per_example_sum(kl)


def gaussian_nll(x: jax.Array, mean: jax.Array, log_scale: jax.Array | float) -> jax.Array:
  """-log N(x; mean, sigma^2 I) per example, in nats, with sigma = exp(log_scale) (a scalar or
  an array broadcastable to x).

  Returns:
    [B] = sum_i [ (x_i - mean_i)^2 / (2 sigma^2) + log sigma + log(2 pi) / 2 ].
  """
  log_scale = jnp.broadcast_to(jnp.asarray(log_scale, x.dtype), x.shape)
  z = (x - mean) * jnp.exp(-log_scale)
  return _per_example_sum(0.5 * z * z + log_scale + 0.5 * math.log(2 * math.pi))


def bernoulli_nll(x: jax.Array, logits: jax.Array) -> jax.Array:
  """-log Bernoulli(t; sigmoid(logits)) per example with targets t = (x + 1) / 2 in [0, 1].

  For binary data this is an exact negative log-likelihood; for grey levels it is the
  cross-entropy used by Kingma & Welling's MNIST experiments (not a normalised density).

  Returns:
    [B] summed over the pixels.
  """
  t = (x + 1.0) * 0.5
  return _per_example_sum(optax.sigmoid_binary_cross_entropy(logits, t))


def likelihood_mean(output: jax.Array, likelihood: str) -> jax.Array:
  """The decoder's mean image in [-1, 1] scale: the Gaussian mean, or 2 sigmoid(logits) - 1."""
  if likelihood == "gaussian":
    return output
  if likelihood == "bernoulli":
    return 2.0 * jax.nn.sigmoid(output) - 1.0
  raise ValueError(f"unknown likelihood {likelihood!r}; expected one of {LIKELIHOODS}")


def negative_log_likelihood(x: jax.Array, output: jax.Array, likelihood: str,
                            log_scale: float = 0.0) -> jax.Array:
  """[B] -log p(x | z) in nats for the decoder `output` (Gaussian mean or Bernoulli logits)."""
  if likelihood == "gaussian":
    return gaussian_nll(x, output, log_scale)
  if likelihood == "bernoulli":
    return bernoulli_nll(x, output)
  raise ValueError(f"unknown likelihood {likelihood!r}; expected one of {LIKELIHOODS}")


def negative_elbo(x: jax.Array, output: jax.Array, mean: jax.Array, logvar: jax.Array, *,
                  likelihood: str = "gaussian", log_scale: float = 0.0,
                  beta: jax.Array | float = 1.0) -> dict[str, jax.Array]:
  """The (beta-weighted) negative ELBO per example (Kingma & Welling 2014, eq. 3;
  Higgins et al. 2017 for beta): -E_q[log p(x|z)] + beta KL(q(z|x) || p(z)), with the
  expectation estimated by the one sample that produced `output`.

  Returns:
    dict of [B]: "nll", "kl", "loss" (nll + beta kl) and "neg_elbo" (nll + kl, beta = 1).
  """
  nll = negative_log_likelihood(x, output, likelihood, log_scale)
  kl = gaussian_kl(mean, logvar)
  return {"nll": nll, "kl": kl, "loss": nll + beta * kl, "neg_elbo": nll + kl}


def bits_per_dim(neg_log_likelihood: jax.Array, num_dims: int, bin_width: float | None = None
                 ) -> jax.Array:
  """Nats per example -> bits per dimension.

  A continuous density on data quantised to bins of width `bin_width` (in the [-1, 1]
  scale: 2 / 255 for 8-bit images) gives the discrete probability ~ density * bin_width
  per dimension, hence bpd = (nll - D log bin_width) / (D log 2). Pass None for a discrete
  likelihood (e.g. Bernoulli), which needs no correction.
  """
  nll = neg_log_likelihood
  if bin_width is not None:
    nll = nll - num_dims * math.log(bin_width)
  return nll / (num_dims * math.log(2.0))


def kl_weight(step: jax.Array, beta: float, warmup_steps: int = 0) -> jax.Array:
  """beta-VAE weight with linear KL warm-up (Bowman et al. 2016; Sønderby et al. 2016):
  beta * min(1, step / warmup_steps), or beta when warmup_steps == 0.

  Raises:
    ValueError: beta < 0 or warmup_steps < 0.
  """
  check_beta(beta)
  if warmup_steps < 0:
    raise ValueError(f"KL warm-up steps must be >= 0, got {warmup_steps}")
  if warmup_steps == 0:
    return jnp.asarray(beta, jnp.float32)
  frac = jnp.minimum(1.0, jnp.asarray(step, jnp.float32) / warmup_steps)
  return jnp.float32(beta) * frac


def check_beta(beta: float, name: str = "beta") -> None:
  if not isinstance(beta, (int, float)) or not math.isfinite(beta) or beta < 0:
    raise ValueError(f"{name} must be a finite number >= 0, got {beta!r}")


# ---------------------------------------------------------------------------------------
# Adversarial terms (VQGAN, Esser et al. 2021)


def hinge_d_loss(logits_real: jax.Array, logits_fake: jax.Array) -> jax.Array:
  """Hinge discriminator loss (Lim & Ye 2017; VQGAN):
  1/2 (E[relu(1 - D(x))] + E[relu(1 + D(x_hat))])."""
  return 0.5 * (jnp.mean(jax.nn.relu(1.0 - logits_real)) + jnp.mean(jax.nn.relu(1.0 + logits_fake)))


def hinge_g_loss(logits_fake: jax.Array) -> jax.Array:
  """The generator's adversarial loss for the hinge game: -E[D(x_hat)]."""
  return -jnp.mean(logits_fake)


def adaptive_weight(rec_loss_fn: Callable[[Any], jax.Array],
                    gan_loss_fn: Callable[[Any], jax.Array], last_layer: Any, *,
                    eps: float = 1e-4, max_weight: float = 1e4,
                    axis_name: str | None = None) -> jax.Array:
  """VQGAN's adaptive weight (Esser et al. 2021, eq. 7):
  lambda = ||grad_{G_L} L_rec|| / (||grad_{G_L} L_GAN|| + eps), where G_L is the decoder's
  last layer, clipped to [0, max_weight] and treated as a constant (stop-gradient).

  Args:
    rec_loss_fn: last_layer -> scalar reconstruction (+ perceptual) loss.
    gan_loss_fn: last_layer -> scalar generator adversarial loss.
    last_layer: the parameters of the last layer (a kernel array or a pytree).
    eps: the 1e-4 of the paper.
    max_weight: upper clip, as in the reference code.
    axis_name: under pmap, average both gradients over this axis first (the global-batch
      gradients, as under sharded jit).
  Returns:
    Scalar lambda.
  """
  g_rec = jax.grad(rec_loss_fn)(last_layer)
  g_gan = jax.grad(gan_loss_fn)(last_layer)
  if axis_name is not None:
    g_rec, g_gan = jax.lax.pmean((g_rec, g_gan), axis_name)
  lam = optax.global_norm(g_rec) / (optax.global_norm(g_gan) + eps)
  return jax.lax.stop_gradient(jnp.clip(lam, 0.0, max_weight))
