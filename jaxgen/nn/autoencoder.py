"""Convolutional and MLP encoder/decoder family for AE, VAE, CVAE, VQ-VAE and VQGAN.

The convolutional variant follows the layout of the VQGAN / latent-diffusion autoencoder
(Esser et al. 2021; Rombach et al. 2022): `conv_in`, one level per entry of
`block_out_channels` (residual blocks, a stride-2 conv between levels), a middle block
(residual, optional self-attention at the lowest resolution, residual), then group norm,
SiLU and a 3x3 conv to the latent. The decoder mirrors it with nearest-neighbour 2x
upsampling. The MLP variant (Kingma & Welling 2014, appendix C) flattens the image.
The "kl" variant is `jaxgen.nn.AutoencoderKL` (diffusers' layout, exactly: its parameters
under `params["kl"]` save as a diffusers `vae/` folder with `save_diffusers_autoencoder_kl`);
the encoder's moments come from its `quant_conv`, the decoder is one piece (no separate
last layer, so no VQGAN adaptive weight) and it is unconditional.

The decoder's last layer is a separate submodule (`decoder_out`), so that its parameters
are one subtree: VQGAN's adaptive weight takes gradients with respect to it.

Latents are `[B, H/f, W/f, latent_channels]` (conv, `f = 2 ** (levels - 1)`) or
`[B, latent_channels]` (mlp). With `double_latent` the encoder returns the Gaussian
moments `[..., 2 * latent_channels]` (mean, then log-variance). With `num_classes` the
model is conditional (CVAE, Sohn et al. 2015): a one-hot label is appended to the
encoder's input and to the decoder's input as constant channels (conv) or features (mlp).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxgen.nn.autoencoder_kl import AutoencoderKL, AutoencoderKLConfig
from jaxgen.nn.init import init_from_shapes, module_param_shapes
from jaxgen.nn.layers import (AttentionBlock, Downsample2D, GroupNorm, ResnetBlock2D,
                              Upsample2D)

ARCHITECTURES = ("conv", "mlp", "kl")


@dataclasses.dataclass(frozen=True)
class AutoencoderConfig:
  """Architecture of an `Autoencoder`.

  Attributes:
    image_size: (H, W) of the images (int for square).
    in_channels: image channels.
    latent_channels: channels of the latent map (conv) or latent dimension (mlp); for a
      VQ model, the code dimension.
    architecture: "conv", "mlp" or "kl" (`AutoencoderKL`, see `kl_config`).
    block_out_channels: channels per resolution level (conv, kl); len - 1 downsamplings.
    layers_per_block: residual blocks per level (conv, kl; kl's decoder has one more, as
      diffusers').
    norm_num_groups: GroupNorm groups (conv, kl); must divide every channel count.
    mid_attention: self-attention in the middle block, at the lowest resolution (conv, kl).
    attention_heads: heads of that attention (conv; kl's has one head, as diffusers').
    mlp_hidden: hidden widths of the MLP encoder (the decoder uses them reversed).
    double_latent: the encoder outputs mean and log-variance (VAE).
    num_classes: number of labels for a conditional model, or None.
    out_channels: decoder output channels (default: in_channels).
  """
  image_size: Any = 32
  in_channels: int = 3
  latent_channels: int = 4
  architecture: str = "conv"
  block_out_channels: tuple[int, ...] = (32, 64)
  layers_per_block: int = 1
  norm_num_groups: int = 8
  mid_attention: bool = False
  attention_heads: int = 1
  mlp_hidden: tuple[int, ...] = (256, 128)
  double_latent: bool = False
  num_classes: int | None = None
  out_channels: int | None = None

  def __post_init__(self):
    size = self.image_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    object.__setattr__(self, "image_size", tuple(int(s) for s in size))
    object.__setattr__(self, "block_out_channels", tuple(int(c) for c in self.block_out_channels))
    object.__setattr__(self, "mlp_hidden", tuple(int(c) for c in self.mlp_hidden))
    if self.architecture not in ARCHITECTURES:
      raise ValueError(f"AutoencoderConfig: unknown architecture {self.architecture!r}; "
                       f"expected one of {ARCHITECTURES}")
    if not isinstance(self.latent_channels, int) or self.latent_channels < 1:
      raise ValueError(f"AutoencoderConfig: latent_channels must be a positive int (the latent "
                       f"size), got {self.latent_channels!r}")
    if self.in_channels < 1 or len(self.image_size) != 2 or min(self.image_size) < 1:
      raise ValueError(f"AutoencoderConfig: need in_channels >= 1 and a positive (H, W) "
                       f"image_size, got {self.in_channels}, {self.image_size}")
    if self.num_classes is not None and self.num_classes < 2:
      raise ValueError(f"AutoencoderConfig: num_classes must be None or >= 2, got "
                       f"{self.num_classes}")
    if self.architecture == "kl" and self.num_classes is not None:
      raise ValueError("AutoencoderConfig: architecture='kl' is unconditional (num_classes "
                       "must be None); use architecture='conv' for a CVAE")
    if self.architecture in ("conv", "kl"):
      if not self.block_out_channels or min(self.block_out_channels) < 1:
        raise ValueError("AutoencoderConfig: block_out_channels needs at least one positive "
                         f"channel count, got {self.block_out_channels}")
      if self.layers_per_block < 1:
        raise ValueError(f"AutoencoderConfig: layers_per_block must be >= 1, got "
                         f"{self.layers_per_block}")
      bad = [c for c in self.block_out_channels if c % self.norm_num_groups]
      if bad:
        raise ValueError(f"AutoencoderConfig: norm_num_groups={self.norm_num_groups} must divide "
                         f"every entry of block_out_channels={self.block_out_channels}")
      f = self.downsample_factor
      h, w = self.image_size
      if h % f or w % f:
        raise ValueError(
            f"AutoencoderConfig: a {h}x{w} image cannot pass {len(self.block_out_channels)} "
            f"levels (each side must be a multiple of the downsampling factor {f}); use an "
            "image size divisible by it or fewer block_out_channels")
    elif not self.mlp_hidden or min(self.mlp_hidden) < 1:
      raise ValueError(f"AutoencoderConfig: mlp_hidden needs positive widths, got "
                       f"{self.mlp_hidden}")

  @property
  def downsample_factor(self) -> int:
    return 2 ** (len(self.block_out_channels) - 1) if self.architecture != "mlp" else 1

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return self.image_size + (self.in_channels,)

  @property
  def latent_shape(self) -> tuple[int, ...]:
    """Shape of one latent (without batch axis), e.g. (4, 4, 8) or (16,)."""
    if self.architecture == "mlp":
      return (self.latent_channels,)
    f = self.downsample_factor
    return (self.image_size[0] // f, self.image_size[1] // f, self.latent_channels)

  @property
  def kl_config(self) -> AutoencoderKLConfig:
    """The `AutoencoderKLConfig` of architecture "kl" (scaling_factor 1: a latent diffusion
    model sets its own from the latents' std, Rombach et al. 2022, sec. 4.3.2)."""
    if self.architecture != "kl":
      raise ValueError(f"kl_config: architecture is {self.architecture!r}, not 'kl'")
    n = len(self.block_out_channels)
    return AutoencoderKLConfig(
        in_channels=self.in_channels, out_channels=self.out_channels or self.in_channels,
        down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=self.block_out_channels, layers_per_block=self.layers_per_block,
        latent_channels=self.latent_channels, norm_num_groups=self.norm_num_groups,
        sample_size=self.image_size, scaling_factor=1.0,
        mid_block_add_attention=self.mid_attention)

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)


def _conv(features: int, kernel: int, name: str, stride: int = 1) -> nn.Conv:
  p = kernel // 2
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=((p, p), (p, p)),
                 name=name)


