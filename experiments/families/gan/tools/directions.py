"""Measurements of every supervised direction of a `shapes` StyleGAN workdir, as one table.

  python -m experiments.main directions --workdir runs/stylegan_shapes [--num-latents 20000]
      [--num-eval 400] [--space w] [--num-select 200] [--match "[fit not-coarse]"]
      [--truncation-psi 0.7]

For each direction of `DIRECTIONS` (InterFaceGAN, `experiments.families.gan.tools.edit`):
label ``--num-latents`` random latents once with the attribute classifier, fit a linear SVM on
the 10% most confident of each side, project out the conditioned attribute's one-vs-rest
directions for the conditional variant, then edit ``--num-eval`` fresh latents at 13 values
m in linspace(-3, 3, 13) (m in standard deviations of the latents along n) and measure
(`measure.measure_edits`):

- monotonic: the exact log-odds of positive vs negative values (from the logits) never
  decreases from one m to the next (no tolerance);
- monotonic & changes: that, and the predicted class differs between m = -3 and +3, on the
  same latent (the strict reading of "moves the output monotonically");
- P rises & flips: P(positive) never decreases by more than a tolerance (0, 0.001, 0.01)
  AND the predicted class goes from a negative value at m = -3 to a positive one at +3 (so a
  saturated P that never moves does not count);
- unsaturated log-odds rises & flips: the exact log-odds never decreases, by any amount, on
  a step where 0.001 < P(positive) < 0.999 at either end, and the class flips as above
  (`gan.rises_where_unsaturated`);
- changes: the predicted class of the target attribute differs between m = -3 and +3;
- stays: the conditioned attribute's predicted class equals its m = 0 class at every m;
- both: changes and stays;
- rises & flips (0.001) and stays: both of those on the same latent (what a conditional
  edit is for: reach the target value and leave the condition alone);
- both, condition definite: "both" over the latents whose conditioned attribute has a
  definite value at m = 0 (its class probability >= 0.9; their share in brackets).

Rows marked [fine] / [coarse] edit only those W+ layers; the direction is the same one fitted
on w. Rows marked [auto] edit the contiguous layer range that `measure.select_layers` found
best for the unconditioned edit on ``--num-select`` other latents; the conditioned variant
uses the same range. Rows marked [fit not-coarse] fit their directions layer-wise
(`fit.edit_labels(fit_layers=)`) on every layer after the coarse pair (2 .. L-1); the [auto]
range is then chosen inside those layers. The row marked [axes] conditions on the position's
two grid axes (`fit.grid_axes`) instead of its nine one-vs-rest directions.
``--truncation-psi`` < 1 samples every latent truncated towards the mean w.

Writes ``WORKDIR/edits/directions.json`` (with ``--match``: ``directions-<match>.json``;
``-psi<psi>`` added for truncation, ``-seed<N>`` for a seed other than 0) and prints a
markdown table; the edit grids are the usual ``WORKDIR/edits/edit_*.png``.
"""
from __future__ import annotations

import json
import os
import re
import time

from tqdm.auto import tqdm

from experiments import workdir as W
from experiments.families import Command
from experiments.families.gan.tools.edit import EditOptions, edit
from experiments.families.gan.tools.fit import check_edit_truncation, edit_labels
from experiments.families.gan.trained import load_trained

__all__ = ["COMMAND", "DIRECTIONS", "entry_name", "layer_group", "measure_directions", "table"]

_RIGHT, _LEFT = ["top right", "right", "bottom right"], ["top left", "left", "bottom left"]
# (label, attribute, positive, negative, condition, layers[, fit[, mode]]): layers None edits
# w on every layer; "fine" edits only the last block's conv + toRGB w (the finest styles:
# colour, Karras et al. 2019 sec. 3.1), "coarse" only the 4x4 conv and the next one
# (geometry); fit "not-coarse" fits the direction layer-wise on the layers after the coarse
# pair; mode "axes" conditions on the position's two grid axes instead of its nine cells.
DIRECTIONS = (
    ("size large vs small", "size", ["large"], None, "color", None),
    ("size large vs small", "size", ["large"], None, "position", None),
    ("colour red vs blue", "color", ["red"], ["blue"], "position", None),
    ("colour red vs blue", "color", ["red"], ["blue"], "size", None),
    ("position right vs left column", "position", _RIGHT, _LEFT, "color", None),
    ("colour blue vs rest", "color", ["blue"], None, "position", "fine"),
    ("colour red vs blue", "color", ["red"], ["blue"], "position", "fine"),
    ("position right vs left column", "position", _RIGHT, _LEFT, "color", "coarse"),
    ("colour blue vs rest", "color", ["blue"], None, "position", "auto"),
    ("colour red vs blue", "color", ["red"], ["blue"], "position", "auto"),
    ("position right vs left column", "position", _RIGHT, _LEFT, "color", "auto"),
    ("colour blue vs rest", "color", ["blue"], None, "position", "auto", "not-coarse"),
    ("colour red vs blue", "color", ["red"], ["blue"], "position", "auto", "not-coarse"),
    ("colour red vs blue", "color", ["red"], ["blue"], "position", "auto", "not-coarse",
     "axes"),
)


