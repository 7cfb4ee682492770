"""Latent diffusion's text-conditioned U-Net as a Flax module mirroring diffusers'
`UNet2DConditionModel` (the Stable Diffusion 1.x / 2.x layouts).

`UNet2DConditionConfig` has the fields, defaults and meaning of `UNet2DConditionModel`'s
config, and `UNet2DConditionModel` the same submodule and parameter names
(`down_blocks_0.attentions_1.transformer_blocks_0.attn2.to_k`, ...), so a diffusers
checkpoint imports 1:1 with `jaxgen.interop.diffusers_unet2d_condition`. Activations are NHWC.

The supported subset is what Stable Diffusion 1.x / 2.x use: positional time embedding,
`CrossAttnDownBlock2D` / `DownBlock2D` / `CrossAttnUpBlock2D` / `UpBlock2D`,
`UNetMidBlock2DCrossAttn` (or none), conv or linear transformer projections, SiLU and
additive time conditioning. SDXL's added embeddings, class embeddings and the other
upstream options raise `jaxgen.nn.unet.UnsupportedOptionError`.

References:
  Rombach et al. (2022), "High-Resolution Image Synthesis with Latent Diffusion Models",
  sec. 3.3 (the conditioning U-Net with cross-attention).
  Ho, Jain, Abbeel (2020), "Denoising Diffusion Probabilistic Models", app. B (the U-Net).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.nn.init import init_from_shapes, module_param_shapes
from jaxgen.nn.layers import DownBlock, TimestepEmbedding, UpBlock, _conv, _group_norm, timestep_embedding
from jaxgen.nn.remat import call_block, check_remat_policy
from jaxgen.nn.transformer2d import CrossAttnDownBlock, CrossAttnMidBlock, CrossAttnUpBlock
from jaxgen.nn.unet import UnsupportedOptionError

CROSS_DOWN, CROSS_UP, CROSS_MID = "CrossAttnDownBlock2D", "CrossAttnUpBlock2D", "UNetMidBlock2DCrossAttn"
DOWN_BLOCK_TYPES = (CROSS_DOWN, "DownBlock2D")
UP_BLOCK_TYPES = ("UpBlock2D", CROSS_UP)
_SD_DOWN = (CROSS_DOWN, CROSS_DOWN, CROSS_DOWN, "DownBlock2D")
_SD_UP = ("UpBlock2D", CROSS_UP, CROSS_UP, CROSS_UP)

# Values diffusers' UNet2DConditionModel accepts but this module does not implement.
_KNOWN_UNSUPPORTED = {
    "time_embedding_type": ("fourier",),
    "resnet_time_scale_shift": ("scale_shift", "spatial", "ada_group"),
    "act_fn": ("mish", "gelu", "relu"),
    "attention_type": ("gated", "gated-text-image"),
    "mid_block_type": ("UNetMidBlock2DSimpleCrossAttn", "UNetMidBlock2D"),
    "down_block_types": ("AttnDownBlock2D", "SimpleCrossAttnDownBlock2D", "ResnetDownsampleBlock2D",
                         "SkipDownBlock2D", "AttnSkipDownBlock2D", "KDownBlock2D",
                         "KCrossAttnDownBlock2D", "DownEncoderBlock2D", "AttnDownEncoderBlock2D"),
    "up_block_types": ("AttnUpBlock2D", "SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D",
                       "SkipUpBlock2D", "AttnSkipUpBlock2D", "KUpBlock2D", "KCrossAttnUpBlock2D",
                       "UpDecoderBlock2D", "AttnUpDecoderBlock2D"),
}
# Options (SDXL, Kandinsky, GLIGEN, class conditioning, ...) supported only at their default.
_DEFAULT_ONLY = ("reverse_transformer_layers_per_block", "encoder_hid_dim", "encoder_hid_dim_type",
                 "dual_cross_attention", "class_embed_type", "addition_embed_type",
                 "addition_time_embed_dim", "num_class_embeds", "time_embedding_act_fn",
                 "timestep_post_act", "time_cond_proj_dim", "projection_class_embeddings_input_dim",
                 "class_embeddings_concat")
# Per-level options: one value for every level, or a list with one entry per level.
_PER_LEVEL = ("only_cross_attention", "layers_per_block", "cross_attention_dim",
              "transformer_layers_per_block", "attention_head_dim")


def _unsupported(option: str, value: Any, supported: Any) -> UnsupportedOptionError:
  return UnsupportedOptionError(
      f"UNet2DConditionConfig: {option}={value!r} is a diffusers option that jaxgen does not "
      f"implement; supported: {supported!r}")


def _bad(option: str, value: Any, expected: str) -> ValueError:
  return ValueError(f"UNet2DConditionConfig: invalid {option}={value!r}; expected {expected}")


def _is_int(v: Any) -> bool:
  return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


@dataclasses.dataclass(frozen=True)
class UNet2DConditionConfig:
  """Configuration of `UNet2DConditionModel`, field for field diffusers' `UNet2DConditionModel`
  config (same names, defaults and meaning; lists are stored as tuples).

  The per-level options (`only_cross_attention`, `layers_per_block`, `cross_attention_dim`,
  `transformer_layers_per_block`, `attention_head_dim`) take one value or one per level;
  the up path reads them in reverse. As in diffusers, `attention_head_dim` is the number of
  attention heads of each level (a historical misnomer: SD 1.5 has 8 heads everywhere,
  SD 2.1 [5, 10, 20, 20] heads of width 64), the head width being `channels // heads`, and
  `num_attention_heads` must stay None (diffusers refuses it).

  Attributes: the diffusers options. Supported: sample_size (metadata), in_channels,
  out_channels, center_input_sample (`x -> 2x - 1`), flip_sin_to_cos, freq_shift,
  down_block_types (CrossAttnDownBlock2D / DownBlock2D), mid_block_type
  (UNetMidBlock2DCrossAttn or None), up_block_types (UpBlock2D / CrossAttnUpBlock2D),
  only_cross_attention, block_out_channels, layers_per_block (resnets per down level, one
  more per up level), downsample_padding, mid_block_scale_factor, dropout (resnets only,
  as diffusers), act_fn ("silu" / "swish"), norm_num_groups, norm_eps,
  cross_attention_dim (width of encoder_hidden_states), transformer_layers_per_block,
  attention_head_dim, use_linear_projection, upcast_attention (accepted: the softmax is
  float32 anyway), time_embedding_dim (None = 4 * block_out_channels[0]), conv_in_kernel,
  conv_out_kernel (odd). Accepted without effect, as in diffusers for these block types:
  resnet_skip_time_act, resnet_out_scale_factor, mid_block_only_cross_attention,
  cross_attention_norm, addition_embed_type_num_heads. Every other option must keep its
  default (UnsupportedOptionError otherwise).
  """
  sample_size: int | tuple[int, int] | None = None
  in_channels: int = 4
  out_channels: int = 4
  center_input_sample: bool = False
  flip_sin_to_cos: bool = True
  freq_shift: float = 0
  down_block_types: tuple[str, ...] = _SD_DOWN
  mid_block_type: str | None = CROSS_MID
  up_block_types: tuple[str, ...] = _SD_UP
  only_cross_attention: bool | tuple[bool, ...] = False
  block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
  layers_per_block: int | tuple[int, ...] = 2
  downsample_padding: int = 1
  mid_block_scale_factor: float = 1
  dropout: float = 0.0
  act_fn: str = "silu"
  norm_num_groups: int = 32
  norm_eps: float = 1e-5
  cross_attention_dim: int | tuple[int, ...] = 1280
  transformer_layers_per_block: int | tuple[int, ...] = 1
  reverse_transformer_layers_per_block: Any = None
  encoder_hid_dim: int | None = None
  encoder_hid_dim_type: str | None = None
  attention_head_dim: int | tuple[int, ...] = 8
  num_attention_heads: int | tuple[int, ...] | None = None
  dual_cross_attention: bool = False
  use_linear_projection: bool = False
  class_embed_type: str | None = None
  addition_embed_type: str | None = None
  addition_time_embed_dim: int | None = None
  num_class_embeds: int | None = None
  upcast_attention: bool = False
  resnet_time_scale_shift: str = "default"
  resnet_skip_time_act: bool = False
  resnet_out_scale_factor: float = 1.0
  time_embedding_type: str = "positional"
  time_embedding_dim: int | None = None
  time_embedding_act_fn: str | None = None
  timestep_post_act: str | None = None
  time_cond_proj_dim: int | None = None
  conv_in_kernel: int = 3
  conv_out_kernel: int = 3
  projection_class_embeddings_input_dim: int | None = None
  attention_type: str = "default"
  class_embeddings_concat: bool = False
  mid_block_only_cross_attention: bool | None = None
  cross_attention_norm: str | None = None
  addition_embed_type_num_heads: int = 64

  def __post_init__(self):
    for name in ("down_block_types", "up_block_types", "block_out_channels"):
      value = getattr(self, name)
      if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise _bad(name, value, "a list or tuple")
      object.__setattr__(self, name, tuple(value))
    for name in ("down_block_types", "up_block_types"):  # diffusers strips a "UNetRes" prefix
      object.__setattr__(self, name, tuple(b[7:] if isinstance(b, str) and b.startswith("UNetRes")
                                           else b for b in getattr(self, name)))
    for name in _PER_LEVEL + ("sample_size", "num_attention_heads"):
      if isinstance(getattr(self, name), list):
        object.__setattr__(self, name, tuple(getattr(self, name)))
    self._validate()

  def _validate(self):
    def choice(option, allowed):
      value = getattr(self, option)
      if value in allowed:
        return
      if value in _KNOWN_UNSUPPORTED.get(option, ()):
        raise _unsupported(option, value, allowed)
      raise _bad(option, value, f"one of {allowed!r}")

    if self.num_attention_heads is not None:
      raise ValueError(
          f"UNet2DConditionConfig: num_attention_heads={self.num_attention_heads!r} is refused by "
          "diffusers' UNet2DConditionModel too; leave it None and give the number of heads per "
          "level as attention_head_dim (e.g. 8 for SD 1.5, [5, 10, 20, 20] for SD 2.1)")
    for option in _DEFAULT_ONLY:
      default = _FIELD_DEFAULTS[option]
      if getattr(self, option) != default:
        raise _unsupported(option, getattr(self, option), default)
    choice("time_embedding_type", ("positional",))
    choice("resnet_time_scale_shift", ("default",))
    choice("act_fn", ("silu", "swish"))
    choice("attention_type", ("default",))
    choice("mid_block_type", (CROSS_MID, None))
    for option, allowed in (("down_block_types", DOWN_BLOCK_TYPES), ("up_block_types", UP_BLOCK_TYPES)):
      for b in getattr(self, option):
        if b not in allowed:
          if b in _KNOWN_UNSUPPORTED[option]:
            raise _unsupported(option, b, allowed)
          raise _bad(option, b, f"entries from {allowed!r}")
    n = len(self.block_out_channels)
    if n == 0 or len(self.down_block_types) != n or len(self.up_block_types) != n:
      raise ValueError(
          "UNet2DConditionConfig: block_out_channels, down_block_types and up_block_types must "
          f"have the same non-zero length; got {n}, {len(self.down_block_types)}, "
          f"{len(self.up_block_types)}")
    for option in ("in_channels", "out_channels", "norm_num_groups"):
      if not _is_int(getattr(self, option)) or getattr(self, option) < 1:
        raise _bad(option, getattr(self, option), "a positive int")
    for c in self.block_out_channels:
      if not _is_int(c) or c < 1 or c % self.norm_num_groups:
        raise _bad("block_out_channels", self.block_out_channels,
                   f"positive ints divisible by norm_num_groups={self.norm_num_groups}")
    for option in _PER_LEVEL:
      value = getattr(self, option)
      kind = bool if option == "only_cross_attention" else int
      ok = (lambda v: isinstance(v, bool)) if kind is bool else (lambda v: _is_int(v) and v >= 1)
      values = value if isinstance(value, tuple) else (value,)
      if (isinstance(value, tuple) and len(value) != n) or not all(ok(v) for v in values):
        what = "a bool" if kind is bool else "a positive int"
        raise _bad(option, value, f"{what} or a list of {n} (one per level)")
    for c, h in zip(self.block_out_channels, self.heads):
      if h > c:
        raise _bad("attention_head_dim", self.attention_head_dim,
                   f"at most block_out_channels={self.block_out_channels} heads per level "
                   "(diffusers reads it as the number of heads)")
    for option in ("conv_in_kernel", "conv_out_kernel"):
      k = getattr(self, option)
      if not _is_int(k) or k < 1 or k % 2 == 0:
        raise _bad(option, k, "an odd positive int (the output keeps the input's size)")
    if self.time_embedding_dim is not None and (not _is_int(self.time_embedding_dim)
                                                or self.time_embedding_dim < 1):
      raise _bad("time_embedding_dim", self.time_embedding_dim, "None or a positive int")
    if not 0.0 <= self.dropout < 1.0:
      raise _bad("dropout", self.dropout, "a rate in [0, 1)")
    if not _is_int(self.downsample_padding) or self.downsample_padding < 0:
      raise _bad("downsample_padding", self.downsample_padding, "an int >= 0")
    if self.norm_eps <= 0:
      raise _bad("norm_eps", self.norm_eps, "a positive float")
    if self.mid_block_scale_factor == 0:
      raise _bad("mid_block_scale_factor", self.mid_block_scale_factor, "a non-zero float")
    if self.block_out_channels[0] // 2 == self.freq_shift:
      raise _bad("freq_shift", self.freq_shift, "a value != block_out_channels[0] // 2")

  def per_level(self, option: str) -> tuple:
    """The value of a per-level option for each level, finest first."""
    value = getattr(self, option)
    return value if isinstance(value, tuple) else (value,) * self.num_levels

  @property
  def heads(self) -> tuple[int, ...]:
    """Attention heads of each level (diffusers' `attention_head_dim`, see the class doc)."""
    return self.per_level("attention_head_dim")

  @property
  def num_levels(self) -> int:
    return len(self.block_out_channels)

  @property
  def time_embed_dim(self) -> int:
    """Width of the time embedding."""
    return self.time_embedding_dim or 4 * self.block_out_channels[0]

  @property
  def downsample_factor(self) -> int:
    """H and W must be multiples of this: `2 ** (num_levels - 1)`."""
    return 2 ** (self.num_levels - 1)

  @property
  def context_dims(self) -> tuple[int, ...]:
    """The distinct `cross_attention_dim`s that the cross-attention blocks read."""
    dims = self.per_level("cross_attention_dim")
    used = [d for d, b in zip(dims, self.down_block_types) if b == CROSS_DOWN]
    used += [d for d, b in zip(dims[::-1], self.up_block_types) if b == CROSS_UP]
    used += [dims[-1]] if self.mid_block_type == CROSS_MID else []
    return tuple(sorted(set(used)))

  def to_diffusers_dict(self) -> dict[str, Any]:
    """The config as diffusers' `UNet2DConditionModel` config.json keys (JSON-ready, no
    metadata keys)."""
    d = dataclasses.asdict(self)
    for k, v in d.items():
      if isinstance(v, tuple):
        d[k] = list(v)
    return d

  @classmethod
  def from_diffusers_dict(cls, d: Mapping[str, Any], *,
                          ignore_unknown: bool = False) -> UNet2DConditionConfig:
    """Builds a config from a diffusers `UNet2DConditionModel` config dict (a parsed config.json).

    Keys starting with "_" (`_class_name`, `_diffusers_version`, ...) are metadata and
    ignored; a missing key takes diffusers' default.

    Args:
      d: the config dict.
      ignore_unknown: drop keys that are not UNet2DConditionModel options instead of raising.

    Returns:
      The config.

    Raises:
      ValueError: `_class_name` is not UNet2DConditionModel, an unknown key (unless
        `ignore_unknown`), or an invalid value, naming the option.
      UnsupportedOptionError: (also a ValueError) a diffusers option jaxgen does not implement.
    """
    if not isinstance(d, Mapping):
      raise TypeError(f"from_diffusers_dict expects a dict, got {type(d).__name__}")
    class_name = d.get("_class_name", "UNet2DConditionModel")
    if class_name != "UNet2DConditionModel":
      raise ValueError(f"UNet2DConditionConfig.from_diffusers_dict: _class_name={class_name!r}, "
                       "expected 'UNet2DConditionModel' (the config of a different diffusers model)")
    kwargs = {k: v for k, v in d.items() if not k.startswith("_")}
    unknown = sorted(set(kwargs) - set(_FIELD_DEFAULTS))
    if unknown and not ignore_unknown:
      raise ValueError(f"UNet2DConditionConfig.from_diffusers_dict: unknown option(s) {unknown}; "
                       f"known: {sorted(_FIELD_DEFAULTS)} (pass ignore_unknown=True to drop them)")
    return cls(**{k: v for k, v in kwargs.items() if k in _FIELD_DEFAULTS})


_FIELD_DEFAULTS = {f.name: f.default for f in dataclasses.fields(UNet2DConditionConfig)}


class UNet2DConditionModel(nn.Module):
  """The text-conditioned noise-prediction U-Net of latent diffusion (Rombach et al. 2022),
  diffusers `UNet2DConditionModel` in Flax, NHWC.

  Attributes:
    config: the architecture.
    dtype: computation dtype (e.g. jnp.bfloat16); parameters are always float32, the
      softmax float32, and the output float32.
    remat_policy: rematerialise every down, mid and up block in the backward pass with this
      `jaxgen.nn.remat.REMAT_POLICIES` policy (None: keep all activations).
  """
  config: UNet2DConditionConfig
  dtype: Any = jnp.float32
  remat_policy: str | None = None

  def _check_inputs(self, x, t, context, train):
    cfg = self.config
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
      raise TypeError(f"UNet2DConditionModel: latents must be an array [B, H, W, {cfg.in_channels}], "
                      f"got {type(x).__name__}")
    if x.ndim != 4 or not jnp.issubdtype(x.dtype, jnp.floating):
      raise ValueError(f"UNet2DConditionModel: latents must be float NHWC [B, H, W, "
                       f"{cfg.in_channels}], got shape {tuple(x.shape)} dtype {x.dtype}")
    b, h, w, c = x.shape
    if c != cfg.in_channels:
      hint = " (it looks NCHW: transpose to NHWC)" if x.shape[1] == cfg.in_channels else ""
      raise ValueError(f"UNet2DConditionModel: latents must be [B, H, W, {cfg.in_channels}] "
                       f"(in_channels={cfg.in_channels}), got shape {tuple(x.shape)}{hint}")
    f = cfg.downsample_factor
    if h % f or w % f or h == 0 or w == 0:
      raise ValueError(f"UNet2DConditionModel: H and W must be positive multiples of "
                       f"2**(num_levels-1) = {f} for {cfg.num_levels} levels, got latents of shape "
                       f"{tuple(x.shape)}; expected e.g. [{b}, {max(f, h // f * f)}, "
                       f"{max(f, w // f * f)}, {c}]")
    t = jnp.asarray(t)
    if t.ndim > 1 or (t.ndim == 1 and t.shape[0] not in (1, b)):
      raise ValueError(f"UNet2DConditionModel: t must be a scalar or have shape [B] = [{b}], got "
                       f"shape {t.shape}")
    if not (jnp.issubdtype(t.dtype, jnp.integer) or jnp.issubdtype(t.dtype, jnp.floating)):
      raise TypeError(f"UNet2DConditionModel: t must be int or float, got dtype {t.dtype}")
    dims = cfg.context_dims
    if len(dims) > 1:
      raise ValueError(f"UNet2DConditionModel: the config's cross-attention blocks read different "
                       f"widths {list(dims)} (cross_attention_dim={cfg.cross_attention_dim}); one "
                       "encoder_hidden_states cannot feed them all")
    if dims:
      want = f"[B, L, cross_attention_dim] = [{b}, L, {dims[0]}]"
      if context is None or not hasattr(context, "ndim") or context.ndim != 3:
        got = None if context is None else getattr(context, "shape", type(context).__name__)
        raise ValueError(f"UNet2DConditionModel: encoder_hidden_states must be {want}, got {got}")
      if context.shape[-1] != dims[0]:
        raise ValueError(f"UNet2DConditionModel: encoder_hidden_states has feature width "
                         f"{context.shape[-1]} but the config has cross_attention_dim={dims[0]}; "
                         f"expected {want}, got shape {tuple(context.shape)} (a text encoder of "
                         "another model?)")
      if context.shape[0] != b:
        raise ValueError(f"UNet2DConditionModel: encoder_hidden_states batch {context.shape[0]} != "
                         f"latents batch {b}; expected {want}, got shape {tuple(context.shape)}")
      context = context.astype(self.dtype)
    if train and cfg.dropout > 0 and not self.has_rng("dropout"):
      raise ValueError(f"UNet2DConditionModel: train=True with dropout={cfg.dropout} needs a "
                       "dropout key: apply(..., rngs={'dropout': key})")
    return jnp.broadcast_to(t, (b,)), context

  @nn.compact
  def __call__(self, x: jax.Array, t: Any, encoder_hidden_states: jax.Array | None, *,
               train: bool = False) -> jax.Array:
    """Predicts the noise of latents `x` at timestep `t` given the conditioning tokens.

    Args:
      x: noisy latents, NHWC float.  # [B, h, w, in_channels]
      t: timesteps (0-indexed), int or float, scalar or [B].
      encoder_hidden_states: conditioning tokens (e.g. CLIP text states); may be None only
        when no block attends to them.  # [B, L, cross_attention_dim]
      train: enables the resnets' dropout, drawn from the 'dropout' rng.

    Returns:
      float32 prediction.  # [B, h, w, out_channels]
    """
    cfg = self.config
    t, ctx = self._check_inputs(x, t, encoder_hidden_states, train)
    check_remat_policy(self.remat_policy, "UNet2DConditionModel.remat_policy")
    remat = self.remat_policy
    c0, n = cfg.block_out_channels[0], cfg.num_levels
    if cfg.center_input_sample:
      x = 2.0 * x - 1.0
    x = x.astype(self.dtype)
    emb = timestep_embedding(t, c0, flip_sin_to_cos=cfg.flip_sin_to_cos, freq_shift=cfg.freq_shift)
    emb = TimestepEmbedding(cfg.time_embed_dim, dtype=self.dtype, name="time_embedding")(emb)

    p = (cfg.conv_in_kernel - 1) // 2
    h = _conv(c0, cfg.conv_in_kernel, "conv_in", self.dtype, padding=((p, p), (p, p)))(x)
    layers, tlayers, heads, only_cross = (cfg.per_level(o) for o in (
        "layers_per_block", "transformer_layers_per_block", "attention_head_dim",
        "only_cross_attention"))
    common = dict(groups=cfg.norm_num_groups, eps=cfg.norm_eps, dropout=cfg.dropout, dtype=self.dtype)
    attn = dict(use_linear_projection=cfg.use_linear_projection, **common)
    skips = [h]
    for i, (kind, ch) in enumerate(zip(cfg.down_block_types, cfg.block_out_channels)):
      down = dict(add_downsample=i < n - 1, downsample_padding=cfg.downsample_padding,
                  name=f"down_blocks_{i}")
      if kind == CROSS_DOWN:
        block = CrossAttnDownBlock(ch, layers[i], tlayers[i], heads[i],
                                   only_cross_attention=only_cross[i], **attn, **down)
        h, res = call_block(block, remat, h, emb, ctx, train=train)
      else:
        h, res = call_block(DownBlock(ch, layers[i], **common, **down), remat, h, emb, train=train)
      skips.extend(res)
    if cfg.mid_block_type == CROSS_MID:
      block = CrossAttnMidBlock(cfg.block_out_channels[-1], 1, tlayers[-1], heads[-1], **attn,
                                output_scale_factor=float(cfg.mid_block_scale_factor),
                                name="mid_block")
      h = call_block(block, remat, h, emb, ctx, train=train)
    # The up path reads every per-level option in reverse (level n-1 first).
    for i, kind in enumerate(cfg.up_block_types):
      j = n - 1 - i
      k = layers[j] + 1
      res, skips = tuple(skips[-k:]), skips[:-k]
      ch, up = cfg.block_out_channels[j], dict(add_upsample=i < n - 1, name=f"up_blocks_{i}")
      if kind == CROSS_UP:
        block = CrossAttnUpBlock(ch, k, tlayers[j], heads[j], only_cross_attention=only_cross[j],
                                 **attn, **up)
        h = call_block(block, remat, h, res, emb, ctx, train=train)
      else:
        h = call_block(UpBlock(ch, k, **common, **up), remat, h, res, emb, train=train)
    h = _group_norm(cfg.norm_num_groups, cfg.norm_eps, "conv_norm_out", self.dtype)(h)
    h = nn.silu(h)
    p = (cfg.conv_out_kernel - 1) // 2
    h = _conv(cfg.out_channels, cfg.conv_out_kernel, "conv_out", self.dtype,
              padding=((p, p), (p, p)))(h)
    return h.astype(jnp.float32)  # [B, h, w, out_channels]


def unet_condition_param_shapes(model: UNet2DConditionModel) -> Any:
  """The parameter tree of `model` as `jax.ShapeDtypeStruct`s (eval_shape: no compile, no memory)."""
  cfg = model.config
  f = cfg.downsample_factor
  dims = cfg.context_dims or (1,)
  return module_param_shapes(model, jax.ShapeDtypeStruct((1, f, f, cfg.in_channels), jnp.float32),
                             jax.ShapeDtypeStruct((1,), jnp.int32),
                             jax.ShapeDtypeStruct((1, 1, dims[0]), jnp.float32))


def init_unet_condition(model: UNet2DConditionModel, key: jax.Array) -> Any:
  """Draws fresh parameters for `model` with the distributions its modules declare.

  Same tree and distributions as `model.init(...)["params"]` (kernels
  U(-1/sqrt(fan_in), 1/sqrt(fan_in)) as PyTorch, zero biases, unit norm scales), drawn
  with one random call (see `jaxgen.nn.init.init_from_shapes`); the values differ from
  `model.init`'s.

  Args:
    model: the module.
    key: PRNG key.

  Returns:
    The float32 parameter tree (`variables["params"]`).
  """
  return init_from_shapes(unet_condition_param_shapes(model), key, kernel="uniform")
