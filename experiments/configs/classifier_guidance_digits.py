# python -m experiments.main train --config experiments/configs/classifier_guidance_digits.py --workdir runs/cg_digits
"""Classifier guidance (Dhariwal & Nichol 2021) on the 8x8 digits: an unconditional DDPM plus a
noise-aware classifier p(y | x_t, t) (the U-Net's encoder half), sampled with ancestral DDPM
and Algorithm 1's mean shift. About 15 minutes on 2 CPU cores. Then

  python -m experiments.main sweep --workdir runs/cg_digits --scales 0,1,2,4,8 --guidance classifier
"""
from experiments.families.ddpm.config import (DataConfig, DiffusionConfig, DiffusionEvalConfig,
                                             DiffusionSampleConfig, DiffusionTrainConfig)
from experiments.families.guidance.config import (GuidanceConfig, GuidanceSection,
                                                 NoisyClassifierSection)


def get_config(variant=None):
  config = GuidanceConfig(
      name="classifier_guidance_digits",
      family="classifier_guidance",
      seed=0,
      data=DataConfig(name="digits", image_size=None, batch_size=64),
      model=dict(block_out_channels=(32, 64), layers_per_block=2,
                 down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                 up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                 attention_head_dim=None, norm_num_groups=8, norm_eps=1e-6, dropout=0.0,
                 freq_shift=1, flip_sin_to_cos=False, downsample_padding=0),
      diffusion=DiffusionConfig(schedule="linear", num_timesteps=1000, clip_sample=True),
      train=DiffusionTrainConfig(num_steps=6000, learning_rate=1e-3, warmup_steps=200, lr_decay="cosine",
                        ema_decay=0.999, cond_drop_prob=0.0, log_every=100,
                        checkpoint_every=1000, sample_every=0),
      sample=DiffusionSampleConfig(sampler="ddpm", steps=100, num=100, batch_size=500),
      eval=DiffusionEvalConfig(num_samples=1000, classifier_steps=600, bpd_examples=0),
      guidance=GuidanceSection(scales=(0.0, 1.0, 2.0, 4.0, 8.0), sample_scale=4.0),
      noisy_classifier=NoisyClassifierSection(
          model=dict(block_out_channels=(32, 64), layers_per_block=1,
                     down_block_types=("DownBlock2D", "AttnDownBlock2D")),
          num_steps=2000, batch_size=128, learning_rate=1e-3),
  )
  if variant == "smoke":
    config.data.batch_size = 16
    config.model.update(block_out_channels=(16, 16), layers_per_block=1, norm_num_groups=8)
    config.diffusion.num_timesteps = 50
    config.train.num_steps, config.train.warmup_steps = 4, 1
    config.train.log_every, config.train.checkpoint_every = 2, 4
    config.sample.steps, config.sample.num, config.sample.batch_size = 5, 10, 20
    config.eval.num_samples, config.eval.classifier_steps = 20, 20
    config.guidance.scales = (0.0, 3.0)
    config.noisy_classifier = NoisyClassifierSection(
        model=dict(block_out_channels=(16, 16), layers_per_block=1,
                   down_block_types=("DownBlock2D", "DownBlock2D"), mid_block=False),
        num_steps=4, batch_size=16, warmup_steps=1)
  elif variant is not None:
    raise ValueError(f"unknown variant {variant!r} of classifier_guidance_digits; expected "
                     "'smoke' or none")
  return config
