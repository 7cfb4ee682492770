"""The image-caption data of the clip family: `shapes` images, each with the index of its
caption among every caption the dataset can say (3 shapes x 4 colours x 2 sizes x 9 positions
= 216), and that caption table tokenised once."""
from __future__ import annotations

import itertools
import os

import numpy as np

from jaxgen import data as jdata
from jaxgen.data.shapes import SHAPES_ATTRIBUTES, SHAPES_SPLITS, make_shapes, shapes_caption

ATTRIBUTES = tuple(SHAPES_ATTRIBUTES)                       # shape, color, size, position
SIZES = tuple(len(SHAPES_ATTRIBUTES[a]) for a in ATTRIBUTES)  # (3, 4, 2, 9)


def caption_index(shape, color, size, position):
  """The row of a caption in `caption_table` (mixed radix over the attribute values)."""
  return ((np.asarray(shape) * SIZES[1] + color) * SIZES[2] + size) * SIZES[3] + position


def caption_table() -> tuple[list[str], np.ndarray]:
  """(every caption, its attribute values [216, 4]) in `caption_index` order."""
  values = np.asarray(list(itertools.product(*(range(n) for n in SIZES))), np.int32)
  return [shapes_caption(*v) for v in values.tolist()], values


def source(split: str, image_size: int | None, held_out: bool = False) -> jdata.ArraySource:
  """`shapes` with ``caption`` = the `caption_index` of each image (and its attributes);
  `held_out` drops the train images of `jaxgen.data.SHAPES_HELD_OUT`'s combinations."""
  num, seed = SHAPES_SPLITS[split]
  data = make_shapes(num, 32 if image_size is None else image_size, seed)
  keep = np.ones(num, bool)
  if held_out and split == "train":
    keep = ~jdata.shapes_held_out_mask(*(data[k] for k in ATTRIBUTES))
  fields = {k: data[k][keep] for k in ATTRIBUTES}
  fields["caption"] = caption_index(*(fields[k] for k in ATTRIBUTES)).astype(np.int32)
  return jdata.ArraySource("shapes", split, data["image"][keep], fields,
                           num_classes=len(caption_table()[0]))


def tokenizer(workdir: str, vocab_size: int, texts):
  """The caption tokenizer in ``workdir/tokenizer`` (CLIP's BPE), trained on `texts` the first
  time (offline, `jaxgen.text.train_clip_tokenizer`)."""
  from jaxgen.text import load_clip_tokenizer, train_clip_tokenizer  # pylint: disable=C0415
  folder = os.path.join(workdir, "tokenizer")
  if not os.path.isfile(os.path.join(folder, "vocab.json")):
    train_clip_tokenizer(list(texts), vocab_size, folder)
  return load_clip_tokenizer(folder)
