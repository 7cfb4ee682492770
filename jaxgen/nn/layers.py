"""Building blocks of the DDPM U-Net, laid out like diffusers' `UNet2DModel` parts.

Every module keeps the parameter names of its diffusers counterpart (`conv1`, `norm1`,
`time_emb_proj`, `to_q`, `to_out_0`, ...) so that a diffusers state dict maps onto the
Flax parameter tree by renaming alone (see `jaxgen.interop.diffusers_unet2d`).
All activations are NHWC.

References:
  Ho, Jain, Abbeel (2020), "Denoising Diffusion Probabilistic Models", appendix B
  (Wide-ResNet blocks, group norm, self-attention at 16x16, Transformer sinusoidal
  position embedding of t).
  Vaswani et al. (2017), "Attention Is All You Need", section 3.5 (sinusoidal embedding).
"""
from __future__ import annotations

import functools
import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxgen.nn.attention import dot_product_attention, merge_heads, split_heads

Dtype = Any

# PyTorch's default Conv2d/Linear kernel init (kaiming_uniform with a=sqrt(5)) is
# U(-1/sqrt(fan_in), 1/sqrt(fan_in)), i.e. variance 1/(3 fan_in). Using it makes a
# freshly initialised model behave like a freshly initialised diffusers one.
torch_like_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def timestep_embedding(t: jax.Array, dim: int, *, flip_sin_to_cos: bool,
                       freq_shift: float, max_period: float = 10000.0) -> jax.Array:
  """Sinusoidal timestep embedding (Vaswani et al. 2017, sec. 3.5; Ho et al. 2020, app. B).

  With `half = dim // 2` and frequencies `f_i = exp(-log(max_period) * i / (half - freq_shift))`
  for `i = 0..half-1`, the embedding is `[sin(t f), cos(t f)]` (or `[cos, sin]` when
  `flip_sin_to_cos`), zero-padded by one column when `dim` is odd. This is diffusers'
  `get_timestep_embedding` with `downscale_freq_shift = freq_shift` and scale 1; the
  DDPM paper's code corresponds to `freq_shift=1, flip_sin_to_cos=False`.

  Args:
    t: timesteps, int or float.  # [B]
    dim: embedding width.
    flip_sin_to_cos: put the cosine half first.
    freq_shift: the `downscale_freq_shift` of diffusers (0 or 1 in practice).
    max_period: the longest period, 10000 as in the Transformer.

  Returns:
    float32 embedding.  # [B, dim]
  """
  if t.ndim != 1:
    raise ValueError(f"timestep_embedding expects a 1-D array of timesteps [B], got shape {t.shape}")
  half = dim // 2
  if half - freq_shift == 0:
    raise ValueError(f"timestep_embedding: dim={dim} with freq_shift={freq_shift} divides by zero; "
                     "use a larger embedding dim")
  exponent = (-math.log(max_period) * jnp.arange(half, dtype=jnp.float32)) / jnp.float32(half - freq_shift)
  freqs = jnp.exp(exponent)  # [half]
  args = t.astype(jnp.float32)[:, None] * freqs[None, :]  # [B, half]
  if flip_sin_to_cos:
    emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
  else:
    emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)
  if dim % 2 == 1:
    emb = jnp.pad(emb, ((0, 0), (0, 1)))
  return emb  # [B, dim]


def _dense(features: int, name: str, dtype: Dtype, *,
           kernel_init: Callable = torch_like_kernel_init) -> nn.Dense:
  return nn.Dense(features, dtype=dtype, param_dtype=jnp.float32, kernel_init=kernel_init,
                  name=name)


