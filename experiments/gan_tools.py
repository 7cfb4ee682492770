"""GAN editing tools on a trained workdir: interpolation, inversion, supervised edits,
vector arithmetic, unsupervised direction discovery and an object count of samples (each
writes a PNG and a JSON).
The loaded workdir (`Trained`) lives in `experiments.gan_trained`.

  python -m experiments.gan_tools interpolate --workdir DIR --seeds 0-3 [--space z|w] [--method slerp|lerp]
  python -m experiments.gan_tools invert --workdir DIR --test-images 0-7 | --seeds 0-7 | --target a.png [--w-plus]
  python -m experiments.gan_tools edit --workdir DIR --attribute size --positive large [--condition color] [--m-units std|unit] [--space w --layers 4-5 | auto] [--fit-layers 2-5] [--condition-mode axes] [--truncation-psi 0.7]
  python -m experiments.gan_tools arithmetic --workdir DIR --expr "large red circle - red + blue"
  python -m experiments.gan_tools discover --workdir DIR [--directions 16] [--steps 1000]
  python -m experiments.gan_tools objects --workdir DIR [--num 400] [--truncation-psi 0.7]
"""
from __future__ import annotations

import argparse
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from experiments import common
from experiments.gan import CONFIDENT
from jaxgen import data as jdata
from jaxgen import gan
from jaxgen import metrics as M
from experiments.gan_trained import _CACHE, Trained, _check_space, _out, _write
from jaxgen.nn import DirectionReconstructor
from jaxgen.nn.stylegan import broadcast_ws, check_truncation_psi


# --- interpolation --------------------------------------------------------------------

def interpolate(t: Trained, seeds, *, num: int = 8, space: str = "z", method: str = "slerp",
                psi: float = 1.0) -> str:
  """One strip of `num` images per consecutive pair of seeds."""
  if len(seeds) < 2:
    raise ValueError("interpolation needs at least two seeds, e.g. --seeds 0-3.")
  lat = t.latents(gan.latents_from_seeds(seeds, t.z_dim), space, psi)
  strips = jax.vmap(lambda a, b: gan.interpolate(a, b, num, method))(lat[:-1], lat[1:])
  imgs = t.images(np.asarray(strips).reshape(-1, lat.shape[-1]), space,
                  psi if space == "z" else 1.0)
  return _write(_out(t, f"interp_{space}_{method}_seeds{seeds[0]}-{seeds[-1]}"), imgs, num,
                {"seeds": list(seeds), "space": space, "method": method, "num": num,
                 "truncation_psi": psi}, t, "interpolate")


# --- inversion ------------------------------------------------------------------------

def invert_images(t: Trained, targets, key, *, num_steps: int = 1000, w_plus: bool = False,
                  perceptual_weight: float = 0.1, batch_size: int = 16, **kwargs):
  """Projects targets [N, H, W, C] (vmapped in chunks). Returns (images, ws, psnr [N])."""
  if not t.style:
    raise ValueError("inversion needs a style-based generator (a W space).")
  targets = np.asarray(targets, np.float32)
  shape = t.generator.config.image_shape
  if targets.ndim != 4 or targets.shape[1:] != shape:
    raise ValueError(f"targets must be [N, {', '.join(map(str, shape))}] for this generator, "
                     f"got {targets.shape}; resize them to {shape[0]}x{shape[1]}.")
  feature_fn = gan.classifier_feature_fn(t.classifier()) if perceptual_weight > 0 else None
  project = gan.make_projector(t.generator, num_steps=num_steps, w_plus=w_plus,
                               feature_fn=feature_fn, perceptual_weight=perceptual_weight,
                               **kwargs)
  run = jax.jit(jax.vmap(project, in_axes=(None, 0, 0, None)))
  _, w_std = gan.w_statistics(t.generator, t.variables, jax.random.fold_in(key, 0))
  images, ws = [], []
  bar = tqdm(total=len(targets), desc=f"invert ({num_steps} steps each)", unit="image",
             dynamic_ncols=True)
  for s in range(0, len(targets), batch_size):
    chunk = targets[s:s + batch_size]
    pad = batch_size - len(chunk) if len(targets) > batch_size else 0
    if pad:
      chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, 0)])
    res = run(t.variables, jnp.asarray(chunk),
              jax.random.split(jax.random.fold_in(key, s + 1), len(chunk)), w_std)
    images.append(np.asarray(res.image)[:len(chunk) - pad])
    ws.append(np.asarray(res.ws)[:len(chunk) - pad])
    bar.update(len(chunk) - pad)
  bar.close()
  images = np.clip(np.concatenate(images), -1.0, 1.0)
  return images, np.concatenate(ws), np.asarray(M.psnr(images, targets, reduction="none"))


