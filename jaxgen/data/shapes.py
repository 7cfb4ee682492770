"""Procedural ``shapes``: one coloured shape per image, with known attributes and a caption.

Each RGB image shows a circle, square or triangle in one of four colours, small or
large, centred (with a little jitter) on one cell of a 3x3 grid, on a black background.
Every image carries integer attributes ``shape``, ``color``, ``size``, ``position``
(value names in :data:`SHAPES_ATTRIBUTES`) and an English caption, e.g.
``"a small red circle at the top left"``. The default ``label`` is the shape index
(3 classes), so class-conditional code works unchanged; another attribute can be chosen
as label with ``ShapesSource(..., label_attribute="color")``.

Generation is vectorised numpy, anti-aliased by rendering at twice the resolution and
averaging 2x2 blocks, deterministic in its seed, and cached in-process. The splits use
fixed seeds: 10000 train and 2000 test images that differ from each other.

:data:`SHAPES_HELD_OUT` names ten attribute combinations that a model of composition can be
trained without (``ShapesSource("train", held_out=True)`` drops their 472 images, 4.7% of
the split): every value of every attribute still appears, only these pairings are never seen.
"""
from __future__ import annotations

import functools
import types

import numpy as np

from jaxgen.data.sources import ArraySource

SHAPES_ATTRIBUTES = types.MappingProxyType({
    "shape": ("circle", "square", "triangle"),
    "color": ("red", "green", "blue", "yellow"),
    "size": ("small", "large"),
    "position": ("top left", "top", "top right", "left", "center", "right",
                 "bottom left", "bottom", "bottom right"),
})
# RGB of each colour in SHAPES_ATTRIBUTES["color"], uint8.
SHAPES_COLORS_RGB = np.array([[230, 40, 40], [40, 200, 60], [50, 90, 240], [240, 220, 40]],
                             np.uint8)
SHAPES_BACKGROUND_RGB = np.array([0, 0, 0], np.uint8)
SHAPES_IMAGE_SIZES = (16, 32, 64)
SHAPES_SPLITS = {"train": (10_000, 20_251), "test": (2_000, 31_337)}  # (size, fixed seed)
# (size, colour, shape, position) of the held-out combinations; every position once, the
# centre twice, each shape three or four times, each colour two or three times.
_HELD_OUT_NAMES = (
    ("small", "red", "square", "bottom right"), ("large", "green", "circle", "top left"),
    ("small", "blue", "triangle", "center"), ("large", "yellow", "square", "left"),
    ("small", "green", "triangle", "top right"), ("large", "blue", "circle", "bottom"),
    ("small", "yellow", "circle", "right"), ("large", "red", "triangle", "top"),
    ("small", "blue", "square", "bottom left"), ("small", "red", "circle", "center"))
# The same as attribute indices (shape, color, size, position), the argument order of
# `shapes_caption`.
SHAPES_HELD_OUT = tuple(
    (SHAPES_ATTRIBUTES["shape"].index(sh), SHAPES_ATTRIBUTES["color"].index(c),
     SHAPES_ATTRIBUTES["size"].index(sz), SHAPES_ATTRIBUTES["position"].index(p))
    for sz, c, sh, p in _HELD_OUT_NAMES)

# Natural phrase per position (the value name is used for the grid cell, the phrase in
# captions: "on the left", "in the center").
_POSITION_PHRASES = ("at the top left", "at the top", "at the top right", "on the left",
                     "in the center", "on the right", "at the bottom left", "at the bottom",
                     "at the bottom right")
# Half-extent of a shape as a fraction of the image side, before a x[0.9, 1.1] jitter;
# with the +-0.012 centre jitter a large shape stays inside its third of the image.
_HALF_EXTENT = (0.08, 0.14)  # small, large
_CENTER_JITTER = 0.012
_SUPERSAMPLE = 2
_CHUNK = 2048


def shapes_attribute_values(name: str) -> tuple[str, ...]:
  """Value names of shapes attribute `name` (index i of the tuple is value i).

  Raises:
    ValueError: for an unknown attribute name (the message lists the known ones).
  """
  if name not in SHAPES_ATTRIBUTES:
    raise ValueError(f"unknown shapes attribute {name!r}; expected one of "
                     f"{tuple(SHAPES_ATTRIBUTES)}.")
  return SHAPES_ATTRIBUTES[name]


