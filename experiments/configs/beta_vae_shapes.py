# python -m experiments.main train --config experiments/configs/beta_vae_shapes.py --workdir runs/beta_vae_shapes
"""A beta-VAE sweep (Higgins et al. 2017) on 16x16 shapes: one MLP VAE with a 10-dim latent per
beta in autoencoder.betas (WORKDIR/beta_<b>/); `evaluate` tabulates KL and reconstruction error
per beta. A few minutes per beta on 2 CPU cores."""
import math

from experiments.families.autoencoder.config import (AutoencoderExperiment, AutoencoderSection,
                                                   DataConfig, EvalConfig, SampleConfig,
                                                   TrainConfig)


def get_config(variant=None):
  config = AutoencoderExperiment(
      name="beta_vae_shapes", family="autoencoder", seed=0,
      data=DataConfig(name="shapes", image_size=16, batch_size=64),
      model=dict(architecture="mlp", mlp_hidden=(512, 256), latent_channels=10),
      train=TrainConfig(num_steps=3000, learning_rate=1e-3, warmup_steps=100, lr_decay="cosine",
                        ema_decay=0.999, log_every=100, checkpoint_every=3000),
      sample=SampleConfig(num=64),
      eval=EvalConfig(num_samples=1000, classifier_steps=1200),
      autoencoder=AutoencoderSection(kind="vae", likelihood="gaussian", log_scale=math.log(0.2),
                                     betas=[0.25, 1.0, 4.0, 16.0], kl_warmup_steps=200),
  )
  if variant == "smoke":
    config.data.batch_size = 16
    config.model.update(mlp_hidden=(32,), latent_channels=4)
    config.autoencoder.betas = [0.5, 2.0]
    config.train.num_steps, config.train.warmup_steps = 2, 1
    config.train.log_every, config.train.checkpoint_every = 1, 2
    config.sample.num = 16
    config.eval.num_samples, config.eval.classifier_steps = 32, 5
  elif variant is not None:
    raise ValueError(f"unknown variant {variant!r} of beta_vae_shapes; expected 'smoke' or none")
  return config
