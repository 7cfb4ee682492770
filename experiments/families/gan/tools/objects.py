"""An object count of samples: how many separate bright regions each image holds.

  python -m experiments.main objects --workdir DIR [--num 400] [--truncation-psi 0.7]
      [--threshold 0.25] [--seed 0]
"""
from __future__ import annotations

import numpy as np

from experiments.families.gan.tools.fit import check_edit_truncation, eval_latents
from experiments.families.gan.trained import (Trained, flags, tool_command,
                                              output_path, write_output)

__all__ = ["COMMAND", "count_objects", "objects"]


def count_objects(images, threshold: float = 0.25) -> np.ndarray:
  """Number of separate objects in each image: 8-connected regions of pixels whose
  brightness (the largest channel, with [-1, 1] images mapped to [0, 1]) exceeds `threshold`.

  Made for `shapes`, where every real image holds exactly one object on black; a generator
  that fades an object between two grid cells draws two (docs/gans.md, "What an edit also
  changes").

  Args:
    images: [N, H, W, C] in [-1, 1].
    threshold: brightness in (0, 1).

  Returns:
    int counts [N].
  """
  images = np.asarray(images, np.float32)
  if images.ndim != 4:
    raise ValueError(f"images must be [N, H, W, C] in [-1, 1], got shape {images.shape}.")
  if not 0.0 < threshold < 1.0:
    raise ValueError(f"threshold must be in (0, 1) (a brightness), got {threshold}.")
  mask = ((images + 1.0) / 2.0).max(-1) > threshold
  h, w = mask.shape[1:]
  # every lit pixel starts with its own label; the largest label of each region spreads to
  # all of it (at most H * W rounds, far fewer in practice)
  labels = np.where(mask, np.arange(1, h * w + 1).reshape(1, h, w), 0)
  while True:
    p = np.pad(labels, ((0, 0), (1, 1), (1, 1)))
    spread = np.max([p[:, i:i + h, j:j + w] for i in range(3) for j in range(3)], axis=0)
    spread = np.where(mask, spread, 0)
    if np.array_equal(spread, labels):
      break
    labels = spread
  return np.array([np.unique(l[l > 0]).size for l in labels])


def objects(t: Trained, *, num: int = 400, seed: int = 0, truncation_psi: float = 1.0,
            threshold: float = 0.25) -> str:
  """Counts the objects (`count_objects`) in `num` samples: the latents an edit evaluates on
  for `seed` (in W with truncation for a style generator, else in Z untruncated), so the share
  of two-object samples describes the same set an edit's numbers come from.

  Returns:
    The path of a grid of up to 64 samples with two or more objects (one black image if
    none); beside it a JSON with the histogram.
  """
  if num < 1:
    raise ValueError(f"num must be >= 1 samples, got {num}.")
  space = "w" if t.style else "z"
  psi = check_edit_truncation(t, space, truncation_psi)
  images = t.images(eval_latents(t, num, space=space, seed=seed, psi=psi), space)
  counts = count_objects(images, threshold)
  hist = np.bincount(counts)
  record = {"num": num, "seed": seed, "truncation_psi": psi, "threshold": threshold,
            "space": space, "histogram": {int(k): int(v) for k, v in enumerate(hist) if v},
            "two_or_more": int((counts >= 2).sum()),
            "two_or_more_fraction": float((counts >= 2).mean()),
            "none_fraction": float((counts == 0).mean())}
  several = images[counts >= 2][:64]
  path = output_path(t, "objects" + (f"_psi{psi:g}" if psi != 1.0 else ""), seed)
  shown = several if len(several) else np.full((1,) + images.shape[1:], -1.0)  # none: black
  return write_output(path, shown, 8, record, t, "objects")


COMMAND = tool_command(
    "count the objects in the edit evaluation samples",
    flags(("--seed", int, 0), ("--num", int, 400), ("--truncation-psi", float, 1.0),
          ("--threshold", float, 0.25)),
    lambda t, a: objects(t, num=a.num, seed=a.seed, truncation_psi=a.truncation_psi,
                         threshold=a.threshold))