def shapes_caption(shape: int, color: int, size: int, position: int) -> str:
  """The caption of one image from its attribute indices."""
  a = SHAPES_ATTRIBUTES
  words = (a["size"][size], a["color"][color], a["shape"][shape], _POSITION_PHRASES[position])
  return "a " + " ".join(words)


def shapes_held_out_mask(shape, color, size, position) -> np.ndarray:
  """True where the attributes (arrays [N]) form one of :data:`SHAPES_HELD_OUT`."""
  combo = np.stack([np.asarray(v) for v in (shape, color, size, position)], -1)  # [N, 4]
  return np.any(np.all(combo[:, None, :] == np.asarray(SHAPES_HELD_OUT)[None], -1), -1)


def _render(shape, cx, cy, half, image_size):
  """Coverage of each shape on the pixel grid, in sub-pixels.

  Args:
    shape, cx, cy, half: ``[n]`` shape index, centre and half-extent (fractions of side).
    image_size: output side S.

  Returns:
    ``[n, S, S]`` uint8 number of a pixel's ``SUPERSAMPLE**2`` sub-pixels inside the shape.
  """
  g = image_size * _SUPERSAMPLE
  u = (np.arange(g, dtype=np.float32) + 0.5) / g  # sub-pixel centres
  dx = u[None, None, :] - cx[:, None, None]  # [n, 1, G]
  dy = u[None, :, None] - cy[:, None, None]  # [n, G, 1]
  r = half[:, None, None]
  inside = np.zeros((shape.shape[0], g, g), bool)
  sel = shape == 0  # circle of radius r
  inside[sel] = dx[sel] ** 2 + dy[sel] ** 2 <= r[sel] ** 2
  sel = shape == 1  # axis-aligned square of half-side 0.85 r (about the circle's area)
  inside[sel] = np.maximum(np.abs(dx[sel]), np.abs(dy[sel])) <= 0.85 * r[sel]
  sel = shape == 2  # upward isosceles triangle: apex at -r, base of half-width r at +r
  d, e, rs = dx[sel], dy[sel], r[sel]
  inside[sel] = (e <= rs) & (np.abs(d) <= 0.5 * (e + rs))
  # Number of covered sub-pixels per output pixel, 0..SUPERSAMPLE**2.
  count = np.zeros((shape.shape[0], image_size, image_size), np.uint8)
  for i in range(_SUPERSAMPLE):
    for j in range(_SUPERSAMPLE):
      count += inside[:, i::_SUPERSAMPLE, j::_SUPERSAMPLE]
  return count


