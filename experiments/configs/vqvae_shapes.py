# python -m experiments.main train --config experiments/configs/vqvae_shapes.py --workdir runs/vqvae_shapes
"""VQ-VAE (van den Oord et al. 2017) on 16x16 shapes: 16x16x3 -> 4x4 grid of codes from a
64-entry codebook (16-dim codes), EMA codebook (decay 0.99, Laplace smoothing), dead-code
restart, commitment beta 0.25. About 8 minutes on 2 busy CPU cores."""
from experiments.families.autoencoder.config import (AutoencoderExperiment, AutoencoderSection,
                                                   DataConfig, EvalConfig, SampleConfig,
                                                   TrainConfig)


def get_config(variant=None):
  config = AutoencoderExperiment(
      name="vqvae_shapes", family="autoencoder", seed=0,
      data=DataConfig(name="shapes", image_size=16, batch_size=64),
      model=dict(block_out_channels=(32, 64, 64), layers_per_block=1, norm_num_groups=8,
                 latent_channels=16),
      train=TrainConfig(num_steps=1500, learning_rate=1e-3, warmup_steps=100, lr_decay="cosine",
                        ema_decay=0.999, log_every=50, checkpoint_every=500),
      sample=SampleConfig(num=64),
      eval=EvalConfig(num_samples=1000, classifier_steps=1200),
      autoencoder=AutoencoderSection(kind="vqvae", num_codes=64, vq_beta=0.25,
                                     codebook_update="ema", codebook_decay=0.99,
                                     dead_threshold=1.0, rec_loss="mse"),
  )
  if variant == "smoke":
    _smoke(config)
  elif variant is not None:
    raise ValueError(f"unknown variant {variant!r} of vqvae_shapes; expected 'smoke' or none")
  return config


def _smoke(config):
  config.data.batch_size = 16
  config.model.update(block_out_channels=(8, 8), norm_num_groups=4, latent_channels=4)
  config.autoencoder.num_codes = 8
  config.train.num_steps, config.train.warmup_steps = 4, 1
  config.train.log_every, config.train.checkpoint_every = 2, 2
  config.sample.num = 16
  config.eval.num_samples, config.eval.classifier_steps = 32, 5
