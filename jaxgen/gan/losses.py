"""GAN losses on discriminator logits, and the R1 gradient penalty.

D(x) = sigmoid(logit(x)). Every loss takes logits and returns per-example values [B]
(average them yourself), written with softplus for stability:
  log D = -softplus(-l),  log(1 - D) = -softplus(l).

References:
  Goodfellow et al. (2014), "Generative Adversarial Nets", eq. 1 (minimax value function)
    and sec. 3 (the non-saturating generator objective max log D(G(z))).
  Lim & Ye (2017), "Geometric GAN"; Miyato et al. (2018), "Spectral Normalization", eq. 16-17
    (hinge loss).
  Mescheder, Geiger, Nowozin (2018), "Which Training Methods for GANs do actually Converge?",
    eq. 9 (R1 = gamma/2 E_real ||grad_x D(x)||^2).
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

__all__ = ["d_loss_logistic", "g_loss_minimax", "g_loss_nonsaturating", "d_loss_hinge",
           "g_loss_hinge", "r1_penalty", "path_lengths", "LOSSES", "get_losses"]


def d_loss_logistic(real_logits, fake_logits):
  """-log D(x) - log(1 - D(G(z))): the discriminator side of the minimax game (eq. 1),
  shared by the minimax and non-saturating GANs.

  Args:
    real_logits: [B] logits on real images.
    fake_logits: [B] logits on generated images.

  Returns:
    [B] softplus(-real) + softplus(fake).
  """
  return jax.nn.softplus(-real_logits) + jax.nn.softplus(fake_logits)


def g_loss_minimax(fake_logits):
  """log(1 - D(G(z))): the generator minimises the value function itself (eq. 1); its gradient
  vanishes when D confidently rejects samples (early training).

  Returns:
    [B] -softplus(fake).
  """
  return -jax.nn.softplus(fake_logits)


def g_loss_nonsaturating(fake_logits):
  """-log D(G(z)): the non-saturating generator loss (Goodfellow et al. 2014, sec. 3).

  Returns:
    [B] softplus(-fake).
  """
  return jax.nn.softplus(-fake_logits)


def d_loss_hinge(real_logits, fake_logits):
  """max(0, 1 - D(x)) + max(0, 1 + D(G(z))) (hinge loss, on raw logits).

  Returns:
    [B] relu(1 - real) + relu(1 + fake).
  """
  return jax.nn.relu(1.0 - real_logits) + jax.nn.relu(1.0 + fake_logits)


def g_loss_hinge(fake_logits):
  """-D(G(z)) (hinge-loss generator).

  Returns:
    [B] -fake.
  """
  return -fake_logits


def r1_penalty(logit_fn: Callable[[jax.Array], jax.Array], images) -> jax.Array:
  """||grad_x logit(x)||^2 per real image (Mescheder et al. 2018, eq. 9, without gamma/2).

  The gradient of sum_i logit(x_i) is taken with respect to the batch, which equals the
  per-example gradients when the discriminator treats examples independently (true without
  batch normalisation or minibatch statistics; with them it is the usual implementation).

  Args:
    logit_fn: images [B, H, W, C] -> logits [B].
    images: [B, H, W, C] real images.

  Returns:
    [B] squared gradient norms. The regulariser is gamma / 2 * mean of this.
  """
  grads = jax.grad(lambda x: jnp.sum(logit_fn(x)))(images)
  return jnp.sum(jnp.square(grads).reshape(grads.shape[0], -1), axis=1)


def path_lengths(synthesis_fn: Callable[[jax.Array], jax.Array], ws, key) -> jax.Array:
  """||J_w^T y|| per sample, the quantity of the path-length regulariser (Karras et al. 2020,
  "Analyzing and Improving the Image Quality of StyleGAN", eq. 4).

  J_w is the Jacobian of the synthesis at ``ws`` and y ~ N(0, I) / sqrt(H W) an image-sized
  random direction (the 1 / sqrt(H W) makes the length independent of the resolution, as in
  the paper's implementation). With one w per layer the squared gradient is summed over w_dim
  and averaged over the layers before the square root. The regulariser is
  E[(||J_w^T y|| - a)^2] with a an exponential moving average of the lengths.

  Args:
    synthesis_fn: ws [B, L, D] -> images [B, H, W, C]; examples must not interact.
    ws: [B, L, D] latents.
    key: PRNG key of y.

  Returns:
    [B] lengths (differentiable with respect to anything `synthesis_fn` closes over).
  """
  images, vjp = jax.vjp(synthesis_fn, ws)
  h, w = images.shape[1:3]
  y = jax.random.normal(key, images.shape, images.dtype) / jnp.sqrt(jnp.float32(h * w))
  (grads,) = vjp(y)
  return jnp.sqrt(jnp.mean(jnp.sum(jnp.square(grads), axis=-1), axis=-1))


# name -> (d_loss(real_logits, fake_logits) -> [B], g_loss(fake_logits) -> [B])
LOSSES = {
    "minimax": (d_loss_logistic, g_loss_minimax),
    "nonsaturating": (d_loss_logistic, g_loss_nonsaturating),
    "hinge": (d_loss_hinge, g_loss_hinge),
}


def get_losses(name: str):
  """(d_loss, g_loss) of loss `name` in :data:`LOSSES`."""
  if name not in LOSSES:
    raise ValueError(f"unknown GAN loss {name!r}; expected one of {sorted(LOSSES)}.")
  return LOSSES[name]