@functools.lru_cache(maxsize=16)
def make_shapes(num_examples: int, image_size: int, seed: int) -> dict[str, np.ndarray]:
  """Generates `num_examples` shapes images, deterministically from `seed` (cached).

  Args:
    num_examples: number of images N.
    image_size: side S, one of :data:`SHAPES_IMAGE_SIZES`.
    seed: integer seed of the attributes and jitter.

  Returns:
    Read-only arrays: ``'image'`` ``[N, S, S, 3]`` uint8 and ``'shape'``, ``'color'``,
    ``'size'``, ``'position'`` ``[N]`` int32.
  """
  if image_size not in SHAPES_IMAGE_SIZES:
    raise ValueError(f"shapes image_size must be one of {SHAPES_IMAGE_SIZES}, got {image_size!r}.")
  if num_examples < 1:
    raise ValueError(f"num_examples must be positive, got {num_examples}.")
  rng = np.random.Generator(np.random.PCG64(seed))
  attrs = {k: rng.integers(0, len(v), num_examples).astype(np.int32)
           for k, v in SHAPES_ATTRIBUTES.items()}
  scale = rng.uniform(0.9, 1.1, num_examples).astype(np.float32)
  jitter = rng.uniform(-_CENTER_JITTER, _CENTER_JITTER, (num_examples, 2)).astype(np.float32)
  half = np.asarray(_HALF_EXTENT, np.float32)[attrs["size"]] * scale
  cx = (attrs["position"] % 3 + np.float32(0.5)) / np.float32(3) + jitter[:, 0]
  cy = (attrs["position"] // 3 + np.float32(0.5)) / np.float32(3) + jitter[:, 1]

  # Pixel colour for each (colour, covered sub-pixel count): background blended with
  # the shape colour in proportion to the covered area.
  bg = SHAPES_BACKGROUND_RGB.astype(np.float32)
  frac = np.arange(_SUPERSAMPLE**2 + 1, dtype=np.float32) / _SUPERSAMPLE**2
  fg = SHAPES_COLORS_RGB.astype(np.float32)
  lut = np.rint(bg + frac[None, :, None] * (fg[:, None, :] - bg))  # [colours, counts, 3]
  lut = lut.astype(np.uint8)
  images = np.empty((num_examples, image_size, image_size, 3), np.uint8)
  for s in range(0, num_examples, _CHUNK):
    sl = slice(s, s + _CHUNK)
    count = _render(attrs["shape"][sl], cx[sl], cy[sl], half[sl], image_size)
    images[sl] = lut[attrs["color"][sl, None, None], count]
  out = {"image": images, **attrs}
  for v in out.values():
    v.setflags(write=False)
  return out


class ShapesSource(ArraySource):
  """A split of the procedural shapes dataset.

  Batches hold ``'image'`` ``[B, S, S, 3]`` float32 in [-1, 1], ``'label'`` ``[B]`` int32
  (the `label_attribute` index, by default the shape) and ``'shape'``, ``'color'``,
  ``'size'``, ``'position'`` ``[B]`` int32.

  Attributes:
    attributes: attribute name -> value names (:data:`SHAPES_ATTRIBUTES`).
    captions: a caption per index of the split.
  """

  def __init__(self, split: str, image_size: int | None = None, *,
               label_attribute: str = "shape", held_out: bool = False):
    """Generates (or fetches from the cache) the split.

    Args:
      split: ``'train'`` (10000 images) or ``'test'`` (2000).
      image_size: side S in :data:`SHAPES_IMAGE_SIZES`; None means 32.
      label_attribute: attribute used as ``'label'``.
      held_out: drop the images of the :data:`SHAPES_HELD_OUT` combinations (train split
        only: 9528 of 10000 images stay; the test split keeps them to test on).
    """
    if split not in SHAPES_SPLITS:
      raise ValueError(f"unknown split {split!r} for 'shapes'; expected one of "
                       f"{tuple(SHAPES_SPLITS)}.")
    size = 32 if image_size is None else image_size
    if size not in SHAPES_IMAGE_SIZES:
      raise ValueError(f"shapes image_size must be one of {SHAPES_IMAGE_SIZES} (or None for "
                       f"32), got {image_size!r}.")
    class_names = shapes_attribute_values(label_attribute)
    num, seed = SHAPES_SPLITS[split]
    data = make_shapes(num, size, seed)
    fields = {k: data[k] for k in SHAPES_ATTRIBUTES}
    images, labels = data["image"], data[label_attribute]
    if held_out:
      if split != "train":
        raise ValueError(f"held_out drops combinations from the train split; the {split!r} "
                         "split keeps every combination to test on")
      keep = ~shapes_held_out_mask(*(fields[k] for k in SHAPES_ATTRIBUTES))
      images, labels = images[keep], labels[keep]
      fields = {k: v[keep] for k, v in fields.items()}
    super().__init__("shapes", split, images, {"label": labels, **fields},
                     num_classes=len(class_names), class_names=class_names)
    self.label_attribute = label_attribute
    self.held_out = bool(held_out)
    self.attributes = dict(SHAPES_ATTRIBUTES)
    self._captions = None

  def attribute_values(self, name: str) -> tuple[str, ...]:
    """Value names of attribute `name`; unknown names raise ValueError."""
    return shapes_attribute_values(name)

  @property
  def captions(self) -> list[str]:
    """``captions[i]`` describes image ``i`` of the split."""
    if self._captions is None:
      f = self._fields
      self._captions = [
          shapes_caption(*v) for v in zip(f["shape"].tolist(), f["color"].tolist(),
                                          f["size"].tolist(), f["position"].tolist())]
    return self._captions
