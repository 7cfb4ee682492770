"""The ``ldm`` family: Stable Diffusion in miniature (Rombach et al. 2022) on the `shapes`
captions: a frozen CLIP text encoder (clip family), a KL autoencoder (autoencoder family) and
a cross-attention U-Net on its latents, trained with prompt dropout for classifier-free
guidance; the stages train without the held-out attribute combinations.

  python -m experiments.main train --config experiments/configs/ldm_shapes.py --workdir DIR
  python -m experiments.main generate --workdir DIR --prompt "a large blue square on the left" \\
      [--prompt P2 ...] [--negative-prompt P] [--guidance G] [--steps S] \\
      [--sampler ddim|ddpm|dpmpp_2m] [--num N] [--seed K]
  python -m experiments.main evaluate --workdir DIR
  python -m experiments.main sample --workdir DIR [--num N]     # a grid of fixed prompts
"""
import argparse

from experiments.families import Command, Family, register
from experiments.families.ldm.config import SAMPLERS, LDMExperiment
from experiments.families.ldm.evaluation import evaluate
from experiments.families.ldm.runner import load_trained
from experiments.families.ldm.training import train
from experiments.families.ldm.sampling import generate, sample


def _number(raw: str) -> float:
  try:
    value = float(raw)
  except ValueError:
    raise argparse.ArgumentTypeError(f"must be a number (e.g. 3 or 7.5), got {raw!r}") from None
  if value != value or value in (float("inf"), float("-inf")):
    raise argparse.ArgumentTypeError(f"must be a finite number, got {raw!r}")
  return value


def _add_generate_arguments(p: argparse.ArgumentParser) -> None:
  p.add_argument("--prompt", action="append", default=[], metavar="TEXT",
                 help="a prompt (repeatable; --num images each)")
  p.add_argument("--negative-prompt", default=None, metavar="TEXT",
                 help="a negative prompt for every image (replaces the empty prompt of CFG)")
  p.add_argument("--guidance", type=_number, default=None,
                 help="classifier-free guidance scale (default: the config's sample.guidance)")
  p.add_argument("--steps", type=int, default=None, help="sampler steps")
  p.add_argument("--sampler", choices=SAMPLERS, default=None)
  p.add_argument("--num", type=int, default=8, help="images per prompt")
  p.add_argument("--seed", type=int, default=0)


def _run_generate(args) -> str:
  if not args.prompt:
    raise ValueError("generate needs at least one --prompt TEXT")
  return generate(args.workdir, args.prompt, num=args.num, seed=args.seed,
                  guidance=args.guidance, steps=args.steps, sampler=args.sampler,
                  negative_prompt=args.negative_prompt)


FAMILY = register(Family(
    name="ldm", config_class=LDMExperiment, train=train, sample=sample, evaluate=evaluate,
    sample_options=("sampler", "steps"),
    commands={"generate": Command("text-to-image from a trained ldm workdir",
                                  _add_generate_arguments, _run_generate)},
    description="text-conditioned latent diffusion (Stable Diffusion in miniature) on the "
                "shapes captions: prompt following, composition, guidance, negative prompts"))

__all__ = ["FAMILY", "LDMExperiment", "evaluate", "generate", "load_trained", "sample", "train"]