def load_target(path: str) -> np.ndarray:
  from PIL import Image  # pylint: disable=import-outside-toplevel
  img = np.asarray(Image.open(path))
  if img.ndim == 2:
    img = img[..., None]
  return img[..., :3].astype(np.float32) / 127.5 - 1.0


def invert(t: Trained, *, test_images=None, seeds=None, targets=None, num_steps: int = 1000,
           w_plus: bool = False, fid: bool = True, seed: int = 0, **kwargs) -> str:
  """Inverts held-out test images (indices), generated images (seeds) or files."""
  if sum(x is not None for x in (test_images, seeds, targets)) != 1:
    raise ValueError("give exactly one of --test-images, --seeds, --target.")
  if test_images is not None:
    source, what = common.build_source(t.config, "test"), "test"
    images = source[np.asarray(test_images)]["image"]
  elif seeds is not None:
    images, what = t.images(gan.latents_from_seeds(seeds, t.z_dim), "z"), "generated"
  else:
    images, what = np.stack([load_target(p) for p in targets]), "files"
  proj, ws, psnr = invert_images(t, images, jax.random.key(seed), num_steps=num_steps,
                                 w_plus=w_plus, **kwargs)
  record = {"targets": what, "num": int(len(images)), "num_steps": num_steps,
            "w_plus": w_plus, "optimize_noise": kwargs.get("optimize_noise", True),
            "num_restarts": kwargs.get("num_restarts", 1),
            "perceptual_weight": kwargs.get("perceptual_weight", 0.1), "psnr_mean": float(psnr.mean()),
            "psnr_median": float(np.median(psnr)), "psnr_min": float(psnr.min()),
            "fraction_psnr_ge_30": float(np.mean(psnr >= 30.0)), "psnr": psnr.tolist()}
  if fid and len(images) >= 50:
    clf = t.classifier()
    test = jdata.load_all(common.build_source(t.config, "test"))["image"]
    record["fid_projections_vs_test"] = M.classifier_fid(clf, test, proj)
    record["fid_targets_vs_test"] = M.classifier_fid(clf, test, images)
  n = min(len(images), 16)
  grid = np.concatenate([images[:n], proj[:n]])
  path = _out(t, f"invert_{what}_{'wplus' if w_plus else 'w'}_{len(images)}"
               + ("" if kwargs.get("optimize_noise", True) else "_fixednoise")
               + (f"_restarts{kwargs['num_restarts']}" if kwargs.get("num_restarts", 1) > 1 else ""),
               seed)
  np.savez_compressed(path[:-4] + ".npz", targets=images, projections=proj, ws=ws)
  return _write(path, grid, n, record, t, "invert")


# --- supervised directions ------------------------------------------------------------

def _as_list(v) -> list:
  return list(v) if isinstance(v, (list, tuple)) else [v]


def _classes(t: Trained, attribute: str, positive, negative=None):
  """(positive indices, negative indices or None) of an attribute's named values."""
  pos = [gan.attribute_index(t.attributes, attribute, p) for p in _as_list(positive)]
  neg = None if negative is None else [gan.attribute_index(t.attributes, attribute, v)
                                       for v in _as_list(negative)]
  return pos, neg


def grid_axes(values) -> list[tuple[str, list[int], list[int]]]:
  """The two axes of a grid-valued attribute (`shapes`' 3x3 positions): [("column", right
  column, left column), ("row", bottom row, top row)] as value indices. A value's column is
  read from the words 'left' / 'right' in its name (neither: the middle column), its row from
  'top' / 'bottom'.

  Used to condition an edit on a position *axis* pair rather than on one-vs-rest directions
  of every cell (`edit(condition_mode='axes')`): position is two numbers, not nine classes."""
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


