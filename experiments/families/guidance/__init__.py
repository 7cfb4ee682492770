"""The guidance families: ``cfg`` (a class-conditional U-Net trained with condition dropout,
Ho & Salimans 2022) and ``classifier_guidance`` (a diffusion model and a noise-aware classifier,
Dhariwal & Nichol 2021), with the guidance sweep.

  python -m experiments.main train --config experiments/configs/cfg_digits.py --workdir DIR
  python -m experiments.main sweep --workdir DIR --scales 0,1,3,5 [--guidance cfg|classifier|negative]
"""
from __future__ import annotations

import os

import jax.numpy as jnp
import numpy as np

from experiments import workdir as W
from experiments.families import Command, Family, register
from experiments.families.ddpm import runner
from experiments.families.guidance import conditions, report
from experiments.families.guidance.config import GuidanceConfig
from experiments.families.guidance.noisy_classifier import train_noisy_classifier
from experiments.families.guidance.sampling import GuidedRun
from experiments.families.guidance.sweep import GUIDANCE, parse_scales, sweep
from jaxgen import metrics as M


def train(config: GuidanceConfig, workdir: str) -> dict:
  """Trains the diffusion model on the condition's labels (and, for classifier_guidance, the
  noise-aware classifier)."""
  config.validate()
  out = runner.train(config, workdir, sources=conditions.sources)
  if config.family == "classifier_guidance" and not out["terminated"]:
    info = train_noisy_classifier(config, workdir)
    info.pop("state")
    out["noisy_classifier"] = info
    out["terminated"] = info["terminated"]
  return out


def _default_guidance(config: GuidanceConfig) -> str:
  return "classifier" if config.family == "classifier_guidance" else "cfg"


def sample(workdir: str, *, num: int = 64, sampler: str | None = None, steps: int | None = None,
           seed: int = 0, eta: float | None = None) -> str:
  """A grid of guided samples (rows: classes) at ``guidance.sample_scale``; returns its path."""
  config = W.load_config(workdir)
  guidance, scale = _default_guidance(config), config.guidance.sample_scale
  run = GuidedRun(workdir, guidance, sampler, steps, eta)
  k = run.num_classes
  labels = np.arange(num) % k
  imgs = run.draw(jnp.asarray([scale]), labels, labels, seed)[0]
  name = f"guided_{guidance}{scale:g}_{run.method}{run.steps}_seed{seed}_step{run.step}"
  per = max(1, num // k)
  path = os.path.join(workdir, "samples", name + ".png")
  M.save_image_grid(path, report.by_class(imgs, k, per_class=per), nrow=per)
  np.savez_compressed(path[:-4] + ".npz", images=imgs, labels=labels)
  return path


def evaluate(workdir: str, *, num_samples: int | None = None) -> dict:
  """The guidance sweep over ``guidance.scales`` for the family's guidance."""
  config = W.load_config(workdir)
  return sweep(workdir, scales=config.guidance.scales, guidance=_default_guidance(config),
               num=num_samples)


def _sweep_arguments(p) -> None:
  p.add_argument("--scales", required=True, help="comma-separated guidance scales, e.g. 0,1,3,5")
  p.add_argument("--guidance", choices=GUIDANCE, default="cfg")
  p.add_argument("--num", type=int, default=None, help="samples per scale (default: config)")
  p.add_argument("--sampler", choices=("ddpm", "ddim"), default=None)
  p.add_argument("--steps", type=int, default=None)
  p.add_argument("--seed", type=int, default=0)


def _sweep(args) -> dict:
  return sweep(args.workdir, scales=args.scales, guidance=args.guidance, num=args.num,
               sampler=args.sampler, steps=args.steps, seed=args.seed)


SWEEP = Command("guidance sweep: accuracy and classifier-FID per scale", _sweep_arguments, _sweep)
_COMMON = dict(config_class=GuidanceConfig, train=train, sample=sample, evaluate=evaluate,
               sample_options=("sampler", "steps", "eta"), commands={"sweep": SWEEP})
CFG = register(Family(name="cfg", description="classifier-free guidance and negative prompts",
                      **_COMMON))
CLASSIFIER_GUIDANCE = register(Family(
    name="classifier_guidance", description="classifier guidance with a noise-aware classifier",
    **_COMMON))

__all__ = ["CFG", "CLASSIFIER_GUIDANCE", "GuidanceConfig", "GuidedRun", "parse_scales",
           "sample", "sweep", "train", "train_noisy_classifier"]
