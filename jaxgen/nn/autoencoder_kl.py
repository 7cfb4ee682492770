"""The KL-regularised autoencoder of latent diffusion (Rombach et al. 2022, sec. 3.1 and app. G;
the VQGAN encoder/decoder of Esser et al. 2021), laid out like diffusers' `AutoencoderKL`.

Encoder: `conv_in`, one `DownEncoderBlock2D` per level (resnets, then a stride-2 conv padded
bottom/right except at the last level), a mid block (resnet, one-head self-attention,
resnet), group norm, SiLU, `conv_out` to the Gaussian moments `2 * latent_channels`, then the
1x1 `quant_conv`. Decoder: `post_quant_conv`, `conv_in`, the mid block, one
`UpDecoderBlock2D` per level (`layers_per_block + 1` resnets, nearest 2x upsampling + conv
except at the last level), group norm, SiLU, `conv_out`. All group norms use eps 1e-6.
Submodule names equal diffusers' state-dict names up to `name.i <-> name_i`, so
`jaxgen.interop.diffusers_autoencoder_kl` maps a checkpoint by renaming alone.

Value ranges are diffusers': images NHWC in [-1, 1], latents unscaled; `scale_latents`
applies `(z - shift_factor) * scaling_factor` as the latent-diffusion pipelines do.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxgen.nn.init import init_from_shapes, module_param_shapes
from jaxgen.nn.layers import (Downsample2D, MidBlock, ResnetBlock2D, Upsample2D, _conv,
                              _group_norm)
from jaxgen.nn.unet import UnsupportedOptionError

_EPS = 1e-6
_UNSUPPORTED = {"down_block_types": "DownEncoderBlock2D", "up_block_types": "UpDecoderBlock2D",
                "act_fn": "silu"}


@dataclasses.dataclass(frozen=True)
class AutoencoderKLConfig:
  """diffusers' `AutoencoderKL` config, field for field (same defaults).

  Attributes:
    in_channels, out_channels: image channels.
    down_block_types, up_block_types: "DownEncoderBlock2D" / "UpDecoderBlock2D" per level.
    block_out_channels: channels per level, finest first.
    layers_per_block: resnets per encoder level (decoder levels have one more).
    act_fn: "silu".
    latent_channels: channels of the latent.
    norm_num_groups: GroupNorm groups.
    sample_size: training resolution (metadata).
    scaling_factor: multiplies the latents for diffusion (0.18215 for SD 1.x / 2.x).
    shift_factor: subtracted before scaling (None: no shift).
    latents_mean, latents_std: per-channel statistics some models publish (metadata).
    force_upcast: metadata (diffusers runs the VAE in float32 when set).
    use_quant_conv, use_post_quant_conv: the 1x1 convs around the latent.
    mid_block_add_attention: self-attention in the mid blocks.
  """
  in_channels: int = 3
  out_channels: int = 3
  down_block_types: tuple[str, ...] = ("DownEncoderBlock2D",)
  up_block_types: tuple[str, ...] = ("UpDecoderBlock2D",)
  block_out_channels: tuple[int, ...] = (64,)
  layers_per_block: int = 1
  act_fn: str = "silu"
  latent_channels: int = 4
  norm_num_groups: int = 32
  sample_size: Any = 32
  scaling_factor: float = 0.18215
  shift_factor: float | None = None
  latents_mean: Any = None
  latents_std: Any = None
  force_upcast: bool = True
  use_quant_conv: bool = True
  use_post_quant_conv: bool = True
  mid_block_add_attention: bool = True

  def __post_init__(self):
    for name in ("down_block_types", "up_block_types", "block_out_channels"):
      value = getattr(self, name)
      if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise ValueError(f"AutoencoderKLConfig: {name} must be a list, got {value!r}")
      object.__setattr__(self, name, tuple(value))
    for name in ("latents_mean", "latents_std", "sample_size"):
      if isinstance(getattr(self, name), list):
        object.__setattr__(self, name, tuple(getattr(self, name)))
    for name, allowed in _UNSUPPORTED.items():
      values = getattr(self, name)
      for v in (values if isinstance(values, tuple) else (values,)):
        if v != allowed:
          raise UnsupportedOptionError(f"AutoencoderKLConfig: {name} entry {v!r} is not "
                                       f"implemented; supported: {allowed!r}")
    n = len(self.block_out_channels)
    if n == 0 or len(self.down_block_types) != n or len(self.up_block_types) != n:
      raise ValueError("AutoencoderKLConfig: block_out_channels, down_block_types and "
                       "up_block_types need the same non-zero length, got "
                       f"{n}, {len(self.down_block_types)}, {len(self.up_block_types)}")
    if any(c % self.norm_num_groups for c in self.block_out_channels):
      raise ValueError(f"AutoencoderKLConfig: block_out_channels {self.block_out_channels} must "
                       f"be divisible by norm_num_groups={self.norm_num_groups}")

  @property
  def downsample_factor(self) -> int:
    return 2 ** (len(self.block_out_channels) - 1)

  def to_diffusers_dict(self) -> dict:
    d = dataclasses.asdict(self)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

  @classmethod
  def from_diffusers_dict(cls, d: Mapping[str, Any], *, ignore_unknown: bool = False
                          ) -> AutoencoderKLConfig:
    """From a diffusers `AutoencoderKL` config.json dict ("_" keys are metadata)."""
    name = d.get("_class_name", "AutoencoderKL")
    if name != "AutoencoderKL":
      raise ValueError(f"AutoencoderKLConfig: _class_name={name!r}, expected 'AutoencoderKL'")
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: v for k, v in d.items() if not k.startswith("_")}
    unknown = sorted(set(kwargs) - fields)
    if unknown and not ignore_unknown:
      raise ValueError(f"AutoencoderKLConfig: unknown option(s) {unknown}; known: "
                       f"{sorted(fields)}")
    return cls(**{k: v for k, v in kwargs.items() if k in fields})


def _mid(cfg: AutoencoderKLConfig, dtype) -> MidBlock:
  return MidBlock(cfg.block_out_channels[-1], cfg.norm_num_groups, _EPS,
                  attention=cfg.mid_block_add_attention, attn_groups=cfg.norm_num_groups,
                  dtype=dtype, name="mid_block")


class _Level(nn.Module):
  """A DownEncoderBlock2D (`up=False`) or UpDecoderBlock2D (`up=True`)."""
  channels: int
  num_layers: int
  groups: int
  resample: bool
  up: bool
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    for j in range(self.num_layers):
      x = ResnetBlock2D(self.channels, self.groups, _EPS, dtype=self.dtype, name=f"resnets_{j}")(x)
    if self.resample and self.up:
      x = Upsample2D(self.channels, dtype=self.dtype, name="upsamplers_0")(x)
    elif self.resample:
      x = Downsample2D(self.channels, padding=0, dtype=self.dtype, name="downsamplers_0")(x)
    return x


class EncoderKL(nn.Module):
  config: AutoencoderKLConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    c = self.config
    h = _conv(c.block_out_channels[0], 3, "conv_in", self.dtype)(x)
    n = len(c.block_out_channels)
    for i, ch in enumerate(c.block_out_channels):
      h = _Level(ch, c.layers_per_block, c.norm_num_groups, i < n - 1, False, self.dtype,
                 name=f"down_blocks_{i}")(h)
    h = _mid(c, self.dtype)(h, None)
    h = nn.silu(_group_norm(c.norm_num_groups, _EPS, "conv_norm_out", self.dtype)(h))
    return _conv(2 * c.latent_channels, 3, "conv_out", self.dtype)(h)


class DecoderKL(nn.Module):
  config: AutoencoderKLConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, z):
    c = self.config
    rev = c.block_out_channels[::-1]
    h = _conv(rev[0], 3, "conv_in", self.dtype)(z)
    h = _mid(c, self.dtype)(h, None)
    for i, ch in enumerate(rev):
      h = _Level(ch, c.layers_per_block + 1, c.norm_num_groups, i < len(rev) - 1, True,
                 self.dtype, name=f"up_blocks_{i}")(h)
    h = nn.silu(_group_norm(c.norm_num_groups, _EPS, "conv_norm_out", self.dtype)(h))
    return _conv(c.out_channels, 3, "conv_out", self.dtype)(h)


class AutoencoderKL(nn.Module):
  """diffusers' `AutoencoderKL` in Flax, NHWC.

  `apply(v, x, method="encode")` -> (mean, logvar) of the diagonal Gaussian posterior
  (logvar clipped to [-30, 20]); `apply(v, z, method="decode")` -> images;
  `apply(v, x, key, sample_posterior=True)` -> (reconstruction, mean, logvar).

  Attributes:
    config: the architecture.
    dtype: computation dtype (parameters are float32, outputs float32).
  """
  config: AutoencoderKLConfig
  dtype: Any = jnp.float32

  def setup(self):
    c = self.config
    self.encoder = EncoderKL(c, self.dtype)
    self.decoder = DecoderKL(c, self.dtype)
    if c.use_quant_conv:
      self.quant_conv = _conv(2 * c.latent_channels, 1, "quant_conv", self.dtype)
    if c.use_post_quant_conv:
      self.post_quant_conv = _conv(c.latent_channels, 1, "post_quant_conv", self.dtype)

  def _check(self, x, channels: int, what: str, factor: int):
    if x.ndim != 4 or x.shape[-1] != channels:
      hint = " (it looks NCHW: transpose to NHWC)" if x.ndim == 4 and x.shape[1] == channels else ""
      raise ValueError(f"AutoencoderKL.{what}: expected [B, H, W, {channels}] (NHWC), got "
                       f"shape {tuple(x.shape)}{hint}")
    if x.shape[1] % factor or x.shape[2] % factor:
      raise ValueError(f"AutoencoderKL.{what}: H and W must be multiples of {factor}, got "
                       f"{tuple(x.shape)}")

  def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Images [B, H, W, in] in [-1, 1] -> (mean, logvar), each [B, H/f, W/f, latent]."""
    self._check(x, self.config.in_channels, "encode", self.config.downsample_factor)
    m = self.encoder(x.astype(self.dtype))
    if self.config.use_quant_conv:
      m = self.quant_conv(m)
    m = m.astype(jnp.float32)
    mean, logvar = jnp.split(m, 2, axis=-1)
    return mean, jnp.clip(logvar, -30.0, 20.0)

  def decode(self, z: jax.Array) -> jax.Array:
    """Unscaled latents [B, h, w, latent] -> images [B, h f, w f, out], float32."""
    self._check(z, self.config.latent_channels, "decode", 1)
    z = z.astype(self.dtype)
    if self.config.use_post_quant_conv:
      z = self.post_quant_conv(z)
    return self.decoder(z).astype(jnp.float32)

  def __call__(self, x: jax.Array, key: jax.Array | None = None, *,
               sample_posterior: bool = False):
    mean, logvar = self.encode(x)
    z = sample_gaussian(mean, logvar, key) if sample_posterior else mean
    return self.decode(z), mean, logvar


