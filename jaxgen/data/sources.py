"""The random-access `Source` interface shared by every dataset, and helpers on it.

A source is a fixed split of a dataset that returns *batches* by index:
``source[np.array([3, 1, 4])]`` is a dict of numpy arrays with a leading batch axis,
always holding ``'image'`` (``[B, H, W, C]`` float32 in [-1, 1], NHWC) and ``'index'``
(``[B]`` int32, the indices asked for, so per-example metadata such as captions can be
looked up), usually ``'label'`` (``[B]`` int32) and, for attribute datasets, one
``[B]`` int32 array per attribute. Sources hold no iteration state; shuffling, epochs
and host sharding are the job of :class:`jaxgen.data.Loader`.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
from PIL import Image


class Source:
  """A random-access split of a dataset (see the module docstring for the batch format).

  Subclasses set the attributes below and implement ``__len__`` and ``_gather``.

  Attributes:
    name: dataset name, e.g. ``'digits'``.
    split: split name, e.g. ``'train'``.
    image_shape: ``(H, W, C)`` of ``batch['image']``.
    num_classes: number of values of ``batch['label']``, or None when there is no label.
    class_names: a name per label value, or None.
  """

  name: str
  split: str
  image_shape: tuple[int, int, int]
  num_classes: int | None = None
  class_names: tuple[str, ...] | None = None

  def __len__(self) -> int:
    raise NotImplementedError

  def _gather(self, idx: np.ndarray) -> dict[str, np.ndarray]:
    """Returns the batch for validated indices `idx` (``[B]`` int64, in range)."""
    raise NotImplementedError

  def __getitem__(self, idx: Any) -> dict[str, np.ndarray]:
    """Returns the batch of examples at the 1-D integer indices `idx`.

    Args:
      idx: 1-D integer array-like of indices in ``[0, len(self))``.

    Returns:
      A dict of numpy arrays with leading axis ``len(idx)``; ``'image'`` is
      ``[B, H, W, C]`` float32 in [-1, 1].

    Raises:
      TypeError: if `idx` is not a 1-D integer array (a single int is not a batch).
      IndexError: if an index is out of range.
    """
    arr = np.asarray(idx)
    if arr.ndim != 1 or not (np.issubdtype(arr.dtype, np.integer) or arr.size == 0):
      raise TypeError(
          f"{type(self).__name__} is indexed by a 1-D integer array of indices (a batch), "
          f"got {type(idx).__name__} with shape {arr.shape} and dtype {arr.dtype}; "
          "for one example use source[np.array([i])].")
    arr = arr.astype(np.int64)
    n = len(self)
    if arr.size and (arr.min() < 0 or arr.max() >= n):
      raise IndexError(
          f"indices must lie in [0, {n}) for {self.name!r} split {self.split!r}; "
          f"got min {arr.min()}, max {arr.max()}.")
    batch = self._gather(arr)
    batch["index"] = arr.astype(np.int32)
    return batch

  def __repr__(self) -> str:
    return (f"{type(self).__name__}(name={self.name!r}, split={self.split!r}, "
            f"len={len(self)}, image_shape={self.image_shape}, "
            f"num_classes={self.num_classes})")


class ArraySource(Source):
  """A source held in memory as arrays (the embedded datasets).

  Images are stored either as uint8 ``[N, H, W, C]`` (converted to [-1, 1] per batch,
  which keeps large procedural datasets at a quarter of the memory) or as float32
  already in [-1, 1]. Stored arrays are made read-only, so cached data cannot be
  changed through a batch.
  """

  def __init__(self, name: str, split: str, images: np.ndarray,
               fields: Mapping[str, np.ndarray], *, num_classes: int | None = None,
               class_names: tuple[str, ...] | None = None):
    """Builds the source.

    Args:
      name: dataset name.
      split: split name.
      images: ``[N, H, W, C]`` uint8, or float32 in [-1, 1].
      fields: per-example integer arrays ``[N]`` (e.g. ``'label'``), returned as int32.
      num_classes: number of label values, or None.
      class_names: a name per label value, or None.
    """
    if images.ndim != 4 or images.dtype not in (np.uint8, np.float32):
      raise ValueError(
          f"images must be [N, H, W, C] uint8 or float32, got shape {images.shape} "
          f"dtype {images.dtype}.")
    for k, v in fields.items():
      if v.shape != images.shape[:1]:
        raise ValueError(f"field {k!r} has shape {v.shape}, expected ({images.shape[0]},).")
    self.name, self.split = name, split
    self._images = _readonly(images)
    self._fields = {k: _readonly(np.asarray(v, np.int32)) for k, v in fields.items()}
    self.image_shape = tuple(int(s) for s in images.shape[1:])
    self.num_classes, self.class_names = num_classes, class_names

  def __len__(self) -> int:
    return self._images.shape[0]

  def _gather(self, idx: np.ndarray) -> dict[str, np.ndarray]:
    images = self._images[idx]
    if images.dtype == np.uint8:
      images = uint8_to_float(images)
    batch = {"image": images}
    batch.update({k: v[idx] for k, v in self._fields.items()})
    return batch


def _readonly(x: np.ndarray) -> np.ndarray:
  x = np.ascontiguousarray(x)
  x.setflags(write=False)
  return x


def uint8_to_float(images: np.ndarray) -> np.ndarray:
  """Maps uint8 pixels 0..255 to float32 in [-1, 1] (``x / 127.5 - 1``)."""
  return images.astype(np.float32) * np.float32(1 / 127.5) - np.float32(1.0)


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
  """Bilinear resize of float images to ``size x size`` (antialiased when shrinking).

  Uses PIL's bilinear filter, whose support widens with the scale factor when
  downsampling, so it averages rather than aliases. Weights are non-negative, so values
  stay inside the input range.

  Args:
    images: ``[N, H, W, C]`` float32.
    size: output height and width.

  Returns:
    ``[N, size, size, C]`` float32.
  """
  n, h, w, c = images.shape
  if (h, w) == (size, size):
    return images.astype(np.float32)
  out = np.empty((n, size, size, c), np.float32)
  for i in range(n):
    for ch in range(c):
      plane = Image.fromarray(np.ascontiguousarray(images[i, :, :, ch], np.float32))
      out[i, :, :, ch] = np.asarray(
          plane.resize((size, size), Image.Resampling.BILINEAR), np.float32)
  return out


def center_crop(images: np.ndarray) -> np.ndarray:
  """Crops ``[N, H, W, C]`` images to the centered ``min(H, W)`` square."""
  h, w = images.shape[1:3]
  s = min(h, w)
  top, left = (h - s) // 2, (w - s) // 2
  return images[:, top:top + s, left:left + s]


def load_all(source: Source, chunk_size: int = 1024) -> dict[str, np.ndarray]:
  """Returns the whole split as arrays, in index order (for embedded data and eval).

  Args:
    source: any :class:`Source`.
    chunk_size: examples gathered per read (bounds the temporaries of slow sources).

  Returns:
    The batch dict for ``np.arange(len(source))``: ``'image'`` ``[N, H, W, C]`` etc.
  """
  n = len(source)
  parts = [source[np.arange(s, min(s + chunk_size, n))] for s in range(0, n, chunk_size)]
  if not parts:
    raise ValueError(f"source {source!r} is empty.")
  return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def check_batch(batch: Mapping[str, Any], image_shape: tuple[int, int, int]) -> None:
  """Raises a clear error unless `batch` is a well-formed image batch.

  Checks that ``batch['image']`` is float32 ``[B, *image_shape]`` with finite values in
  [-1, 1], and that every other entry is an integer ``[B]`` array. Meant for the first
  batch of a run, before any compile.

  Args:
    batch: a dict as returned by a :class:`Source` or :class:`jaxgen.data.Loader`.
    image_shape: expected ``(H, W, C)``.

  Raises:
    TypeError: if `batch` is not a mapping with an ``'image'`` array or a dtype is wrong.
    ValueError: if a shape is wrong or the images are non-finite or out of [-1, 1].
  """
  if not isinstance(batch, Mapping) or "image" not in batch:
    raise TypeError(
        "a batch must be a dict with an 'image' entry of shape [B, H, W, C]; got "
        f"{type(batch).__name__}" + (f" with keys {sorted(batch)}" if isinstance(batch, Mapping)
                                    else "") + ".")
  image = np.asarray(batch["image"])
  expected = tuple(int(s) for s in image_shape)
  if image.ndim != 4 or image.shape[1:] != expected:
    raise ValueError(
        f"batch['image'] must have shape [B, {', '.join(map(str, expected))}] (NHWC), got "
        f"{image.shape}.")
  if image.dtype != np.float32:
    raise TypeError(
        f"batch['image'] must be float32 in [-1, 1], got dtype {image.dtype}; convert uint8 "
        "images with jaxgen.data.uint8_to_float.")
  if not np.all(np.isfinite(image)):
    bad = int(np.size(image) - np.count_nonzero(np.isfinite(image)))
    raise ValueError(f"batch['image'] has {bad} non-finite values (NaN or inf).")
  lo, hi = float(image.min()), float(image.max())
  if lo < -1.0 - 1e-5 or hi > 1.0 + 1e-5:
    raise ValueError(
        f"batch['image'] values must lie in [-1, 1], got range [{lo:.4g}, {hi:.4g}]; map "
        "[0, 1] images with 2 * x - 1.")
  b = image.shape[0]
  for k, v in batch.items():
    if k == "image":
      continue
    v = np.asarray(v)
    if v.shape[:1] != (b,):
      raise ValueError(f"batch[{k!r}] has shape {v.shape}; its leading size must be the "
                       f"batch size {b}.")
    if not np.issubdtype(v.dtype, np.integer):
      raise TypeError(f"batch[{k!r}] must be an integer array, got dtype {v.dtype}.")
