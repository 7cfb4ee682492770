"""The KL-regularised autoencoder of latent diffusion (Stable Diffusion's VAE) as a Flax module
that mirrors diffusers' `AutoencoderKL`.

`AutoencoderKLConfig` has the fields, defaults and meaning of `AutoencoderKL`'s config, and
`AutoencoderKL` the same submodule and parameter names (`encoder.down_blocks_0.resnets_1`,
`encoder.mid_block.attentions_0.to_q`, `quant_conv`, `decoder.up_blocks_0.upsamplers_0`, ...),
so a diffusers checkpoint imports by renaming alone
(`jaxgen.interop.diffusers_autoencoder_kl`). Activations are NHWC.

The architecture is the VQGAN / LDM first-stage autoencoder (Esser et al. 2021, sec. 3.2;
Rombach et al. 2022, sec. 3 and app. G): `conv_in`, per level residual blocks and a stride-2
conv (padded at the bottom/right only), a middle block (resnet, one-head self-attention,
resnet), group norm, SiLU and a 3x3 conv to the Gaussian moments `[mean, logvar]` of
q(z|x), then a 1x1 `quant_conv`; the decoder mirrors it (`post_quant_conv`, nearest 2x
upsampling, one more resnet per level). The posterior is diagonal Gaussian (Kingma &
Welling 2014, sec. 2.4) with the log-variance clamped to [-30, 20] as in LDM's code.

Value ranges are diffusers': images in [-1, 1], latents unscaled. The diffusion model sees
`scale_latents(config, z) = (z - shift_factor) * scaling_factor` (LDM sec. 4.3.2: the
scaling gives the latents unit variance); `unscale_latents` goes back before `decode`.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.nn.init import init_from_shapes, module_param_shapes
from jaxgen.nn.layers import (DownBlock, MidBlock, ResnetBlock2D, Upsample2D, _conv,
                              _group_norm)
from jaxgen.nn.unet import UnsupportedOptionError

DOWN_BLOCK_TYPES = ("DownEncoderBlock2D",)
UP_BLOCK_TYPES = ("UpDecoderBlock2D",)
LOGVAR_RANGE = (-30.0, 20.0)  # diffusers' DiagonalGaussianDistribution clamp
_EPS = 1e-6  # GroupNorm epsilon of every norm of diffusers' VAE encoder/decoder

# Options that diffusers' AutoencoderKL accepts but this module does not implement.
_KNOWN_UNSUPPORTED = {
    "down_block_types": ("AttnDownEncoderBlock2D",),
    "up_block_types": ("AttnUpDecoderBlock2D",),
    "act_fn": ("mish", "gelu", "relu"),
}
Dtype = Any


def _bad(option: str, value: Any, expected: str) -> ValueError:
  return ValueError(f"AutoencoderKLConfig: invalid {option}={value!r}; expected {expected}")


def _is_int(v) -> bool:
  return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


@dataclasses.dataclass(frozen=True)
class AutoencoderKLConfig:
  """Configuration of `AutoencoderKL`, field for field diffusers' `AutoencoderKL` config.

  Attributes:
    in_channels: image channels.
    out_channels: decoder output channels.
    down_block_types: one "DownEncoderBlock2D" per level.
    up_block_types: one "UpDecoderBlock2D" per level.
    block_out_channels: channels per level, finest first; len - 1 downsamplings.
    layers_per_block: resnets per encoder level (decoder levels have one more).
    act_fn: "silu" (or its alias "swish").
    latent_channels: channels of the latent z (the encoder outputs twice as many moments).
    norm_num_groups: GroupNorm groups; must divide every channel count.
    sample_size: training image size, int or (H, W); any multiple of the downsampling
      factor is accepted at run time.
    scaling_factor: multiplies the (shifted) latents before diffusion (SD: 0.18215).
    shift_factor: subtracted from the latents before scaling, or None (0).
    latents_mean, latents_std: per-channel latent statistics some pipelines use, or None;
      kept for round trips, not applied by `scale_latents`.
    force_upcast: pipelines run this VAE in float32 (metadata).
    use_quant_conv: the 1x1 conv on the moments after the encoder.
    use_post_quant_conv: the 1x1 conv on z before the decoder.
    mid_block_add_attention: self-attention in the middle blocks.
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
  sample_size: int | tuple[int, int] = 32
  scaling_factor: float = 0.18215
  shift_factor: float | None = None
  latents_mean: tuple[float, ...] | None = None
  latents_std: tuple[float, ...] | None = None
  force_upcast: bool = True
  use_quant_conv: bool = True
  use_post_quant_conv: bool = True
  mid_block_add_attention: bool = True

  def __post_init__(self):
    for name in ("down_block_types", "up_block_types", "block_out_channels", "latents_mean",
                 "latents_std"):
      value = getattr(self, name)
      if value is None and name.startswith("latents_"):
        continue
      if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise _bad(name, value, "a list or tuple")
      object.__setattr__(self, name, tuple(value))
    if isinstance(self.sample_size, list):
      object.__setattr__(self, "sample_size", tuple(self.sample_size))
    self._validate()

  def _validate(self):
    def choice(option, value, allowed):
      if value in allowed:
        return
      if value in _KNOWN_UNSUPPORTED.get(option, ()):
        raise UnsupportedOptionError(
            f"AutoencoderKLConfig: {option}={value!r} is a diffusers option that jaxgen does not "
            f"implement; supported: {allowed!r}")
      raise _bad(option, value, f"one of {allowed!r}")

    choice("act_fn", self.act_fn, ("silu", "swish"))
    for b in self.down_block_types:
      choice("down_block_types", b, DOWN_BLOCK_TYPES)
    for b in self.up_block_types:
      choice("up_block_types", b, UP_BLOCK_TYPES)
    n = len(self.block_out_channels)
    if n == 0 or len(self.down_block_types) != n or len(self.up_block_types) != n:
      raise ValueError(
          "AutoencoderKLConfig: block_out_channels, down_block_types and up_block_types must "
          f"have the same non-zero length; got {n}, {len(self.down_block_types)}, "
          f"{len(self.up_block_types)}")
    for option in ("in_channels", "out_channels", "layers_per_block", "latent_channels",
                   "norm_num_groups"):
      value = getattr(self, option)
      if not _is_int(value) or value < 1:
        raise _bad(option, value, "a positive int")
    for c in self.block_out_channels:
      if not _is_int(c) or c < 1 or c % self.norm_num_groups:
        raise _bad("block_out_channels", self.block_out_channels,
                   f"positive ints divisible by norm_num_groups={self.norm_num_groups}")
    s = self.sample_size
    if not ((_is_int(s) and s > 0) or (isinstance(s, tuple) and len(s) == 2
                                       and all(_is_int(v) and v > 0 for v in s))):
      raise _bad("sample_size", s, "a positive int or a pair of them (H, W)")
    if not (isinstance(self.scaling_factor, (int, float)) and math.isfinite(self.scaling_factor)
            and self.scaling_factor != 0):
      raise _bad("scaling_factor", self.scaling_factor, "a finite non-zero float")
    if self.shift_factor is not None and not math.isfinite(self.shift_factor):
      raise _bad("shift_factor", self.shift_factor, "None or a finite float")
    for name in ("latents_mean", "latents_std"):
      value = getattr(self, name)
      if value is not None and len(value) != self.latent_channels:
        raise _bad(name, value, f"None or {self.latent_channels} (latent_channels) floats")

  @property
  def num_levels(self) -> int:
    return len(self.block_out_channels)

  @property
  def downsample_factor(self) -> int:
    """H and W must be multiples of this: `2 ** (num_levels - 1)` (SD: 8)."""
    return 2 ** (self.num_levels - 1)

  @property
  def image_shape(self) -> tuple[int, int, int]:
    """(H, W, in_channels) of a `sample_size` image."""
    s = self.sample_size
    h, w = (s, s) if _is_int(s) else s
    return (int(h), int(w), self.in_channels)

  @property
  def latent_shape(self) -> tuple[int, int, int]:
    """(H/f, W/f, latent_channels) of a `sample_size` image's latent."""
    h, w, _ = self.image_shape
    f = self.downsample_factor
    return (h // f, w // f, self.latent_channels)

  def to_dict(self) -> dict[str, Any]:
    """Every field (as `dataclasses.asdict`)."""
    return dataclasses.asdict(self)

  def to_diffusers_dict(self) -> dict[str, Any]:
    """The config as diffusers' `AutoencoderKL` config.json keys (JSON-ready, no metadata)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in self.to_dict().items()}

  @classmethod
  def from_diffusers_dict(cls, d: Mapping[str, Any], *, ignore_unknown: bool = False
                          ) -> AutoencoderKLConfig:
    """Builds a config from a diffusers `AutoencoderKL` config dict (a parsed config.json).

    Keys starting with "_" (`_class_name`, `_diffusers_version`, `_name_or_path`, ...) are
    metadata and ignored; a missing key takes diffusers' default.

    Args:
      d: the config dict.
      ignore_unknown: drop keys that are not AutoencoderKL options instead of raising.

    Returns:
      The config.

    Raises:
      ValueError: `_class_name` is not AutoencoderKL, an unknown key (unless
        `ignore_unknown`), or an invalid value, naming the option.
      UnsupportedOptionError: (also a ValueError) a diffusers option jaxgen does not implement.
    """
    if not isinstance(d, Mapping):
      raise TypeError(f"from_diffusers_dict expects a dict, got {type(d).__name__}")
    class_name = d.get("_class_name", "AutoencoderKL")
    if class_name != "AutoencoderKL":
      raise ValueError(f"AutoencoderKLConfig.from_diffusers_dict: _class_name={class_name!r}, "
                       "expected 'AutoencoderKL' (the config of a different diffusers model)")
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: v for k, v in d.items() if not k.startswith("_")}
    unknown = sorted(set(kwargs) - fields)
    if unknown and not ignore_unknown:
      raise ValueError(f"AutoencoderKLConfig.from_diffusers_dict: unknown option(s) {unknown}; "
                       f"known: {sorted(fields)} (pass ignore_unknown=True to drop them)")
    return cls(**{k: v for k, v in kwargs.items() if k in fields})


def scale_latents(config: AutoencoderKLConfig, z: jax.Array) -> jax.Array:
  """Latents as the diffusion model sees them: `(z - shift_factor) * scaling_factor`
  (Rombach et al. 2022, sec. 4.3.2 / app. G; shift 0 when None)."""
  return (z - (config.shift_factor or 0.0)) * config.scaling_factor


def unscale_latents(config: AutoencoderKLConfig, z: jax.Array) -> jax.Array:
  """The inverse of `scale_latents`: `z / scaling_factor + shift_factor`, ready for `decode`."""
  return z / config.scaling_factor + (config.shift_factor or 0.0)


def posterior_sample(mean: jax.Array, logvar: jax.Array, noise: jax.Array) -> jax.Array:
  """z = mean + exp(logvar / 2) * noise (Kingma & Welling 2014, eq. 10), the sample of
  diffusers' `DiagonalGaussianDistribution` for a given standard normal `noise`.

  Args:
    mean, logvar: posterior moments (logvar already clamped by `AutoencoderKL.encode`).
    noise: N(0, I) draws of the same shape.  # [B, h, w, L]
  Returns:
    [B, h, w, L].
  """
  if noise.shape != mean.shape or logvar.shape != mean.shape:
    raise ValueError(f"posterior_sample: mean, logvar and noise must have one shape, got "
                     f"{mean.shape}, {logvar.shape}, {noise.shape}")
  return mean + jnp.exp(0.5 * logvar) * noise


def sample_posterior(mean: jax.Array, logvar: jax.Array, key: jax.Array) -> jax.Array:
  """z ~ q(z|x) = N(mean, exp(logvar)), with the noise drawn from `key` (float32)."""
  return posterior_sample(mean, logvar, jax.random.normal(key, mean.shape, jnp.float32))


class UpDecoderBlock(nn.Module):
  """One decoder level (diffusers `UpDecoderBlock2D`): `num_layers` resnets without time
  embedding (`resnets_j`), then an optional nearest-2x upsampling + conv (`upsamplers_0`).

  Attributes:
    out_channels: channels of the level.
    num_layers: resnets (`layers_per_block + 1` in the VAE decoder).
    groups: GroupNorm groups.
    add_upsample: False at the finest level.
    dtype: computation dtype.
  """
  out_channels: int
  num_layers: int
  groups: int
  add_upsample: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Args: x [B, H, W, Cin]. Returns [B, 2H, 2W, out_channels] ([B, H, W, .] at the end)."""
    for j in range(self.num_layers):
      x = ResnetBlock2D(self.out_channels, self.groups, _EPS, dtype=self.dtype,
                        name=f"resnets_{j}")(x)
    if self.add_upsample:
      x = Upsample2D(self.out_channels, dtype=self.dtype, name="upsamplers_0")(x)
    return x


def _mid_block(cfg: AutoencoderKLConfig, dtype: Dtype) -> MidBlock:
  # One-head attention of width C (diffusers: attention_head_dim = C), group-normed, residual.
  return MidBlock(cfg.block_out_channels[-1], cfg.norm_num_groups, _EPS,
                  attention=cfg.mid_block_add_attention, attention_head_dim=None, dtype=dtype,
                  name="mid_block")


class KLEncoder(nn.Module):
  """Image -> `2 * latent_channels` Gaussian moments (diffusers `Encoder` with `double_z`).

  Attributes:
    config: the architecture.
    dtype: computation dtype.
  """
  config: AutoencoderKLConfig
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Args: x [B, H, W, in_channels]. Returns [B, H/f, W/f, 2 * latent_channels]."""
    cfg, n = self.config, self.config.num_levels
    h = _conv(cfg.block_out_channels[0], 3, "conv_in", self.dtype)(x)
    for i, ch in enumerate(cfg.block_out_channels):
      # downsample_padding=0: diffusers pads one row/column at the bottom/right only.
      h, _ = DownBlock(ch, cfg.layers_per_block, cfg.norm_num_groups, _EPS,
                       add_downsample=i < n - 1, downsample_padding=0, dtype=self.dtype,
                       name=f"down_blocks_{i}")(h, None)
    h = _mid_block(cfg, self.dtype)(h, None)
    h = nn.silu(_group_norm(cfg.norm_num_groups, _EPS, "conv_norm_out", self.dtype)(h))
    return _conv(2 * cfg.latent_channels, 3, "conv_out", self.dtype)(h)


class KLDecoder(nn.Module):
  """Latent -> image (diffusers `Decoder`, group norm).

  Attributes:
    config: the architecture.
    dtype: computation dtype.
  """
  config: AutoencoderKLConfig
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, z: jax.Array) -> jax.Array:
    """Args: z [B, h, w, latent_channels]. Returns [B, h * f, w * f, out_channels]."""
    cfg, n = self.config, self.config.num_levels
    rev = cfg.block_out_channels[::-1]
    h = _conv(rev[0], 3, "conv_in", self.dtype)(z)
    h = _mid_block(cfg, self.dtype)(h, None)
    for i, ch in enumerate(rev):
      h = UpDecoderBlock(ch, cfg.layers_per_block + 1, cfg.norm_num_groups,
                         add_upsample=i < n - 1, dtype=self.dtype, name=f"up_blocks_{i}")(h)
    h = nn.silu(_group_norm(cfg.norm_num_groups, _EPS, "conv_norm_out", self.dtype)(h))
    return _conv(cfg.out_channels, 3, "conv_out", self.dtype)(h)


class AutoencoderKL(nn.Module):
  """LDM's KL autoencoder (Rombach et al. 2022, sec. 3; diffusers `AutoencoderKL`), NHWC.

  Use the methods with `model.apply({"params": p}, x, method=AutoencoderKL.encode)` etc.

  Attributes:
    config: the architecture.
    dtype: computation dtype (e.g. jnp.bfloat16); parameters and outputs are float32.
  """
  config: AutoencoderKLConfig
  dtype: Dtype = jnp.float32

  def setup(self):
    cfg = self.config
    self.encoder = KLEncoder(cfg, self.dtype)
    self.decoder = KLDecoder(cfg, self.dtype)
    two_l = 2 * cfg.latent_channels
    self.quant_conv = _conv(two_l, 1, None, self.dtype) if cfg.use_quant_conv else None
    self.post_quant_conv = (_conv(cfg.latent_channels, 1, None, self.dtype)
                            if cfg.use_post_quant_conv else None)

  def _check(self, a: Any, what: str, channels: int, name: str, multiple: int) -> None:
    if not hasattr(a, "shape") or not hasattr(a, "dtype"):
      raise TypeError(f"AutoencoderKL: {what} must be an array [B, H, W, {channels}], got "
                      f"{type(a).__name__}")
    if a.ndim != 4:
      raise ValueError(f"AutoencoderKL: {what} must be NHWC [B, H, W, {channels}], got shape "
                       f"{tuple(a.shape)}")
    if not jnp.issubdtype(a.dtype, jnp.floating):
      raise TypeError(f"AutoencoderKL: {what} must be floating point, got dtype {a.dtype}")
    b, h, w, c = a.shape
    if c != channels:
      hint = " (it looks NCHW: transpose to NHWC)" if a.shape[1] == channels else ""
      raise ValueError(f"AutoencoderKL: {what} must be [B, H, W, {channels}] ({name}="
                       f"{channels}), got shape {tuple(a.shape)}{hint}")
    if h == 0 or w == 0 or h % multiple or w % multiple:
      n = self.config.num_levels
      raise ValueError(f"AutoencoderKL: H and W of {what} must be positive multiples of "
                       f"2**(levels-1) = {multiple} for {n} levels, got shape {tuple(a.shape)}; "
                       f"expected e.g. [{b}, {max(multiple, h // multiple * multiple)}, "
                       f"{max(multiple, w // multiple * multiple)}, {c}]")

  def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The diagonal Gaussian posterior q(z|x).

    Args:
      x: images in [-1, 1].  # [B, H, W, in_channels], H and W multiples of 2**(levels-1)
    Returns:
      (mean, logvar), float32, logvar clamped to [-30, 20].  # each [B, H/f, W/f, L]
    """
    cfg = self.config
    self._check(x, "images", cfg.in_channels, "in_channels", cfg.downsample_factor)
    h = self.encoder(x.astype(self.dtype))
    if self.quant_conv is not None:
      h = self.quant_conv(h)
    h = h.astype(jnp.float32)
    mean, logvar = jnp.split(h, 2, axis=-1)
    return mean, jnp.clip(logvar, *LOGVAR_RANGE)

  def decode(self, z: jax.Array) -> jax.Array:
    """Args: z unscaled latents [B, h, w, latent_channels].
    Returns: float32 images, nominally in [-1, 1] (not clipped).  # [B, h f, w f, out_channels]
    """
    cfg = self.config
    self._check(z, "latents", cfg.latent_channels, "latent_channels", 1)
    z = z.astype(self.dtype)
    if self.post_quant_conv is not None:
      z = self.post_quant_conv(z)
    return self.decoder(z).astype(jnp.float32)

  def __call__(self, x: jax.Array, key: jax.Array | None = None, *,
               sample_posterior: bool = False) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Reconstruction of `x` from the posterior mean, or from a sample (diffusers `forward`).

    Args:
      x: images [B, H, W, in_channels] in [-1, 1].
      key: PRNG key of the posterior sample; required iff `sample_posterior`.
      sample_posterior: decode z ~ q(z|x) instead of its mean.
    Returns:
      (reconstruction [B, H, W, out_channels], mean, logvar [B, H/f, W/f, L]).
    """
    if sample_posterior and key is None:
      raise ValueError("AutoencoderKL: sample_posterior=True needs a PRNG key")
    if key is not None and not sample_posterior:
      raise ValueError("AutoencoderKL: a key was given but sample_posterior=False; pass "
                       "sample_posterior=True to decode a posterior sample, or no key")
    mean, logvar = self.encode(x)
    z = mean
    if sample_posterior:
      z = posterior_sample(mean, logvar, jax.random.normal(key, mean.shape, jnp.float32))
    return self.decode(z), mean, logvar


def autoencoder_kl_param_shapes(model: AutoencoderKL) -> Any:
  """The parameter tree of `model` as `jax.ShapeDtypeStruct`s (eval_shape: no compile, no memory)."""
  f = model.config.downsample_factor
  return module_param_shapes(
      model, jax.ShapeDtypeStruct((1, f, f, model.config.in_channels), jnp.float32))


def init_autoencoder_kl(model: AutoencoderKL, key: jax.Array) -> Any:
  """Fresh float32 parameters for `model`: kernels U(-1/sqrt(fan_in), 1/sqrt(fan_in)) as
  PyTorch's (and a fresh diffusers AutoencoderKL's) default, drawn from `key` in one call,
  zero biases, unit GroupNorm scales (`jaxgen.nn.init.init_from_shapes`)."""
  return init_from_shapes(autoencoder_kl_param_shapes(model), key, kernel="uniform")
