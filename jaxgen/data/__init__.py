"""Data: embedded offline datasets (``digits``, ``shapes``), TFDS datasets, batching.

One API for every dataset::

  source = get_source("shapes", "train")           # random access: source[idx] -> batch
  loader = Loader(source, batch_size=64, seed=0)   # deterministic, checkpointable
  batch = next(loader)                             # {'image': [64, 32, 32, 3], 'label': ...}
  check_batch(batch, source.image_shape)
  device_batch = jaxgen.parallel.shard_batch(batch, mesh)

Images are NHWC float32 in [-1, 1]; labels and attributes are int32.
"""
from __future__ import annotations

from jaxgen.data.digits import DigitsSource
from jaxgen.data.grain_loader import GrainLoader
from jaxgen.data.loader import Loader
from jaxgen.data.shapes import (SHAPES_ATTRIBUTES, SHAPES_COLORS_RGB, SHAPES_HELD_OUT,
                                SHAPES_IMAGE_SIZES, ShapesSource, make_shapes,
                                shapes_attribute_values, shapes_caption, shapes_held_out_mask)
from jaxgen.data.sources import (ArraySource, Source, center_crop, check_batch, load_all,
                                 resize_images, uint8_to_float)
from jaxgen.data.tfds_source import TFDS_DATASETS, TfdsSource, prepare_command

EMBEDDED_DATASETS = ("digits", "shapes")
DATASETS = EMBEDDED_DATASETS + tuple(TFDS_DATASETS)


def get_source(name: str, split: str, *, image_size: int | None = None,
               data_dir: str | None = None, held_out: bool = False) -> Source:
  """Opens split `split` of dataset `name` (one of :data:`DATASETS`).

  Args:
    name: ``'digits'``, ``'shapes'`` (embedded, offline) or a TFDS name such as
      ``'mnist'``, ``'fashion_mnist'``, ``'cifar10'``, ``'celeb_a'``.
    split: ``'train'`` or ``'test'`` (celeb_a also ``'validation'``; TFDS splits may be
      sliced, e.g. ``'train[:10%]'``).
    image_size: output side S; None keeps the dataset's default (digits 8, shapes 32,
      mnist 28, cifar10 32, celeb_a 64).
    data_dir: TFDS data directory; ignored by embedded datasets.
    held_out: ``shapes`` train split only: without the images of the ten attribute
      combinations of :data:`SHAPES_HELD_OUT`.

  Returns:
    A :class:`Source`.

  Raises:
    ValueError: for an unknown name, split or image size.
    FileNotFoundError: when a TFDS dataset is not prepared (says how to prepare it).
  """
  if held_out and name != "shapes":
    raise ValueError(f"held_out (training without SHAPES_HELD_OUT's attribute combinations) "
                     f"needs the 'shapes' dataset, not {name!r}")
  if name == "digits":
    return DigitsSource(split, image_size)
  if name == "shapes":
    return ShapesSource(split, image_size, held_out=held_out and split == "train")
  if name in TFDS_DATASETS:
    return TfdsSource(name, split, image_size=image_size, data_dir=data_dir)
  raise ValueError(f"unknown dataset {name!r}; expected one of {DATASETS}.")


__all__ = [
    "DATASETS", "EMBEDDED_DATASETS", "TFDS_DATASETS", "SHAPES_ATTRIBUTES",
    "SHAPES_COLORS_RGB", "SHAPES_HELD_OUT", "SHAPES_IMAGE_SIZES", "ArraySource", "DigitsSource",
    "GrainLoader", "Loader",
    "ShapesSource", "Source", "TfdsSource", "center_crop", "check_batch", "get_source",
    "load_all", "make_shapes", "prepare_command", "resize_images", "shapes_attribute_values",
    "shapes_caption", "shapes_held_out_mask", "uint8_to_float",
]
