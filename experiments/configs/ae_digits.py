# python -m experiments.main train --config experiments/configs/ae_digits.py --workdir runs/ae_digits
"""A plain convolutional autoencoder (Hinton & Salakhutdinov 2006) on the 8x8 digits:
8x8x1 -> 4x4x2 latent (32 numbers) -> 8x8x1, mean squared error. A few minutes on 2 CPU cores."""
from experiments.families.autoencoder.config import (AutoencoderExperiment, AutoencoderSection,
                                                   DataConfig, EvalConfig, SampleConfig,
                                                   TrainConfig)


def get_config(variant=None):
  config = AutoencoderExperiment(
      name="ae_digits", family="autoencoder", seed=0,
      data=DataConfig(name="digits", batch_size=64),
      model=dict(block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8,
                 latent_channels=2),
      train=TrainConfig(num_steps=3000, learning_rate=1e-3, warmup_steps=100, lr_decay="cosine",
                        ema_decay=0.999, log_every=100, checkpoint_every=1000),
      sample=SampleConfig(num=64),
      eval=EvalConfig(num_samples=1000, classifier_steps=600),
      autoencoder=AutoencoderSection(kind="ae"),
  )
  if variant == "smoke":
    _smoke(config)
  elif variant is not None:
    raise ValueError(f"unknown variant {variant!r} of ae_digits; expected 'smoke' or none")
  return config


def _smoke(config):
  config.data.batch_size = 16
  config.model.update(block_out_channels=(8, 8), norm_num_groups=4)
  config.train.num_steps, config.train.warmup_steps = 4, 1
  config.train.log_every, config.train.checkpoint_every = 2, 2
  config.sample.num = 16
  config.eval.num_samples, config.eval.classifier_steps = 32, 5
