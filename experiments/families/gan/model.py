"""What the GAN family builds from a config: the two networks, their optimisers, the train
state, the batched generator and the attribute heads of a dataset."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments.families.gan.config import GANConfig, GANSettings
from jaxgen import gan
from jaxgen.batching import map_batched
from jaxgen.nn import StyleDiscriminator, StyleGenerator
from jaxgen.nn.gan import dcgan_from_dict
from jaxgen.nn.stylegan import check_truncation_psi, stylegan_config_from_dict

__all__ = ["attribute_heads", "build_models", "init_state", "make_generate_fn", "optimizers",
           "seed_images"]


def build_models(config: GANConfig, image_shape):
  """(generator, discriminator) from ``config.model`` for images of ``image_shape`` (H, W, C)."""
  fields = dict(config.model)
  arch = fields.pop("arch", None)
  if arch == "dcgan":
    return dcgan_from_dict(fields, image_shape)
  if arch == "stylegan":
    sc = stylegan_config_from_dict(fields, image_shape)
    return StyleGenerator(sc), StyleDiscriminator(sc)
  raise ValueError(f"config.model['arch'] must be 'dcgan' or 'stylegan', got {arch!r}.")


def optimizers(settings: GANSettings):
  """(generator, discriminator) Adam optimisers of the ``gan`` section."""
  def adam(lr):
    return optax.adam(lr, b1=settings.beta1, b2=settings.beta2)
  return adam(settings.g_learning_rate), adam(settings.d_learning_rate)


def init_state(config: GANConfig, generator, discriminator, key) -> gan.GANState:
  """A fresh `jaxgen.gan.GANState` (both networks drawn from `key`, their Adam states, and the
  path-length running mean when ``gan.pl_weight`` > 0)."""
  g_tx, d_tx = optimizers(config.gan)
  return gan.GANState.create(generator, discriminator, key, g_tx=g_tx, d_tx=d_tx,
                             path_length=config.gan.pl_weight > 0)


def make_generate_fn(generator):
  """``generate(variables, z, truncation_psi=1.0, batch_size=256) -> images``.

  z [N, z_dim] -> images [N, H, W, C] clipped to [-1, 1], in chunks of `batch_size` (the last
  padded: one compiled shape for every N). Truncation needs a style-based generator.
  """
  style = isinstance(generator, StyleGenerator)

  @jax.jit
  def run(variables, z, psi):
    x = generator.apply(variables, z, psi) if style else generator.apply(variables, z)
    return jnp.clip(x, -1.0, 1.0)

  def generate(variables, z, truncation_psi=1.0, batch_size: int = 256):
    if style:
      check_truncation_psi(truncation_psi)  # before any work
    elif truncation_psi != 1.0:
      raise ValueError("truncation needs a style-based generator (a mapped w); the DCGAN "
                       "samples z directly: use truncation_psi=1.")
    psi = jnp.float32(truncation_psi)
    return map_batched(lambda chunk: run(variables, chunk, psi), np.asarray(z, np.float32),
                       batch_size=batch_size)

  return generate


def seed_images(generate, variables, z_dim: int, seeds, truncation_psi=1.0) -> np.ndarray:
  """Images [N, H, W, C] for integer seeds [N] (image i depends only on seeds[i]:
  ``z = normal(key(seeds[i]))``)."""
  return generate(variables, gan.latents_from_seeds(np.asarray(seeds), z_dim), truncation_psi)


def attribute_heads(source) -> dict:
  """Classifier heads of a dataset: {name: number of values} of shapes' four attributes,
  else {"label": number of classes}."""
  attrs = getattr(source, "attributes", None)
  if attrs:
    return {name: len(values) for name, values in attrs.items()}
  if not source.num_classes:
    raise ValueError(f"dataset {source.name!r} has no labels: classifier-FID needs them.")
  return {"label": int(source.num_classes)}
