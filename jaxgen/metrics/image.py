"""Per-image reconstruction metrics and the uint8 edge: conversion, grids, PNG files.

Images inside jaxgen are NHWC float32 in [-1, 1]; uint8 appears only here, at the
edges (files and pictures).
"""
from __future__ import annotations

import math
import os

import jax.numpy as jnp
import numpy as np

__all__ = ["mse", "psnr", "to_uint8", "make_grid", "save_image_grid"]


def _check_pair(x, y, fn: str) -> None:
  if jnp.shape(x) != jnp.shape(y):
    raise ValueError(f"{fn} needs two arrays of the same shape, got {jnp.shape(x)} and "
                     f"{jnp.shape(y)}.")
  if jnp.ndim(x) < 1:
    raise ValueError(f"{fn} needs batched images [B, ...], got a scalar.")


def _reduce(values, reduction: str, fn: str):
  if reduction == "mean":
    return jnp.mean(values)
  if reduction == "none":
    return values
  raise ValueError(f"{fn}: reduction must be 'mean' or 'none', got {reduction!r}.")


def mse(x, y, *, reduction: str = "mean") -> jnp.ndarray:
  """Mean squared error per image, optionally averaged over the batch.

  Args:
    x: [B, ...] images (any value range).
    y: [B, ...] images of the same shape.
    reduction: 'mean' -> scalar mean over the batch; 'none' -> [B] per-image values.

  Returns:
    mean((x - y)^2) over all axes but the first, then reduced as asked.
  """
  _check_pair(x, y, "mse")
  diff = jnp.asarray(x, jnp.float32) - jnp.asarray(y, jnp.float32)
  per_image = jnp.mean(jnp.square(diff).reshape(diff.shape[0], -1), axis=1)  # [B]
  return _reduce(per_image, reduction, "mse")


def psnr(x, y, data_range: float = 2.0, *, reduction: str = "mean") -> jnp.ndarray:
  """Peak signal-to-noise ratio in dB per image, optionally averaged over the batch.

  PSNR = 10 log10(data_range^2 / MSE), per image (MSE over all axes but the first);
  'mean' averages the per-image PSNRs (not the PSNR of the mean MSE). Identical images
  give +inf.

  Args:
    x: [B, ...] images; the default data_range=2.0 is for jaxgen's [-1, 1] images
      (use 255 for uint8, 1 for [0, 1]).
    y: [B, ...] images of the same shape.
    data_range: max - min of the value range.
    reduction: 'mean' -> scalar; 'none' -> [B].

  Returns:
    PSNR in dB.
  """
  if not data_range > 0:
    raise ValueError(f"psnr: data_range must be positive, got {data_range}.")
  per_image = mse(x, y, reduction="none")
  values = 10.0 * jnp.log10(jnp.float32(data_range) ** 2 / per_image)  # [B]
  return _reduce(values, reduction, "psnr")


def to_uint8(images) -> np.ndarray:
  """Maps [-1, 1] floats to uint8 [0, 255]: clip, scale, round half up.

  v = floor(clip((x + 1) / 2, 0, 1) * 255 + 0.5), so -1 -> 0, 0 -> 128, 1 -> 255.
  uint8 input is returned unchanged.

  Args:
    images: array of any shape, float in [-1, 1] (values outside are clipped).

  Returns:
    np.uint8 array of the same shape.
  """
  x = np.asarray(images)
  if x.dtype == np.uint8:
    return x
  if not np.issubdtype(x.dtype, np.floating):
    raise TypeError(f"to_uint8 expects float images in [-1, 1] (or uint8), got dtype "
                    f"{x.dtype}.")
  x = x.astype(np.float64)
  if np.isnan(x).any():
    raise ValueError("to_uint8 got NaN pixels; the images are not finite.")
  scaled = np.clip((x + 1.0) * 0.5, 0.0, 1.0) * 255.0
  return np.floor(scaled + 0.5).astype(np.uint8)


def make_grid(images, nrow: int, *, padding: int = 1, pad_value: int = 255) -> np.ndarray:
  """Tiles a batch into one uint8 picture, row by row.

  Image i sits in row i // nrow, column i % nrow, with its top-left pixel at
  (padding + row * (H + padding), padding + col * (W + padding)); the border, the gaps
  and the empty cells of an incomplete last row are `pad_value`.

  Args:
    images: [N, H, W, C] float in [-1, 1] or uint8, C in {1, 3, 4}.
    nrow: number of images per row (the grid has ceil(N / nrow) rows).
    padding: pixels between tiles and around the grid.
    pad_value: uint8 value of the padding.

  Returns:
    uint8 [rows * (H + padding) + padding, nrow * (W + padding) + padding, C].
  """
  x = to_uint8(images)
  if x.ndim != 4:
    raise ValueError(f"make_grid expects images [N, H, W, C], got shape {x.shape}.")
  n, h, w, c = x.shape
  if n == 0:
    raise ValueError("make_grid got an empty batch.")
  if not (isinstance(nrow, (int, np.integer)) and nrow >= 1):
    raise ValueError(f"make_grid: nrow must be a positive int, got {nrow!r}.")
  if padding < 0 or not 0 <= pad_value <= 255:
    raise ValueError(f"make_grid: need padding >= 0 and pad_value in [0, 255], got "
                     f"{padding}, {pad_value}.")
  rows = math.ceil(n / nrow)
  grid = np.full((rows * (h + padding) + padding, nrow * (w + padding) + padding, c),
                 pad_value, dtype=np.uint8)
  for i in range(n):
    top = padding + (i // nrow) * (h + padding)
    left = padding + (i % nrow) * (w + padding)
    grid[top:top + h, left:left + w] = x[i]
  return grid


def save_image_grid(path, images, nrow: int, *, padding: int = 4, pad_value: int = 128,
                    min_tile_size: int = 64) -> str:
  """Writes a batch as one PNG grid; tiny images are upscaled (nearest neighbour).

  Each image is enlarged by the smallest integer factor that makes its shorter side at
  least `min_tile_size` pixels (8x8 digits x8, 16x16 x4, 32x32 x2), so the pixels stay
  sharp; padding is added after upscaling. One channel is saved as grayscale ("L").

  Args:
    path: output file name (parent directories are created).
    images: [N, H, W, C] float in [-1, 1] or uint8, C in {1, 3, 4}.
    nrow: number of images per row.
    padding: pixels between tiles (after upscaling); 4 px of mid-gray by default, so tiles
      whose content touches their edges (8x8 digits) stay apart.
    pad_value: uint8 value of the padding.
    min_tile_size: minimum tile side in pixels after upscaling.

  Returns:
    The path written.
  """
  from PIL import Image  # pylint: disable=import-outside-toplevel

  x = to_uint8(images)
  if x.ndim != 4 or x.shape[-1] not in (1, 3, 4):
    raise ValueError(f"save_image_grid expects images [N, H, W, C] with C in 1, 3, 4; got "
                     f"shape {x.shape}.")
  factor = max(1, math.ceil(min_tile_size / min(x.shape[1], x.shape[2])))
  if factor > 1:
    x = np.repeat(np.repeat(x, factor, axis=1), factor, axis=2)
  grid = make_grid(x, nrow, padding=padding, pad_value=pad_value)
  picture = grid[..., 0] if grid.shape[-1] == 1 else grid  # 2-D uint8 -> mode "L"
  directory = os.path.dirname(os.fspath(path))
  if directory:
    os.makedirs(directory, exist_ok=True)
  Image.fromarray(picture).save(path, format="PNG")
  return os.fspath(path)
