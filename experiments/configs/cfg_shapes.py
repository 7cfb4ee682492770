# python -m experiments.main train --config experiments/configs/cfg_shapes.py --workdir runs/cfg_shapes
"""Classifier-free guidance and negative prompts on 16x16 `shapes`. Each training image is
conditioned on one "word" — its shape (circle, square, triangle: 0-2) or its colour (red,
green, blue, yellow: 3-6) — or, with probability 0.1, on the null class, so "a circle, not red"
is expressible: positive word = circle, negative word = red. About 23 minutes of CPU time
(2 cores).

  python -m experiments.main sweep --workdir runs/cfg_shapes --scales 0,1,3 --guidance negative
  python -m experiments.main sweep --workdir runs/cfg_shapes --scales 0,1,3,5
"""
from experiments.families.ddpm.config import (DataConfig, DiffusionConfig, DiffusionEvalConfig,
                                             DiffusionSampleConfig, DiffusionTrainConfig)
from experiments.families.guidance.config import GuidanceConfig, GuidanceSection


def get_config(variant=None):
  config = GuidanceConfig(
      name="cfg_shapes",
      family="cfg",
      seed=0,
      data=DataConfig(name="shapes", image_size=16, batch_size=64),
      model=dict(block_out_channels=(32, 64), layers_per_block=1,
                 down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                 up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                 attention_head_dim=None, norm_num_groups=8, norm_eps=1e-6, dropout=0.0,
                 freq_shift=1, flip_sin_to_cos=False, downsample_padding=0),
      # No clip_sample: DDIM clips x0 but keeps the unclipped guided eps, which at g >= 3
      # leaves saturated noise (measured in docs/guidance.md).
      diffusion=DiffusionConfig(schedule="cosine", num_timesteps=1000, clip_sample=False),
      train=DiffusionTrainConfig(num_steps=4000, learning_rate=1e-3, warmup_steps=200, lr_decay="cosine",
                        ema_decay=0.999, cond_drop_prob=0.1, log_every=100,
                        checkpoint_every=1000, sample_every=0),
      sample=DiffusionSampleConfig(sampler="ddim", steps=50, num=70, batch_size=200),
      eval=DiffusionEvalConfig(num_samples=600, classifier_steps=400, bpd_examples=0),
      guidance=GuidanceSection(condition="shapes_words", scales=(0.0, 1.0, 3.0, 5.0),
                               sample_scale=3.0, negative_scale=3.0),
  )
  if variant == "smoke":
    config.data.batch_size = 8
    config.model.update(block_out_channels=(16, 16), norm_num_groups=8)
    config.diffusion.num_timesteps = 50
    config.train.num_steps, config.train.warmup_steps = 4, 1
    config.train.log_every, config.train.checkpoint_every = 2, 4
    config.sample.steps, config.sample.num, config.sample.batch_size = 4, 14, 14
    config.eval.num_samples, config.eval.classifier_steps = 14, 10
    config.guidance.scales = (0.0, 3.0)
  elif variant is not None:
    raise ValueError(f"unknown variant {variant!r} of cfg_shapes; expected 'smoke' or none")
  return config
