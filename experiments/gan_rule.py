"""Applies a registered acceptance rule to `gan_acceptance` result files, mechanically.

  python -m experiments.gan_rule W/edits/acceptance-fit-not-coarse-psi0.7.json \\
      W/edits/acceptance-fit-not-coarse-psi0.7-seed1.json [--rule session18] [--step 30000]

A rule names rows of the acceptance table (direction, condition, layer group, fit group,
condition mode), one column of each and a bar; it passes when every bar holds on every file.
The rules are the ones registered before their draws trained (docs/registrations/,
docs/gans.md):

- ``session18``: bar 1, the issue's first sentence: unconditioned "colour blue vs rest"
  ``[auto] [fit not-coarse]``, ``logodds_rises_unsaturated_and_flips`` >= 0.90; bar 2, the
  second sentence: "colour red vs blue" conditioned on position (one-vs-rest)
  ``[auto] [fit not-coarse]``, ``both`` (changes colour and keeps position) >= 0.80.
- ``session14``: one row, the conditioned red-vs-blue row above, must meet both sentences:
  ``logodds_rises_and_changes`` (strict) >= 0.90 and ``both`` >= 0.80.

Before judging, each file is checked against the protocol the rules were registered with
(truncation psi, checkpoint step, the match that produced it): a file measured otherwise is
an error, not a miss.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import NamedTuple


class Bar(NamedTuple):
  name: str
  direction: str
  condition: str | None  # None: the unconditioned row
  column: str
  threshold: float
  layers: str = "auto"
  fit_layers: str = "not-coarse"
  condition_mode: str | None = "one-vs-rest"  # of the conditioned row; None if unconditioned


_RED_BLUE = ("colour red vs blue", "position")
RULES = {
    "session18": (
        Bar("bar 1: blue vs rest, unsaturated log-odds rises & flips", "colour blue vs rest",
            None, "logodds_rises_unsaturated_and_flips", 0.90, condition_mode=None),
        Bar("bar 2: red vs blue (position), changes colour & keeps position", *_RED_BLUE,
            "both", 0.80),
    ),
    "session14": (
        Bar("strict: red vs blue (position), log-odds rises & changes", *_RED_BLUE,
            "logodds_rises_and_changes", 0.90),
        Bar("strict: red vs blue (position), changes colour & keeps position", *_RED_BLUE,
            "both", 0.80),
    ),
}


def find_row(rows: list[dict], bar: Bar) -> dict:
  """The one row of `rows` that `bar` reads; a clear error if there is none or several."""
  hits = [r for r in rows
          if r["direction"] == bar.direction and r["condition"] == bar.condition
          and r.get("layers") == bar.layers and r.get("fit_layers") == bar.fit_layers
          and r.get("condition_mode") == bar.condition_mode]
  if len(hits) != 1:
    raise ValueError(
        f"expected exactly one row for {bar.name!r} (direction {bar.direction!r}, condition "
        f"{bar.condition!r}, layers {bar.layers!r}, fit {bar.fit_layers!r}, mode "
        f"{bar.condition_mode!r}); found {len(hits)}. Was the file written by "
        f"`gan_acceptance --match \"[fit not-coarse]\"`?")
  return hits[0]


def judge(results: list[dict], rule: str = "session18", *, truncation_psi: float = 0.7,
          step: int | None = 30000) -> dict:
  """Applies `RULES[rule]` to `results` (parsed acceptance JSON files, one per latent set).

  Returns {"rule", "pass", "readings": [{"set", "bar", "value", "threshold", "layers",
  "pass"}]}; `pass` is true only when every bar holds on every set.
  """
  if rule not in RULES:
    raise ValueError(f"unknown rule {rule!r}; expected one of {sorted(RULES)}")
  if not results:
    raise ValueError("no acceptance results to judge; pass the JSON files of every latent set")
  readings = []
  for i, res in enumerate(results):
    psi = res.get("truncation_psi")
    if psi is None or abs(psi - truncation_psi) > 1e-9:
      raise ValueError(f"result {i} was measured at truncation psi {psi}; the rule was "
                       f"registered at {truncation_psi}")
    if step is not None and res.get("checkpoint_step") != step:
      raise ValueError(f"result {i} is of checkpoint step {res.get('checkpoint_step')}; the "
                       f"rule is read at step {step}")
    for bar in RULES[rule]:
      row = find_row(res["rows"], bar)
      value = row[bar.column]
      readings.append({"set": f"seed {res.get('seed')}, {res.get('num_eval')} latents",
                       "bar": bar.name, "value": value, "threshold": bar.threshold,
                       "layers": row.get("layer_indices"), "pass": value >= bar.threshold})
  return {"rule": rule, "pass": all(r["pass"] for r in readings), "readings": readings}


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("files", nargs="+", help="acceptance JSON files, one per latent set")
  p.add_argument("--rule", default="session18", choices=sorted(RULES))
  p.add_argument("--truncation-psi", type=float, default=0.7)
  p.add_argument("--step", type=int, default=30000,
                 help="checkpoint step the rule is read at (0: any)")
  args = p.parse_args(argv)
  results = []
  for path in args.files:
    with open(path) as f:
      results.append(json.load(f))
  verdict = judge(results, args.rule, truncation_psi=args.truncation_psi,
                  step=args.step or None)
  for r in verdict["readings"]:
    print(f"{r['set']:>26} | {r['bar']} {r['layers']}: {100 * r['value']:.1f}% "
          f"(bar {100 * r['threshold']:.0f}%) {'pass' if r['pass'] else 'MISS'}")
  print(f"rule {verdict['rule']}: {'PASS' if verdict['pass'] else 'MISS'}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
