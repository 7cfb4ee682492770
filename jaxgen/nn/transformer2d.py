"""The spatial transformer of latent diffusion's U-Net, laid out like diffusers' modules.

`Transformer2DModel` treats the H*W positions of an NHWC feature map as tokens and runs
`BasicTransformerBlock`s over them: self-attention, cross-attention to the conditioning
tokens (e.g. CLIP text states) and a GEGLU feed-forward, each pre-LayerNorm with a
residual. Parameter names are diffusers' (`norm`, `proj_in`, `transformer_blocks_0`,
`attn1`, `attn2`, `ff.net_0.proj`, `ff.net_2`, `proj_out`), so diffusers state dicts map
onto the Flax tree by renaming alone (see `jaxgen.interop.diffusers_unet2d_condition`).
The U-Net levels that interleave resnets with these transformers (diffusers'
`CrossAttnDownBlock2D`, `CrossAttnUpBlock2D`, `UNetMidBlock2DCrossAttn`) close the file;
`jaxgen.nn.unet_condition` assembles them.

References:
  Rombach et al. (2022), "High-Resolution Image Synthesis with Latent Diffusion Models",
  sec. 3.3 (the cross-attention conditioning mechanism, the spatial transformer).
  Vaswani et al. (2017), "Attention Is All You Need", sec. 3 (attention, feed-forward).
  Shazeer (2020), "GLU Variants Improve Transformer", sec. 2 (GEGLU).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxgen.nn.attention import Attention
from jaxgen.nn.layers import Downsample2D, ResnetBlock2D, Upsample2D, _conv, _dense, _group_norm

Dtype = Any


class GEGLU(nn.Module):
  """GELU-gated linear unit, `GEGLU(x) = (x W + b) * GELU(x V + c)` (Shazeer 2020, sec. 2).

  Both projections are one dense layer `proj` of width `2 * features` (value half first,
  gate half second, as diffusers' `GEGLU`); the GELU is the exact (erf) one.

  Attributes:
    features: output width.
    dtype: computation dtype.
  """
  features: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Args: x [..., D]. Returns [..., features]."""
    h = _dense(2 * self.features, "proj", self.dtype)(x)
    value, gate = jnp.split(h, 2, axis=-1)
    return value * jax.nn.gelu(gate, approximate=False)


class FeedForward(nn.Module):
  """Position-wise feed-forward `net_2(drop(net_0(x)))` with a GEGLU `net_0` (Vaswani et al.
  2017, eq. 2, with Shazeer's 2020 gated activation; diffusers `FeedForward`).

  Attributes:
    mult: hidden width is `mult * D` for an input of width D.
    dropout: dropout rate after the GEGLU (active only with `train=True`).
    dtype: computation dtype.
  """
  mult: int = 4
  dropout: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    """Args: x [..., D]. Returns [..., D]."""
    h = GEGLU(self.mult * x.shape[-1], dtype=self.dtype, name="net_0")(x)
    if self.dropout > 0.0:
      h = nn.Dropout(self.dropout, deterministic=not train, name="net_1")(h)
    return _dense(x.shape[-1], "net_2", self.dtype)(h)


def _layer_norm(eps: float, name: str, dtype: Dtype) -> nn.LayerNorm:
  # Two-pass variance (E[(x - mu)^2]) as PyTorch.
  return nn.LayerNorm(epsilon=eps, dtype=dtype, param_dtype=jnp.float32, use_fast_variance=False,
                      name=name)


class BasicTransformerBlock(nn.Module):
  """Pre-LayerNorm transformer block with cross-attention (Rombach et al. 2022, sec. 3.3;
  diffusers `BasicTransformerBlock` with `norm_type="layer_norm"` and a GEGLU feed-forward).

    x = x + attn1(norm1(x))            self-attention (cross when `only_cross_attention`)
    x = x + attn2(norm2(x), context)   cross-attention to the conditioning tokens
    x = x + ff(norm3(x))

  Attributes:
    heads: attention heads.
    dim_head: width of one head.
    only_cross_attention: `attn1` also attends to `context` instead of to `x`.
    dropout: dropout rate of the attention outputs and the feed-forward.
    norm_eps: LayerNorm epsilon.
    dtype: computation dtype.
  """
  heads: int
  dim_head: int
  only_cross_attention: bool = False
  dropout: float = 0.0
  norm_eps: float = 1e-5
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array | None = None, *,
               train: bool = False) -> jax.Array:
    """Args: x [B, N, C]; context [B, L, D] (None: attn2 attends to x, as diffusers);
    train enables dropout. Returns [B, N, C]."""
    if self.only_cross_attention and context is None:
      raise ValueError("BasicTransformerBlock with only_cross_attention=True needs a context "
                       "[B, L, D] (encoder_hidden_states)")

    def attention(name):
      return Attention(self.heads, self.dim_head, bias=False, dropout=self.dropout,
                       dtype=self.dtype, name=name)

    h = _layer_norm(self.norm_eps, "norm1", self.dtype)(x)
    x = x + attention("attn1")(h, context if self.only_cross_attention else None, train=train)
    h = _layer_norm(self.norm_eps, "norm2", self.dtype)(x)
    x = x + attention("attn2")(h, context, train=train)
    h = _layer_norm(self.norm_eps, "norm3", self.dtype)(x)
    return x + FeedForward(dropout=self.dropout, dtype=self.dtype, name="ff")(h, train=train)