def _conv(features: int, kernel: int, name: str, dtype: Dtype, *, stride: int = 1,
          padding: Any = None, kernel_init: Callable = torch_like_kernel_init) -> nn.Conv:
  if padding is None:
    padding = ((kernel // 2, kernel // 2),) * 2
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=padding,
                 dtype=dtype, param_dtype=jnp.float32, kernel_init=kernel_init, name=name)


class GroupNorm(nn.Module):
  """Group normalisation of a channels-last array (Wu & He 2018, eq. 1-2), parameters named
  like `flax.linen.GroupNorm` ('scale', 'bias'; one per channel).

  y = (x - mu_g) / sqrt(var_g + eps) * scale + bias, with mu_g, var_g the mean and (biased)
  variance over the spatial axes and the channels of each group. Computed as per-channel
  means first (one pass over the spatial axes), then group statistics on the small [B, C]
  arrays, with the variance in two passes (E[(x - mu)^2], as PyTorch) and the whole norm
  folded into one per-channel affine map x * a + d. On XLA:CPU this is 2-5x faster than
  `flax.linen.GroupNorm`, whose [B, HW, G, C/G] reduction XLA does not vectorise well
  (docs/performance.md); values agree to ~1e-6.

  Attributes:
    num_groups: groups; must divide the channel count.
    epsilon: added to the variance.
    dtype: output dtype (statistics are float32).
  """
  num_groups: int
  epsilon: float = 1e-5
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Args: x [B, ..., C]. Returns the normalised array, same shape, `dtype`."""
    c = x.shape[-1]
    if x.ndim < 2 or c % self.num_groups:
      raise ValueError(f"GroupNorm needs a [B, ..., C] input with C divisible by "
                       f"num_groups={self.num_groups}; got shape {x.shape}.")
    scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
    b, g = x.shape[0], self.num_groups
    axes = tuple(range(1, x.ndim - 1))
    expand = (slice(None),) + (None,) * len(axes)  # [B, C] -> [B, 1.., C]
    xf = x.astype(jnp.float32)

    def group_mean(per_channel):  # [B, C] -> [B, C], the mean of each channel's group
      m = jnp.mean(per_channel.reshape(b, g, c // g), axis=-1, keepdims=True)
      return jnp.broadcast_to(m, (b, g, c // g)).reshape(b, c)

    mean = group_mean(jnp.mean(xf, axis=axes))  # [B, C]
    var = group_mean(jnp.mean(jnp.square(xf - mean[expand]), axis=axes))  # [B, C]
    a = jax.lax.rsqrt(var + self.epsilon) * scale[None]  # [B, C]
    d = bias[None] - mean * a
    return (xf * a[expand] + d[expand]).astype(self.dtype)


def _group_norm(groups: int, eps: float, name: str, dtype: Dtype) -> GroupNorm:
  return GroupNorm(num_groups=groups, epsilon=eps, dtype=dtype, name=name)


class TimestepEmbedding(nn.Module):
  """MLP on the sinusoidal embedding: `linear_2(silu(linear_1(e)))` (diffusers `TimestepEmbedding`).

  Attributes:
    features: output (and hidden) width, `4 * block_out_channels[0]` by default.
    dtype: computation dtype.
  """
  features: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, emb: jax.Array) -> jax.Array:
    """Args: emb: sinusoidal embedding [B, D]. Returns: [B, features]."""
    h = _dense(self.features, "linear_1", self.dtype)(emb)
    h = nn.silu(h)
    return _dense(self.features, "linear_2", self.dtype)(h)  # [B, features]


class ResnetBlock2D(nn.Module):
  """Pre-activation residual block, with an optional additive time embedding (DDPM, Ho et al.
  2020, app. B; the VQGAN / latent-diffusion autoencoder's `ResnetBlock` without one, Esser et
  al. 2021; diffusers `ResnetBlock2D`, whose `temb_channels=None` is `temb=None` here).

  `out = (shortcut(x) + conv2(drop(silu(norm2(conv1(silu(norm1(x))) + proj(silu(temb))))))) / s`
  where `shortcut` is a 1x1 conv when the channel count changes, `s` is
  `output_scale_factor`, and the `proj(silu(temb))` term (layer `time_emb_proj`) exists only
  when `temb` is given.

  Attributes:
    out_channels: output channels.
    groups: GroupNorm groups (both norms).
    eps: GroupNorm epsilon.
    dropout: dropout rate before `conv2` (active only with `train=True`).
    output_scale_factor: the residual sum is divided by it.
    dtype: computation dtype.
    kernel_init: initializer of the conv and dense kernels used by `init` (PyTorch's
      uniform default; the autoencoder keeps Flax's LeCun normal).
  """
  out_channels: int
  groups: int
  eps: float
  dropout: float = 0.0
  output_scale_factor: float = 1.0
  dtype: Dtype = jnp.float32
  kernel_init: Callable = torch_like_kernel_init

  @nn.compact
  def __call__(self, x: jax.Array, temb: jax.Array | None = None, *,
               train: bool = False) -> jax.Array:
    """Args: x [B, H, W, Cin]; temb [B, T] or None (no time embedding); train enables dropout.
    Returns [B, H, W, out_channels]."""
    conv = functools.partial(_conv, dtype=self.dtype, kernel_init=self.kernel_init)
    h = _group_norm(self.groups, self.eps, "norm1", self.dtype)(x)
    h = nn.silu(h)
    h = conv(self.out_channels, 3, "conv1")(h)
    if temb is not None:
      t = _dense(self.out_channels, "time_emb_proj", self.dtype,
                 kernel_init=self.kernel_init)(nn.silu(temb))  # [B, Cout]
      h = h + t[:, None, None, :]
    h = _group_norm(self.groups, self.eps, "norm2", self.dtype)(h)
    h = nn.silu(h)
    if self.dropout > 0.0:
      h = nn.Dropout(self.dropout, deterministic=not train, name="dropout")(h)
    h = conv(self.out_channels, 3, "conv2")(h)
    if x.shape[-1] != self.out_channels:
      x = conv(self.out_channels, 1, "conv_shortcut")(x)
    out = x.astype(h.dtype) + h
    if self.output_scale_factor != 1.0:
      out = out / self.output_scale_factor
    return out  # [B, H, W, out_channels]


class AttentionBlock(nn.Module):
  """Spatial self-attention with group norm and a residual (diffusers `Attention` as built for
  `AttnDownBlock2D` / `UNetMidBlock2D`: `residual_connection=True`, biases, group norm).

  `out = (x + to_out(softmax(q k^T / sqrt(d)) v)) / rescale_output_factor` with q, k, v
  linear maps of `group_norm(x)` over the H*W positions, split into `heads` heads of
  width `dim_head`.

  Attributes:
    heads: number of heads.
    dim_head: width of one head (inner width is `heads * dim_head`).
    groups: GroupNorm groups, or None for no norm.
    eps: GroupNorm epsilon.
    rescale_output_factor: divides the residual sum.
    dtype: computation dtype (the softmax runs in float32, in
      `jaxgen.nn.attention.dot_product_attention`).
  """
  heads: int
  dim_head: int
  groups: int | None
  eps: float
  rescale_output_factor: float = 1.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Args: x [B, H, W, C]. Returns [B, H, W, C]."""
    b, hgt, wid, c = x.shape
    inner = self.heads * self.dim_head
    h = x
    if self.groups is not None:
      h = _group_norm(self.groups, self.eps, "group_norm", self.dtype)(h)
    h = h.reshape(b, hgt * wid, c)  # [B, N, C]

    def heads(name):  # [B, N, inner] -> [B, heads, N, dim_head]
      return split_heads(_dense(inner, name, self.dtype)(h), self.heads)

    o = dot_product_attention(heads("to_q"), heads("to_k"), heads("to_v"))
    o = merge_heads(o)  # [B, N, inner]
    o = _dense(c, "to_out_0", self.dtype)(o).reshape(b, hgt, wid, c)
    out = o + x.astype(o.dtype)
    if self.rescale_output_factor != 1.0:
      out = out / self.rescale_output_factor
    return out  # [B, H, W, C]


class Downsample2D(nn.Module):
  """Stride-2 3x3 conv (diffusers `Downsample2D(use_conv=True)`).

  With `padding == 0` the input is padded by one row/column at the bottom/right only
  (the DDPM TensorFlow convention, `downsample_padding=0` in diffusers); otherwise
  symmetric padding `padding` on every side.

  Attributes:
    out_channels: output channels.
    padding: see above.
    dtype: computation dtype.
  """
  out_channels: int
  padding: int = 1
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Args: x [B, H, W, C]. Returns [B, H/2, W/2, out_channels] (for even H, W)."""
    p = self.padding
    pad = ((0, 1), (0, 1)) if p == 0 else ((p, p), (p, p))
    return _conv(self.out_channels, 3, "conv", self.dtype, stride=2, padding=pad)(x)


def upsample_nearest2x(x: jax.Array) -> jax.Array:
  """Nearest-neighbour 2x upsampling of an NHWC array (`F.interpolate(scale_factor=2, mode="nearest")`).

  Args:
    x: [B, H, W, C].

  Returns:
    [B, 2H, 2W, C].
  """
  b, h, w, c = x.shape
  x = jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, 2, w, 2, c))
  return x.reshape(b, 2 * h, 2 * w, c)


class Upsample2D(nn.Module):
  """Nearest 2x upsampling then a 3x3 conv (diffusers `Upsample2D(use_conv=True)`).

  Attributes:
    out_channels: output channels.
    dtype: computation dtype.
  """
  out_channels: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Args: x [B, H, W, C]. Returns [B, 2H, 2W, out_channels]."""
    return _conv(self.out_channels, 3, "conv", self.dtype)(upsample_nearest2x(x))


def _attention(channels: int, attention_head_dim: int | None, groups: int, eps: float,
               rescale: float, dtype: Dtype, name: str) -> AttentionBlock:
  # diffusers: heads = channels // head_dim, one head of width `channels` when head_dim is None.
  dim_head = attention_head_dim or channels
  return AttentionBlock(heads=channels // dim_head, dim_head=dim_head, groups=groups, eps=eps,
                        rescale_output_factor=rescale, dtype=dtype, name=name)


class _LevelBlock(nn.Module):
  """Fields shared by `DownBlock` and `UpBlock` (one UNet level).

  Attributes:
    out_channels: channels of the level.
    num_layers: resnet blocks.
    groups, eps: GroupNorm groups and epsilon (resnets and attention).
    dropout: resnet dropout rate.
    attention: the Attn* variant (attention after each resnet).
    attention_head_dim: head width, None for one head.
  """
  out_channels: int
  num_layers: int
  groups: int
  eps: float
  dropout: float = 0.0
  attention: bool = False
  attention_head_dim: int | None = None


def _level_layer(block: _LevelBlock, j: int, x, temb, train: bool):
  """Layer `j` of a level: `resnets_{j}`, then `attentions_{j}` when `block.attention`.

  Called inside `block`'s compact `__call__`, so the submodules (and their names) are its own.
  """
  x = ResnetBlock2D(block.out_channels, block.groups, block.eps, block.dropout,
                    dtype=block.dtype, name=f"resnets_{j}")(x, temb, train=train)
  if block.attention:
    x = _attention(block.out_channels, block.attention_head_dim, block.groups, block.eps, 1.0,
                   block.dtype, f"attentions_{j}")(x)
  return x


class DownBlock(_LevelBlock):
  """One encoder level: diffusers `DownBlock2D`, or `AttnDownBlock2D` when `attention`.

  `num_layers` resnets (each followed by attention when `attention`), then an optional
  stride-2 downsampling conv. Returns the output and the skip states handed to the decoder
  (every resnet/attention output, then the downsampled output).

  Attributes: those of `_LevelBlock` (out_channels, num_layers, groups, eps, dropout,
  attention, attention_head_dim), then
    add_downsample: False at the coarsest level.
    downsample_padding: see `Downsample2D`.
    dtype: computation dtype.
  """
  add_downsample: bool = True
  downsample_padding: int = 1
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, temb, *, train: bool = False):
    """Args: x [B, H, W, Cin]; temb [B, T]. Returns (h [B, H', W', C], skips tuple of NHWC)."""
    skips = []
    for j in range(self.num_layers):
      x = _level_layer(self, j, x, temb, train)
      skips.append(x)
    if self.add_downsample:
      x = Downsample2D(self.out_channels, self.downsample_padding, dtype=self.dtype,
                       name="downsamplers_0")(x)
      skips.append(x)
    return x, tuple(skips)


class UpBlock(_LevelBlock):
  """One decoder level: diffusers `UpBlock2D`, or `AttnUpBlock2D` when `attention`.

  Each of the `num_layers` resnets takes the channel concatenation `[x, skip]`, skips
  consumed last first; then an optional nearest-2x upsampling + conv.

  Attributes: those of `_LevelBlock`, then `add_upsample` (False at the finest level) and
  `dtype`.
  """
  add_upsample: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, skips, temb, *, train: bool = False):
    """Args: x [B, H, W, C]; skips: `num_layers` NHWC arrays; temb [B, T]. Returns NHWC."""
    if len(skips) != self.num_layers:
      raise ValueError(f"UpBlock: expected {self.num_layers} skip states, got {len(skips)}")
    skips = list(skips)
    for j in range(self.num_layers):
      x = jnp.concatenate([x, skips.pop().astype(x.dtype)], axis=-1)
      x = _level_layer(self, j, x, temb, train)
    if self.add_upsample:
      x = Upsample2D(self.out_channels, dtype=self.dtype, name="upsamplers_0")(x)
    return x