def classifier_logits(t: Trained, images, batch_size: int = 500) -> dict:
  """The attribute classifier's logits: dict head -> [N, K] (padded chunks, one compile)."""
  clf = t.classifier()
  key = ("logits", clf.config)
  if key not in _CACHE:
    model = clf.config.module()
    _CACHE[key] = jax.jit(lambda p, x: model.apply(p, x, train=False)[0])
  images = np.asarray(images, np.float32)
  out = {}
  for s in range(0, len(images), batch_size):
    chunk = images[s:s + batch_size]
    n = len(chunk)
    chunk = np.concatenate([chunk, np.zeros((batch_size - n,) + chunk.shape[1:], chunk.dtype)])
    for k, v in jax.device_get(_CACHE[key](clf.params, chunk)).items():
      out.setdefault(k, []).append(np.asarray(v)[:n])
  return {k: np.concatenate(v) for k, v in out.items()}


def label_latents(t: Trained, num_latents: int, *, space: str, key, psi: float = 1.0) -> tuple:
  """`num_latents` random latents of `space` and the classifier's logits on their images
  (`psi` < 1: W latents truncated towards the mean w, `check_edit_truncation`)."""
  lat = np.asarray(t.latents(jax.random.normal(key, (num_latents, t.z_dim)), space, psi))
  return lat, classifier_logits(t, t.images(lat, space))


def fit_direction(t: Trained, attribute: str, positive, negative=None, *, space: str = "z",
                  num_latents: int = 5000, fraction: float = 0.1, key=None,
                  method: str = "svm", l2: float = 1e-2, labelled=None):
  """InterFaceGAN: label `num_latents` samples (or reuse `labelled` = (latents, logits)),
  rank them by the log-odds of `positive` vs `negative`, fit a linear classifier on the
  `fraction` most confident of each side. Returns (unit direction [D], info); info['sigma']
  is the std of all labelled latents along the direction (the unit of m)."""
  pos, neg = _classes(t, attribute, positive, negative)
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


def measure_edits(t: Trained, direction, latents, magnitudes, attribute, positive,
                  negative=None, *, space: str = "z", conditions=(), layers=None) -> tuple:
  """Classifier response along latents + m n (m as given: scale it by sigma for std units).

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
  Returns (dict, log-odds [M, B]).
  """
  pos, neg = _classes(t, attribute, positive, negative)
  neg = [i for i in range(len(t.attributes[attribute])) if i not in pos] if neg is None else neg
  for c in conditions:
    gan.attribute_index(t.attributes, c, 0)
  edited = np.asarray(_edit(t, latents, direction, magnitudes, space, layers))  # [M, B, (L,) D]
  m_, b_ = edited.shape[:2]
  logits = classifier_logits(t, t.images(edited.reshape((m_ * b_,) + edited.shape[2:]), space))
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


def _edit(t: Trained, latents, direction, magnitudes, space: str, layers=None):
  """latents + m n for every m: [M, B, D], or on the `layers` of W+ only: [M, B, L, D]."""
  mask = _layer_mask(t, space, layers)
  if mask is None:
    return gan.edit_latents(latents, direction, magnitudes)
  return gan.edit_latents(broadcast_ws(latents, len(mask)), direction, magnitudes, mask)


def _layer_mask(t: Trained, space: str, layers):
  """None for every layer, else `gan.layer_mask` of a style generator's W+ (clear errors)."""
  if layers is None:
    return None
  if space != "w" or not t.style:
    raise ValueError("layer-restricted edits need the W space of a style-based generator "
                     f"(--space w), got space={space!r}"
                     + ("" if t.style else " on a DCGAN") + ".")
  return gan.layer_mask(t.generator.config.num_ws, layers)


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
  _layer_mask(t, "w", [0] if within is None else within)  # clear errors before any work
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


def edit_labels(t: Trained, num_latents: int, *, space: str, seed: int = 0,
                fit_layers=None, psi: float = 1.0) -> tuple:
  """The labelled set `edit` fits its directions on for `seed`: (latents, logits).
  psi: truncation of every sampled latent (`check_edit_truncation`); pass the same to `edit`.

  fit_layers (W of a style generator): label layer-wise instead: the images of W+ latents
  whose `fit_layers` take one random w and the other layers another (`gan.layerwise_ws`);
  the latents returned are the `fit_layers`' w, so a direction fitted on them is the
  attribute's direction in those layers with the rest held fixed."""
  psi = check_edit_truncation(t, space, psi)
  key = jax.random.fold_in(jax.random.key(seed), 0)
  if fit_layers is None:
    return label_latents(t, num_latents, space=space, key=key, psi=psi)
  mask = _layer_mask(t, space, fit_layers)
  w = t.latents(jax.random.normal(key, (num_latents, t.z_dim)), "w", psi)
  w_layers = t.latents(jax.random.normal(jax.random.fold_in(jax.random.key(seed), 3),
                                         (num_latents, t.z_dim)), "w", psi)
  ws = gan.layerwise_ws(w, w_layers, mask)
  return np.asarray(w_layers), classifier_logits(t, t.images(ws, "w"))