def _norm(groups: int, name: str) -> GroupNorm:
  return GroupNorm(num_groups=groups, epsilon=1e-6, name=name)


def _res(out_channels: int, groups: int, name: str) -> ResnetBlock2D:
  """VQGAN's `ResnetBlock` (no time embedding, GroupNorm eps 1e-6, Flax's default kernel init)."""
  return ResnetBlock2D(out_channels, groups, 1e-6, kernel_init=nn.initializers.lecun_normal(),
                       name=name)


def _label_maps(label: jax.Array | None, num_classes: int | None, x: jax.Array) -> jax.Array:
  """Appends a one-hot label as constant channels/features to x ([B, ..., C])."""
  if num_classes is None:
    return x
  if label is None:
    raise ValueError(f"this autoencoder is conditional ({num_classes} classes): pass label [B]")
  if label.shape != x.shape[:1]:
    raise ValueError(f"label must have shape [{x.shape[0]}] (one int per example), got "
                     f"{label.shape}")
  onehot = jax.nn.one_hot(label, num_classes, dtype=x.dtype)  # [B, K]
  onehot = onehot.reshape((x.shape[0],) + (1,) * (x.ndim - 2) + (num_classes,))
  onehot = jnp.broadcast_to(onehot, x.shape[:-1] + (num_classes,))
  return jnp.concatenate([x, onehot], axis=-1)


