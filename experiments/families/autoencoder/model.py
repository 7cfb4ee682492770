"""What the autoencoder family builds from a config: the autoencoder, the discriminator, the
optimisers, the train state, the perceptual network and the jitted train step."""
from __future__ import annotations

import os
from typing import Any, Callable

import jax

from experiments import workdir as W
from experiments.families.autoencoder.config import AutoencoderExperiment
from jaxgen import data as jdata
from jaxgen import vae as V
from jaxgen.nn import (Autoencoder, AutoencoderConfig, PatchDiscriminator,
                       PatchDiscriminatorConfig, init_autoencoder, init_discriminator)
from jaxgen.training import TrainState, make_optimizer

PERCEPTUAL_DIR = "perceptual_classifier"


def build_model(config: AutoencoderExperiment, source: jdata.Source) -> Autoencoder:
  """The autoencoder for ``source``'s images: image size and channels come from the data (an
  explicit mismatch is an error), ``double_latent`` from the kind, ``num_classes`` from the
  labels of a CVAE."""
  a = config.autoencoder
  fields = dict(config.model)
  h, w, c = source.image_shape
  fields.setdefault("image_size", (h, w))
  fields.setdefault("in_channels", c)
  fields["double_latent"] = a.kind == "vae"
  if a.conditional:
    if source.num_classes is None:
      raise ValueError(f"dataset {config.data.name!r} has no labels for a conditional VAE")
    fields["num_classes"] = source.num_classes
  model_config = AutoencoderConfig(**fields)
  if model_config.image_shape != tuple(source.image_shape):
    raise ValueError(f"config model image_size/in_channels give images of shape "
                     f"{model_config.image_shape}, but dataset {config.data.name!r} has "
                     f"{tuple(source.image_shape)}; drop them from config.model (they default "
                     "to the data's)")
  return Autoencoder(model_config)


def build_discriminator(config: AutoencoderExperiment) -> PatchDiscriminator:
  return PatchDiscriminator(PatchDiscriminatorConfig(**config.autoencoder.disc))


def optimizer(config: AutoencoderExperiment, learning_rate: float | None = None):
  """AdamW with ``train``'s schedule and ``autoencoder.adam_b1/b2``."""
  tc, a = config.train, config.autoencoder
  return make_optimizer(learning_rate or tc.learning_rate, warmup_steps=tc.warmup_steps,
                        total_steps=tc.num_steps, decay=tc.lr_decay,
                        weight_decay=tc.weight_decay, grad_clip=tc.grad_clip,
                        b1=a.adam_b1, b2=a.adam_b2)


def init_state(config: AutoencoderExperiment, model: Autoencoder, key: jax.Array, image_shape):
  """A fresh state: `TrainState` (ae, vae), `jaxgen.vae.VQTrainState` (vqvae) or
  `jaxgen.vae.VQGANState` (vqgan); autoencoder, codebook and discriminator parameters come
  from ``jax.random.split(key, 3)``."""
  a = config.autoencoder
  k_model, k_code, k_disc = jax.random.split(key, 3)
  params = init_autoencoder(model, k_model)
  if not a.quantized:
    return TrainState.create(apply_fn=model.apply, params=params, tx=optimizer(config))
  cb = V.init_codebook(k_code, a.num_codes, model.config.latent_channels)
  g = V.VQTrainState.create_vq(apply_fn=model.apply, model_params=params, codebook=cb,
                               tx=optimizer(config), codebook_update=a.codebook_update)
  if a.kind == "vqvae":
    return g
  disc = build_discriminator(config)
  dp = init_discriminator(disc, k_disc, image_shape)
  d = TrainState.create(apply_fn=disc.apply, params=dp,
                        tx=optimizer(config, a.disc_learning_rate))
  return V.VQGANState(g=g, d=d)


def attribute_labels(arrays: dict) -> dict:
  """Every integer attribute of a dataset (shapes: shape, color, size, position), else
  {"label": ...}; each [N] ints."""
  names = [k for k in jdata.SHAPES_ATTRIBUTES if k in arrays]
  return {k: arrays[k] for k in names} if names else {"label": arrays["label"]}


def perceptual_net(config: AutoencoderExperiment, workdir: str) -> V.PerceptualNet | None:
  """VQGAN's perceptual feature network (None for ``autoencoder.perceptual="none"``).

  "classifier" is a small attribute classifier (features (16, 32), embedding 32, key
  ``seed + 2024``) trained on the train split through the training loop and cached in
  ``WORKDIR/perceptual_classifier``; SIGTERM while it trains raises
  `jaxgen.training.Terminated` after its checkpoint, and the next call resumes it.
  """
  a = config.autoencoder
  if a.perceptual == "none":
    return None
  if a.perceptual.startswith("vgg16:"):
    return V.load_vgg16_lpips(a.perceptual[len("vgg16:"):])
  train = jdata.load_all(W.build_source(config, "train"))
  bundle = W.cached_classifier(os.path.join(workdir, PERCEPTUAL_DIR), train["image"],
                               attribute_labels(train), key=jax.random.key(config.seed + 2024),
                               num_steps=a.perceptual_classifier_steps, features=(16, 32),
                               embed_dim=32)
  return V.classifier_feature_net(bundle)


def make_step(config: AutoencoderExperiment, model: Autoencoder, key: jax.Array,
              perceptual: V.PerceptualNet | None = None) -> Callable[[Any, dict], tuple]:
  """``step(state, batch) -> (state, metrics)`` for the kind, jitted with the state donated,
  every step drawing from ``key`` (the library steps fold in the step number).

  VQGAN is its two steps in turn, the generator's (with ``perceptual``, replicated like the
  state) then the discriminator's on the generator's reconstructions, metrics merged. VQ
  kinds add ``restarted_total``: dead codes restarted since this process started the loop,
  summed on device every step (not only the logged ones).
  """
  a, tc = config.autoencoder, config.train
  ema_kw = dict(ema_decay=tc.ema_decay, ema_warmup=tc.ema_warmup)
  if not a.quantized:
    ae_step = jax.jit(V.make_autoencoder_step(
        model, kind=a.kind, likelihood=a.likelihood, log_scale=a.log_scale, beta=a.beta,
        kl_warmup_steps=a.kl_warmup_steps, **ema_kw), donate_argnums=0)
    return lambda state, batch: ae_step(state, batch, key)
  vq_kw = dict(beta=a.vq_beta, codebook_update=a.codebook_update,
               codebook_decay=a.codebook_decay, dead_threshold=a.dead_threshold,
               rec_loss=a.pixel_loss, **ema_kw)
  if a.kind == "vqvae":
    vq_step = jax.jit(V.make_vq_step(model, **vq_kw), donate_argnums=0)

    def inner(state, batch):
      return vq_step(state, batch, key)
  else:
    g_step, d_step = V.make_vqgan_steps(
        model, build_discriminator(config), disc_start=a.disc_start, disc_weight=a.disc_weight,
        perceptual_weight=a.perceptual_weight, **vq_kw)
    g_step, d_step = jax.jit(g_step, donate_argnums=0), jax.jit(d_step, donate_argnums=0)

    def inner(state, batch):
      g, gm, x_rec = g_step(state.g, state.d.params, batch, key, perceptual)
      d, dm = d_step(state.d, batch, x_rec)
      return V.VQGANState(g=g, d=d), dict(gm, **dm)

  restarts = 0

  def step(state, batch):
    nonlocal restarts
    state, metrics = inner(state, batch)
    if "restarted" in metrics:
      restarts = restarts + metrics["restarted"]
      metrics = dict(metrics, restarted_total=restarts)
    return state, metrics

  return step
