"""The supervised-direction acceptance protocol of a `shapes` StyleGAN workdir, in one command.

  python -m experiments.gan_acceptance --workdir runs/stylegan_shapes [--num-latents 20000]
      [--num-eval 400] [--space w]

For each direction below (InterFaceGAN, `experiments.gan_tools.edit`): label
`--num-latents` random latents once with the attribute classifier, fit a linear SVM on the
10% most confident of each side, project out the conditioned attribute's one-vs-rest
directions for the conditional variant, then edit `--num-eval` fresh latents at 13 values
m in linspace(-3, 3, 13) (m in standard deviations of the latents along n) and measure:

- monotonic: the exact log-odds of positive vs negative values (from the logits) never
  decreases from one m to the next (no tolerance);
- changes: the predicted class of the target attribute differs between m = -3 and +3;
- stays: the conditioned attribute's predicted class equals its m = 0 class at every m;
- both: changes and stays.

Writes ``WORKDIR/edits/acceptance.json`` (every record) and prints a markdown table; the
edit grids are the usual ``WORKDIR/edits/edit_*.png``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from experiments import gan_tools

# (label, attribute, positive, negative, condition)
DIRECTIONS = (
    ("size large vs small", "size", ["large"], None, "color"),
    ("size large vs small", "size", ["large"], None, "position"),
    ("colour red vs blue", "color", ["red"], ["blue"], "position"),
    ("colour red vs blue", "color", ["red"], ["blue"], "size"),
    ("position right vs left column", "position", ["top right", "right", "bottom right"],
     ["top left", "left", "bottom left"], "color"),
)


def run(workdir: str, *, num_latents: int = 20000, num_eval: int = 400, space: str = "w",
        seed: int = 0) -> list[dict]:
  """Runs every entry of `DIRECTIONS`; returns one row per (direction, conditioned or not)."""
  t = gan_tools.Trained.load(workdir)
  # One labelled set serves every direction (each edit would otherwise relabel the same one).
  labelled = gan_tools.edit_labels(t, num_latents, space=space, seed=seed)
  rows = []
  for label, attribute, positive, negative, condition in DIRECTIONS:
    start = time.perf_counter()
    path = gan_tools.edit(t, attribute, positive, negative, conditions=(condition,),
                          space=space, num_latents=num_latents, num_eval=num_eval, seed=seed,
                          labelled=labelled)
    with open(path[:-4] + ".json") as f:
      record = json.load(f)
    for kind in ("unconditioned", "conditioned"):
      r = record[kind]
      rows.append({
          "direction": label, "condition": condition if kind == "conditioned" else None,
          "measured_condition": condition, "space": space,
          "svm_train_accuracy": record["direction"]["train_accuracy"],
          "monotonic_logodds": r["monotonic_logodds"],
          "monotonic_p_tol_0": r["monotonic_fraction_tol_0"],
          "changes": r["target_changes_fraction"],
          "stays": r[f"{condition}_stays_fraction"],
          "both": r[f"changes_and_{condition}_stays_fraction"],
          "grid": os.path.relpath(path, workdir), "seconds": time.perf_counter() - start})
  out = os.path.join(workdir, "edits", "acceptance.json")
  with open(out, "w") as f:
    json.dump({"checkpoint_step": t.step, "num_latents": num_latents, "num_eval": num_eval,
               "rows": rows}, f, indent=2)
  return rows


def table(rows: list[dict]) -> str:
  """Markdown table of `run`'s rows."""
  lines = ["| direction (conditioned on) | SVM acc. | monotonic log-odds | P non-decreasing "
           "| changes | stays (measured attr.) | both |", "|---|---|---|---|---|---|---|"]
  for r in rows:
    name = r["direction"] + (f" ({r['condition']})" if r["condition"] else "")
    lines.append(
        f"| {name} | {r['svm_train_accuracy']:.3f} | {100 * r['monotonic_logodds']:.1f}% | "
        f"{100 * r['monotonic_p_tol_0']:.1f}% | {100 * r['changes']:.1f}% | "
        f"{100 * r['stays']:.1f}% ({r['measured_condition']}) | {100 * r['both']:.1f}% |")
  return "\n".join(lines)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m experiments.gan_acceptance", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--workdir", required=True)
  p.add_argument("--num-latents", type=int, default=20000)
  p.add_argument("--num-eval", type=int, default=400)
  p.add_argument("--space", choices=("z", "w"), default="w")
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args(argv)
  rows = run(args.workdir, num_latents=args.num_latents, num_eval=args.num_eval,
             space=args.space, seed=args.seed)
  print(table(rows))
  return 0


if __name__ == "__main__":
  sys.exit(main())
