"""What a guided model is conditioned on, and whether a sample shows it.

``label``: the dataset label. ``shapes_words``: `shapes` with one word per image, its shape
(0..2) or 3 + its colour (3..6), the choice fixed per image by a seeded coin (independent of
any training seed): "a circle, not red" is then positive word 0 with negative word 3.
"""
from __future__ import annotations

import numpy as np

from experiments import workdir as W
from experiments.families.guidance.config import GuidanceConfig
from jaxgen import data as jdata
from jaxgen.data.shapes import SHAPES_ATTRIBUTES, SHAPES_SPLITS, make_shapes

_SHAPE_NAMES, _COLOR_NAMES = SHAPES_ATTRIBUTES["shape"], SHAPES_ATTRIBUTES["color"]


def shapes_words_source(split: str, image_size: int | None) -> jdata.ArraySource:
  """``shapes`` with ``label`` = one word per image (see the module docstring)."""
  num, seed = SHAPES_SPLITS[split]
  data = make_shapes(num, 32 if image_size is None else image_size, seed)
  use_color = np.random.Generator(np.random.PCG64([seed, 7])).random(num) < 0.5
  word = np.where(use_color, 3 + data["color"], data["shape"]).astype(np.int32)
  fields = {"label": word, **{k: data[k] for k in SHAPES_ATTRIBUTES}}
  return jdata.ArraySource("shapes", split, data["image"], fields, num_classes=7,
                           class_names=_SHAPE_NAMES + _COLOR_NAMES)


def sources(config: GuidanceConfig, split: str) -> jdata.Source:
  """The split with the labels of ``guidance.condition`` (the diffusion runner's `sources`)."""
  if config.guidance.condition == "shapes_words":
    return shapes_words_source(split, config.data.image_size)
  return W.build_source(config, split)


def heldout_heads(kind: str, num_classes: int) -> dict:
  return {"label": num_classes} if kind == "label" else {"shape": 3, "color": 4}


def heldout_targets(kind: str, arrays: dict) -> dict:
  return ({"label": arrays["label"]} if kind == "label"
          else {"shape": arrays["shape"], "color": arrays["color"]})


def hits(kind: str, probs: dict, labels: np.ndarray) -> np.ndarray:
  """[N] bool: the held-out classifier sees the attribute each condition asks for."""
  labels = np.asarray(labels)
  if kind == "label":
    return probs["label"].argmax(-1) == labels
  return np.where(labels < 3, probs["shape"].argmax(-1) == labels,
                  probs["color"].argmax(-1) == labels - 3)
