"""PatchGAN discriminator (Isola et al. 2017, pix2pix; as used by VQGAN, Esser et al. 2021).

A stack of 4x4 convolutions with LeakyReLU(0.2): `num_layers` stride-2 convs (channels
`base_channels * min(2^n, 8)`), one stride-1 conv, then a stride-1 conv to one logit per
patch. Each output logit sees a receptive-field patch of the image, so the loss judges
local texture. The reference uses batch norm; here the norm is GroupNorm (or none), which
needs no running statistics and behaves the same under data parallelism.
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxgen.nn.init import init_from_shapes, module_param_shapes
from jaxgen.nn.layers import GroupNorm

NORMS = ("group", "none")


@dataclasses.dataclass(frozen=True)
class PatchDiscriminatorConfig:
  """Attributes:
    base_channels: channels of the first conv (ndf).
    num_layers: stride-2 convs (n_layers); the image side must be >= 2 ** (num_layers + 2).
    norm: "group" (GroupNorm, 8 groups or fewer) or "none".
  """
  base_channels: int = 32
  num_layers: int = 2
  norm: str = "group"

  def __post_init__(self):
    if self.base_channels < 1 or self.num_layers < 1:
      raise ValueError(f"PatchDiscriminatorConfig: need base_channels >= 1 and num_layers >= 1, "
                       f"got {self.base_channels}, {self.num_layers}")
    if self.norm not in NORMS:
      raise ValueError(f"PatchDiscriminatorConfig: unknown norm {self.norm!r}; expected one of "
                       f"{NORMS}")

  def min_image_side(self) -> int:
    # Each stride-2 conv halves the side; the two stride-1 4x4 convs need >= 2 pixels left each.
    return 2 ** (self.num_layers + 2)


def _conv(features, stride, name):
  return nn.Conv(features, (4, 4), strides=(stride, stride), padding=((1, 1), (1, 1)), name=name)


class PatchDiscriminator(nn.Module):
  """Attributes: config: the `PatchDiscriminatorConfig`."""
  config: PatchDiscriminatorConfig

  def _norm(self, h, ch, name):
    if self.config.norm == "none":
      return h
    groups = next(g for g in (8, 4, 2, 1) if ch % g == 0)
    return GroupNorm(num_groups=groups, epsilon=1e-5, name=name)(h)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Args: x [B, H, W, C] in [-1, 1]. Returns patch logits [B, H', W', 1]."""
    c = self.config
    if x.ndim != 4 or min(x.shape[1:3]) < c.min_image_side():
      raise ValueError(f"PatchDiscriminator with num_layers={c.num_layers} needs NHWC images "
                       f"with sides >= {c.min_image_side()}, got shape {x.shape}; lower "
                       "num_layers")
    h = nn.leaky_relu(_conv(c.base_channels, 2, "conv_0")(x), 0.2)
    for n in range(1, c.num_layers + 1):
      ch = c.base_channels * min(2 ** n, 8)
      stride = 2 if n < c.num_layers else 1
      h = _conv(ch, stride, f"conv_{n}")(h)
      h = nn.leaky_relu(self._norm(h, ch, f"norm_{n}"), 0.2)
    return _conv(1, 1, "conv_out")(h)  # [B, H', W', 1]


def init_discriminator(model: PatchDiscriminator, key: jax.Array, image_shape) -> dict:
  """Parameters of `model` for images of `image_shape` (H, W, C): LeCun-normal kernels drawn
  from `key` with one call, zero biases, unit scales (see `jaxgen.nn.init.init_from_shapes`)."""
  x = jax.ShapeDtypeStruct((1,) + tuple(image_shape), jnp.float32)
  return init_from_shapes(module_param_shapes(model, x), key, kernel="lecun_normal")
