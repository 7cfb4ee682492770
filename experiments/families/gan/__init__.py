"""The ``gan`` family: DCGAN (Radford et al. 2016) and a style-based generator (StyleGAN2
structure), with latent tools.

  python -m experiments.main train --config experiments/configs/stylegan_shapes.py --workdir DIR
  python -m experiments.main sample --workdir DIR [--num 16] [--seed 0] [--truncation-psi 0.7]
  python -m experiments.main evaluate --workdir DIR [--num N]
  python -m experiments.main interpolate|invert|edit|arithmetic|discover|objects|directions \
      --workdir DIR ...

Model: ``config.model = {'arch': 'dcgan' | 'stylegan', ...}``; training settings in the ``gan``
section (`GANSettings`).
"""
from experiments.families import Family, register
from experiments.families.gan.config import GANConfig, GANEvalConfig, GANSettings
from experiments.families.gan.evaluation import evaluate
from experiments.families.gan.runner import sample, train
from experiments.families.gan.tools import COMMANDS
from experiments.families.gan.trained import CLASSIFIER_DIR, Trained, load_trained
from jaxgen.training import NonFiniteLossError

FAMILY = register(Family(
    name="gan", config_class=GANConfig, train=train, sample=sample, evaluate=evaluate,
    sample_options=("truncation_psi",), commands=COMMANDS,
    description="DCGAN and a style-based generator with latent tools (classifier-FID, edits)"))

__all__ = ["CLASSIFIER_DIR", "FAMILY", "GANConfig", "GANEvalConfig", "GANSettings",
           "NonFiniteLossError", "Trained", "evaluate", "load_trained", "sample", "train"]
