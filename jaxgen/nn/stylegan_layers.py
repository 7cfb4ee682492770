"""The layers of the style-based generator and discriminator (`jaxgen.nn.stylegan`):
equalised-learning-rate dense and convolution layers (Karras et al. 2018, sec. 4.1), the
modulated / demodulated convolution (Karras et al. 2020, eq. 1-3) and the toRGB layer."""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = ["EqualConv", "EqualDense", "ModulatedConv", "ToRGB", "downsample2x", "lrelu",
           "upsample2x"]

_SQRT2 = math.sqrt(2.0)  # the gain of `lrelu`


def lrelu(x):
  """Leaky ReLU (slope 0.2) with StyleGAN's gain sqrt(2) (keeps unit variance)."""
  return nn.leaky_relu(x, 0.2) * _SQRT2


class EqualDense(nn.Module):
  """Dense layer with equalised learning rate (Karras et al. 2018, sec. 4.1): weights are
  stored ~N(0, 1/lr_mul^2) and scaled by lr_mul / sqrt(fan_in) at run time."""
  features: int
  bias_init: float = 0.0
  lr_multiplier: float = 1.0
  use_bias: bool = True

  @nn.compact
  def __call__(self, x):  # [..., fan_in] -> [..., features]
    fan_in = x.shape[-1]
    w = self.param("kernel", lambda k, s: jax.random.normal(k, s) / self.lr_multiplier,
                   (fan_in, self.features))
    y = x @ (w * (self.lr_multiplier / math.sqrt(fan_in)))
    if self.use_bias:
      b = self.param("bias", lambda k, s: jnp.full(s, self.bias_init / self.lr_multiplier,
                                                   jnp.float32), (self.features,))
      y = y + (b * self.lr_multiplier).reshape((1,) * (y.ndim - 1) + (-1,))
    return y


class EqualConv(nn.Module):
  """Convolution (SAME padding) with equalised learning rate."""
  features: int
  kernel_size: int = 3
  use_bias: bool = True

  @nn.compact
  def __call__(self, x):  # [B, H, W, Cin] -> [B, H, W, features]
    k, cin = self.kernel_size, x.shape[-1]
    w = self.param("kernel", nn.initializers.normal(1.0), (k, k, cin, self.features))
    y = jax.lax.conv_general_dilated(x, w / math.sqrt(cin * k * k), (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros, (self.features,))[None, None, None]
    return y


def upsample2x(x):
  """Bilinear 2x upsampling (half-pixel centres): the separable [1, 3, 3, 1] / 4 filter."""
  b, h, w, c = x.shape
  return jax.image.resize(x, (b, 2 * h, 2 * w, c), method="linear")


def downsample2x(x):
  return nn.avg_pool(x, (2, 2), strides=(2, 2))


def _conv(x, w):
  return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _instance_norm(x, eps: float = 1e-8):
  """Per sample and channel: zero mean, unit variance over H, W ([B, H, W, C])."""
  mean = jnp.mean(x, axis=(1, 2), keepdims=True)
  var = jnp.mean(jnp.square(x - mean), axis=(1, 2), keepdims=True)
  return (x - mean) * jax.lax.rsqrt(var + eps)


class ModulatedConv(nn.Module):
  """Modulated 3x3 conv + noise + bias + leaky ReLU (StyleGAN2 sec. 2.2, eq. 1-3).

  With style s = A(w) [B, Cin] and weight w_ijk, the modulated weight is w'_ijk = s_i w_ijk and
  demodulation divides output channel j by sqrt(sum_{i,k} w'_ijk^2 + eps). Scaling the input
  by s before a shared convolution and the output by the demodulation factor computes the
  same thing per sample.
  """
  features: int
  up: bool = False
  instance_norm: bool = False

  @nn.compact
  def __call__(self, x, w, noise):
    """x [B, H, W, Cin], w [B, w_dim], noise [B or 1, H', W', 1] or None -> [B, H', W', F]."""
    cin = x.shape[-1]
    if self.instance_norm:
      x = _instance_norm(x)
    styles = EqualDense(cin, bias_init=1.0, name="affine")(w)  # [B, Cin]
    weight = self.param("kernel", nn.initializers.normal(1.0), (3, 3, cin, self.features))
    weight = weight / math.sqrt(cin * 9)
    if self.up:
      x = upsample2x(x)
    x = _conv(x * styles[:, None, None, :], weight)
    dcoef = jax.lax.rsqrt(jnp.einsum("hwio,bi->bo", jnp.square(weight), jnp.square(styles))
                          + 1e-8)  # [B, F]
    x = x * dcoef[:, None, None, :]
    strength = self.param("noise_strength", nn.initializers.zeros, ())
    if noise is not None:
      x = x + noise * strength
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    return lrelu(x + bias[None, None, None])


class ToRGB(nn.Module):
  """Modulated 1x1 conv to image channels, without demodulation or activation."""
  channels: int
  instance_norm: bool = False

  @nn.compact
  def __call__(self, x, w):
    cin = x.shape[-1]
    if self.instance_norm:
      x = _instance_norm(x)
    styles = EqualDense(cin, bias_init=1.0, name="affine")(w) / math.sqrt(cin)
    weight = self.param("kernel", nn.initializers.normal(1.0), (1, 1, cin, self.channels))
    y = _conv(x * styles[:, None, None, :], weight)
    return y + self.param("bias", nn.initializers.zeros, (self.channels,))[None, None, None]