def layer_group(num_ws: int, name):
  """W+ layer indices of a named group: None (all), 'fine', 'coarse' or 'not-coarse' (every
  layer after the coarse pair); 'auto' stays 'auto' (`measure.select_layers` picks the range
  on latents of its own)."""
  groups = {None: None, "fine": [num_ws - 2, num_ws - 1], "coarse": [0, 1],
            "not-coarse": list(range(2, num_ws)), "auto": "auto"}
  if name not in groups:
    raise ValueError(f"unknown layer group {name!r}; expected one of {tuple(groups)}.")
  return groups[name]


def unpack(entry) -> tuple:
  """A `DIRECTIONS` entry with its optional fit (None) and condition mode filled in."""
  head = tuple(entry[:6])
  fit = entry[6] if len(entry) > 6 else None
  mode = entry[7] if len(entry) > 7 else "one-vs-rest"
  return (*head, fit, mode)


def entry_name(entry) -> str:
  """The name ``--match`` filters on: the conditioned variant's name in the table without the
  chosen layer indices, e.g. 'colour red vs blue (position) [auto] [fit not-coarse] [axes]'."""
  label, _, _, _, condition, group, fit, mode = unpack(entry)
  return (f"{label} ({condition})" + (f" [{group}]" if group else "")
          + (f" [fit {fit}]" if fit else "") + (" [axes]" if mode == "axes" else ""))


def row_of(record: dict, kind: str, entry, space: str, path: str, workdir: str) -> dict:
  """One table row: the `kind` ('unconditioned' / 'conditioned') measurements of an edit."""
  label, _, _, _, condition, group, fit, mode = unpack(entry)
  r, c = record[kind], condition
  return {
      "direction": label, "condition": c if kind == "conditioned" else None,
      "measured_condition": c, "space": space, "layers": group,
      "layer_indices": record["layers"], "fit_layers": fit,
      "condition_mode": mode if kind == "conditioned" else None,
      "svm_train_accuracy": record["direction"]["train_accuracy"],
      "monotonic_logodds": r["monotonic_logodds"],
      "logodds_rises_and_changes": r["logodds_rises_and_changes"],
      "monotonic_p_tol_0": r["monotonic_fraction_tol_0"],
      "logodds_rises_unsaturated_and_flips": r["logodds_rises_unsaturated_and_flips"],
      **{f"monotonic_and_flips_tol_{tol}": r[f"monotonic_and_flips_tol_{tol}"]
         for tol in ("0", "0.001", "0.01")},
      "changes": r["target_changes_fraction"], "stays": r[f"{c}_stays_fraction"],
      "both": r[f"changes_and_{c}_stays_fraction"],
      "rises_flips_and_stays": r[f"rises_flips_and_{c}_stays_fraction"],
      "condition_confident": r[f"{c}_confident_fraction"],
      "stays_given_confident": r[f"{c}_stays_given_confident_fraction"],
      "both_given_confident": r[f"changes_and_{c}_stays_given_confident_fraction"],
      "grid": os.path.relpath(path, workdir)}


