# python -m experiments.main train --config experiments/configs/beta_vae_shapes.py --workdir runs/beta_vae_shapes
"""A beta-VAE sweep (Higgins et al. 2017) on 16x16 shapes: one convolutional VAE per beta in
options.betas (WORKDIR/beta_<b>/); `evaluate` tabulates KL and reconstruction error per beta.
About 2-3 minutes per beta on 2 CPU cores."""
import math

from experiments.config import Config, DataConfig, EvalConfig, SampleConfig, TrainConfig


def get_config(variant=None):
  config = Config(
      name="beta_vae_shapes", family="autoencoder", seed=0,
      data=DataConfig(name="shapes", image_size=16, batch_size=64),
      model=dict(block_out_channels=(16, 32, 32), layers_per_block=1, norm_num_groups=8,
                 latent_channels=2),
      train=TrainConfig(num_steps=1500, learning_rate=1e-3, warmup_steps=100, lr_decay="cosine",
                        ema_decay=0.995, log_every=100, checkpoint_every=1500),
      sample=SampleConfig(num=64),
      eval=EvalConfig(num_samples=1000, classifier_steps=600),
      options=dict(kind="vae", likelihood="gaussian", log_scale=math.log(0.2),
                   betas=[0.25, 1.0, 4.0, 16.0], kl_warmup_steps=200),
  )
  if variant == "smoke":
    config.data.batch_size = 16
    config.model.update(block_out_channels=(8, 8), norm_num_groups=4)
    config.options["betas"] = [0.5, 2.0]
    config.train.num_steps, config.train.warmup_steps = 2, 1
    config.train.log_every, config.train.checkpoint_every = 1, 2
    config.sample.num = 16
    config.eval.num_samples, config.eval.classifier_steps = 32, 5
  elif variant is not None:
    raise ValueError(f"unknown variant {variant!r} of beta_vae_shapes; expected 'smoke' or none")
  return config
