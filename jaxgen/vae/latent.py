"""Latent tools for the autoencoders (and for latent diffusion built on them): `encode` /
`decode`, a latent scaling factor estimated from data, lerp / slerp interpolation and
sampling from the prior."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.nn.autoencoder import Autoencoder
from jaxgen.vae.losses import likelihood_mean, reparameterize, split_moments
from jaxgen.vae.quantizer import nearest_code


def encode(model: Autoencoder, params: Any, x: jax.Array, label: jax.Array | None = None, *,
           key: jax.Array | None = None, embedding: jax.Array | None = None) -> jax.Array:
  """Images -> latents.

  AE: the encoder output. VAE (`double_latent`): the posterior mean, or a sample
  z ~ q(z|x) when `key` is given. VQ (`embedding` [K, D] given): the quantised latent e_k.

  Args:
    model: the `Autoencoder`.
    params: its parameters (`variables["params"]`).
    x: images [B, H, W, C] in [-1, 1].
    label: [B] int for conditional models.
    key: sample from the VAE posterior instead of taking its mean.
    embedding: the VQ codebook.
  Returns:
    [B, *latent_shape].
  """
  out = model.apply({"params": params}, x, label, method=Autoencoder.encode)
  if model.config.double_latent:
    mean, logvar = split_moments(out)
    return mean if key is None else reparameterize(key, mean, logvar)
  if embedding is not None:
    return jnp.take(embedding, nearest_code(out, embedding), axis=0)
  return out


def encode_indices(model: Autoencoder, params: Any, x: jax.Array, embedding: jax.Array,
                   label: jax.Array | None = None) -> jax.Array:
  """Images -> VQ code indices [B, h, w] (int32)."""
  z_e = model.apply({"params": params}, x, label, method=Autoencoder.encode)
  return nearest_code(z_e, embedding)


def decode(model: Autoencoder, params: Any, z: jax.Array, label: jax.Array | None = None, *,
           likelihood: str = "gaussian", clip: bool = True) -> jax.Array:
  """Latents [B, *latent_shape] -> mean images [B, H, W, C] (clipped to [-1, 1] by default)."""
  out = likelihood_mean(model.apply({"params": params}, z, label, method=Autoencoder.decode),
                        likelihood)
  return jnp.clip(out, -1.0, 1.0) if clip else out


def decode_indices(model: Autoencoder, params: Any, indices: jax.Array, embedding: jax.Array,
                   label: jax.Array | None = None, *, clip: bool = True) -> jax.Array:
  """VQ code indices [B, h, w] -> images."""
  return decode(model, params, jnp.take(embedding, indices, axis=0), label, clip=clip)


def latent_scaling_factor(latents: Any) -> float:
  """1 / std of latents (all entries pooled), so that `factor * z` has unit variance, the
  `scale_factor` of latent diffusion (Rombach et al. 2022, section 4.3.2 / appendix G).

  Args:
    latents: [N, ...] latents of a sample of training images (e.g. from `encode`).
  Raises:
    ValueError: fewer than two values, or constant latents.
  """
  z = np.asarray(latents, np.float64).reshape(-1)
  if z.size < 2:
    raise ValueError("latent_scaling_factor needs at least two latent values")
  std = float(np.std(z))
  if not std > 0:
    raise ValueError("latents are constant: the scaling factor 1/std is undefined")
  return 1.0 / std


def lerp(a: jax.Array, b: jax.Array, t: jax.Array) -> jax.Array:
  """Linear interpolation (1 - t) a + t b for each t.

  Args:
    a, b: latents of the same shape S.
    t: [T] interpolation weights.
  Returns:
    [T, *S].
  """
  t = jnp.asarray(t, jnp.float32).reshape((-1,) + (1,) * a.ndim)
  return (1.0 - t) * a[None] + t * b[None]


def slerp(a: jax.Array, b: jax.Array, t: jax.Array, eps: float = 1e-7) -> jax.Array:
  """Spherical interpolation (Shoemake 1985; White 2016 for generative latents):
  sin((1 - t) w) / sin(w) a + sin(t w) / sin(w) b with w the angle between a and b
  (flattened); falls back to lerp for (anti)parallel vectors.

  Args:
    a, b: latents of the same shape S.
    t: [T] interpolation weights.
  Returns:
    [T, *S].
  """
  if a.shape != b.shape:
    raise ValueError(f"slerp: shapes differ, {a.shape} vs {b.shape}")
  af, bf = a.reshape(-1), b.reshape(-1)
  cos = jnp.dot(af, bf) / (jnp.linalg.norm(af) * jnp.linalg.norm(bf) + eps)
  omega = jnp.arccos(jnp.clip(cos, -1.0, 1.0))
  t = jnp.asarray(t, jnp.float32).reshape((-1,) + (1,) * a.ndim)
  so = jnp.sin(omega)
  safe = so > eps
  wa = jnp.where(safe, jnp.sin((1.0 - t) * omega) / jnp.where(safe, so, 1.0), 1.0 - t)
  wb = jnp.where(safe, jnp.sin(t * omega) / jnp.where(safe, so, 1.0), t)
  return wa * a[None] + wb * b[None]


def sample_prior(key: jax.Array, num: int, latent_shape: tuple[int, ...]) -> jax.Array:
  """z ~ N(0, I): the VAE prior p(z). Returns [num, *latent_shape]."""
  return jax.random.normal(key, (num,) + tuple(latent_shape), jnp.float32)


def sample_codes_uniform(key: jax.Array, num: int, grid: tuple[int, ...], num_codes: int
                         ) -> jax.Array:
  """Code indices drawn uniformly, the VQ-VAE's training-time prior (van den Oord et al.
  2017, section 3.2). Real samples need a learned prior over codes (e.g. a transformer).
  Returns [num, *grid] int32."""
  return jax.random.randint(key, (num,) + tuple(grid), 0, num_codes, jnp.int32)
