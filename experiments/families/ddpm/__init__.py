"""The ``ddpm`` family: pixel-space diffusion (Ho et al. 2020) on a U-Net.

  python -m experiments.main train --config experiments/configs/ddpm_digits.py --workdir DIR
  python -m experiments.main sample --workdir DIR [--num N] [--sampler ddpm|ddim] [--steps S] [--eta E] [--seed K]
  python -m experiments.main evaluate --workdir DIR [--num N]
"""
from experiments.families import Family, register
from experiments.families.ddpm.config import DDPMConfig
from experiments.families.ddpm.evaluation import evaluate
from experiments.families.ddpm.runner import load_trained, sample, train

FAMILY = register(Family(
    name="ddpm", config_class=DDPMConfig, train=train, sample=sample, evaluate=evaluate,
    sample_options=("sampler", "steps", "eta"),
    description="pixel-space DDPM / DDIM on a U-Net (classifier-FID, bits/dim)"))

__all__ = ["DDPMConfig", "FAMILY", "evaluate", "load_trained", "sample", "train"]
