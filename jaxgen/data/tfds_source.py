"""Named TFDS datasets read with ``tfds.data_source`` (ArrayRecord, random access).

Reading needs no TensorFlow: ``tfds.data_source`` opens the ArrayRecord files of a
dataset that was prepared beforehand and decodes single examples with numpy. Preparing
(downloading and converting) a dataset does need TensorFlow, i.e. the ``[tf]`` extra;
this module never downloads and says how to prepare when the files are missing.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from jaxgen.data.sources import Source, center_crop, resize_images, uint8_to_float

# name -> splits, label feature (None: no label), centre-crop to a square, default side.
TFDS_DATASETS: dict[str, dict[str, Any]] = {
    "mnist": dict(splits=("train", "test"), label="label", crop=False, size=None),
    "fashion_mnist": dict(splits=("train", "test"), label="label", crop=False, size=None),
    "cifar10": dict(splits=("train", "test"), label="label", crop=False, size=None),
    "celeb_a": dict(splits=("train", "validation", "test"), label=None, crop=True, size=64),
}


def prepare_command(name: str, data_dir: str | None) -> str:
  """The shell commands that prepare `name` as ArrayRecord files under `data_dir`."""
  dir_arg = f", data_dir={data_dir!r}" if data_dir else ""
  return ("pip install 'jaxgen[tf]' && python -c \"import tensorflow_datasets as tfds; "
          f"tfds.builder({name!r}{dir_arg}).download_and_prepare(file_format='array_record')\"")


def _open(name: str, split: str, data_dir: str | None):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  try:
    return tfds.data_source(name, split=split, data_dir=data_dir, download=False,
                            builder_kwargs={"file_format": "array_record"})
  except (KeyError, NotImplementedError, FileNotFoundError, AssertionError) as e:
    where = data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
    raise FileNotFoundError(
        f"TFDS dataset {name!r} (split {split!r}) is not prepared as ArrayRecord files in "
        f"{where!r}, and jaxgen never downloads at run time. Prepare it once (needs "
        f"TensorFlow and internet) with:\n  {prepare_command(name, data_dir)}\n"
        f"then pass data_dir={where!r}. (TFDS said: {e})") from e


class TfdsSource(Source):
  """A split of a TFDS image dataset, decoded on demand.

  Batches hold ``'image'`` ``[B, S, S, C]`` float32 in [-1, 1] (uint8 ``x / 127.5 - 1``;
  centre-cropped to a square first for ``celeb_a``, then bilinearly resized if asked),
  ``'label'`` ``[B]`` int32 where the dataset has labels, and for ``celeb_a`` one ``[B]``
  int32 (0/1) array per binary attribute, named as in TFDS (``'Smiling'``, ...).

  Attributes:
    attributes: for ``celeb_a``, attribute name -> ``('no', 'yes')``; else empty.
  """

  def __init__(self, name: str, split: str, *, image_size: int | None = None,
               data_dir: str | None = None, label_attribute: str | None = None):
    """Opens the split.

    Args:
      name: a TFDS dataset name; the names in :data:`TFDS_DATASETS` get their split check,
        crop and default size, any other name is read with its ``'image'`` and
        ``'label'`` features.
      split: a TFDS split, e.g. ``'train'`` or ``'train[:10%]'``.
      image_size: output side; None keeps the native size (celeb_a: 64).
      data_dir: TFDS data directory (default ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``).
      label_attribute: ``celeb_a`` only: an attribute (e.g. ``'Smiling'``) to use as
        ``'label'`` (2 classes); None gives no ``'label'``.
    """
    cfg = TFDS_DATASETS.get(name, dict(splits=None, label="label", crop=False, size=None))
    base = split.split("[")[0]
    if cfg["splits"] is not None and base not in cfg["splits"]:
      raise ValueError(f"unknown split {split!r} for {name!r}; expected one of "
                       f"{cfg['splits']} (optionally sliced, e.g. 'train[:10%]').")
    if image_size is not None and int(image_size) < 1:
      raise ValueError(f"image_size must be a positive int or None, got {image_size!r}.")
    self.name, self.split, self.data_dir = name, split, data_dir
    self._ds = _open(name, split, data_dir)
    features = self._ds.dataset_info.features
    h, w, c = features["image"].shape
    if None in (h, w, c):
      raise ValueError(f"{name!r} has images of variable shape {(h, w, c)}; jaxgen needs a "
                       "fixed image shape.")
    self._crop = cfg["crop"]
    if self._crop:
      h = w = min(h, w)
    size = image_size if image_size is not None else cfg["size"]
    self._size = None if size is None or (int(size), int(size)) == (h, w) else int(size)
    if self._size is not None:
      h = w = self._size
    self.image_shape = (int(h), int(w), int(c))

    self.attributes: dict[str, tuple[str, ...]] = {}
    if "attributes" in features.keys():
      self.attributes = {k: ("no", "yes") for k in features["attributes"].keys()}
    self._label = None
    self.num_classes, self.class_names = None, None
    if label_attribute is not None:
      if label_attribute not in self.attributes:
        raise ValueError(f"unknown label_attribute {label_attribute!r} for {name!r}; expected "
                         f"one of {tuple(self.attributes) or 'none (no attributes)'}.")
      self._label = ("attributes", label_attribute)
      self.num_classes = 2
      self.class_names = (f"not {label_attribute}", label_attribute)
    elif cfg["label"] is not None and cfg["label"] in features.keys():
      self._label = (cfg["label"],)
      self.num_classes = int(features[cfg["label"]].num_classes)
      self.class_names = tuple(features[cfg["label"]].names)

  def __len__(self) -> int:
    return len(self._ds)

  def _gather(self, idx: np.ndarray) -> dict[str, np.ndarray]:
    # One example at a time: the batched __getitems__ of tfds 4.9.10 is broken under
    # tfds.testing.mock_data, and decoding dominates the cost either way.
    examples = [self._ds[int(i)] for i in idx]
    images = np.stack([np.asarray(e["image"]) for e in examples])  # [B, H, W, C] uint8
    if self._crop:
      images = center_crop(images)
    images = uint8_to_float(images)
    if self._size is not None:
      images = np.clip(resize_images(images, self._size), -1.0, 1.0)
    batch = {"image": images}
    if self._label is not None:
      batch["label"] = np.array([_lookup(e, self._label) for e in examples], np.int32)
    for k in self.attributes:
      batch[k] = np.array([e["attributes"][k] for e in examples], np.int32)
    return batch


def _lookup(example: dict[str, Any], path: tuple[str, ...]) -> Any:
  for k in path:
    example = example[k]
  return example
