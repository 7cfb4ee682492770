# python -m experiments.main train --config experiments/configs/dcgan_digits.py --workdir runs/dcgan_digits
"""DCGAN (Radford et al. 2016) on scikit-learn's 8x8 digits: batch norm, Adam(2e-4, 0.5),
non-saturating loss; a few minutes on 2 CPU cores."""
from experiments.families.gan.config import (DataConfig, GANConfig, GANEvalConfig, GANSettings,
                                             LoopConfig, SampleConfig)


def get_config(variant=None):
  config = GANConfig(
      name="dcgan_digits",
      seed=0,
      data=DataConfig(name="digits", image_size=None, batch_size=64),
      model=dict(arch="dcgan", z_dim=32,
                 generator=dict(features=64, start_size=2, norm="batch"),
                 discriminator=dict(features=64, end_size=2, norm="batch")),
      gan=GANSettings(loss="nonsaturating", g_learning_rate=2e-4, d_learning_rate=2e-4,
                      beta1=0.5, beta2=0.999, fid_every=1000, fid_samples=500,
                      classifier_steps=600),
      train=LoopConfig(num_steps=5000, ema_decay=0.999, ema_warmup=True, log_every=100,
                       checkpoint_every=1000, sample_every=1000),
      sample=SampleConfig(num=100),
      eval=GANEvalConfig(num_samples=1000),
  )
  if variant == "smoke":
    config.data.batch_size = 16
    config.model.update(z_dim=8, generator=dict(features=8, start_size=2),
                        discriminator=dict(features=8, end_size=2))
    config.train.num_steps = 6
    config.train.log_every, config.train.checkpoint_every, config.train.sample_every = 2, 3, 0
    config.sample.num = 8
    config.eval.num_samples = 32
    config.gan.fid_every, config.gan.fid_samples, config.gan.classifier_steps = 3, 32, 10
  elif variant is not None:
    raise ValueError(f"unknown variant {variant!r} of dcgan_digits; expected 'smoke' or none")
  return config
