# python -m experiments.main train --config experiments/configs/vae_digits.py --workdir runs/vae_digits
"""A VAE (Kingma & Welling 2014) with the MLP encoder/decoder on the 8x8 digits: 16-dim
Gaussian latent, Gaussian likelihood with fixed sigma = 0.2 (data in [-1, 1]). A few minutes
on 2 CPU cores."""
import math

from experiments.families.autoencoder.config import (AutoencoderExperiment, AutoencoderSection,
                                                   DataConfig, EvalConfig, SampleConfig,
                                                   TrainConfig)


def get_config(variant=None):
  config = AutoencoderExperiment(
      name="vae_digits", family="autoencoder", seed=0,
      data=DataConfig(name="digits", batch_size=64),
      model=dict(architecture="mlp", mlp_hidden=(256, 128), latent_channels=16),
      train=TrainConfig(num_steps=6000, learning_rate=1e-3, warmup_steps=100, lr_decay="cosine",
                        ema_decay=0.999, log_every=100, checkpoint_every=2000),
      sample=SampleConfig(num=64),
      eval=EvalConfig(num_samples=1000, classifier_steps=600),
      autoencoder=AutoencoderSection(kind="vae", likelihood="gaussian", log_scale=math.log(0.2),
                                     beta=1.0, kl_warmup_steps=500),
  )
  if variant == "smoke":
    config.data.batch_size = 16
    config.model.update(mlp_hidden=(32,), latent_channels=4)
    config.train.num_steps, config.train.warmup_steps = 4, 1
    config.train.log_every, config.train.checkpoint_every = 2, 2
    config.autoencoder.kl_warmup_steps = 2
    config.sample.num = 16
    config.eval.num_samples, config.eval.classifier_steps = 32, 5
  elif variant is not None:
    raise ValueError(f"unknown variant {variant!r} of vae_digits; expected 'smoke' or none")
  return config