def _no_label(label):
  if label is not None:
    raise ValueError("architecture='kl' is unconditional: pass no label")


class Encoder(nn.Module):
  """Image -> latent (or Gaussian moments); see the module docstring.

  Attributes:
    config: the `AutoencoderConfig`.
  """
  config: AutoencoderConfig

  @nn.compact
  def __call__(self, x: jax.Array, label: jax.Array | None = None) -> jax.Array:
    """Args: x [B, H, W, C]; label [B] int (conditional models).
    Returns: [B, *latent_shape[:-1], L] with L = latent_channels (x2 with double_latent)."""
    c = self.config
    out = c.latent_channels * (2 if c.double_latent else 1)
    x = _label_maps(label, c.num_classes, x)
    if c.architecture == "mlp":
      h = x.reshape(x.shape[0], -1)
      for i, width in enumerate(c.mlp_hidden):
        h = nn.silu(nn.Dense(width, name=f"dense_{i}")(h))
      return nn.Dense(out, name="dense_out")(h)  # [B, L]
    chans, g = c.block_out_channels, c.norm_num_groups
    h = _conv(chans[0], 3, "conv_in")(x)
    for i, ch in enumerate(chans):
      for j in range(c.layers_per_block):
        h = _res(ch, g, f"down_{i}_res_{j}")(h)
      if i < len(chans) - 1:
        h = Downsample2D(ch, padding=1, name=f"down_{i}_downsample")(h)
    h = _mid(h, chans[-1], g, c, "mid")
    h = nn.silu(_norm(g, "norm_out")(h))
    return _conv(out, 3, "conv_out")(h)  # [B, H/f, W/f, L]


def _mid(h, ch, groups, c: AutoencoderConfig, prefix: str):
  h = _res(ch, groups, f"{prefix}_res_0")(h)
  if c.mid_attention:
    heads = c.attention_heads
    if ch % heads:
      raise ValueError(f"attention_heads={heads} must divide the {ch} channels of the last level")
    h = AttentionBlock(heads=heads, dim_head=ch // heads, groups=groups, eps=1e-6,
                       name=f"{prefix}_attn")(h)
  return _res(ch, groups, f"{prefix}_res_1")(h)


class Decoder(nn.Module):
  """Latent -> decoder features before the last layer (`Autoencoder.decoder_out`).

  Attributes:
    config: the `AutoencoderConfig`.
  """
  config: AutoencoderConfig

  @nn.compact
  def __call__(self, z: jax.Array, label: jax.Array | None = None) -> jax.Array:
    """Args: z [B, *latent_shape]; label [B] int (conditional models).
    Returns: features [B, H, W, block_out_channels[0]] (conv) or [B, mlp_hidden[0]] (mlp)."""
    c = self.config
    z = _label_maps(label, c.num_classes, z)
    if c.architecture == "mlp":
      h = z
      for i, width in enumerate(reversed(c.mlp_hidden)):
        h = nn.silu(nn.Dense(width, name=f"dense_{i}")(h))
      return h
    chans, g = c.block_out_channels, c.norm_num_groups
    h = _conv(chans[-1], 3, "conv_in")(z)
    h = _mid(h, chans[-1], g, c, "mid")
    for i in reversed(range(len(chans))):
      for j in range(c.layers_per_block):
        h = _res(chans[i], g, f"up_{i}_res_{j}")(h)
      if i > 0:
        h = Upsample2D(chans[i - 1], name=f"up_{i}_upsample")(h)
    return nn.silu(_norm(g, "norm_out")(h))


