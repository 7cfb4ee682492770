"""Measuring an edit along a latent direction: the classifier's response on edited latents
(`measure_edits`), layer-restricted edits of W+ and the choice of a layer range
(`select_layers`)."""
from __future__ import annotations

import jax
import numpy as np

from experiments.families.gan.tools.fit import attribute_classes, layer_mask_of
from experiments.families.gan.trained import CONFIDENT, Trained
from jaxgen import gan
from jaxgen.nn.stylegan import broadcast_ws

__all__ = ["edited_latents", "layer_ranges", "measure_edits", "parse_layers", "select_layers"]


def edited_latents(t: Trained, latents, direction, magnitudes, space: str, layers=None):
  """latents [B, D] + m n for every m: [M, B, D], or on the `layers` of W+ only (the other
  layers keep w): [M, B, L, D]."""
  mask = layer_mask_of(t, space, layers)
  if mask is None:
    return gan.edit_latents(latents, direction, magnitudes)
  return gan.edit_latents(broadcast_ws(latents, len(mask)), direction, magnitudes, mask)


def parse_layers(text):
  """'4-5' / '0,1' / '3' -> list of W+ layer indices; None, '' or 'all' -> None (every layer);
  'auto' -> 'auto' (`select_layers` picks a range)."""
  if text in (None, "", "all"):
    return None
  if text == "auto":
    return "auto"
  try:
    return gan.parse_seeds(text)
  except ValueError:
    raise ValueError(f"bad layer list {text!r}: expected e.g. '4-5', '0,1', 'all' or "
                     "'auto'.") from None


def layer_ranges(num_ws: int) -> list[list[int]]:
  """Every contiguous range of W+ layers [a, ..., b], 0 <= a <= b < num_ws, shortest first."""
  return [list(range(a, a + n)) for n in range(1, num_ws + 1) for a in range(num_ws - n + 1)]


