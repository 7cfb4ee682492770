# python -m experiments.main train --config experiments/configs/vae_kl_shapes.py --workdir runs/vae_kl_shapes
"""Latent diffusion's KL autoencoder (Rombach et al. 2022, sec. 3; `jaxgen.nn.AutoencoderKL`,
diffusers' layout) on 32x32 shapes: three levels (16, 32, 64 channels, mid-block attention),
32x32x3 -> 8x8x4 latents (f = 4: 3072 values per image become 256), trained as a VAE
with a Gaussian likelihood (sigma = 0.1) and a KL weight of 1e-3 so that the latent keeps the
detail a latent diffusion model needs while staying close to N(0, I) in scale.

The trained parameters export as a diffusers ``vae/`` folder:

  from experiments.families.autoencoder.runner import load_trained
  from jaxgen.interop import save_diffusers_autoencoder_kl
  t = load_trained("runs/vae_kl_shapes")
  save_diffusers_autoencoder_kl("vae", t.model.config.kl_config, t.state.ema_params["kl"])
"""
import math

from experiments.families.autoencoder.config import (AutoencoderExperiment, AutoencoderSection,
                                                   DataConfig, EvalConfig, SampleConfig,
                                                   TrainConfig)


def get_config(variant=None):
  config = AutoencoderExperiment(
      name="vae_kl_shapes", family="autoencoder", seed=0,
      data=DataConfig(name="shapes", image_size=32, batch_size=32),
      model=dict(architecture="kl", block_out_channels=(16, 32, 64), layers_per_block=1,
                 norm_num_groups=8, latent_channels=4, mid_attention=True),
      train=TrainConfig(num_steps=1200, learning_rate=1e-3, warmup_steps=100, lr_decay="cosine",
                        ema_decay=0.999, log_every=50, checkpoint_every=500),
      sample=SampleConfig(num=64),
      eval=EvalConfig(num_samples=1000, classifier_steps=1200),
      autoencoder=AutoencoderSection(kind="vae", likelihood="gaussian",
                                     log_scale=math.log(0.1), beta=1e-3, kl_warmup_steps=0),
  )
  if variant == "smoke":
    config.data.batch_size = 8
    config.model.update(block_out_channels=(8, 8), norm_num_groups=4, mid_attention=True)
    config.train.num_steps, config.train.warmup_steps = 4, 1
    config.train.log_every, config.train.checkpoint_every = 2, 2
    config.sample.num = 16
    config.eval.num_samples, config.eval.classifier_steps = 32, 5
  elif variant is not None:
    raise ValueError(f"unknown variant {variant!r} of vae_kl_shapes; expected 'smoke' or none")
  return config
