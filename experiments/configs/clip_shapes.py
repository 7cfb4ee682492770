# python -m experiments.main train --config experiments/configs/clip_shapes.py --workdir runs/clip_shapes
"""A small CLIP on 16x16 `shapes` and their captions ("a small red circle at the top left"):
ViT image tower (4x4 patches) and text transformer, 2 blocks of width 64 each, symmetric InfoNCE
over the global batch, AdamW with warm-up and cosine decay.

  python -m experiments.main evaluate --workdir runs/clip_shapes   # zero-shot and retrieval
"""
from experiments.families.clip.config import (CLIPExperiment, CLIPModelSection,
                                              CLIPTrainConfig, DataConfig)


def get_config(variant=None):
  config = CLIPExperiment(
      name="clip_shapes",
      seed=0,
      data=DataConfig(name="shapes", image_size=16, batch_size=128),
      model=CLIPModelSection(width=64, layers=2, heads=4, patch_size=4, projection_dim=64),
      train=CLIPTrainConfig(num_steps=3000, learning_rate=1e-3, warmup_steps=200,
                            lr_decay="cosine", weight_decay=0.05, ema_decay=0.999,
                            log_every=100, checkpoint_every=1000),
  )
  if variant == "smoke":
    config.data.batch_size = 16
    config.model = CLIPModelSection(width=16, layers=1, heads=2, patch_size=8, projection_dim=8)
    config.train.num_steps, config.train.warmup_steps = 4, 1
    config.train.log_every, config.train.checkpoint_every = 2, 4
    config.eval.num_samples, config.eval.matrix_size = 64, 8
  elif variant is not None:
    raise ValueError(f"unknown variant {variant!r} of clip_shapes; expected 'smoke' or none")
  return config