def measure_edits(t: Trained, direction, latents, magnitudes, attribute, positive,
                  negative=None, *, space: str = "z", conditions=(), layers=None) -> tuple:
  """Classifier response along latents [B, D] + m n for each m of `magnitudes` [M] (m as
  given: scale it by sigma for std units).

  Fractions over the latents: the log-odds of `positive` vs `negative` (exact, from the
  logits) never decreases from one m to the next ('monotonic_logodds'); P(positive) never
  decreases by more than 0, 0.01, 0.05 ('monotonic_fraction_tol_*'; P saturates in float32,
  so equal values count as monotonic); the target's predicted class differs between the
  extreme m ('target_changes') or goes from a negative to a positive class ('target_flips');
  each of `conditions` keeps its predicted class at every m; 'monotonic_and_flips_tol_*': P
  never decreases by more than the tolerance and the class goes from negative to positive;
  'logodds_rises_and_changes': the exact log-odds never decreases at any step and the class
  changes (the strict reading); 'logodds_rises_unsaturated_and_flips': the exact log-odds
  never decreases on a step where 0.001 < P < 0.999 at either end, and the class flips
  (`gan.rises_where_unsaturated`);
  per condition c, 'changes_and_{c}_stays' and 'rises_flips_and_{c}_stays' (the latter: P
  rises within 0.001 and flips, and c stays: the edit does what it is for, only that);
  '{c}_confident' (c's m = 0 class has probability >= `CONFIDENT`), and '{c}_stays_given_
  confident' / 'changes_and_{c}_stays_given_confident' over those latents only (None if none).
  `layers` (W only): edit just these W+ layers (`gan.layer_mask`), the others keep w.

  Returns:
    (dict of the fractions above and the per-m means, log-odds [M, B]).
  """
  pos, neg = attribute_classes(t, attribute, positive, negative)
  neg = [i for i in range(len(t.attributes[attribute])) if i not in pos] if neg is None else neg
  for c in conditions:
    gan.attribute_index(t.attributes, c, 0)
  edited = np.asarray(edited_latents(t, latents, direction, magnitudes, space, layers))
  m_, b_ = edited.shape[:2]  # [M, B, (L,) D]
  logits = t.classifier_logits(t.images(edited.reshape((m_ * b_,) + edited.shape[2:]), space))
  logits = {k: v.reshape(m_, b_, -1) for k, v in logits.items()}
  logodds = np.asarray(gan.attribute_logodds(logits[attribute], pos, neg))  # [M, B]
  p_pos = np.asarray(jax.nn.softmax(logits[attribute], -1))[..., pos].sum(-1)  # [M, B]
  cls = logits[attribute].argmax(-1)
  flips = gan.class_flips(cls, pos, neg)
  changes = cls[0] != cls[-1]
  # per latent: the exact log-odds never decreases at any step (no tolerance); with a class
  # change it is the strictest reading of "moves the output monotonically"
  strict = gan.monotonic_columns(logodds)
  out = {"monotonic_logodds": float(strict.mean()),
         "logodds_rises_and_changes": float((strict & changes).mean())}
  out.update({f"monotonic_fraction_tol_{tol:g}": gan.monotonic_fraction(p_pos, tol=tol)
              for tol in (0.0, 0.01, 0.05)})
  rises_flips = {tol: gan.rises_and_flips(p_pos, cls, pos, neg, tol=tol)
                 for tol in (0.0, 0.001, 0.01)}  # per latent
  out.update({f"monotonic_and_flips_tol_{tol:g}": float(v.mean())
              for tol, v in rises_flips.items()})
  out["logodds_rises_unsaturated_and_flips"] = float(
      gan.rises_where_unsaturated(logodds, p_pos, cls, pos, neg, saturation=1e-3).mean())
  out.update(target_flips_fraction=float(flips.mean()),
             target_changes_fraction=float(changes.mean()),
             p_positive_mean_by_m=p_pos.mean(1).tolist(),
             logodds_median_by_m=np.median(logodds, 1).tolist())
  for c in conditions:
    stays = np.all(logits[c].argmax(-1) == logits[c].argmax(-1)[m_ // 2][None], axis=0)
    out[f"{c}_stays_fraction"] = float(stays.mean())
    out[f"changes_and_{c}_stays_fraction"] = float((changes & stays).mean())
    out[f"rises_flips_and_{c}_stays_fraction"] = float((rises_flips[0.001] & stays).mean())
    # the same, judged only where the condition has a definite value to keep: its m = 0
    # class has probability >= CONFIDENT (a sample between two positions has none)
    sure = np.asarray(jax.nn.softmax(logits[c][m_ // 2], -1)).max(-1) >= CONFIDENT
    out[f"{c}_confident_fraction"] = float(sure.mean())
    out[f"{c}_stays_given_confident_fraction"] = (
        float(stays[sure].mean()) if sure.any() else None)
    out[f"changes_and_{c}_stays_given_confident_fraction"] = (
        float((changes & stays)[sure].mean()) if sure.any() else None)
  return out, logodds


def select_layers(t: Trained, direction, latents, magnitudes, attribute, positive,
                  negative=None, *, conditions=(), within=None) -> tuple:
  """Picks the contiguous W+ layer range an edit should be restricted to (GANSpace, Härkönen
  et al. 2020 sec. 3, choose a layer range per edit; StyleGAN sec. 3.1: coarse layers hold
  geometry, fine ones colour), by measuring the edit on every range.

  Score of a range: the fraction of latents whose P(positive) rises (never falls by more
  than 0.001) and flips from a negative to a positive class; with `conditions`, of those
  whose conditioned attribute also keeps its m = 0 class at every m (mean over the
  conditions). A range that changes the class without reaching the positive one (red ->
  green for "blue vs rest") does not score. Ties go to the shorter range, then the earlier
  one. Pass latents that are not the ones you report on (selection is fitting). `within`:
  consider only the ranges inside these layers (a direction fitted layer-wise on them).

  Returns:
    (layers: list of indices, table: one dict per range with 'layers', 'score' and the
    `measure_edits` fractions it was computed from).
  """
  layer_mask_of(t, "w", [0] if within is None else within)  # clear errors before any work
  table = []
  ranges = [r for r in layer_ranges(t.generator.config.num_ws)
            if within is None or set(r) <= set(within)]
  for layers in ranges:
    r, _ = measure_edits(t, direction, latents, magnitudes, attribute, positive, negative,
                         space="w", conditions=conditions, layers=layers)
    score = (float(np.mean([r[f"rises_flips_and_{c}_stays_fraction"] for c in conditions]))
             if conditions else r["monotonic_and_flips_tol_0.001"])
    keep = ("target_changes_fraction", "monotonic_and_flips_tol_0.001",
            *(f"{c}_stays_fraction" for c in conditions),
            *(f"changes_and_{c}_stays_fraction" for c in conditions),
            *(f"rises_flips_and_{c}_stays_fraction" for c in conditions))
    table.append({"layers": layers, "score": score, **{k: r[k] for k in keep}})
  best = max(table, key=lambda row: (row["score"], -len(row["layers"]), -row["layers"][0]))
  return best["layers"], table
