# python -m experiments.main train --config experiments/configs/ddpm_digits.py --workdir runs/ddpm_digits
"""The demo: an unconditional DDPM on scikit-learn's 8x8 digits, about 10 minutes on 2 CPU cores."""
from experiments.families.ddpm.config import (DataConfig, DDPMConfig, DiffusionConfig,
                                             DiffusionEvalConfig, DiffusionSampleConfig,
                                             DiffusionTrainConfig)


def get_config(variant=None):
  config = DDPMConfig(
      name="ddpm_digits",
      seed=0,
      data=DataConfig(name="digits", image_size=None, batch_size=64),
      model=dict(block_out_channels=(32, 64), layers_per_block=2,
                 down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                 up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                 attention_head_dim=None, norm_num_groups=8, norm_eps=1e-6, dropout=0.0,
                 freq_shift=1, flip_sin_to_cos=False, downsample_padding=0),
      diffusion=DiffusionConfig(schedule="linear", num_timesteps=1000, clip_sample=True),
      train=DiffusionTrainConfig(num_steps=6000, learning_rate=1e-3, warmup_steps=200, lr_decay="cosine",
                        ema_decay=0.999, log_every=100, checkpoint_every=1000, sample_every=2000),
      sample=DiffusionSampleConfig(sampler="ddpm", steps=100, num=100, batch_size=500),
      eval=DiffusionEvalConfig(num_samples=1000, classifier_steps=600, bpd_examples=64),
  )
  if variant == "smoke":
    config.data.batch_size = 16
    config.model.update(block_out_channels=(32, 32), layers_per_block=1, norm_num_groups=8)
    config.diffusion.num_timesteps = 50
    config.train.num_steps, config.train.warmup_steps = 6, 2
    config.train.log_every, config.train.checkpoint_every, config.train.sample_every = 2, 3, 0
    config.sample.steps, config.sample.num = 10, 16
    config.eval.num_samples, config.eval.classifier_steps, config.eval.bpd_examples = 64, 30, 8
  elif variant is not None:
    raise ValueError(f"unknown variant {variant!r} of ddpm_digits; expected 'smoke' or none")
  return config