class Transformer2DModel(nn.Module):
  """Spatial transformer over an NHWC feature map (Rombach et al. 2022, sec. 3.3;
  diffusers `Transformer2DModel` on continuous input).

  `out = x + proj_out(blocks(proj_in(group_norm(x))))`, the H*W positions being the tokens
  of `num_layers` `BasicTransformerBlock`s of width `heads * dim_head`. `proj_in` and
  `proj_out` are 1x1 convolutions (SD 1.x) or dense layers (`use_linear_projection`,
  SD 2.x); the two are the same map, stored in different layouts.

  Attributes:
    heads: attention heads.
    dim_head: width of one head.
    num_layers: transformer blocks.
    norm_num_groups: groups of the input GroupNorm (epsilon 1e-6, as diffusers).
    use_linear_projection: dense `proj_in` / `proj_out` instead of 1x1 convolutions.
    only_cross_attention: see `BasicTransformerBlock`.
    dropout: dropout rate inside the blocks.
    dtype: computation dtype.
  """
  heads: int
  dim_head: int
  num_layers: int = 1
  norm_num_groups: int = 32
  use_linear_projection: bool = False
  only_cross_attention: bool = False
  dropout: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array | None = None, *,
               train: bool = False) -> jax.Array:
    """Args: x [B, H, W, C]; context [B, L, D]; train enables dropout. Returns [B, H, W, C]."""
    if x.ndim != 4:
      raise ValueError(f"Transformer2DModel expects NHWC x [B, H, W, C], got shape {x.shape}")
    b, hgt, wid, c = x.shape
    inner = self.heads * self.dim_head
    h = _group_norm(self.norm_num_groups, 1e-6, "norm", self.dtype)(x)
    if self.use_linear_projection:
      h = _dense(inner, "proj_in", self.dtype)(h.reshape(b, hgt * wid, c))
    else:
      h = _conv(inner, 1, "proj_in", self.dtype)(h).reshape(b, hgt * wid, inner)
    for i in range(self.num_layers):
      h = BasicTransformerBlock(self.heads, self.dim_head, self.only_cross_attention, self.dropout,
                                dtype=self.dtype, name=f"transformer_blocks_{i}")(
                                    h, context, train=train)  # [B, N, inner]
    if self.use_linear_projection:
      h = _dense(c, "proj_out", self.dtype)(h).reshape(b, hgt, wid, c)
    else:
      h = _conv(c, 1, "proj_out", self.dtype)(h.reshape(b, hgt, wid, inner))
    return h + x.astype(h.dtype)  # [B, H, W, C]