class Autoencoder(nn.Module):
  """Encoder, decoder trunk and decoder last layer. Use the methods with
  `model.apply(variables, ..., method=Autoencoder.encode)` etc.

  Attributes:
    config: the `AutoencoderConfig`.
  """
  config: AutoencoderConfig

  def setup(self):
    c = self.config
    if c.architecture == "kl":
      self.kl = AutoencoderKL(c.kl_config)
      return
    self.encoder = Encoder(c)
    self.decoder = Decoder(c)
    out_ch = c.out_channels or c.in_channels
    if c.architecture == "mlp":
      self.decoder_out = nn.Dense(math.prod(c.image_size) * out_ch)
    else:
      self.decoder_out = _conv(out_ch, 3, None)

  def _no_head(self, what: str):
    if self.config.architecture == "kl":
      raise ValueError(f"Autoencoder.{what}: architecture='kl' decodes in one piece (no "
                       "separate last layer, so no VQGAN adaptive weight); use decode, or "
                       "architecture='conv'")

  def _check_image(self, x):
    c = self.config
    if x.ndim != 4 or tuple(x.shape[1:]) != c.image_shape:
      raise ValueError(f"Autoencoder expects images [B, {', '.join(map(str, c.image_shape))}] "
                       f"(NHWC, the config's image_size and in_channels), got {x.shape}")

  def encode(self, x: jax.Array, label: jax.Array | None = None) -> jax.Array:
    """Args: x [B, H, W, C] in [-1, 1]. Returns latent (or moments), see `Encoder`."""
    self._check_image(x)
    if self.config.architecture == "kl":
      _no_label(label)
      mean, logvar = self.kl.encode(x)
      return jnp.concatenate([mean, logvar], -1) if self.config.double_latent else mean
    return self.encoder(x, label)

  def decode_trunk(self, z: jax.Array, label: jax.Array | None = None) -> jax.Array:
    """The decoder up to (not including) its last layer."""
    self._no_head("decode_trunk")
    want = self.config.latent_shape
    if tuple(z.shape[1:]) != want:
      raise ValueError(f"decode expects latents [B, {', '.join(map(str, want))}], got {z.shape}")
    return self.decoder(z, label)

  def decode_head(self, h: jax.Array) -> jax.Array:
    """The decoder's last layer: features -> [B, H, W, out_channels] (raw: mean or logits)."""
    self._no_head("decode_head")
    out = self.decoder_out(h)
    if self.config.architecture == "mlp":
      out = out.reshape((h.shape[0],) + self.config.image_size + (-1,))
    return out

  def decode(self, z: jax.Array, label: jax.Array | None = None) -> jax.Array:
    """Args: z [B, *latent_shape]. Returns the decoder output [B, H, W, out_channels]."""
    if self.config.architecture == "kl":
      _no_label(label)
      want = self.config.latent_shape
      if tuple(z.shape[1:]) != want:
        raise ValueError(f"decode expects latents [B, {', '.join(map(str, want))}], got "
                         f"{z.shape}")
      return self.kl.decode(z)
    return self.decode_head(self.decode_trunk(z, label))

  def __call__(self, x: jax.Array, label: jax.Array | None = None) -> jax.Array:
    """Deterministic reconstruction: decode(encode(x)) (the mean latent for a VAE)."""
    z = self.encode(x, label)
    if self.config.double_latent:
      z = z[..., :self.config.latent_channels]
    return self.decode(z, label)


def init_autoencoder(model: Autoencoder, key: jax.Array) -> Any:
  """Initial parameters (`variables["params"]`) of `model` without compiling `model.init`.

  Kernels are LeCun-normal (N(0, 1 / fan_in), Flax's default distribution, untruncated)
  drawn from `key` with one call, biases zero, norm scales one (see
  `jaxgen.nn.init.init_from_shapes`).

  Args:
    model: the module.
    key: PRNG key.
  Returns:
    The float32 parameter tree.
  """
  c = model.config
  x = jax.ShapeDtypeStruct((1,) + c.image_shape, jnp.float32)
  label = None if c.num_classes is None else jax.ShapeDtypeStruct((1,), jnp.int32)
  return init_from_shapes(module_param_shapes(model, x, label), key, kernel="lecun_normal")
