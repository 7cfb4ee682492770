"""A trained autoencoder applied to many images: reconstructions, prior samples, the VAE's
ELBO terms and VQ code indices, each one jitted function mapped over chunks of `CHUNK`
images (`jaxgen.batching.map_batched`: one compile whatever the number of images)."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from experiments.families.autoencoder.config import AutoencoderExperiment
from jaxgen import vae as V
from jaxgen.batching import map_batched
from jaxgen.nn import Autoencoder, AutoencoderConfig

CHUNK = 250  # images per jitted call (the last chunk padded)


def eval_params(config: AutoencoderExperiment, state):
  """(autoencoder params, codebook embedding [K, D] or None): EMA parameters for AE/VAE; for
  VQ models the raw parameters, which the EMA codebook was fitted to."""
  kind = config.autoencoder.kind
  if kind in ("ae", "vae"):
    return state.ema_params, None
  g = state.g if kind == "vqgan" else state
  return g.params["model"], g.embedding()


@functools.lru_cache(maxsize=8)
def functions(model_config: AutoencoderConfig, likelihood: str):
  """The jitted ``(recon, generate, vae_terms, indices)`` of one architecture (cached: a
  second evaluation in the process compiles nothing).

  recon(params, emb, x [B, H, W, C], y [B] | None) -> [B, H, W, C];
  generate(params, z [B, *latent], y) -> [B, H, W, C];
  vae_terms(params, x, y, key, log_scale) -> (neg_elbo [B], nll [B], kl [B, *latent],
    posterior mean [B, *latent]) with one reparameterised sample from ``key``;
  indices(params, emb, x, y) -> code indices [B, h, w].
  """
  model = Autoencoder(model_config)

  @jax.jit
  def recon(params, emb, x, y):
    z = V.encode(model, params, x, y, embedding=emb)
    return V.decode(model, params, z, y, likelihood=likelihood)

  @jax.jit
  def generate(params, z, y):
    return V.decode(model, params, z, y, likelihood=likelihood)

  @jax.jit
  def vae_terms(params, x, y, key, log_scale):
    out = model.apply({"params": params}, x, y, method=Autoencoder.encode)
    mean, logvar = V.split_moments(out)
    z = V.reparameterize(key, mean, logvar)
    dec = model.apply({"params": params}, z, y, method=Autoencoder.decode)
    terms = V.negative_elbo(x, dec, mean, logvar, likelihood=likelihood, log_scale=log_scale)
    kl_dims = 0.5 * (mean * mean + jnp.exp(logvar) - 1.0 - logvar)
    return terms["neg_elbo"], terms["nll"], kl_dims, mean

  @jax.jit
  def indices(params, emb, x, y):
    return V.encode_indices(model, params, x, emb, y)

  return recon, generate, vae_terms, indices


def reconstruct(config: AutoencoderExperiment, model: Autoencoder, state, images,
                labels=None) -> np.ndarray:
  """Reconstructions [N, H, W, C] of ``images`` [N, H, W, C] (``labels`` [N] for a CVAE)."""
  params, emb = eval_params(config, state)
  recon = functions(model.config, config.autoencoder.likelihood)[0]
  return map_batched(lambda x, y: recon(params, emb, x, y), images, labels, batch_size=CHUNK)


def prior_samples(config: AutoencoderExperiment, model: Autoencoder, state, key, num: int,
                  labels=None) -> np.ndarray:
  """VAE decodes [num, H, W, C] of z ~ N(0, I) drawn from ``key`` at once (given ``labels``
  [num] for a CVAE)."""
  params, _ = eval_params(config, state)
  z = np.asarray(V.sample_prior(key, num, model.config.latent_shape))
  generate = functions(model.config, config.autoencoder.likelihood)[1]
  return map_batched(lambda z, y: generate(params, z, y), z, labels, batch_size=CHUNK)


def vae_terms(config: AutoencoderExperiment, model: Autoencoder, params, images, labels,
              key):
  """(neg_elbo [N], nll [N], kl [N, *latent], mean [N, *latent]) of ``images``; every chunk
  uses the same ``key``."""
  a = config.autoencoder
  fn = functions(model.config, a.likelihood)[2]
  return map_batched(lambda x, y: fn(params, x, y, key, a.log_scale), images, labels,
                     batch_size=CHUNK)


def code_indices(model: Autoencoder, params, emb, images) -> np.ndarray:
  """Code indices [N, h, w] of ``images`` under the codebook ``emb`` [K, D]."""
  fn = functions(model.config, "gaussian")[3]
  return map_batched(lambda x: fn(params, emb, x, None), images, batch_size=CHUNK)
