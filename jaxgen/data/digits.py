"""scikit-learn's 8x8 handwritten digits as an embedded, offline dataset.

The 1797 images of ``sklearn.datasets.load_digits`` (UCI optical recognition of
handwritten digits; pixels are counts 0..16) are split once, with a fixed seed that does
not depend on any user seed, into 1497 train and 300 test images. Pixels map to
``x / 8 - 1`` in [-1, 1]; images are ``[N, 8, 8, 1]`` or resized to ``image_size``.
"""
from __future__ import annotations

import functools

import numpy as np

from jaxgen.data.sources import ArraySource, resize_images

DIGITS_SPLITS = ("train", "test")
DIGITS_NUM_TEST = 300
_SPLIT_SEED = 1797  # fixed: the split never depends on a training seed


@functools.lru_cache(maxsize=8)
def _digits_arrays(split: str, image_size: int) -> tuple[np.ndarray, np.ndarray]:
  from sklearn.datasets import load_digits  # sklearn import is slow; only when used

  data = load_digits()
  images = data.images.astype(np.float32) / np.float32(8.0) - np.float32(1.0)  # [N, 8, 8]
  labels = data.target.astype(np.int32)
  perm = np.random.Generator(np.random.PCG64(_SPLIT_SEED)).permutation(len(labels))
  keep = perm[DIGITS_NUM_TEST:] if split == "train" else perm[:DIGITS_NUM_TEST]
  keep = np.sort(keep)
  images = images[keep, :, :, None]  # [N, 8, 8, 1]
  if image_size != 8:
    images = np.clip(resize_images(images, image_size), -1.0, 1.0)
  return images, labels[keep]


class DigitsSource(ArraySource):
  """The digits split `split` (``'train'``: 1497 images, ``'test'``: 300).

  Batches hold ``'image'`` ``[B, S, S, 1]`` float32 in [-1, 1] and ``'label'`` ``[B]``
  int32 in 0..9.
  """

  def __init__(self, split: str, image_size: int | None = None):
    """Loads the split.

    Args:
      split: ``'train'`` or ``'test'``.
      image_size: output side S (bilinear resize, antialiased when shrinking);
        None keeps the native 8.
    """
    if split not in DIGITS_SPLITS:
      raise ValueError(f"unknown split {split!r} for 'digits'; expected one of {DIGITS_SPLITS}.")
    size = 8 if image_size is None else int(image_size)
    if size < 1:
      raise ValueError(f"image_size must be a positive int, got {image_size!r}.")
    images, labels = _digits_arrays(split, size)
    super().__init__("digits", split, images, {"label": labels}, num_classes=10,
                     class_names=tuple(str(d) for d in range(10)))
