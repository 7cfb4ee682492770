"""Contrastive image-text losses: CLIP's symmetric InfoNCE and SigLIP's pairwise sigmoid loss.

Both take the features of matching image-text pairs (row i of ``image_features`` belongs with
row i of ``text_features``) and use every other pair of the **global** batch as negatives. Under
`jax.jit` with the batch sharded over a mesh, XLA gathers the features itself; inside
``shard_map`` / ``pmap`` pass ``axis_name``: the other devices' features are all-gathered and
each device scores its own rows against the whole batch, so the loss equals the one-device
loss of the concatenated batch.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

__all__ = ["clip_logits", "clip_loss", "normalize", "siglip_loss", "MAX_LOGIT_SCALE"]

MAX_LOGIT_SCALE = 100.0  # Radford et al. 2021, sec. 2.5: the temperature is clipped at 100


def normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  """x / ||x|| over the last axis, in at least float32 (bfloat16 / float16 inputs are computed
  and returned in float32, float64 ones in float64)."""
  x = jnp.asarray(x)
  x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps))


def _gather(x: jax.Array, axis_name):
  """([N, D] rows of the whole batch, offset of this device's rows in it)."""
  if axis_name is None:
    return x, 0
  return (jax.lax.all_gather(x, axis_name, tiled=True),
          jax.lax.axis_index(axis_name) * x.shape[0])


def clip_logits(image_features, text_features, log_scale) -> jax.Array:
  """``exp(log_scale) * cos(image_i, text_j)`` [B_img, B_txt], the scale clipped at 100
  (CLIP's ``logits_per_image``; its transpose is ``logits_per_text``)."""
  scale = jnp.minimum(jnp.exp(jnp.asarray(log_scale, jnp.float32)), MAX_LOGIT_SCALE)
  return scale * normalize(image_features) @ normalize(text_features).T


def clip_loss(image_features, text_features, log_scale, *, axis_name=None) -> jax.Array:
  """Symmetric InfoNCE (Radford et al. 2021, Fig. 3): the mean of the cross-entropy of each
  image against all texts and of each text against all images, the matching pair the label.

  Args:
    image_features: [B, D] (this device's rows under ``axis_name``).
    text_features: [B, D], row i matching image row i.
    log_scale: the learned log temperature (scalar).
    axis_name: the mapped data axis inside ``shard_map`` / ``pmap``; None for the whole batch.

  Returns:
    The scalar loss over the global batch (the same on every device).
  """
  if image_features.shape != text_features.shape or image_features.ndim != 2:
    raise ValueError(f"clip_loss needs image and text features of one shape [B, D], got "
                     f"{image_features.shape} and {text_features.shape}")
  all_img, offset = _gather(image_features, axis_name)
  all_txt, _ = _gather(text_features, axis_name)
  labels = offset + jnp.arange(image_features.shape[0])
  per_image = optax.softmax_cross_entropy_with_integer_labels(
      clip_logits(image_features, all_txt, log_scale), labels)      # [b] rows vs all texts
  per_text = optax.softmax_cross_entropy_with_integer_labels(
      clip_logits(text_features, all_img, log_scale), labels)       # [b] rows vs all images
  loss = 0.5 * (jnp.mean(per_image) + jnp.mean(per_text))
  return loss if axis_name is None else jax.lax.pmean(loss, axis_name)


def siglip_loss(image_features, text_features, log_scale, bias, *, axis_name=None) -> jax.Array:
  """Pairwise sigmoid loss (Zhai et al. 2023, "Sigmoid Loss for Language Image Pre-Training",
  Algorithm 1): ``-1/B sum_ij log sigmoid(z_ij (t cos_ij + b))`` with z = +1 for matching pairs
  and -1 for all others, t = exp(log_scale).

  Args: as `clip_loss`, plus the learned scalar ``bias`` b. Returns the scalar loss.
  """
  if image_features.shape != text_features.shape or image_features.ndim != 2:
    raise ValueError(f"siglip_loss needs image and text features of one shape [B, D], got "
                     f"{image_features.shape} and {text_features.shape}")
  all_txt, offset = _gather(text_features, axis_name)
  b = image_features.shape[0]
  logits = (jnp.exp(jnp.asarray(log_scale, jnp.float32))
            * normalize(image_features) @ normalize(all_txt).T + bias)   # [b, N]
  z = jnp.where(jnp.arange(all_txt.shape[0])[None, :] == (offset + jnp.arange(b))[:, None],
                1.0, -1.0)
  loss = -jnp.sum(jax.nn.log_sigmoid(z * logits)) / b
  return loss if axis_name is None else jax.lax.pmean(loss, axis_name)
