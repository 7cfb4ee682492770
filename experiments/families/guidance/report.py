"""Pictures of the guidance sweep, drawn with PIL only (no matplotlib on a fresh install):
sample grids per class and scale, and line plots of the metrics against the scale."""
from __future__ import annotations

import math
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from jaxgen.metrics import make_grid, to_uint8

_COLORS = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14))
_METRICS = (("accuracy", "class accuracy (held-out classifier)"), ("fid", "classifier-FID vs test"))


def by_class(images: np.ndarray, num_classes: int, *, labels=None, per_class: int | None = None):
  """Images reordered class-major: per_class images of class 0, then class 1, ... (a grid with
  ``nrow=per_class`` has one row per class present). ``labels`` default to ``arange(N) % K``."""
  labels = np.arange(len(images)) % num_classes if labels is None else np.asarray(labels)
  groups = [g for g in (np.flatnonzero(labels == c) for c in range(num_classes)) if len(g)]
  per = min(len(g) for g in groups) if per_class is None else per_class
  rows = []
  for g in groups:
    row = images[g[:per]]
    if len(row) < per:  # pad a short class with black tiles
      row = np.concatenate([row, -np.ones((per - len(row),) + images.shape[1:], images.dtype)])
    rows.append(row)
  return np.concatenate(rows)


def _font():
  return ImageFont.load_default()


def save_grid(path: str, panels, titles, nrow: int, *, min_tile: int = 24, gap: int = 10) -> str:
  """Panels (each a batch tiled ``nrow`` per row) side by side under their titles, as one PNG."""
  pictures = []
  for p in panels:
    x = to_uint8(p)
    f = max(1, math.ceil(min_tile / min(x.shape[1:3])))
    x = np.repeat(np.repeat(x, f, axis=1), f, axis=2)
    g = make_grid(x, nrow, padding=1, pad_value=255)
    pictures.append(np.repeat(g, 3, axis=-1) if g.shape[-1] == 1 else g[..., :3])
  head = 16
  width = sum(p.shape[1] for p in pictures) + gap * (len(pictures) + 1)
  height = max(p.shape[0] for p in pictures) + head + gap
  canvas = Image.new("RGB", (width, height), (255, 255, 255))
  draw, left = ImageDraw.Draw(canvas), gap
  for pic, title in zip(pictures, titles):
    canvas.paste(Image.fromarray(pic), (left, head))
    draw.text((left, 2), title, fill=(0, 0, 0), font=_font())
    left += pic.shape[1] + gap
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  canvas.save(path, format="PNG")
  return path


def _ticks(lo: float, hi: float, n: int = 5):
  if not hi > lo:
    lo, hi = lo - 0.5, hi + 0.5
  raw = (hi - lo) / (n - 1)
  mag = 10 ** math.floor(math.log10(raw))
  step = min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), default=raw)
  start = math.floor(lo / step) * step
  ticks = [start + i * step for i in range(int(math.ceil((hi - start) / step)) + 1)]
  return ticks[0], ticks[-1], ticks


def _fmt(v: float) -> str:
  return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"


def _panel(draw, box, xs, ys, *, title, xlabel, point_labels=None, color=_COLORS[0]):
  """One line plot with axes, ticks and labels inside box = (left, top, right, bottom)."""
  l, t, r, b = box
  pl, pt, pr, pb = l + 50, t + 22, r - 12, b - 34  # plot area
  pad = lambda v: 0.04 * (max(v) - min(v))  # keep points off the frame
  x0, x1, xt = _ticks(min(xs) - pad(xs), max(xs) + pad(xs))
  y0, y1, yt = _ticks(min(ys) - pad(ys), max(ys) + pad(ys))
  px = lambda v: pl + (v - x0) / (x1 - x0) * (pr - pl)
  py = lambda v: pb - (v - y0) / (y1 - y0) * (pb - pt)
  font, black, grey = _font(), (0, 0, 0), (225, 225, 225)
  draw.text((pl, t + 4), title, fill=black, font=font)
  for v in xt:
    draw.line([(px(v), pt), (px(v), pb)], fill=grey)
    draw.line([(px(v), pb), (px(v), pb + 4)], fill=black)
    draw.text((px(v) - 8, pb + 6), _fmt(v), fill=black, font=font)
  for v in yt:
    draw.line([(pl, py(v)), (pr, py(v))], fill=grey)
    draw.line([(pl - 4, py(v)), (pl, py(v))], fill=black)
    draw.text((l + 2, py(v) - 5), _fmt(v), fill=black, font=font)
  draw.rectangle([pl, pt, pr, pb], outline=black)
  draw.text(((pl + pr) // 2 - 3 * len(xlabel), pb + 20), xlabel, fill=black, font=font)
  pts = [(px(x), py(y)) for x, y in zip(xs, ys)]
  if len(pts) > 1:
    draw.line(pts, fill=color, width=2)
  for i, (x, y) in enumerate(pts):
    draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=color)
    if point_labels:
      left = x > pr - 40  # near the right edge: label on the left of the point
      draw.text((x - 6 * len(point_labels[i]) - 4 if left else x + 4, y - 12), point_labels[i],
                fill=color, font=font)


def save_plot(path: str, rows, *, title: str, metrics=_METRICS, size=(330, 250),
              tradeoff=("accuracy", "accuracy")) -> str:
  """Each metric against the guidance scale; with both ``tradeoff[0]`` (default accuracy) and
  FID also the trade-off curve (FID against it, points labelled by scale, labelled
  ``tradeoff[1]``), as in the CFG paper's Fig. 4."""
  xs = [r["scale"] for r in rows]
  panels = [dict(xs=xs, ys=[r[k] for r in rows], title=name, xlabel="guidance scale")
            for k, name in metrics]
  key, label = tradeoff
  if {key, "fid"} <= set(rows[0]):
    panels.append(dict(xs=[r[key] for r in rows], ys=[r["fid"] for r in rows],
                       title=f"trade-off: classifier-FID vs {label}", xlabel=label,
                       point_labels=[f"g={s:g}" for s in xs]))
  w, h = size
  canvas = Image.new("RGB", (w * len(panels), h + 24), (255, 255, 255))
  draw = ImageDraw.Draw(canvas)
  draw.text((8, 6), title, fill=(0, 0, 0), font=_font())
  for i, p in enumerate(panels):
    _panel(draw, (i * w, 24, (i + 1) * w, 24 + h), p.pop("xs"), p.pop("ys"),
           color=_COLORS[i % len(_COLORS)], **p)
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  canvas.save(path, format="PNG")
  return path
