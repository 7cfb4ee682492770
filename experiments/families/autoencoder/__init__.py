"""The ``autoencoder`` family: AE, VAE, beta-VAE sweep, CVAE, VQ-VAE and VQGAN, chosen by
``autoencoder.kind`` (`experiments.families.autoencoder.config.AutoencoderSection`).

  python -m experiments.main train --config experiments/configs/vae_digits.py --workdir DIR
  python -m experiments.main sample --workdir DIR [--num N] [--seed K]
  python -m experiments.main evaluate --workdir DIR [--num N]
"""
from experiments.families import Family, register
from experiments.families.autoencoder.config import AutoencoderExperiment, AutoencoderSection
from experiments.families.autoencoder.evaluation import evaluate
from experiments.families.autoencoder.runner import load_trained, sample, sweep_dir, train

FAMILY = register(Family(
    name="autoencoder", config_class=AutoencoderExperiment, train=train, sample=sample,
    evaluate=evaluate,
    description="AE, VAE, beta-VAE sweep, CVAE, VQ-VAE, VQGAN (MSE/PSNR, ELBO bpd, codebook "
                "perplexity, classifier-FID, CVAE accuracy)"))

__all__ = ["AutoencoderExperiment", "AutoencoderSection", "FAMILY", "evaluate", "load_trained",
           "sample", "sweep_dir", "train"]
