"""The guidance sweep: every scale sampled by one compiled sampler with the same noise, measured
by a held-out classifier (class accuracy, classifier-FID against the test split; for negative
prompts, how often samples show the negative condition). Writes ``DIR/sweep/<guidance>.json``,
``<guidance>_plot.png`` and ``<guidance>_grid.png``."""
from __future__ import annotations

import json
import math
import os
import time

import jax
import numpy as np

from experiments import workdir as W
from experiments.families.guidance import conditions
from experiments.families.guidance import report
from experiments.families.guidance.config import GuidanceSection
from experiments.families.guidance.sampling import GuidedRun
from jaxgen import data as jdata
from jaxgen import metrics as M
from jaxgen.training import write_run_json

GUIDANCE = ("cfg", "classifier", "negative")
SWEEP_DIR = "sweep"


def heldout_classifier(workdir: str, run: GuidedRun):
  """The evaluation classifier (not the guidance one), trained on the train split, cached."""
  train_arrays = jdata.load_all(run.source)
  return W.cached_classifier(
      os.path.join(workdir, SWEEP_DIR, "heldout_classifier"), train_arrays["image"],
      conditions.heldout_targets(run.kind, train_arrays), heads=conditions.heldout_heads(run.kind, run.num_classes),
      key=jax.random.key(run.config.seed + 1000), num_steps=run.config.eval.classifier_steps)


def parse_scales(scales) -> list[float]:
  if isinstance(scales, str):
    try:
      scales = [float(s) for s in scales.split(",") if s.strip()]
    except ValueError as e:
      raise ValueError(f"--scales must be comma-separated numbers like 0,1,3,5: {e}") from None
  scales = [float(s) for s in scales]
  if not scales or not all(math.isfinite(s) for s in scales):
    raise ValueError(f"need at least one finite guidance scale, got {scales}")
  return scales


def sweep(workdir: str, *, scales, guidance: str = "cfg", num: int | None = None,
          sampler: str | None = None, steps: int | None = None, seed: int = 0) -> dict:
  """Samples every scale with one compiled sampler and writes DIR/sweep/<guidance>.json, a plot
  and a grid. cfg/classifier: class accuracy under the held-out classifier and classifier-FID
  against the test split per scale. negative: how often samples show the negative condition."""
  if guidance not in GUIDANCE:
    raise ValueError(f"unknown guidance {guidance!r}; expected one of {GUIDANCE}")
  scales = parse_scales(scales)
  run = GuidedRun(workdir, guidance, sampler, steps)
  n = num or run.config.eval.num_samples
  if n < run.num_classes:
    raise ValueError(f"--num must be at least the {run.num_classes} classes, got {n}")
  clf = heldout_classifier(workdir, run)
  test = jdata.load_all(conditions.sources(run.config, "test"))
  fid = W.fid_to(clf, test["image"])

  t0 = time.perf_counter()
  result = {"guidance": guidance, "workdir": workdir, "checkpoint_step": run.step,
            "num_samples": n, "sampler": run.method, "steps": run.steps, "seed": seed,
            "heldout_test_accuracy": M.classifier_accuracy(
                clf, test["image"], conditions.heldout_targets(run.kind, test)),
            "fid_floor_train_vs_test": fid(jdata.load_all(run.source)["image"][:n])}
  out_dir = os.path.join(workdir, SWEEP_DIR)
  if guidance == "negative":
    result.update(_negative_sweep(run, clf, scales, n, seed, out_dir))
  else:
    labels = np.arange(n) % run.num_classes
    images = run.draw(scales, labels, labels, seed)
    rows = []
    for s, imgs in zip(scales, images):
      probs = M.classifier_predict(clf, imgs)
      rows.append({"scale": s, "accuracy": float(np.mean(conditions.hits(run.kind, probs, labels))),
                   "fid": fid(imgs)})
    result["per_scale"] = rows
    os.makedirs(out_dir, exist_ok=True)
    np.savez_compressed(os.path.join(out_dir, f"{guidance}_samples.npz"), images=images,
                        labels=labels, scales=np.asarray(scales))
    report.save_grid(os.path.join(out_dir, f"{guidance}_grid.png"),
                     [report.by_class(im, run.num_classes, per_class=8) for im in images],
                     [f"g={s:g}" for s in scales], nrow=8)
    report.save_plot(os.path.join(out_dir, f"{guidance}_plot.png"), rows,
                     title=f"{guidance} guidance, {run.config.name}")
  result["sample_seconds"] = round(time.perf_counter() - t0, 1)
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, f"{guidance}.json"), "w") as f:
    json.dump(result, f, indent=2)
  write_run_json(os.path.join(out_dir, f"{guidance}.run.json"), W.run_record(
      run.config, "sweep", guidance=guidance, scales=scales, seed=seed))
  return result


def _negative_sweep(run: GuidedRun, clf, scales, n, seed, out_dir) -> dict:
  """Positive and negative conditions cycle over all pairs; reports how often the held-out
  classifier sees the negative attribute (lower is better) and the positive one."""
  if run.kind == "shapes_words":  # positive: a shape word; negative: a colour word
    pos, neg = np.arange(n) % 3, 3 + (np.arange(n) // 3) % 4
  else:  # positive: the null class (anything); negative: each class in turn
    pos, neg = np.full(n, run.null), np.arange(n) % run.num_classes
  g = float(getattr(run.config, "guidance", GuidanceSection()).negative_scale)
  lecture = run.draw(scales, pos, neg, seed, g_pos=g, null_ok=True)
  replace = run.draw([g], pos, neg, seed, form="negative_replace", null_ok=True)[0]

  def stats(imgs):
    probs = M.classifier_predict(clf, imgs)
    out = {"negative_rate": float(np.mean(conditions.hits(run.kind, probs, neg)))}
    if run.kind == "shapes_words":
      out["positive_accuracy"] = float(np.mean(conditions.hits(run.kind, probs, pos)))
    return out

  os.makedirs(out_dir, exist_ok=True)
  np.savez_compressed(os.path.join(out_dir, "negative_samples.npz"), lecture=lecture,
                      replace=replace, labels=pos, neg_labels=neg, scales=np.asarray(scales))
  rows = [{"neg_scale": s, **stats(im)} for s, im in zip(scales, lecture)]
  panels = [report.by_class(im, run.num_classes, labels=neg, per_class=8) for im in lecture]
  titles = [f"g_neg={s:g}" for s in scales]
  panels.append(report.by_class(replace, run.num_classes, labels=neg, per_class=8))
  titles.append(f"replace g={g:g}")
  report.save_grid(os.path.join(out_dir, "negative_grid.png"), panels, titles, nrow=8)
  report.save_plot(os.path.join(out_dir, "negative_plot.png"),
                   [{"scale": r["neg_scale"], "negative_rate": r["negative_rate"]} for r in rows],
                   title="negative prompting (lecture form)",
                   metrics=(("negative_rate", "rate of the negative attribute"),))
  return {"positive_scale": g, "lecture": rows, "replace": {"scale": g, **stats(replace)}}
