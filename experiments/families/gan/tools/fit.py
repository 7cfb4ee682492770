"""Fitting supervised latent directions (InterFaceGAN, Shen et al. 2020) on a trained workdir:
the labelled latent sets, the evaluation latents, and the linear fit of one attribute's
direction.

Keys of an edit protocol for ``seed``: the labelled set is drawn from ``fold_in(key(seed),
0)`` (its layer-wise second w from ``fold_in(key(seed), 3)``), the evaluation latents from
``fold_in(key(seed), 1)`` and the latents a layer range is chosen on from ``fold_in(key(seed),
2)``.
"""
from __future__ import annotations

import jax
import numpy as np

from experiments.families.gan.trained import Trained
from jaxgen import gan
from jaxgen.nn.stylegan import check_truncation_psi

__all__ = ["as_list", "attribute_classes", "check_edit_truncation", "edit_labels",
           "eval_latents", "fit_direction", "grid_axes", "label_latents", "layer_mask_of"]


def as_list(v) -> list:
  """`v` as a list (a single value becomes a one-element list)."""
  return list(v) if isinstance(v, (list, tuple)) else [v]


def attribute_classes(t: Trained, attribute: str, positive, negative=None):
  """(positive value indices, negative value indices or None) of an attribute's named (or
  indexed) values; unknown names raise ValueError listing the known ones."""
  pos = [gan.attribute_index(t.attributes, attribute, p) for p in as_list(positive)]
  neg = None if negative is None else [gan.attribute_index(t.attributes, attribute, v)
                                       for v in as_list(negative)]
  return pos, neg


def layer_mask_of(t: Trained, space: str, layers):
  """None for every layer (``layers=None``), else `gan.layer_mask` [num_ws] of a style
  generator's W+; a Z space or a DCGAN raises ValueError."""
  if layers is None:
    return None
  if space != "w" or not t.style:
    raise ValueError("layer-restricted edits need the W space of a style-based generator "
                     f"(--space w), got space={space!r}"
                     + ("" if t.style else " on a DCGAN") + ".")
  return gan.layer_mask(t.generator.config.num_ws, layers)


def grid_axes(values) -> list[tuple[str, list[int], list[int]]]:
  """The two axes of a grid-valued attribute (`shapes`' 3x3 positions): [("column", right
  column, left column), ("row", bottom row, top row)] as value indices. A value's column is
  read from the words 'left' / 'right' in its name (neither: the middle column), its row from
  'top' / 'bottom'.

  Used to condition an edit on a position *axis* pair rather than on one-vs-rest directions
  of every cell (``condition_mode='axes'``): position is two numbers, not nine classes."""
  values = [str(v) for v in values]
  cols = [2 if "right" in v.split() else 0 if "left" in v.split() else 1 for v in values]
  rows = [2 if "bottom" in v.split() else 0 if "top" in v.split() else 1 for v in values]
  if len(set(zip(cols, rows))) != len(values) or not {0, 2} <= set(cols) & set(rows):
    raise ValueError(f"values {tuple(values)} do not name the cells of a grid (each needs its "
                     "own combination of left/right and top/bottom, with both sides of each "
                     "axis present); condition_mode='axes' is for a position-like attribute.")
  return [("column", [i for i, c in enumerate(cols) if c == 2],
           [i for i, c in enumerate(cols) if c == 0]),
          ("row", [i for i, r in enumerate(rows) if r == 2],
           [i for i, r in enumerate(rows) if r == 0])]


def check_edit_truncation(t: Trained, space: str, psi) -> float:
  """The truncation psi of an edit protocol as a float; clear errors.

  psi < 1 samples every latent of the protocol (labelled, selection, evaluated, drawn) as
  w_avg + psi (w - w_avg) on all layers: InterFaceGAN labels and edits StyleGAN samples
  truncated with psi = 0.7 (Shen et al. 2020, the released settings; StyleGAN truncates the
  first 8 of 18 layers, StyleGAN2 all by default, as here). m stays in std units of the
  sampled latents along n, so an edit of m sigma equals editing the untruncated w by
  m sigma_untruncated and truncating afterwards, InterFaceGAN's order (truncation is affine).
  W space of a style-based generator only: truncating z would change z's distribution."""
  check_truncation_psi(psi)
  psi = float(psi)
  if psi != 1.0 and (space != "w" or not t.style):
    raise ValueError(f"truncation_psi={psi} needs the W space of a style-based generator "
                     f"(--space w), got space={space!r}" + ("" if t.style else " on a DCGAN")
                     + ".")
  return psi


