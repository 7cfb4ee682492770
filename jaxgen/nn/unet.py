"""The DDPM U-Net (Ho et al. 2020) as a Flax module that mirrors diffusers' `UNet2DModel`.

`UNetConfig` has the same fields, defaults and meaning as `UNet2DModel`'s config, and
`UNet2D` has the same submodule and parameter names (`down_blocks_0.resnets_1.conv1`,
`mid_block.attentions_0.to_q`, ...), so a diffusers checkpoint imports 1:1 with
`jaxgen.interop.load_diffusers_unet2d`. Activations are NHWC.

The supported subset is what DDPM-style models use: positional time embedding,
`DownBlock2D` / `AttnDownBlock2D` / `UpBlock2D` / `AttnUpBlock2D`, `UNetMidBlock2D`
(or none), conv resampling, SiLU, additive time conditioning ("default" time scale
shift) and an optional learned class embedding added to the time embedding.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.nn.init import init_from_shapes, module_param_shapes
from jaxgen.nn.layers import (DownBlock, MidBlock, TimestepEmbedding, UpBlock, _conv, _group_norm,
                              timestep_embedding)
from jaxgen.nn.remat import call_block, check_remat_policy

DOWN_BLOCK_TYPES = ("DownBlock2D", "AttnDownBlock2D")
UP_BLOCK_TYPES = ("UpBlock2D", "AttnUpBlock2D")

# Options that diffusers' UNet2DModel accepts but this module does not implement.
_KNOWN_UNSUPPORTED = {
    "time_embedding_type": ("fourier", "learned"),
    "down_block_types": ("ResnetDownsampleBlock2D", "AttnSkipDownBlock2D", "SkipDownBlock2D",
                         "CrossAttnDownBlock2D", "SimpleCrossAttnDownBlock2D", "KDownBlock2D",
                         "KCrossAttnDownBlock2D", "DownEncoderBlock2D", "AttnDownEncoderBlock2D"),
    "up_block_types": ("ResnetUpsampleBlock2D", "AttnSkipUpBlock2D", "SkipUpBlock2D",
                       "CrossAttnUpBlock2D", "SimpleCrossAttnUpBlock2D", "KUpBlock2D",
                       "KCrossAttnUpBlock2D", "UpDecoderBlock2D", "AttnUpDecoderBlock2D"),
    "mid_block_type": ("UNetMidBlock2DCrossAttn", "UNetMidBlock2DSimpleCrossAttn"),
    "downsample_type": ("resnet",),
    "upsample_type": ("resnet",),
    "act_fn": ("mish", "gelu", "relu"),
    "resnet_time_scale_shift": ("scale_shift", "spatial", "ada_group"),
    "class_embed_type": ("timestep", "identity"),
}


class UnsupportedOptionError(NotImplementedError, ValueError):
  """A diffusers option that exists upstream but is not implemented here.

  Subclasses both NotImplementedError and ValueError so callers may catch either.
  """


def _unsupported(option: str, value: Any, supported: Any) -> UnsupportedOptionError:
  return UnsupportedOptionError(
      f"UNetConfig: {option}={value!r} is a diffusers option that jaxgen does not implement; "
      f"supported: {supported!r}")


def _bad(option: str, value: Any, expected: str) -> ValueError:
  return ValueError(f"UNetConfig: invalid {option}={value!r}; expected {expected}")


@dataclasses.dataclass(frozen=True)
class UNetConfig:
  """Configuration of `UNet2D`, field for field diffusers' `UNet2DModel` config (same defaults).

  Attributes:
    sample_size: training resolution (int or (H, W)); metadata, any valid size is accepted.
    in_channels: channels of the input image.
    out_channels: channels of the output (the predicted noise).
    center_input_sample: map the input `x -> 2x - 1` first.
    time_embedding_type: only "positional" (sinusoidal).
    time_embedding_dim: width of the time embedding; None means `4 * block_out_channels[0]`.
    freq_shift: `downscale_freq_shift` of the sinusoidal embedding (DDPM: 1).
    flip_sin_to_cos: cosine half first (DDPM: False).
    down_block_types: per level, "DownBlock2D" or "AttnDownBlock2D".
    mid_block_type: "UNetMidBlock2D" or None (no middle block).
    up_block_types: per level (coarsest first), "UpBlock2D" or "AttnUpBlock2D".
    block_out_channels: channels per level, finest first.
    layers_per_block: resnet blocks per down level (up levels have one more).
    mid_block_scale_factor: output scale factor of the middle block's resnets and attention.
    downsample_padding: 0 = pad bottom/right by one (DDPM), else symmetric padding.
    downsample_type: only "conv".
    upsample_type: only "conv".
    dropout: dropout rate inside every resnet block.
    act_fn: "silu" (or its alias "swish").
    attention_head_dim: width of one attention head; None = one head per attention block.
    norm_num_groups: GroupNorm groups.
    attn_norm_num_groups: GroupNorm groups of the middle attention; None = norm_num_groups.
    norm_eps: GroupNorm epsilon.
    resnet_time_scale_shift: only "default" (additive time conditioning).
    add_attention: attention in the middle block.
    class_embed_type: only None (a learned `nn.Embed` when num_class_embeds is set).
    num_class_embeds: number of classes for class conditioning, or None.
    num_train_timesteps: only used upstream by the "learned" time embedding; kept for round trips.
  """
  sample_size: int | tuple[int, int] | None = None
  in_channels: int = 3
  out_channels: int = 3
  center_input_sample: bool = False
  time_embedding_type: str = "positional"
  time_embedding_dim: int | None = None
  freq_shift: float = 0
  flip_sin_to_cos: bool = True
  down_block_types: tuple[str, ...] = ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D",
                                       "AttnDownBlock2D")
  mid_block_type: str | None = "UNetMidBlock2D"
  up_block_types: tuple[str, ...] = ("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D")
  block_out_channels: tuple[int, ...] = (224, 448, 672, 896)
  layers_per_block: int = 2
  mid_block_scale_factor: float = 1.0
  downsample_padding: int = 1
  downsample_type: str = "conv"
  upsample_type: str = "conv"
  dropout: float = 0.0
  act_fn: str = "silu"
  attention_head_dim: int | None = 8
  norm_num_groups: int = 32
  attn_norm_num_groups: int | None = None
  norm_eps: float = 1e-5
  resnet_time_scale_shift: str = "default"
  add_attention: bool = True
  class_embed_type: str | None = None
  num_class_embeds: int | None = None
  num_train_timesteps: int | None = None

  def __post_init__(self):
    for name in ("down_block_types", "up_block_types", "block_out_channels"):
      value = getattr(self, name)
      if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise _bad(name, value, "a list or tuple")
      object.__setattr__(self, name, tuple(value))
    # diffusers strips a "UNetRes" prefix from block names.
    for name in ("down_block_types", "up_block_types"):
      object.__setattr__(self, name, tuple(b[7:] if b.startswith("UNetRes") else b
                                           for b in getattr(self, name)))
    if isinstance(self.sample_size, list):
      object.__setattr__(self, "sample_size", tuple(self.sample_size))
    self._validate()

  def _validate(self):
    def choice(option, allowed):
      value = getattr(self, option)
      if value in allowed:
        return
      if value in _KNOWN_UNSUPPORTED.get(option, ()):
        raise _unsupported(option, value, allowed)
      raise _bad(option, value, f"one of {allowed!r}")

    choice("time_embedding_type", ("positional",))
    choice("mid_block_type", ("UNetMidBlock2D", None))
    choice("downsample_type", ("conv",))
    choice("upsample_type", ("conv",))
    choice("act_fn", ("silu", "swish"))
    choice("resnet_time_scale_shift", ("default",))
    choice("class_embed_type", (None,))
    for option, allowed in (("down_block_types", DOWN_BLOCK_TYPES), ("up_block_types", UP_BLOCK_TYPES)):
      for b in getattr(self, option):
        if b not in allowed:
          if b in _KNOWN_UNSUPPORTED[option]:
            raise _unsupported(option, b, allowed)
          raise _bad(option, b, f"entries from {allowed!r}")
    n = len(self.block_out_channels)
    if n == 0 or len(self.down_block_types) != n or len(self.up_block_types) != n:
      raise ValueError(
          "UNetConfig: block_out_channels, down_block_types and up_block_types must have the same "
          f"non-zero length; got {len(self.block_out_channels)}, {len(self.down_block_types)}, "
          f"{len(self.up_block_types)}")
    for option in ("in_channels", "out_channels", "layers_per_block", "norm_num_groups"):
      value = getattr(self, option)
      if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise _bad(option, value, "a positive int")
    for c in self.block_out_channels:
      if not isinstance(c, (int, np.integer)) or c < 1 or c % self.norm_num_groups:
        raise _bad("block_out_channels", self.block_out_channels,
                   f"positive ints divisible by norm_num_groups={self.norm_num_groups}")
    if self.attn_norm_num_groups is not None and (
        self.attn_norm_num_groups < 1 or self.block_out_channels[-1] % self.attn_norm_num_groups):
      raise _bad("attn_norm_num_groups", self.attn_norm_num_groups,
                 f"None or a divisor of block_out_channels[-1]={self.block_out_channels[-1]}")
    if self.attention_head_dim is not None:
      for c in self.block_out_channels:
        if not 1 <= self.attention_head_dim <= c:
          raise _bad("attention_head_dim", self.attention_head_dim,
                     f"None or an int in [1, {min(self.block_out_channels)}]")
    if self.time_embedding_dim is not None and self.time_embedding_dim < 1:
      raise _bad("time_embedding_dim", self.time_embedding_dim, "None or a positive int")
    if self.num_class_embeds is not None and self.num_class_embeds < 1:
      raise _bad("num_class_embeds", self.num_class_embeds, "None or a positive int")
    if not 0.0 <= self.dropout < 1.0:
      raise _bad("dropout", self.dropout, "a rate in [0, 1)")
    if self.downsample_padding < 0:
      raise _bad("downsample_padding", self.downsample_padding, "an int >= 0")
    if self.norm_eps <= 0:
      raise _bad("norm_eps", self.norm_eps, "a positive float")
    if self.mid_block_scale_factor == 0:
      raise _bad("mid_block_scale_factor", self.mid_block_scale_factor, "a non-zero float")
    if self.block_out_channels[0] // 2 == self.freq_shift:
      raise _bad("freq_shift", self.freq_shift, "a value != block_out_channels[0] // 2")

  @property
  def time_embed_dim(self) -> int:
    """Width of the time (and class) embedding."""
    return self.time_embedding_dim or 4 * self.block_out_channels[0]

  @property
  def num_levels(self) -> int:
    return len(self.block_out_channels)

  @property
  def downsample_factor(self) -> int:
    """H and W must be multiples of this: `2 ** (num_levels - 1)`."""
    return 2 ** (self.num_levels - 1)

  def to_diffusers_dict(self) -> dict[str, Any]:
    """The config as diffusers' `UNet2DModel` config.json keys (JSON-ready, no metadata keys)."""
    d = dataclasses.asdict(self)
    for k, v in d.items():
      if isinstance(v, tuple):
        d[k] = list(v)
    return d

  @classmethod
  def from_diffusers_dict(cls, d: Mapping[str, Any], *, ignore_unknown: bool = False) -> UNetConfig:
    """Builds a config from a diffusers `UNet2DModel` config dict (e.g. a parsed config.json).

    Keys starting with "_" (`_class_name`, `_diffusers_version`, ...) are metadata and
    ignored; a missing key takes diffusers' default.

    Args:
      d: the config dict.
      ignore_unknown: drop keys that are not UNet2DModel options instead of raising.

    Returns:
      The config.

    Raises:
      ValueError: `_class_name` is not UNet2DModel, an unknown key (unless
        `ignore_unknown`), or an invalid value, naming the option.
      UnsupportedOptionError: (also a ValueError) a diffusers option jaxgen does not implement.
    """
    if not isinstance(d, Mapping):
      raise TypeError(f"from_diffusers_dict expects a dict, got {type(d).__name__}")
    class_name = d.get("_class_name", "UNet2DModel")
    if class_name != "UNet2DModel":
      raise ValueError(f"UNetConfig.from_diffusers_dict: _class_name={class_name!r}, expected "
                       "'UNet2DModel' (the config of a different diffusers model)")
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: v for k, v in d.items() if not k.startswith("_")}
    unknown = sorted(set(kwargs) - fields)
    if unknown and not ignore_unknown:
      raise ValueError(f"UNetConfig.from_diffusers_dict: unknown option(s) {unknown}; known: "
                       f"{sorted(fields)} (pass ignore_unknown=True to drop them)")
    return cls(**{k: v for k, v in kwargs.items() if k in fields})

  @classmethod
  def ddpm_cifar10(cls, **overrides) -> UNetConfig:
    """The DDPM paper's CIFAR-10 model (Ho et al. 2020, app. B; google/ddpm-cifar10-32), 35.7M params.

    Args:
      **overrides: fields to change (e.g. `dropout=0.0`, `num_class_embeds=10`).
    """
    kw = dict(
        sample_size=32, in_channels=3, out_channels=3, block_out_channels=(128, 256, 256, 256),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        norm_eps=1e-6, norm_num_groups=32, freq_shift=1, flip_sin_to_cos=False,
        downsample_padding=0, dropout=0.1, attention_head_dim=None, mid_block_scale_factor=1.0)
    kw.update(overrides)
    return cls(**kw)


