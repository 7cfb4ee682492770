# python -m experiments.main train --config experiments/configs/vqgan_shapes.py --workdir runs/vqgan_shapes
"""VQGAN (Esser et al. 2021) on 16x16 shapes at the VQ-VAE's compression (4x4 codes, 64-entry
codebook): MSE pixel loss + PatchGAN hinge loss with the adaptive weight, discriminator from
autoencoder.disc_start. The perceptual term is off in this config: on 16x16 flat-coloured
shapes the classifier feature network (autoencoder.perceptual="classifier") raised the
reconstruction FID from 4.32 to 63.8 (docs/autoencoders.md); LPIPS-VGG16 is
autoencoder.perceptual="vgg16:/path/vgg16.safetensors". The smoke variant keeps the classifier
perceptual term so the tests exercise it. About 15 minutes on 2 busy CPU cores."""
from experiments.families.autoencoder.config import (AutoencoderExperiment, AutoencoderSection,
                                                   DataConfig, EvalConfig, SampleConfig,
                                                   TrainConfig)


def get_config(variant=None):
  config = AutoencoderExperiment(
      name="vqgan_shapes", family="autoencoder", seed=0,
      data=DataConfig(name="shapes", image_size=16, batch_size=64),
      model=dict(block_out_channels=(32, 64, 64), layers_per_block=1, norm_num_groups=8,
                 latent_channels=16),
      train=TrainConfig(num_steps=1200, learning_rate=5e-4, warmup_steps=100, lr_decay="cosine",
                        ema_decay=0.999, log_every=50, checkpoint_every=400),
      sample=SampleConfig(num=64),
      eval=EvalConfig(num_samples=1000, classifier_steps=1200),
      autoencoder=AutoencoderSection(
          kind="vqgan", num_codes=64, vq_beta=0.25, codebook_update="ema", codebook_decay=0.99,
          dead_threshold=1.0, rec_loss="mse",
          disc=dict(base_channels=32, num_layers=2, norm="group"), disc_start=600,
          disc_weight=0.1, disc_learning_rate=5e-4, adam_b1=0.5, adam_b2=0.9,
          perceptual="none", perceptual_weight=1.0, perceptual_classifier_steps=400),
  )
  if variant == "smoke":
    config.data.batch_size = 16
    config.model.update(block_out_channels=(8, 8), norm_num_groups=4, latent_channels=4)
    a = config.autoencoder
    a.num_codes, a.disc, a.disc_start = 8, dict(base_channels=4, num_layers=2), 2
    a.perceptual, a.perceptual_classifier_steps = "classifier", 2
    config.train.num_steps, config.train.warmup_steps = 4, 1
    config.train.log_every, config.train.checkpoint_every = 2, 2
    config.sample.num = 16
    config.eval.num_samples, config.eval.classifier_steps = 32, 5
  elif variant is not None:
    raise ValueError(f"unknown variant {variant!r} of vqgan_shapes; expected 'smoke' or none")
  return config
