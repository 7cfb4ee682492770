# python -m experiments.main train --config experiments/configs/ldm_shapes.py --workdir runs/ldm_shapes
"""Stable Diffusion in miniature on 32x32 shapes and their captions (Rombach et al. 2022):
the frozen text tower of a small CLIP (`clip_shapes`, 16 positions x 64 wide), the KL
autoencoder of `vae_kl_shapes` (32x32x3 -> 8x8x4 latents, scaled by 1 / their std), and a
cross-attention U-Net on the latents (two levels of 32 and 64 channels at 8x8 and 4x4,
cross-attention at both and in the middle; 1.08M parameters), trained with 10% prompt dropout for classifier-free guidance. Every stage trains
without the ten held-out attribute combinations (`jaxgen.data.SHAPES_HELD_OUT`).

  python -m experiments.main generate --workdir runs/ldm_shapes --prompt "a large blue square on the left"
  python -m experiments.main evaluate --workdir runs/ldm_shapes

Variant ``pixel``: the same U-Net in pixel space (two more levels, at 32x32 and 16x16, take the
autoencoder's place), for `benchmarks/ldm_latent_vs_pixel.py`.
"""
from experiments.families.ldm.config import (DataConfig, LDMEvalConfig, LDMExperiment,
                                             LDMSampleConfig, LDMSection, LDMTrainConfig,
                                             StagesSection)


def get_config(variant=None):
  config = LDMExperiment(
      name="ldm_shapes", seed=0,
      data=DataConfig(name="shapes", image_size=32, batch_size=64, held_out=True),
      stages=StagesSection(text_encoder="clip_shapes", autoencoder="vae_kl_shapes"),
      ldm=LDMSection(space="latent", prompt_dropout=0.1),
      model=dict(block_out_channels=(32, 64), layers_per_block=1,
                 down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                 attention_head_dim=4, norm_num_groups=8, use_linear_projection=True),
      train=LDMTrainConfig(num_steps=2400, learning_rate=5e-4, warmup_steps=100,
                           lr_decay="cosine", ema_decay=0.999, log_every=100,
                           checkpoint_every=500),
      sample=LDMSampleConfig(sampler="ddim", steps=25, guidance=3.0, num=8),
      eval=LDMEvalConfig(classifier_steps=1500),
  )
  if variant == "pixel":  # the comparison: the same U-Net on the 32x32x3 images, two levels added
    config.name, config.ldm.space = "ldm_shapes_pixel", "pixel"
    config.model.update(block_out_channels=(32, 32, 32, 64),
                        down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D",
                                          "CrossAttnDownBlock2D"),
                        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D",
                                        "UpBlock2D"))
    config.diffusion.clip_sample = True
  elif variant == "smoke":
    config.stages = StagesSection(text_encoder="clip_shapes:smoke",
                                  autoencoder="vae_kl_shapes:smoke")
    config.data.batch_size = 8
    config.model.update(block_out_channels=(16, 16), attention_head_dim=2, norm_num_groups=4)
    config.train.num_steps, config.train.warmup_steps = 4, 1
    config.train.log_every, config.train.checkpoint_every = 2, 2
    config.sample = LDMSampleConfig(steps=3, num=2, batch_size=16)
    config.eval.samples_per_prompt, config.eval.seen_prompts = 2, 2
    config.eval.sweep_samples, config.eval.negative_samples = 8, 4
    config.eval.guidance_scales = (1.0, 3.0)
    config.eval.classifier_steps, config.eval.classifier_features = 5, (8, 16)
  elif variant is not None:
    raise ValueError(f"unknown variant {variant!r} of ldm_shapes; expected 'pixel', 'smoke' or none")
  return config