def eval_latents(t: Trained, num: int, *, space: str, seed: int = 0, psi: float = 1.0):
  """The `num` fresh latents `edit` measures its directions on for `seed` (in `space`, each
  sampled truncated by `psi`); `objects` counts the same set."""
  z = jax.random.normal(jax.random.fold_in(jax.random.key(seed), 1), (num, t.z_dim))
  return t.latents(z, space, psi)


def edit(t: Trained, attribute: str, positive, negative=None, *, conditions=(),
         space: str = "z", seeds=tuple(range(8)), max_m: float = 3.0, num_m: int = 7,
         num_latents: int = 5000, num_eval: int = 200, fraction: float = 0.1,
         m_units: str = "std", l2: float = 1e-2, seed: int = 0, labelled=None,
         layers=None, num_select: int = 200, fit_layers=None,
         condition_mode: str = "one-vs-rest", truncation_psi: float = 1.0) -> str:
  """Fits the direction (and the conditional one if `conditions`) on one labelled set,
  measures it on `num_eval` fresh random latents over 13 m in [-max_m, max_m] and draws
  edits of `seeds` (rows).

  m_units: 'std' (default) edits latent + m * sigma * n with sigma the std of the latents
  along n (InterFaceGAN's m: in Z, sigma = 1 for a unit n); 'unit' edits latent + m * n.
  labelled: the labelled set to reuse across several edits, as returned by
  ``edit_labels(t, num_latents, space=space, seed=seed)`` (None: computed here).
  layers: W+ layer indices to edit (space 'w' of a style-based generator; the direction is
  still fitted on w): e.g. the finest layers change colour and leave position alone
  (`gan.layer_mask`). None edits every layer; 'auto' lets `select_layers` pick the
  contiguous range with the best score on `num_select` latents of their own (the choice and
  the score of every range go into the JSON record).
  fit_layers: W+ layer indices to fit the directions layer-wise on (`edit_labels`): the
  classifier labels images whose other layers keep an independent w. The edit then moves
  those layers only (layers=None) or a subset of them (a list inside them, or 'auto': the
  best range inside them). Pass `labelled` made with the same fit_layers.
  condition_mode: which directions of a conditioned attribute are projected out
  (InterFaceGAN eq. 4): 'one-vs-rest' (default) one SVM direction per value (one for a
  binary attribute); 'axes' the two binary directions of a grid attribute's axes
  (`grid_axes`: right vs left column, bottom vs top row), so only two dimensions leave the
  edit instead of nine.
  truncation_psi: < 1 samples every latent (labelled, selection, evaluated, the grid's seeds)
  truncated towards the mean w (`check_edit_truncation`; InterFaceGAN uses 0.7); a
  `labelled` set must come from `edit_labels` with the same psi. Outputs get '_psi<psi>'.
  """
  psi = check_edit_truncation(t, space, truncation_psi)
  if m_units not in ("std", "unit"):
    raise ValueError(f"m_units must be 'std' or 'unit', got {m_units!r}.")
  if condition_mode not in ("one-vs-rest", "axes"):
    raise ValueError(f"condition_mode must be 'one-vs-rest' or 'axes', got {condition_mode!r}.")
  auto = isinstance(layers, str)
  if auto and layers != "auto":
    raise ValueError(f"layers must be a list of W+ indices, None or 'auto', got {layers!r}.")
  if auto and num_select < 1:
    raise ValueError(f"layers='auto' needs num_select >= 1 latents to choose on, got "
                     f"{num_select}.")
  _layer_mask(t, space, [0] if auto else layers)  # fail before any work
  if isinstance(fit_layers, str):
    raise ValueError(f"fit_layers must be a list of W+ indices or None, got {fit_layers!r}.")
  if fit_layers is not None:
    fit_layers = [int(i) for i in _as_list(fit_layers)]
    _layer_mask(t, space, fit_layers)
    if layers is None:
      layers = fit_layers
    elif not auto and not set(int(i) for i in layers) <= set(fit_layers):
      raise ValueError(f"layers {list(layers)} must lie inside fit_layers {fit_layers}: the "
                       "direction was fitted with only those layers moving.")
  _classes(t, attribute, positive, negative)
  for c in conditions:
    gan.attribute_index(t.attributes, c, 0)
    if condition_mode == "axes":
      grid_axes(t.attributes[c])  # fail before any work
  key = jax.random.key(seed)
  if labelled is None:
    labelled = edit_labels(t, num_latents, space=space, seed=seed, fit_layers=fit_layers,
                           psi=psi)
  elif labelled[0].shape != (num_latents, t.z_dim if space == "z" else t.generator.config.w_dim):
    raise ValueError(f"labelled latents must be [{num_latents}, latent size] of space "
                     f"{space!r} (from edit_labels), got {labelled[0].shape}.")
  n, info = fit_direction(t, attribute, positive, negative, space=space, fraction=fraction,
                          l2=l2, labelled=labelled)
  ms = np.linspace(-max_m, max_m, 13)

  def scale(d):
    return gan.projection_std(labelled[0], d) if m_units == "std" else 1.0

  selection = None
  if auto:  # chosen on latents of their own, never the reported ones
    lat_sel = t.latents(jax.random.normal(jax.random.fold_in(key, 2), (num_select, t.z_dim)),
                        space, psi)
    layers, selection = select_layers(t, n, lat_sel, ms * scale(n), attribute, positive,
                                      negative, conditions=conditions, within=fit_layers)
  record = {"direction": info, "max_m": max_m, "num_eval": num_eval, "m_units": m_units,
            "num_latents": num_latents, "fraction": fraction, "l2": l2,
            "layers": None if layers is None else [int(i) for i in layers],
            "fit_layers": fit_layers, "condition_mode": condition_mode,
            "truncation_psi": psi}
  if selection is not None:
    record.update(layers_selected="auto", num_select=num_select, layer_selection=selection)
  lat_eval = eval_latents(t, num_eval, space=space, seed=seed, psi=psi)

  record["unconditioned"], _ = measure_edits(t, n, lat_eval, ms * scale(n), attribute, positive,
                                             negative, space=space, conditions=conditions,
                                             layers=layers)
  if conditions:
    cond_dirs = []
    for c in conditions:
      if condition_mode == "axes":  # two binary directions: the grid's column and row axes
        contrasts = [(p, q) for _, p, q in grid_axes(t.attributes[c])]
      else:  # one-vs-rest directions of the conditioned attribute's values
        k = len(t.attributes[c])
        contrasts = [(v, None) for v in range(1 if k == 2 else 0, k)]
      for p, q in contrasts:
        d, _ = fit_direction(t, c, p, q, space=space, fraction=fraction, l2=l2,
                             labelled=labelled)
        cond_dirs.append(d)
    n = gan.conditional_direction(n, jnp.stack(cond_dirs))
    record["conditioned"], _ = measure_edits(t, n, lat_eval, ms * scale(n), attribute,
                                             positive, negative, space=space,
                                             conditions=conditions, layers=layers)
    record["conditioned"]["sigma"] = scale(n)
  show = np.linspace(-max_m, max_m, num_m) * scale(n)
  lat = t.latents(gan.latents_from_seeds(list(seeds), t.z_dim), space, psi)
  grid = np.asarray(_edit(t, lat, n, show, space, layers))  # [num_m, seeds, (L,) D]
  grid = np.swapaxes(grid, 0, 1).reshape((-1,) + grid.shape[2:])
  name = f"edit_{attribute}_{'-'.join(map(str, _as_list(positive)))}_{space}"
  name += "_cond-" + "-".join(conditions) if conditions else ""
  name += "-axes" if conditions and condition_mode == "axes" else ""
  name += "_unit" if m_units == "unit" else ""
  name += "_layers" + "-".join(map(str, layers)) if layers is not None else ""
  name += "_auto" if selection is not None else ""
  name += "_fit" + "-".join(map(str, fit_layers)) if fit_layers is not None else ""
  name += f"_psi{psi:g}" if psi != 1.0 else ""
  path = _out(t, name, seed)
  np.save(path[:-4] + "_direction.npy", np.asarray(n))
  return _write(path, t.images(grid, space), num_m, record, t, "edit")


