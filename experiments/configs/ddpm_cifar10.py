# python -m experiments.main train --config experiments/configs/ddpm_cifar10.py --workdir runs/ddpm_cifar10
"""The DDPM paper's CIFAR-10 model (Ho et al. 2020, sec. 4 and App. B): 35.7M parameters,
channels 128 x (1, 2, 2, 2), 2 resnet blocks per level, attention at 16x16, dropout 0.1,
T = 1000 linear betas 1e-4..0.02, Adam lr 2e-4 with 5000 warm-up steps, batch 128, gradient
clipping at 1, EMA 0.9999, 800k steps. For accelerators; the data must be prepared with TFDS
first (see the README). The paper also used random horizontal flips, which this loader does not
apply yet."""
from experiments.families.ddpm.config import (DataConfig, DDPMConfig, DiffusionConfig,
                                             DiffusionEvalConfig, DiffusionSampleConfig,
                                             DiffusionTrainConfig)


def get_config(variant=None):
  config = DDPMConfig(
      name="ddpm_cifar10",
      seed=0,
      data=DataConfig(name="cifar10", batch_size=128),
      model=dict(block_out_channels=(128, 256, 256, 256), layers_per_block=2,
                 down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D",
                                   "DownBlock2D"),
                 up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
                 attention_head_dim=None, norm_num_groups=32, norm_eps=1e-6, dropout=0.1,
                 freq_shift=1, flip_sin_to_cos=False, downsample_padding=0),
      diffusion=DiffusionConfig(schedule="linear", num_timesteps=1000, clip_sample=True),
      train=DiffusionTrainConfig(num_steps=800_000, learning_rate=2e-4, warmup_steps=5000,
                        grad_clip=1.0, ema_decay=0.9999, ema_warmup=False, log_every=100,
                        checkpoint_every=10_000, sample_every=50_000),
      sample=DiffusionSampleConfig(sampler="ddpm", steps=1000, num=64, batch_size=256),
      eval=DiffusionEvalConfig(num_samples=10_000, classifier_steps=2000, bpd_examples=0),
  )
  if variant == "smoke":
    config.data.batch_size = 8
    config.model.update(block_out_channels=(32, 32), layers_per_block=1, norm_num_groups=8,
                        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                        up_block_types=("AttnUpBlock2D", "UpBlock2D"))
    config.diffusion.num_timesteps = 50
    config.train.num_steps, config.train.warmup_steps = 4, 1
    config.train.log_every, config.train.checkpoint_every = 2, 2
    config.sample.steps, config.sample.num = 5, 8
  elif variant is not None:
    raise ValueError(f"unknown variant {variant!r} of ddpm_cifar10; expected 'smoke' or none")
  return config
