# python -m experiments.main train --config experiments/configs/ddpm_shapes.py --workdir runs/ddpm_shapes
"""An unconditional DDPM on the procedural 32x32 `shapes` data (a longer CPU run: about an
hour on 2 cores; minutes on an accelerator)."""
from experiments.families.ddpm.config import (DataConfig, DDPMConfig, DiffusionConfig,
                                             DiffusionEvalConfig, DiffusionSampleConfig,
                                             DiffusionTrainConfig)


def get_config(variant=None):
  config = DDPMConfig(
      name="ddpm_shapes",
      seed=0,
      data=DataConfig(name="shapes", image_size=32, batch_size=64),
      model=dict(block_out_channels=(32, 64, 64), layers_per_block=1,
                 down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
                 up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
                 attention_head_dim=None, norm_num_groups=8, norm_eps=1e-6, dropout=0.0,
                 freq_shift=1, flip_sin_to_cos=False, downsample_padding=0),
      diffusion=DiffusionConfig(schedule="cosine", num_timesteps=1000, clip_sample=True),
      train=DiffusionTrainConfig(num_steps=20_000, learning_rate=5e-4, warmup_steps=500,
                        lr_decay="cosine", ema_decay=0.999, log_every=100,
                        checkpoint_every=2000, sample_every=5000),
      sample=DiffusionSampleConfig(sampler="ddim", steps=50, num=64, batch_size=256),
      eval=DiffusionEvalConfig(num_samples=1000, classifier_steps=300, bpd_examples=0),
  )
  if variant == "smoke":
    config.data.batch_size = 8
    config.data.image_size = 16
    config.model.update(block_out_channels=(16, 16), layers_per_block=1, norm_num_groups=4,
                        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                        up_block_types=("AttnUpBlock2D", "UpBlock2D"))
    config.diffusion.num_timesteps = 50
    config.train.num_steps, config.train.warmup_steps = 4, 1
    config.train.log_every, config.train.checkpoint_every = 2, 2
    config.sample.steps, config.sample.num = 5, 8
    config.eval.num_samples, config.eval.classifier_steps = 16, 10
  elif variant is not None:
    raise ValueError(f"unknown variant {variant!r} of ddpm_shapes; expected 'smoke' or none")
  return config