# --- vector arithmetic ----------------------------------------------------------------

def parse_expression(expr: str, attributes) -> list[tuple[float, dict]]:
  """'large red circle - red + blue' -> [(1, {size: 1, color: 0, shape: 0}), (-1, ...), ...].
  Multi-word values are written with underscores ('top_left')."""
  terms, sign = [], 1.0
  for token in expr.replace("+", " + ").replace("-", " - ").split():
    if token in "+-":
      sign = 1.0 if token == "+" else -1.0
      terms.append((sign, {}))
      continue
    if not terms:
      terms.append((1.0, {}))
    word = token.replace("_", " ")
    hits = [(a, v.index(word)) for a, v in attributes.items() if word in v]
    if not hits:
      raise ValueError(f"unknown attribute value {token!r}; known values: "
                       f"{ {a: v for a, v in attributes.items()} }.")
    terms[-1][1][hits[0][0]] = hits[0][1]
  if not terms or any(not q for _, q in terms):
    raise ValueError(f"bad expression {expr!r}: expected e.g. 'large red circle - red + blue'.")
  return terms


def arithmetic(t: Trained, expr: str, *, space: str = "z", num_latents: int = 5000,
               confidence: float = CONFIDENT, num_show: int = 8, seed: int = 0) -> str:
  """Group means of confidently classified samples, combined as the expression says; the
  result (and small perturbations of it) is drawn next to samples of each group."""
  terms = parse_expression(expr, t.attributes)
  key = jax.random.key(seed)
  lat = np.asarray(t.latents(jax.random.normal(key, (num_latents, t.z_dim)), space))
  probs = M.classifier_predict(t.classifier(), t.images(lat, space))
  labels = {k: np.where(p.max(-1) >= confidence, p.argmax(-1), -1) for k, p in probs.items()}
  means = [gan.group_mean(lat, labels, q, min_count=3) for _, q in terms]
  result = gan.latent_arithmetic(means, [s for s, _ in terms])
  rows = []
  for q in [q for _, q in terms]:
    idx = np.flatnonzero(gan.group_mask(labels, q))[:num_show]
    rows.append(t.images(np.concatenate([lat[idx], np.repeat(lat[idx[-1:]], num_show - len(idx), 0)]), space))
  noise = 0.25 * np.asarray(jax.random.normal(jax.random.fold_in(key, 1), (num_show - 1, lat.shape[-1])))
  out = t.images(np.concatenate([np.asarray(result)[None], np.asarray(result)[None] + noise]), space)
  pred = M.classifier_predict(t.classifier(), out)
  record = {"expr": expr, "terms": [[s, q] for s, q in terms], "space": space,
            "group_sizes": [int(gan.group_mask(labels, q).sum()) for _, q in terms],
            "result_prediction": {k: t.attributes[k][int(v[0].argmax())] for k, v in pred.items()}}
  name = "arith_" + "".join(c if c.isalnum() else "_" for c in expr)[:60] + f"_{space}"
  return _write(_out(t, name, seed), np.concatenate(rows + [out]), num_show, record, t,
                "arithmetic")