class _CrossAttnLevel(nn.Module):
  """Fields shared by the cross-attention levels: resnets each followed by a spatial transformer.

  Attributes:
    out_channels: channels of the level.
    num_layers: resnet + transformer pairs.
    transformer_layers: transformer blocks inside each `Transformer2DModel`.
    heads: attention heads (head width `out_channels // heads`, as diffusers).
    groups, eps: GroupNorm groups and epsilon of the resnets (and groups of the transformers).
    dropout: resnet dropout rate (the transformers have none in diffusers' U-Net).
    use_linear_projection: see `Transformer2DModel`.
    only_cross_attention: see `BasicTransformerBlock`.
    dtype: computation dtype.
  """
  out_channels: int
  num_layers: int
  transformer_layers: int
  heads: int
  groups: int
  eps: float
  dropout: float = 0.0
  use_linear_projection: bool = False
  only_cross_attention: bool = False
  dtype: Any = jnp.float32

  def transformer(self, j: int) -> Transformer2DModel:
    return Transformer2DModel(self.heads, self.out_channels // self.heads, self.transformer_layers,
                              self.groups, self.use_linear_projection, self.only_cross_attention,
                              dtype=self.dtype, name=f"attentions_{j}")

  def resnet(self, j: int, scale: float = 1.0) -> ResnetBlock2D:
    return ResnetBlock2D(self.out_channels, self.groups, self.eps, self.dropout, scale,
                         dtype=self.dtype, name=f"resnets_{j}")


class CrossAttnDownBlock(_CrossAttnLevel):
  """diffusers `CrossAttnDownBlock2D`: `num_layers` (resnet, transformer) pairs, then an
  optional stride-2 conv. Returns the output and the skip states (each pair's output, then
  the downsampled one)."""
  add_downsample: bool = True
  downsample_padding: int = 1

  @nn.compact
  def __call__(self, x, temb, context, *, train: bool = False):
    """Args: x [B, H, W, Cin]; temb [B, T]; context [B, L, D]. Returns (h, skips tuple)."""
    skips = []
    for j in range(self.num_layers):
      x = self.resnet(j)(x, temb, train=train)
      x = self.transformer(j)(x, context, train=train)
      skips.append(x)
    if self.add_downsample:
      x = Downsample2D(self.out_channels, self.downsample_padding, dtype=self.dtype,
                       name="downsamplers_0")(x)
      skips.append(x)
    return x, tuple(skips)


class CrossAttnUpBlock(_CrossAttnLevel):
  """diffusers `CrossAttnUpBlock2D`: each pair's resnet takes `[x, skip]` (skips consumed
  last first), then an optional nearest-2x upsampling + conv."""
  add_upsample: bool = True

  @nn.compact
  def __call__(self, x, skips, temb, context, *, train: bool = False):
    """Args: x [B, H, W, C]; skips: `num_layers` NHWC arrays; temb [B, T]; context [B, L, D]."""
    skips = list(skips)
    for j in range(self.num_layers):
      x = jnp.concatenate([x, skips.pop().astype(x.dtype)], axis=-1)
      x = self.resnet(j)(x, temb, train=train)
      x = self.transformer(j)(x, context, train=train)
    if self.add_upsample:
      x = Upsample2D(self.out_channels, dtype=self.dtype, name="upsamplers_0")(x)
    return x


class CrossAttnMidBlock(_CrossAttnLevel):
  """diffusers `UNetMidBlock2DCrossAttn` (one layer): resnet, transformer, resnet, the
  resnets' sums divided by `output_scale_factor`."""
  output_scale_factor: float = 1.0

  @nn.compact
  def __call__(self, x, temb, context, *, train: bool = False):
    """Args: x [B, H, W, C]; temb [B, T]; context [B, L, D]. Returns [B, H, W, C]."""
    x = self.resnet(0, self.output_scale_factor)(x, temb, train=train)
    x = self.transformer(0)(x, context, train=train)
    return self.resnet(1, self.output_scale_factor)(x, temb, train=train)