def sample_gaussian(mean: jax.Array, logvar: jax.Array, key: jax.Array) -> jax.Array:
  """z = mean + exp(logvar / 2) eps, eps ~ N(0, I) (the reparameterisation, Kingma & Welling
  2014, sec. 2.4)."""
  if key is None:
    raise ValueError("sample_posterior=True needs a key")
  return mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, mean.shape, mean.dtype)


def scale_latents(config: AutoencoderKLConfig, z: jax.Array) -> jax.Array:
  """Latents as the diffusion model sees them: (z - shift_factor) * scaling_factor."""
  if config.shift_factor is not None:
    z = z - config.shift_factor
  return z * config.scaling_factor


def unscale_latents(config: AutoencoderKLConfig, z: jax.Array) -> jax.Array:
  """The inverse of `scale_latents`, before `decode`."""
  z = z / config.scaling_factor
  return z + config.shift_factor if config.shift_factor is not None else z


def autoencoder_kl_param_shapes(model: AutoencoderKL) -> Any:
  """The parameter tree as ShapeDtypeStructs (eval_shape; no memory)."""
  c = model.config
  f = c.downsample_factor
  return module_param_shapes(model, jax.ShapeDtypeStruct((1, f, f, c.in_channels), jnp.float32))


def init_autoencoder_kl(model: AutoencoderKL, key: jax.Array) -> Any:
  """Fresh float32 parameters (PyTorch-like uniform kernels, zero biases, unit norms)."""
  return init_from_shapes(autoencoder_kl_param_shapes(model), key, kernel="uniform")