def label_latents(t: Trained, num_latents: int, *, space: str, key, psi: float = 1.0) -> tuple:
  """`num_latents` random latents [N, D] of `space` and the classifier's logits on their
  images ({head: [N, K]}); `psi` < 1 truncates W latents towards the mean w."""
  lat = np.asarray(t.latents(jax.random.normal(key, (num_latents, t.z_dim)), space, psi))
  return lat, t.classifier_logits(t.images(lat, space))


def edit_labels(t: Trained, num_latents: int, *, space: str, seed: int = 0,
                fit_layers=None, psi: float = 1.0) -> tuple:
  """The labelled set an edit fits its directions on for `seed`: (latents [N, D], logits).
  psi: truncation of every sampled latent (`check_edit_truncation`); pass the same to the edit.

  fit_layers (W of a style generator): label layer-wise instead: the images of W+ latents
  whose `fit_layers` take one random w and the other layers another (`gan.layerwise_ws`);
  the latents returned are the `fit_layers`' w, so a direction fitted on them is the
  attribute's direction in those layers with the rest held fixed."""
  psi = check_edit_truncation(t, space, psi)
  key = jax.random.fold_in(jax.random.key(seed), 0)
  if fit_layers is None:
    return label_latents(t, num_latents, space=space, key=key, psi=psi)
  mask = layer_mask_of(t, space, fit_layers)
  w = t.latents(jax.random.normal(key, (num_latents, t.z_dim)), "w", psi)
  w_layers = t.latents(jax.random.normal(jax.random.fold_in(jax.random.key(seed), 3),
                                         (num_latents, t.z_dim)), "w", psi)
  ws = gan.layerwise_ws(w, w_layers, mask)
  return np.asarray(w_layers), t.classifier_logits(t.images(ws, "w"))


def eval_latents(t: Trained, num: int, *, space: str, seed: int = 0, psi: float = 1.0):
  """The `num` fresh latents [num, D] an edit measures its directions on for `seed` (in
  `space`, each sampled truncated by `psi`); `objects` counts the same set."""
  z = jax.random.normal(jax.random.fold_in(jax.random.key(seed), 1), (num, t.z_dim))
  return t.latents(z, space, psi)


def fit_direction(t: Trained, attribute: str, positive, negative=None, *, space: str = "z",
                  num_latents: int = 5000, fraction: float = 0.1, key=None,
                  method: str = "svm", l2: float = 1e-2, labelled=None):
  """InterFaceGAN: label `num_latents` samples (or reuse `labelled` = (latents, logits)),
  rank them by the log-odds of `positive` vs `negative`, fit a linear classifier on the
  `fraction` most confident of each side.

  Returns:
    (unit direction [D], info): info has the fit's entries (`gan.supervised_direction`),
    the attribute and its classes, the space and 'sigma', the std of all labelled latents
    along the direction (the unit of m).
  """
  pos, neg = attribute_classes(t, attribute, positive, negative)
  if labelled is None:
    if key is None:
      raise ValueError("fit_direction needs a key (or labelled=(latents, logits)).")
    labelled = label_latents(t, num_latents, space=space, key=key)
  lat_all, logits = labelled
  scores = np.asarray(gan.attribute_logodds(logits[attribute], pos, neg))
  lat = lat_all
  if neg is not None:  # keep only samples of either group before ranking
    keep = np.isin(logits[attribute].argmax(-1), pos + neg)
    lat, scores = lat_all[keep], scores[keep]
  direction, info = gan.supervised_direction(lat, scores, fraction=fraction, method=method, l2=l2)
  return direction, dict(info, attribute=attribute, positive=pos, negative=neg, space=space,
                         sigma=gan.projection_std(lat_all, direction))