class UNet2D(nn.Module):
  """The DDPM noise-prediction U-Net (Ho et al. 2020), diffusers `UNet2DModel` in Flax, NHWC.

  Attributes:
    config: the architecture.
    dtype: computation dtype (e.g. jnp.bfloat16); parameters are always float32 and the
      output is float32.
    remat_policy: rematerialise every down, mid and up block in the backward pass with this
      `jaxgen.nn.remat.REMAT_POLICIES` policy (None: keep all activations). Same parameters
      and results; less activation memory, one more forward per block.
  """
  config: UNetConfig
  dtype: Any = jnp.float32
  remat_policy: str | None = None

  def _check_inputs(self, x, t, y, train):
    cfg = self.config
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
      raise TypeError(f"UNet2D: x must be an array [B, H, W, {cfg.in_channels}], got {type(x).__name__}")
    if x.ndim != 4:
      raise ValueError(f"UNet2D: x must be NHWC [B, H, W, {cfg.in_channels}], got shape {tuple(x.shape)}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
      raise TypeError(f"UNet2D: x must be floating point (images in [-1, 1]), got dtype {x.dtype}")
    b, h, w, c = x.shape
    if c != cfg.in_channels:
      hint = " (it looks NCHW: transpose to NHWC)" if x.shape[1] == cfg.in_channels else ""
      raise ValueError(f"UNet2D: x must be [B, H, W, {cfg.in_channels}] (in_channels={cfg.in_channels}), "
                       f"got shape {tuple(x.shape)}{hint}")
    f = cfg.downsample_factor
    if h % f or w % f or h == 0 or w == 0:
      raise ValueError(f"UNet2D: H and W must be positive multiples of 2**(num_levels-1) = {f} for "
                       f"{cfg.num_levels} levels, got x of shape {tuple(x.shape)}; expected e.g. "
                       f"[{b}, {max(f, h // f * f)}, {max(f, w // f * f)}, {c}]")
    t = jnp.asarray(t)
    if t.ndim == 1 and t.shape[0] in (1, b):
      t = jnp.broadcast_to(t, (b,))
    elif t.ndim == 0:
      t = jnp.broadcast_to(t, (b,))
    else:
      raise ValueError(f"UNet2D: t must be a scalar or have shape [B] = [{b}], got shape {t.shape}")
    if not (jnp.issubdtype(t.dtype, jnp.integer) or jnp.issubdtype(t.dtype, jnp.floating)):
      raise TypeError(f"UNet2D: t must be int or float, got dtype {t.dtype}")
    if cfg.num_class_embeds is None:
      if y is not None:
        raise ValueError("UNet2D: class labels y were given but the config has num_class_embeds=None; "
                         "set num_class_embeds for a class-conditional model or pass y=None")
    else:
      if y is None:
        raise ValueError(f"UNet2D: this model is class-conditional (num_class_embeds="
                         f"{cfg.num_class_embeds}); pass int labels y of shape [B] = [{b}]")
      y = jnp.asarray(y) if not isinstance(y, jax.Array) else y
      if y.shape != (b,):
        raise ValueError(f"UNet2D: y must have shape [B] = [{b}], got {y.shape}")
      if not jnp.issubdtype(y.dtype, jnp.integer):
        raise TypeError(f"UNet2D: y must be integer class labels, got dtype {y.dtype}")
      if not isinstance(y, jax.core.Tracer):
        yv = np.asarray(y)
        if yv.size and (yv.min() < 0 or yv.max() >= cfg.num_class_embeds):
          raise ValueError(f"UNet2D: class labels must lie in [0, {cfg.num_class_embeds}), got "
                           f"min {yv.min()} max {yv.max()}")
    if train and cfg.dropout > 0 and not self.has_rng("dropout"):
      raise ValueError(f"UNet2D: train=True with dropout={cfg.dropout} needs a dropout key: "
                       "apply(..., rngs={'dropout': key})")
    return t, y

  @nn.compact
  def __call__(self, x: jax.Array, t: Any, y: jax.Array | None = None, *,
               train: bool = False) -> jax.Array:
    """Predicts the noise of `x` at timestep `t`.

    Args:
      x: noisy images, NHWC float.  # [B, H, W, in_channels]
      t: timesteps (0-indexed), int or float, scalar or [B]. Fractional values are used as
        they are (diffusers truncates Python floats, not float tensors).
      y: int class labels in [0, num_class_embeds), required iff `num_class_embeds` is set.  # [B]
        Labels are range-checked when concrete; under jit they cannot be, and an
        out-of-range (or negative) label gives a NaN embedding, hence NaN output for that
        example.
      train: enables dropout, drawn from the 'dropout' rng.

    Returns:
      float32 prediction.  # [B, H, W, out_channels]
    """
    cfg = self.config
    t, y = self._check_inputs(x, t, y, train)
    check_remat_policy(self.remat_policy, "UNet2D.remat_policy")
    remat = self.remat_policy
    c0 = cfg.block_out_channels[0]
    if cfg.center_input_sample:
      x = 2.0 * x - 1.0
    x = x.astype(self.dtype)

    emb = timestep_embedding(t, c0, flip_sin_to_cos=cfg.flip_sin_to_cos, freq_shift=cfg.freq_shift)
    emb = TimestepEmbedding(cfg.time_embed_dim, dtype=self.dtype, name="time_embedding")(emb)
    if cfg.num_class_embeds is not None:
      # Negative labels would wrap around in the gather; send them out of range so that any
      # invalid label (unchecked under jit) gives a NaN embedding instead of a wrong class.
      y = jnp.where(y < 0, cfg.num_class_embeds, y)
      class_emb = nn.Embed(cfg.num_class_embeds, cfg.time_embed_dim, dtype=self.dtype,
                           param_dtype=jnp.float32, embedding_init=nn.initializers.normal(1.0),
                           name="class_embedding")(y)
      emb = emb + class_emb  # [B, T]

    h = _conv(c0, 3, "conv_in", self.dtype)(x)
    skips = [h]
    n = cfg.num_levels
    common = dict(groups=cfg.norm_num_groups, eps=cfg.norm_eps, dropout=cfg.dropout,
                  attention_head_dim=cfg.attention_head_dim, dtype=self.dtype)
    for i, (kind, ch) in enumerate(zip(cfg.down_block_types, cfg.block_out_channels)):
      block = DownBlock(ch, cfg.layers_per_block, attention=kind == "AttnDownBlock2D",
                        add_downsample=i < n - 1, downsample_padding=cfg.downsample_padding,
                        **common, name=f"down_blocks_{i}")
      h, res = call_block(block, remat, h, emb, train=train)
      skips.extend(res)
    if cfg.mid_block_type is not None:
      block = MidBlock(cfg.block_out_channels[-1], attention=cfg.add_attention,
                       attn_groups=cfg.attn_norm_num_groups or cfg.norm_num_groups,
                       output_scale_factor=float(cfg.mid_block_scale_factor), **common,
                       name="mid_block")
      h = call_block(block, remat, h, emb, train=train)
    rev = cfg.block_out_channels[::-1]
    for i, kind in enumerate(cfg.up_block_types):
      k = cfg.layers_per_block + 1
      res, skips = skips[-k:], skips[:-k]
      block = UpBlock(rev[i], k, attention=kind == "AttnUpBlock2D", add_upsample=i < n - 1,
                      **common, name=f"up_blocks_{i}")
      h = call_block(block, remat, h, tuple(res), emb, train=train)
    h = _group_norm(cfg.norm_num_groups, cfg.norm_eps, "conv_norm_out", self.dtype)(h)
    h = nn.silu(h)
    h = _conv(cfg.out_channels, 3, "conv_out", self.dtype)(h)
    return h.astype(jnp.float32)  # [B, H, W, out_channels]


def init_unet(model: UNet2D, key: jax.Array) -> Any:
  """Draws fresh parameters for `model` with the distributions its modules declare.

  Same tree and distributions as `model.init(...)["params"]` (kernels
  U(-1/sqrt(fan_in), 1/sqrt(fan_in)) as PyTorch, zero biases, unit GroupNorm scales,
  N(0, 1) class embeddings), but drawn with two random calls instead of several per
  parameter (see `jaxgen.nn.init.init_from_shapes`): kernels from `split(key)[0]`,
  embeddings from `split(key)[1]`. The values differ from `model.init`'s.

  Args:
    model: the module.
    key: PRNG key.

  Returns:
    The float32 parameter tree (`variables["params"]`).
  """
  k_kernel, k_embed = jax.random.split(key)
  return init_from_shapes(param_shapes(model), k_kernel, kernel="uniform", embedding_key=k_embed)


def param_shapes(model: UNet2D) -> Any:
  """The parameter tree of `model` as `jax.ShapeDtypeStruct`s (eval_shape: no compile, no memory)."""
  cfg = model.config
  f = cfg.downsample_factor
  y = None if cfg.num_class_embeds is None else jax.ShapeDtypeStruct((1,), jnp.int32)
  return module_param_shapes(model, jax.ShapeDtypeStruct((1, f, f, cfg.in_channels), jnp.float32),
                             jax.ShapeDtypeStruct((1,), jnp.int32), y)


def count_params(params: Any) -> int:
  """Total number of scalars in a parameter tree (arrays or ShapeDtypeStructs)."""
  return int(sum(np.prod(p.shape, dtype=np.int64) for p in jax.tree_util.tree_leaves(params)))
