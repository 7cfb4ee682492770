"""Perceptual (feature-space) reconstruction distance with a pluggable feature network.

LPIPS (Zhang et al. 2018, eq. 1): d(x, y) = sum_l mean_{h,w} || w_l * (f_l(x) - f_l(y)) ||^2
with f_l the channel-unit-normalised activations of layer l and w_l >= 0 per-channel
weights (all ones without calibrated weights: the "lpips=False" variant).

Two feature networks:
  * `classifier_feature_net(bundle)`: the small classifier of `jaxgen.metrics` trained on
    the embedded data (the offline default; its conv stages are the layers).
  * `load_vgg16_lpips(path)`: VGG16 (Simonyan & Zisserman 2015) at relu1_2, relu2_2,
    relu3_3, relu4_3, relu5_3, with LPIPS' input scaling, from a safetensors file the user
    supplies (torchvision names `features.{i}.weight/bias`, optionally the LPIPS linear
    layers `lin{l}.model.1.weight`). Nothing is downloaded. The widths are read from the
    file, so narrow test networks load the same way.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

# torchvision vgg16.features: conv layer indices, grouped by block (a 2x2 max-pool between).
VGG16_CONV_INDICES = ((0, 2), (5, 7), (10, 12, 14), (17, 19, 21), (24, 26, 28))
# LPIPS ScalingLayer: x -> (x - shift) / scale for inputs in [-1, 1].
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)


class PerceptualNet(struct.PyTreeNode):
  """A feature network as data: `apply_fn(params, images) -> list of [B, h, w, c]` and one
  optional non-negative weight vector [c] per layer (None: all ones)."""
  params: Any
  lin: Any  # tuple of [c_l] arrays, or None
  apply_fn: Callable = struct.field(pytree_node=False)


def _unit_normalize(f: jax.Array, eps: float = 1e-10) -> jax.Array:
  return f / (jnp.sqrt(jnp.sum(f * f, axis=-1, keepdims=True)) + eps)


def perceptual_distance(net: PerceptualNet, x: jax.Array, y: jax.Array) -> jax.Array:
  """LPIPS-style distance per example (Zhang et al. 2018, eq. 1).

  Args:
    net: the feature network.
    x, y: images [B, H, W, C] in [-1, 1].
  Returns:
    [B] sum over layers of the spatial mean of the weighted squared difference of
    unit-normalised features.
  """
  if x.shape != y.shape:
    raise ValueError(f"perceptual_distance: shapes differ, {x.shape} vs {y.shape}")
  fx = net.apply_fn(net.params, x)
  fy = net.apply_fn(net.params, y)
  total = jnp.zeros((x.shape[0],), jnp.float32)
  for l, (a, b) in enumerate(zip(fx, fy)):
    d = jnp.square(_unit_normalize(a) - _unit_normalize(b))  # [B, h, w, c]
    if net.lin is not None:
      d = d * net.lin[l].reshape(1, 1, 1, -1)
    total = total + jnp.mean(jnp.sum(d, axis=-1), axis=(1, 2))
  return total


def classifier_feature_net(bundle) -> PerceptualNet:
  """The conv stages (after SiLU) of a `jaxgen.metrics` classifier as perceptual layers.

  Args:
    bundle: a `ClassifierBundle` (e.g. from `train_classifier` on the training split).
  """
  model = bundle.config.module()
  names = tuple(f"stage{i}_conv1" for i in range(len(bundle.config.features)))

  def apply(params, images):
    _, state = model.apply(params, images, train=False, mutable=["intermediates"],
                           capture_intermediates=lambda m, method: m.name in names)
    inter = state["intermediates"]
    return [nn.silu(inter[n]["__call__"][0]) for n in names]

  params = jax.tree.map(jnp.asarray, bundle.params)
  return PerceptualNet(params=params, lin=None, apply_fn=apply)


class VGG16Features(nn.Module):
  """VGG16's convolutional part, returning the five relu_k_last activations.

  Attributes:
    widths: channels of the five blocks (64, 128, 256, 512, 512 for the real network).
  """
  widths: Sequence[int] = (64, 128, 256, 512, 512)

  @nn.compact
  def __call__(self, x: jax.Array) -> list[jax.Array]:
    """Args: x [B, H, W, 3] in [-1, 1], H, W >= 16. Returns 5 maps [B, H/2^l, W/2^l, w_l]."""
    shift = jnp.asarray(LPIPS_SHIFT, x.dtype).reshape(1, 1, 1, 3)
    scale = jnp.asarray(LPIPS_SCALE, x.dtype).reshape(1, 1, 1, 3)
    h = (x - shift) / scale
    outs = []
    for block, (idx, width) in enumerate(zip(VGG16_CONV_INDICES, self.widths)):
      if block > 0:
        h = nn.max_pool(h, (2, 2), strides=(2, 2))
      for i in idx:
        h = nn.relu(nn.Conv(width, (3, 3), padding=((1, 1), (1, 1)), name=f"conv_{i}")(h))
      outs.append(h)
    return outs


def load_vgg16_lpips(path: str) -> PerceptualNet:
  """LPIPS-VGG16 from a local safetensors file (never downloaded).

  The file holds torchvision's `vgg16().features` state dict names `features.{i}.weight`
  [O, I, 3, 3] and `features.{i}.bias` [O] for the 13 convs (extra keys such as the
  classifier are ignored), and optionally LPIPS' `lin{l}.model.1.weight` [1, c_l, 1, 1]
  (l = 0..4; all five or none).

  Raises:
    FileNotFoundError: no such file.
    ValueError: missing or mis-shaped tensors (the message lists what is expected).
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f"VGG16 weights {path!r} not found: export torchvision's "
                            "vgg16().features state dict to safetensors and pass its path")
  from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel

  tensors = load_file(path)
  params, widths, prev = {}, [], 3
  missing = [f"features.{i}.{s}" for blk in VGG16_CONV_INDICES for i in blk
             for s in ("weight", "bias") if f"features.{i}.{s}" not in tensors]
  if missing:
    raise ValueError(f"{path} is missing VGG16 tensors {missing}; expected torchvision names "
                     "features.{i}.weight [O, I, 3, 3] and features.{i}.bias [O]")
  for blk in VGG16_CONV_INDICES:
    for i in blk:
      w, b = tensors[f"features.{i}.weight"], tensors[f"features.{i}.bias"]
      if w.ndim != 4 or w.shape[1] != prev or w.shape[2:] != (3, 3) or b.shape != w.shape[:1]:
        raise ValueError(f"{path}: features.{i}.weight has shape {w.shape} (bias {b.shape}); "
                         f"expected [O, {prev}, 3, 3] and [O]")
      params[f"conv_{i}"] = {"kernel": jnp.asarray(np.transpose(w, (2, 3, 1, 0)), jnp.float32),
                             "bias": jnp.asarray(b, jnp.float32)}
      prev = w.shape[0]
    widths.append(prev)
  lin_keys = [f"lin{l}.model.1.weight" for l in range(5)]
  present = [k in tensors for k in lin_keys]
  lin = None
  if any(present):
    if not all(present):
      raise ValueError(f"{path} has only some LPIPS linear layers; expected all of {lin_keys}")
    lin = []
    for k, width in zip(lin_keys, widths):
      w = tensors[k]
      if w.size != width:
        raise ValueError(f"{path}: {k} has shape {w.shape}; expected [1, {width}, 1, 1]")
      lin.append(jnp.asarray(w.reshape(width), jnp.float32))
    lin = tuple(lin)
  model = VGG16Features(widths=tuple(int(w) for w in widths))

  def apply(p, images):
    if images.shape[-1] != 3 or min(images.shape[1:3]) < 16:
      raise ValueError(f"LPIPS-VGG16 needs RGB images of side >= 16, got {images.shape}")
    return model.apply({"params": p}, images)

  return PerceptualNet(params=params, lin=lin, apply_fn=apply)
