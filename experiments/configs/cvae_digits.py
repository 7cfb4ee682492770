# python -m experiments.main train --config experiments/configs/cvae_digits.py --workdir runs/cvae_digits
"""A conditional VAE (Sohn et al. 2015) on the 8x8 digits: the one-hot digit is fed to the MLP
encoder and decoder; sampling z ~ N(0, I) with a chosen digit draws that digit. A 4-dim latent
leaves the digit identity to the label (8 dims: 95% conditional accuracy, 2 dims: 99.8%).
About a minute on 2 CPU cores, plus evaluation."""
import math

from experiments.families.autoencoder.config import (AutoencoderExperiment, AutoencoderSection,
                                                   DataConfig, EvalConfig, SampleConfig,
                                                   TrainConfig)


def get_config(variant=None):
  config = AutoencoderExperiment(
      name="cvae_digits", family="autoencoder", seed=0,
      data=DataConfig(name="digits", batch_size=64),
      model=dict(architecture="mlp", mlp_hidden=(256, 128), latent_channels=4),
      train=TrainConfig(num_steps=10000, learning_rate=1e-3, warmup_steps=100, lr_decay="cosine",
                        ema_decay=0.999, log_every=100, checkpoint_every=2000),
      sample=SampleConfig(num=80),
      eval=EvalConfig(num_samples=1000, classifier_steps=600),
      autoencoder=AutoencoderSection(kind="vae", conditional=True, likelihood="gaussian",
                                     log_scale=math.log(0.2), beta=1.0, kl_warmup_steps=500),
  )
  if variant == "smoke":
    config.data.batch_size = 16
    config.model.update(mlp_hidden=(32,), latent_channels=4)
    config.train.num_steps, config.train.warmup_steps = 4, 1
    config.train.log_every, config.train.checkpoint_every = 2, 2
    config.autoencoder.kl_warmup_steps = 2
    config.sample.num = 16
    config.eval.num_samples, config.eval.classifier_steps = 40, 5
  elif variant is not None:
    raise ValueError(f"unknown variant {variant!r} of cvae_digits; expected 'smoke' or none")
  return config