# --- sample diagnostics ---------------------------------------------------------------

def count_objects(images, threshold: float = 0.25) -> np.ndarray:
  """Number of separate objects in each image: 8-connected regions of pixels whose
  brightness (the largest channel, with [-1, 1] images mapped to [0, 1]) exceeds `threshold`.

  Made for `shapes`, where every real image holds exactly one object on black; a generator
  that fades an object between two grid cells draws two (docs/gans.md, "Where the position
  is lost"). images: [N, H, W, C] in [-1, 1]; returns int counts [N]."""
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
  """Counts the objects (`count_objects`) in `num` samples: the latents `edit` evaluates on
  for `seed` (in W with truncation for a style generator, else in Z untruncated), so the share
  of two-object samples describes the same set an edit's numbers come from. Writes a grid of
  up to 64 samples with two or more objects and a JSON with the histogram."""
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
  path = _out(t, "objects" + (f"_psi{psi:g}" if psi != 1.0 else ""), seed)
  shown = several if len(several) else np.full((1,) + images.shape[1:], -1.0)  # none: black
  return _write(path, shown, 8, record, t, "objects")


# --- unsupervised directions (Voynov & Babenko) ---------------------------------------

def discover(t: Trained, *, num_directions: int = 16, num_steps: int = 1000, space: str = "z",
             batch_size: int = 32, shift_scale: float = 6.0, seed: int = 0,
             num_eval: int = 100) -> str:
  """Trains directions + reconstructor; reports per direction the attribute whose predicted
  class changes most between shifts -shift_scale/2 and +shift_scale/2."""
  _check_space(t, space)
  gen = t.generator
  if space == "z":
    sample_fn = lambda v, k, b: jax.random.normal(k, (b, t.z_dim))
    generate_fn = lambda v, z: gen.apply(v, z) if not t.style else gen.apply(v, z, 1.0)
  else:
    sample_fn = lambda v, k, b: gen.apply(v, jax.random.normal(k, (b, t.z_dim)), method="mapping")
    generate_fn = lambda v, w: gen.apply(v, broadcast_ws(w, gen.config.num_ws),
                                         method="synthesis")
  dim = t.z_dim if space == "z" else gen.config.w_dim
  recon = DirectionReconstructor(num_directions=num_directions)
  key = jax.random.key(seed)
  state = gan.init_voynov(recon, jax.random.fold_in(key, 0), latent_dim=dim,
                          image_shape=t.source.image_shape, tx=optax.adam(1e-3))
  step = jax.jit(gan.make_voynov_step(sample_fn, generate_fn, batch_size=batch_size,
                                      shift_scale=shift_scale), donate_argnums=0)
  accs = []
  for _ in range(num_steps):
    state, m = step(state, t.variables, jax.random.fold_in(key, 1))
    accs.append(float(m["direction_accuracy"]))
  dirs = np.asarray(state.directions())
  lat = t.latents(jax.random.normal(jax.random.fold_in(key, 2), (num_eval, t.z_dim)), space)
  clf, shift = t.classifier(), shift_scale / 2
  changes = []
  for d in dirs:
    a, b = (M.classifier_predict(clf, t.images(np.asarray(lat) + s * d[None], space))
            for s in (-shift, shift))
    frac = {k: float(np.mean(a[k].argmax(-1) != b[k].argmax(-1))) for k in a}
    top = max(frac, key=frac.get)
    changes.append({"attribute": top, "changed_fraction": frac[top], "all": frac})
  show = np.linspace(-shift_scale, shift_scale, 7)
  z0 = t.latents(gan.latents_from_seeds([0], t.z_dim), space)
  grid = np.asarray(z0)[None] + show[None, :, None] * dirs[:, None, :]  # [K, 7, D]: row = direction
  grid = grid.reshape(-1, dim)
  record = {"num_directions": num_directions, "num_steps": num_steps, "space": space,
            "reconstructor_accuracy_last100": float(np.mean(accs[-100:])),
            "directions": changes}
  path = _out(t, f"discover_{space}", seed)
  np.save(path[:-4] + "_directions.npy", dirs)
  return _write(path, t.images(grid, space), len(show), record, t,
                "discover")


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m experiments.gan_tools", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = p.add_subparsers(dest="command", required=True)
  cmds = {name: sub.add_parser(name) for name in
          ("interpolate", "invert", "edit", "arithmetic", "discover", "objects")}
  for c in cmds.values():
    c.add_argument("--workdir", required=True)
    c.add_argument("--seed", type=int, default=0)
  for name in ("interpolate", "edit", "arithmetic", "discover"):
    cmds[name].add_argument("--space", choices=("z", "w"), default="z")
  c = cmds["interpolate"]
  c.add_argument("--seeds", default="0-3")
  c.add_argument("--num", type=int, default=8)
  c.add_argument("--method", choices=("slerp", "lerp"), default="slerp")
  c.add_argument("--trunc", type=float, default=1.0)
  c = cmds["invert"]
  c.add_argument("--test-images", default=None, help="indices into the test split, e.g. 0-7")
  c.add_argument("--seeds", default=None, help="invert generated images of these seeds")
  c.add_argument("--target", action="append", default=None, help="a PNG file (repeatable)")
  c.add_argument("--steps", type=int, default=1000)
  c.add_argument("--w-plus", action="store_true")
  c.add_argument("--perceptual-weight", type=float, default=0.1)
  c.add_argument("--noise-weight", type=float, default=1e5)
  c.add_argument("--restarts", type=int, default=1,
                 help="also start from RESTARTS-1 random w and keep the best (default: mean w only)")
  c.add_argument("--fixed-noise", action="store_true",
                 help="keep the generator's constant noise maps instead of optimising them")
  c = cmds["edit"]
  c.add_argument("--attribute", required=True)
  c.add_argument("--positive", required=True, nargs="+")
  c.add_argument("--negative", default=None, nargs="+")
  c.add_argument("--condition", action="append", default=[])
  c.add_argument("--seeds", default="0-7")
  c.add_argument("--max-m", type=float, default=3.0)
  c.add_argument("--num-latents", type=int, default=5000)
  c.add_argument("--num-eval", type=int, default=200)
  c.add_argument("--m-units", choices=("std", "unit"), default="std",
                 help="m in std units of the latents along n (default) or in latent units")
  c.add_argument("--fraction", type=float, default=0.1)
  c.add_argument("--l2", type=float, default=1e-2)
  c.add_argument("--layers", default=None,
                 help="edit only these W+ layers, e.g. 4-5 (the finest: colour), or 'auto' "
                      "(pick the best contiguous range on --num-select other latents); --space w")
  c.add_argument("--num-select", type=int, default=200,
                 help="latents that --layers auto chooses the range on")
  c.add_argument("--fit-layers", default=None,
                 help="fit the direction layer-wise on these W+ layers, e.g. 2-5 (the others "
                      "keep an independent w while labelling); the edit moves them, or the "
                      "--layers inside them; --space w")
  c.add_argument("--condition-mode", choices=("one-vs-rest", "axes"), default="one-vs-rest",
                 help="project out one direction per value of each --condition (default), or "
                      "the two axes of a grid attribute (position: right vs left column, "
                      "bottom vs top row)")
  c.add_argument("--truncation-psi", type=float, default=1.0,
                 help="sample every latent truncated towards the mean w, w_avg + psi (w - w_avg) "
                      "(InterFaceGAN: 0.7); --space w")
  cmds["arithmetic"].add_argument("--expr", required=True)
  c = cmds["objects"]
  c.add_argument("--num", type=int, default=400)
  c.add_argument("--truncation-psi", type=float, default=1.0)
  c.add_argument("--threshold", type=float, default=0.25)
  c = cmds["discover"]
  c.add_argument("--directions", type=int, default=16)
  c.add_argument("--steps", type=int, default=1000)
  args = p.parse_args(argv)
  t = Trained.load(args.workdir)

  def ints(v):
    return v if v is None else [int(x) if x.lstrip("-").isdigit() else x for x in v]

  if args.command == "interpolate":
    path = interpolate(t, gan.parse_seeds(args.seeds), num=args.num, space=args.space,
                       method=args.method, psi=args.trunc)
  elif args.command == "invert":
    path = invert(t, test_images=None if args.test_images is None else gan.parse_seeds(
        args.test_images), seeds=None if args.seeds is None else gan.parse_seeds(args.seeds),
        targets=args.target, num_steps=args.steps, w_plus=args.w_plus, seed=args.seed,
        perceptual_weight=args.perceptual_weight, noise_weight=args.noise_weight,
        optimize_noise=not args.fixed_noise, num_restarts=args.restarts)
  elif args.command == "edit":
    path = edit(t, args.attribute, ints(args.positive), ints(args.negative),
                conditions=tuple(args.condition), space=args.space,
                seeds=gan.parse_seeds(args.seeds), max_m=args.max_m,
                num_latents=args.num_latents, num_eval=args.num_eval, seed=args.seed,
                m_units=args.m_units, fraction=args.fraction, l2=args.l2,
                layers=parse_layers(args.layers), num_select=args.num_select,
                fit_layers=parse_layers(args.fit_layers), condition_mode=args.condition_mode,
                truncation_psi=args.truncation_psi)
  elif args.command == "arithmetic":
    path = arithmetic(t, args.expr, space=args.space, seed=args.seed)
  elif args.command == "objects":
    path = objects(t, num=args.num, seed=args.seed, truncation_psi=args.truncation_psi,
                   threshold=args.threshold)
  else:
    path = discover(t, num_directions=args.directions, num_steps=args.steps, space=args.space,
                    seed=args.seed)
  print(path)
  with open(path[:-4] + ".json") as f:
    print(f.read())
  return 0


if __name__ == "__main__":
  sys.exit(main())
