"""Supervised edits (InterFaceGAN, Shen et al. 2020): fit an attribute's direction, optionally
conditioned on other attributes (eq. 4), measure it on fresh latents and draw edits of seeds.

  python -m experiments.main edit --workdir DIR --attribute size --positive large
      [--condition color] [--m-units std|unit] [--space w --layers 4-5 | auto]
      [--fit-layers 2-5] [--condition-mode axes] [--truncation-psi 0.7]
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from experiments.families import Command
from experiments.families.gan.tools.fit import (as_list, attribute_classes,
                                                check_edit_truncation, edit_labels,
                                                eval_latents, fit_direction, grid_axes,
                                                layer_mask_of)
from experiments.families.gan.tools.measure import (edited_latents, measure_edits,
                                                    parse_layers, select_layers)
from experiments.families.gan.trained import (Trained, command_result, load_trained,
                                              output_path, write_output)
from jaxgen import gan

__all__ = ["COMMAND", "EditOptions", "edit"]


@dataclasses.dataclass
class EditOptions:
  """What `edit` fits, measures and draws.

  Attributes:
    attribute, positive, negative: the edited attribute and its value names (or indices);
      negative None is "positive vs the rest".
    conditions: attributes to keep (their directions are projected out of n).
    space: 'z' or 'w' (W of a style-based generator).
    seeds: the grid's rows; max_m, num_m: its columns m in linspace(-max_m, max_m, num_m).
    num_latents: labelled latents the directions are fitted on; fraction, l2: the fit's most
      confident fraction of each side and its L2 weight.
    num_eval: fresh latents each edit is measured on, over 13 m in [-max_m, max_m].
    m_units: 'std' (default) edits latent + m * sigma * n with sigma the std of the latents
      along n (InterFaceGAN's m: in Z, sigma = 1 for a unit n); 'unit' edits latent + m * n.
    seed: the protocol's keys (`experiments.families.gan.tools.fit`).
    layers: W+ layer indices to edit (the direction is still fitted on w): e.g. the finest
      layers change colour and leave position alone (`gan.layer_mask`). None edits every
      layer; 'auto' lets `select_layers` pick the contiguous range with the best score on
      `num_select` latents of their own (the choice and every range's score are recorded).
    fit_layers: W+ layer indices to fit the directions layer-wise on (`edit_labels`): the
      classifier labels images whose other layers keep an independent w. The edit then moves
      those layers only (layers=None) or a subset of them (a list inside them, or 'auto').
    condition_mode: which directions of a conditioned attribute are projected out:
      'one-vs-rest' one SVM direction per value (one for a binary attribute); 'axes' the two
      binary directions of a grid attribute's axes (`grid_axes`), so only two dimensions
      leave the edit instead of nine.
    truncation_psi: < 1 samples every latent (labelled, selection, evaluated, the grid's
      seeds) truncated towards the mean w (`check_edit_truncation`; InterFaceGAN uses 0.7).
  """
  attribute: str
  positive: Any
  negative: Any = None
  conditions: Sequence[str] = ()
  space: str = "z"
  seeds: Sequence[int] = tuple(range(8))
  max_m: float = 3.0
  num_m: int = 7
  num_latents: int = 5000
  num_eval: int = 200
  fraction: float = 0.1
  m_units: str = "std"
  l2: float = 1e-2
  seed: int = 0
  layers: Any = None
  num_select: int = 200
  fit_layers: Any = None
  condition_mode: str = "one-vs-rest"
  truncation_psi: float = 1.0


def checked_layers(t: Trained, o: EditOptions) -> tuple:
  """(psi, layers, fit_layers) of `o`, checked against the workdir before any work."""
  psi = check_edit_truncation(t, o.space, o.truncation_psi)
  if o.m_units not in ("std", "unit"):
    raise ValueError(f"m_units must be 'std' or 'unit', got {o.m_units!r}.")
  if o.condition_mode not in ("one-vs-rest", "axes"):
    raise ValueError(f"condition_mode must be 'one-vs-rest' or 'axes', got "
                     f"{o.condition_mode!r}.")
  layers, fit_layers = o.layers, o.fit_layers
  auto = isinstance(layers, str)
  if auto and layers != "auto":
    raise ValueError(f"layers must be a list of W+ indices, None or 'auto', got {layers!r}.")
  if auto and o.num_select < 1:
    raise ValueError(f"layers='auto' needs num_select >= 1 latents to choose on, got "
                     f"{o.num_select}.")
  layer_mask_of(t, o.space, [0] if auto else layers)
  if isinstance(fit_layers, str):
    raise ValueError(f"fit_layers must be a list of W+ indices or None, got {fit_layers!r}.")
  if fit_layers is not None:
    fit_layers = [int(i) for i in as_list(fit_layers)]
    layer_mask_of(t, o.space, fit_layers)
    if layers is None:
      layers = fit_layers
    elif not auto and not set(int(i) for i in layers) <= set(fit_layers):
      raise ValueError(f"layers {list(layers)} must lie inside fit_layers {fit_layers}: the "
                       "direction was fitted with only those layers moving.")
  attribute_classes(t, o.attribute, o.positive, o.negative)
  for c in o.conditions:
    gan.attribute_index(t.attributes, c, 0)
    if o.condition_mode == "axes":
      grid_axes(t.attributes[c])
  return psi, layers, fit_layers


def condition_directions(t: Trained, o: EditOptions, labelled) -> list:
  """The directions [D] of the conditioned attributes that `edit` projects out of n."""
  dirs = []
  for c in o.conditions:
    if o.condition_mode == "axes":  # two binary directions: the grid's column and row axes
      contrasts = [(p, q) for _, p, q in grid_axes(t.attributes[c])]
    else:  # one-vs-rest directions of the conditioned attribute's values
      k = len(t.attributes[c])
      contrasts = [(v, None) for v in range(1 if k == 2 else 0, k)]
    for p, q in contrasts:
      d, _ = fit_direction(t, c, p, q, space=o.space, fraction=o.fraction, l2=o.l2,
                           labelled=labelled)
      dirs.append(d)
  return dirs


def output_name(o: EditOptions, layers, selected: bool, fit_layers, psi: float) -> str:
  name = f"edit_{o.attribute}_{'-'.join(map(str, as_list(o.positive)))}_{o.space}"
  name += "_cond-" + "-".join(o.conditions) if o.conditions else ""
  name += "-axes" if o.conditions and o.condition_mode == "axes" else ""
  name += "_unit" if o.m_units == "unit" else ""
  name += "_layers" + "-".join(map(str, layers)) if layers is not None else ""
  name += "_auto" if selected else ""
  name += "_fit" + "-".join(map(str, fit_layers)) if fit_layers is not None else ""
  return name + (f"_psi{psi:g}" if psi != 1.0 else "")


def edit(t: Trained, o: EditOptions, *, labelled=None) -> str:
  """Fits the direction (and the conditional one if ``o.conditions``) on one labelled set,
  measures it on ``o.num_eval`` fresh latents over 13 m in [-max_m, max_m] and draws edits of
  ``o.seeds`` (rows).

  Args:
    t: the loaded workdir.
    o: the edit's options.
    labelled: the labelled set to reuse across several edits, as returned by
      ``edit_labels(t, o.num_latents, space=o.space, seed=o.seed, fit_layers=o.fit_layers,
      psi=o.truncation_psi)`` (None: computed here).

  Returns:
    The grid's path ``WORKDIR/edits/edit_*.png``; beside it the JSON record (the direction's
    fit, 'unconditioned' / 'conditioned' `measure_edits` fractions, the layers) and the
    direction [D] as ``*_direction.npy``.
  """
  psi, layers, fit_layers = checked_layers(t, o)
  space = o.space
  if labelled is None:
    labelled = edit_labels(t, o.num_latents, space=space, seed=o.seed, fit_layers=fit_layers,
                           psi=psi)
  elif labelled[0].shape != (o.num_latents,
                             t.z_dim if space == "z" else t.generator.config.w_dim):
    raise ValueError(f"labelled latents must be [{o.num_latents}, latent size] of space "
                     f"{space!r} (from edit_labels), got {labelled[0].shape}.")
  target = (o.attribute, o.positive, o.negative)
  n, info = fit_direction(t, *target, space=space, fraction=o.fraction, l2=o.l2,
                          labelled=labelled)
  ms = np.linspace(-o.max_m, o.max_m, 13)

  def scale(d):
    return gan.projection_std(labelled[0], d) if o.m_units == "std" else 1.0

  selection = None
  if isinstance(layers, str):  # 'auto': chosen on latents of their own, never the reported
    z_sel = jax.random.normal(jax.random.fold_in(jax.random.key(o.seed), 2),
                              (o.num_select, t.z_dim))
    lat_sel = t.latents(z_sel, space, psi)
    layers, selection = select_layers(t, n, lat_sel, ms * scale(n), *target,
                                      conditions=o.conditions, within=fit_layers)
  record = {"direction": info, "max_m": o.max_m, "num_eval": o.num_eval, "m_units": o.m_units,
            "num_latents": o.num_latents, "fraction": o.fraction, "l2": o.l2,
            "layers": None if layers is None else [int(i) for i in layers],
            "fit_layers": fit_layers, "condition_mode": o.condition_mode,
            "truncation_psi": psi}
  if selection is not None:
    record.update(layers_selected="auto", num_select=o.num_select, layer_selection=selection)
  lat_eval = eval_latents(t, o.num_eval, space=space, seed=o.seed, psi=psi)
  kw = dict(space=space, conditions=o.conditions, layers=layers)
  record["unconditioned"], _ = measure_edits(t, n, lat_eval, ms * scale(n), *target, **kw)
  if o.conditions:
    n = gan.conditional_direction(n, jnp.stack(condition_directions(t, o, labelled)))
    record["conditioned"], _ = measure_edits(t, n, lat_eval, ms * scale(n), *target, **kw)
    record["conditioned"]["sigma"] = scale(n)
  show = np.linspace(-o.max_m, o.max_m, o.num_m) * scale(n)
  lat = t.latents(gan.latents_from_seeds(list(o.seeds), t.z_dim), space, psi)
  grid = np.asarray(edited_latents(t, lat, n, show, space, layers))  # [num_m, seeds, (L,) D]
  grid = np.swapaxes(grid, 0, 1).reshape((-1,) + grid.shape[2:])
  path = output_path(t, output_name(o, layers, selection is not None, fit_layers, psi), o.seed)
  np.save(path[:-4] + "_direction.npy", np.asarray(n))
  return write_output(path, t.images(grid, space), o.num_m, record, t, "edit")


def add_arguments(p) -> None:
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--space", choices=("z", "w"), default="z")
  p.add_argument("--attribute", required=True)
  p.add_argument("--positive", required=True, nargs="+")
  p.add_argument("--negative", default=None, nargs="+")
  p.add_argument("--condition", action="append", default=[])
  p.add_argument("--seeds", default="0-7")
  p.add_argument("--max-m", type=float, default=3.0)
  p.add_argument("--num-latents", type=int, default=5000)
  p.add_argument("--num-eval", type=int, default=200)
  p.add_argument("--m-units", choices=("std", "unit"), default="std",
                 help="m in std units of the latents along n (default) or in latent units")
  p.add_argument("--fraction", type=float, default=0.1)
  p.add_argument("--l2", type=float, default=1e-2)
  p.add_argument("--layers", default=None,
                 help="edit only these W+ layers, e.g. 4-5 (the finest: colour), or 'auto' "
                      "(pick the best contiguous range on --num-select other latents); --space w")
  p.add_argument("--num-select", type=int, default=200,
                 help="latents that --layers auto chooses the range on")
  p.add_argument("--fit-layers", default=None,
                 help="fit the direction layer-wise on these W+ layers, e.g. 2-5 (the others "
                      "keep an independent w while labelling); the edit moves them, or the "
                      "--layers inside them; --space w")
  p.add_argument("--condition-mode", choices=("one-vs-rest", "axes"), default="one-vs-rest",
                 help="project out one direction per value of each --condition (default), or "
                      "the two axes of a grid attribute (position: right vs left column, "
                      "bottom vs top row)")
  p.add_argument("--truncation-psi", type=float, default=1.0,
                 help="sample every latent truncated towards the mean w, w_avg + psi (w - w_avg) "
                      "(InterFaceGAN: 0.7); --space w")


def values(v):
  """Command-line attribute values: digits become indices, other words stay names."""
  return v if v is None else [int(x) if x.lstrip("-").isdigit() else x for x in v]


def run(args) -> dict:
  o = EditOptions(args.attribute, values(args.positive), values(args.negative),
                  conditions=tuple(args.condition), space=args.space,
                  seeds=gan.parse_seeds(args.seeds), max_m=args.max_m,
                  num_latents=args.num_latents, num_eval=args.num_eval, seed=args.seed,
                  m_units=args.m_units, fraction=args.fraction, l2=args.l2,
                  layers=parse_layers(args.layers), num_select=args.num_select,
                  fit_layers=parse_layers(args.fit_layers),
                  condition_mode=args.condition_mode, truncation_psi=args.truncation_psi)
  return command_result(edit(load_trained(args.workdir), o))


COMMAND = Command("fit, measure and draw a supervised latent edit", add_arguments, run)
