"""Measurements of an edit along a latent direction, on the classifier's outputs at M edit
magnitudes m_1 < ... < m_M for B latents ([M, B] arrays, m along axis 0).

Each returns, per latent (a boolean [B]) or as a fraction over the latents, whether the edit
moved the measured attribute one way (a score never decreasing along m, within a tolerance
or where the classifier is not saturated) and whether it took the predicted class from one
side to the other (`class_flips`). They read outputs only: any direction, any generator.
"""
from __future__ import annotations

import numpy as np

__all__ = ["class_flips", "monotonic_and_flips_fraction", "monotonic_columns",
           "monotonic_fraction", "rises_and_flips", "rises_where_unsaturated"]


def class_flips(classes, positive, negative):
  """Per latent [B]: the predicted class ``classes`` [M, B] is one of `negative` at the
  first m and one of `positive` at the last (an edit that takes the attribute from one side
  to the other)."""
  c = np.asarray(classes)
  return np.isin(c[0], np.atleast_1d(negative)) & np.isin(c[-1], np.atleast_1d(positive))


def rises_and_flips(values, classes, positive, negative, *, tol: float = 0.0):
  """Per latent [B]: the score ``values`` [M, B] never decreases along M by more than `tol`
  AND the predicted class ``classes`` [M, B] goes from one of `negative` at the first m to
  one of `positive` at the last: the score both moves and moves one way (a saturated,
  unchanged score alone does not count)."""
  return monotonic_columns(values, tol=tol) & class_flips(classes, positive, negative)


def rises_where_unsaturated(logodds, probs, classes, positive, negative, *,
                            saturation: float = 1e-3):
  """Per latent [B]: the exact log-odds [M, B] never decreases on a step of M where the
  classifier is not saturated, AND the predicted class goes from one of `negative` to one of
  `positive` (as `rises_and_flips`).

  A step m_i -> m_{i+1} is unsaturated if P(positive) (``probs`` [M, B]) lies in
  (saturation, 1 - saturation) at either end. Steps where P stays below `saturation` (or
  above 1 - saturation) are not judged: there the log-odds of two classes that are both
  far from the image (a blue-to-red edit passing through green: P(red), P(blue) < 1e-3) is
  a difference of two "not this class" logits, which the classifier was never trained to
  order. Unlike a tolerance on P, every decrease where P carries information counts,
  however small."""
  lo, p, c = (np.asarray(a) for a in (logodds, probs, classes))
  lo, p = lo.astype(np.float64), p.astype(np.float64)
  if not lo.shape == p.shape == c.shape or lo.ndim != 2:
    raise ValueError(f"logodds, probs and classes must share one [M, B] shape, got "
                     f"{lo.shape}, {p.shape}, {c.shape}.")
  if not 0.0 <= saturation < 0.5:
    raise ValueError(f"saturation must be in [0, 0.5), got {saturation}.")
  hi, low = np.maximum(p[:-1], p[1:]), np.minimum(p[:-1], p[1:])
  judged = (hi > saturation) & (low < 1.0 - saturation)
  rises = ~np.any(judged & (np.diff(lo, axis=0) < 0), axis=0)
  return rises & class_flips(c, positive, negative)


def monotonic_and_flips_fraction(values, classes, positive, negative, *, tol: float = 0.0):
  """Fraction of latents for which `rises_and_flips` holds."""
  return float(np.mean(rises_and_flips(values, classes, positive, negative, tol=tol)))


def monotonic_columns(values, *, increasing: bool = True, tol: float = 0.0) -> np.ndarray:
  """Per column [B] of ``values`` [M, B]: monotonic along M, no step going the wrong way by
  more than ``tol`` (compared in float64)."""
  v = np.asarray(values, np.float64)
  diffs = np.diff(v, axis=0) * (1.0 if increasing else -1.0)
  return np.all(diffs >= -tol, axis=0)


def monotonic_fraction(values, *, increasing: bool = True, tol: float = 0.0) -> float:
  """Fraction of columns of ``values`` [M, B] that are monotonic along M (steps may go the
  wrong way by at most ``tol``; `monotonic_columns`)."""
  return float(np.mean(monotonic_columns(values, increasing=increasing, tol=tol)))
