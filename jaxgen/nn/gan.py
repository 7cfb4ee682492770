"""DCGAN generator and discriminator (Radford, Metz, Chintala 2016) and the reconstructor
network of unsupervised latent-direction discovery (Voynov & Babenko 2020).

DCGAN's architecture guidelines (sec. 3 of the paper): strided (transposed) convolutions
instead of pooling, batch normalisation in both networks (not on the generator output nor
the discriminator input), no hidden fully connected layers beyond the projection of z,
ReLU in the generator with tanh at the output, leaky ReLU (0.2) in the discriminator.
Weights are initialised N(0, 0.02) as in the paper.

With ``norm='batch'`` the variables hold a ``batch_stats`` collection: train with
``mutable=['batch_stats']``; with ``train=False`` the running averages are used, so each
sample depends only on its own z (the same seed gives the same image in any batch).
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax.numpy as jnp

__all__ = ["DCGANGenerator", "DCGANDiscriminator", "DirectionReconstructor"]

_INIT = nn.initializers.normal(0.02)
NORMS = ("batch", "none")


def _check_sizes(image_size: int, edge_size: int, who: str) -> int:
  if edge_size < 1 or image_size % edge_size or (image_size // edge_size) & (
      image_size // edge_size - 1):
    raise ValueError(f"{who}: image_size ({image_size}) must be edge size ({edge_size}) times "
                     "a power of two.")
  return int(math.log2(image_size // edge_size))


def _norm(kind: str, train: bool, name: str):
  if kind not in NORMS:
    raise ValueError(f"norm must be one of {NORMS}, got {kind!r}.")
  if kind == "none":
    return lambda x: x
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name=name)


class _DCGANNet(nn.Module):
  """Fields shared by the DCGAN generator and discriminator.

  Attributes:
    image_size: side S of the (generated / judged) images.
    channels: image channels C.
    features: channels of the layer next to the images (the generator's last hidden
      layer, the discriminator's first convolution).
    norm: 'batch' (the paper) or 'none' (needed for gradient penalties on D).
  """
  image_size: int = 8
  channels: int = 1
  features: int = 64
  norm: str = "batch"


class DCGANGenerator(_DCGANNet):
  """z [B, z_dim] -> images [B, S, S, C] in [-1, 1] (tanh).

  z is projected to a ``start_size`` x ``start_size`` x ``features * 2^(n-1)`` tensor, then
  n = log2(S / start_size) transposed 4x4 stride-2 convolutions halve the channels and
  double the side; the last one outputs the image channels.

  Attributes: those of `_DCGANNet` (image_size, channels, features, norm), then
    z_dim: latent size.
    start_size: side of the projected tensor.
  """
  z_dim: int = 64
  start_size: int = 4

  @nn.compact
  def __call__(self, z, train: bool = False):
    if z.ndim != 2 or z.shape[-1] != self.z_dim:
      raise ValueError(f"DCGANGenerator expects z [B, {self.z_dim}], got shape {z.shape}.")
    n = _check_sizes(self.image_size, self.start_size, "DCGANGenerator")
    if n < 1:
      raise ValueError("DCGANGenerator needs image_size > start_size.")
    f = self.features * 2 ** (n - 1)
    s = self.start_size
    x = nn.Dense(s * s * f, kernel_init=_INIT, use_bias=self.norm == "none", name="project")(z)
    x = nn.relu(_norm(self.norm, train, "project_bn")(x.reshape(z.shape[0], s, s, f)))
    for i in range(n - 1):
      f //= 2
      x = nn.ConvTranspose(f, (4, 4), (2, 2), padding="SAME", kernel_init=_INIT,
                           use_bias=self.norm == "none", name=f"up{i}")(x)
      x = nn.relu(_norm(self.norm, train, f"up{i}_bn")(x))
    x = nn.ConvTranspose(self.channels, (4, 4), (2, 2), padding="SAME", kernel_init=_INIT,
                         name="to_image")(x)
    return jnp.tanh(x)


class DCGANDiscriminator(_DCGANNet):
  """images [B, S, S, C] -> logits [B].

  n = log2(S / end_size) 4x4 stride-2 convolutions double the channels from ``features``
  (no normalisation on the first), then a linear layer on the flattened features.

  Attributes: those of `_DCGANNet` (image_size, channels, features, norm), then
    end_size: side of the last feature map.
  """
  end_size: int = 2

  @nn.compact
  def __call__(self, images, train: bool = False):
    shape = (self.image_size, self.image_size, self.channels)
    if images.ndim != 4 or images.shape[1:] != shape:
      raise ValueError(f"DCGANDiscriminator expects images [B, {', '.join(map(str, shape))}], "
                       f"got shape {images.shape}.")
    n = _check_sizes(self.image_size, self.end_size, "DCGANDiscriminator")
    x, f = images, self.features
    for i in range(n):
      x = nn.Conv(f, (4, 4), (2, 2), padding="SAME", kernel_init=_INIT,
                  use_bias=i == 0 or self.norm == "none", name=f"down{i}")(x)
      if i > 0:
        x = _norm(self.norm, train, f"down{i}_bn")(x)
      x = nn.leaky_relu(x, 0.2)
      f *= 2
    return nn.Dense(1, kernel_init=_INIT, name="logit")(x.reshape(x.shape[0], -1))[:, 0]


class DirectionReconstructor(nn.Module):
  """Voynov & Babenko (2020) reconstructor R: from an image pair (G(z), G(z + eps e_k)),
  predicts the direction index k (logits [B, K]) and the shift eps ([B]).

  The pair is concatenated along channels and passed through strided convolutions.

  Attributes:
    num_directions: K.
    features: channels of the first convolution (doubled at each of `num_layers`).
    num_layers: stride-2 convolutions.
  """
  num_directions: int
  features: int = 32
  num_layers: int = 3

  @nn.compact
  def __call__(self, image_a, image_b):
    if image_a.shape != image_b.shape or image_a.ndim != 4:
      raise ValueError(f"DirectionReconstructor needs two image batches of one shape "
                       f"[B, H, W, C], got {image_a.shape} and {image_b.shape}.")
    x = jnp.concatenate([image_a, image_b], axis=-1)
    f = self.features
    for i in range(self.num_layers):
      x = nn.leaky_relu(nn.Conv(f, (3, 3), (2, 2) if min(x.shape[1:3]) > 1 else (1, 1),
                                name=f"conv{i}")(x), 0.2)
      f *= 2
    x = jnp.mean(x, axis=(1, 2))
    x = nn.leaky_relu(nn.Dense(f, name="hidden")(x), 0.2)
    logits = nn.Dense(self.num_directions, name="direction")(x)
    shift = nn.Dense(1, name="shift")(x)[:, 0]
    return logits, shift


def dcgan_from_dict(d: dict, image_shape) -> tuple[DCGANGenerator, DCGANDiscriminator]:
  """A DCGAN pair from a config dict with optional 'generator' / 'discriminator' sub-dicts
  and shared 'z_dim'; image size and channels come from the data."""
  h, w, c = image_shape
  if h != w:
    raise ValueError(f"DCGAN makes square images, the data is {h}x{w}.")
  d = dict(d)
  d.pop("arch", None)
  g = dict(d.pop("generator", {}))
  dd = dict(d.pop("discriminator", {}))
  if d.keys() - {"z_dim"}:
    raise ValueError(f"unknown DCGAN model fields {sorted(d.keys() - {'z_dim'})}; expected "
                     "'z_dim', 'generator', 'discriminator'.")
  if "z_dim" in d:
    g["z_dim"] = d["z_dim"]
  return (DCGANGenerator(image_size=h, channels=c, **g),
          DCGANDiscriminator(image_size=h, channels=c, **dd))