class MidBlock(nn.Module):
  """diffusers `UNetMidBlock2D` (one layer): resnet, [attention], resnet, each scaled by
  `output_scale_factor` (`mid_block_scale_factor`).

  Attributes:
    channels: channels of the coarsest level.
    groups, eps, dropout: as `DownBlock`.
    output_scale_factor: divides each residual sum.
    attention: include the attention (`add_attention`).
    attn_groups: GroupNorm groups of the attention.
    attention_head_dim: head width, None for one head.
    dtype: computation dtype.
  """
  channels: int
  groups: int
  eps: float
  dropout: float = 0.0
  output_scale_factor: float = 1.0
  attention: bool = True
  attn_groups: int | None = None
  attention_head_dim: int | None = None
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, temb, *, train: bool = False):
    """Args: x [B, H, W, C]; temb [B, T]. Returns [B, H, W, C]."""
    s = self.output_scale_factor
    x = ResnetBlock2D(self.channels, self.groups, self.eps, self.dropout, s, dtype=self.dtype,
                      name="resnets_0")(x, temb, train=train)
    if self.attention:
      x = _attention(self.channels, self.attention_head_dim, self.attn_groups or self.groups,
                     self.eps, s, self.dtype, "attentions_0")(x)
    return ResnetBlock2D(self.channels, self.groups, self.eps, self.dropout, s, dtype=self.dtype,
                         name="resnets_1")(x, temb, train=train)
