"""Which module runs each model family. A family module provides

  train(config, workdir) -> dict
  sample(workdir, *, num, sampler, steps, seed, eta) -> str   (path of the PNG grid)
  evaluate(workdir, *, num_samples) -> dict

and ``Config.family`` (saved in the workdir's config.json) picks it.
"""
from __future__ import annotations

import importlib

FAMILIES = {
    "ddpm": "experiments.ddpm",
    "cfg": "experiments.guidance", "classifier_guidance": "experiments.guidance",
    "autoencoder": "experiments.autoencoders",
    "gan": "experiments.gan",
}


def get_family(name: str):
  if name not in FAMILIES:
    raise ValueError(f"unknown model family {name!r}; expected one of {sorted(FAMILIES)}")
  return importlib.import_module(FAMILIES[name])