def measure_directions(workdir: str, *, num_latents: int = 20000, num_eval: int = 400,
                       space: str = "w", seed: int = 0, num_select: int = 200,
                       match: str | None = None, truncation_psi: float = 1.0) -> list[dict]:
  """Edits along every entry of `DIRECTIONS` (or those whose `entry_name` contains `match`)
  and measures them; writes the rows to ``WORKDIR/edits/directions*.json``.

  Returns:
    One row per (direction, conditioned or not), with the measurements above, the layers,
    the grid's path (relative to the workdir) and the seconds the edit took.
  """
  entries = [e for e in DIRECTIONS if match is None or match in entry_name(e)]
  if not entries:
    raise ValueError(f"no direction matches {match!r}; the names are:\n"
                     + "\n".join(entry_name(e) for e in DIRECTIONS))
  t = load_trained(workdir)
  psi = check_edit_truncation(t, space, truncation_psi)
  labelled, rows = {}, []  # one labelled set per fit group serves every direction
  for entry in tqdm(entries, desc="directions", unit="direction", disable=len(entries) < 2):
    _, attribute, positive, negative, condition, group, fit, mode = unpack(entry)
    start = time.perf_counter()
    layers = layer_group(t.generator.config.num_ws, group) if space == "w" else None
    if (group is not None and layers is None) or (fit is not None and space != "w"):
      continue  # layer groups exist only in W
    fit_layers = None if fit is None else layer_group(t.generator.config.num_ws, fit)
    if fit not in labelled:
      labelled[fit] = edit_labels(t, num_latents, space=space, seed=seed,
                                  fit_layers=fit_layers, psi=psi)
    o = EditOptions(attribute, positive, negative, conditions=(condition,), space=space,
                    num_latents=num_latents, num_eval=num_eval, seed=seed, layers=layers,
                    num_select=num_select, fit_layers=fit_layers, condition_mode=mode,
                    truncation_psi=psi)
    path = edit(t, o, labelled=labelled[fit])
    with open(path[:-4] + ".json", encoding="utf-8") as f:
      record = json.load(f)
    for kind in ("unconditioned", "conditioned"):
      rows.append({**row_of(record, kind, entry, space, path, workdir),
                   "seconds": time.perf_counter() - start})
  # a partial run (--match) or another seed writes a file of its own, never over the whole
  # seed-0 table's
  suffix = "" if match is None else "-" + (re.sub(r"[^A-Za-z0-9]+", "-", match).strip("-")
                                           or "match")
  suffix += f"-psi{psi:g}" if psi != 1.0 else ""
  suffix += f"-seed{seed}" if seed else ""
  W.write_json(os.path.join(workdir, "edits", f"directions{suffix}.json"), {
      "checkpoint_step": t.step, "num_latents": num_latents, "num_eval": num_eval,
      "seed": seed, "match": match, "truncation_psi": psi, "rows": rows})
  return rows


def _pct(v) -> str:
  return "n/a" if v is None else f"{100 * v:.1f}%"


def table(rows: list[dict]) -> str:
  """Markdown table of `measure_directions`' rows."""
  lines = ["| direction (conditioned on) [layers] | SVM acc. | monotonic log-odds "
           "| monotonic log-odds & changes "
           "| P non-decreasing | P rises & flips (tol 0 / 0.001 / 0.01) "
           "| unsaturated log-odds rises & flips | changes "
           "| stays (measured attr.) | both | rises & flips (0.001) and stays "
           "| both, condition definite (share) |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    name = r["direction"] + (f" ({r['condition']})" if r["condition"] else "")
    name += f" [{r['layers']} {r['layer_indices']}]" if r.get("layers") else ""
    name += f" [fit {r['fit_layers']}]" if r.get("fit_layers") else ""
    name += " [axes]" if r.get("condition_mode") == "axes" else ""
    flips = " / ".join(f"{100 * r[f'monotonic_and_flips_tol_{tol}']:.1f}%"
                       for tol in ("0", "0.001", "0.01"))
    lines.append(
        f"| {name} | {r['svm_train_accuracy']:.3f} | {100 * r['monotonic_logodds']:.1f}% | "
        f"{100 * r['logodds_rises_and_changes']:.1f}% | "
        f"{100 * r['monotonic_p_tol_0']:.1f}% | {flips} | "
        f"{100 * r['logodds_rises_unsaturated_and_flips']:.1f}% | {100 * r['changes']:.1f}% | "
        f"{100 * r['stays']:.1f}% ({r['measured_condition']}) | {100 * r['both']:.1f}% | "
        f"{100 * r['rises_flips_and_stays']:.1f}% | {_pct(r['both_given_confident'])} "
        f"({100 * r['condition_confident']:.1f}%) |")
  return "\n".join(lines)


def add_arguments(p) -> None:
  p.add_argument("--num-latents", type=int, default=20000)
  p.add_argument("--num-eval", type=int, default=400)
  p.add_argument("--space", choices=("z", "w"), default="w")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--num-select", type=int, default=200,
                 help="latents the [auto] rows choose their layer range on")
  p.add_argument("--match", default=None,
                 help="run only the directions whose name contains this text, e.g. "
                      "'[fit not-coarse]' (an unknown text lists the names)")
  p.add_argument("--truncation-psi", type=float, default=1.0,
                 help="sample every latent truncated towards the mean w (InterFaceGAN: 0.7)")


def run(args) -> str:
  rows = measure_directions(args.workdir, num_latents=args.num_latents,
                            num_eval=args.num_eval, space=args.space, seed=args.seed,
                            num_select=args.num_select, match=args.match,
                            truncation_psi=args.truncation_psi)
  return table(rows)


COMMAND = Command("measure edits along every supervised direction (a markdown table)",
                  add_arguments, run)
