# python -m experiments.main train --config experiments/configs/stylegan_shapes.py --workdir runs/stylegan_shapes
"""A small style-based generator (StyleGAN2 structure) on 16x16 `shapes`: non-saturating loss
with R1, Adam(2e-3, 0, 0.99) as StyleGAN2-ADA; about 20 minutes on 2 idle CPU cores (~18
steps/s; 32x32 is about 2.5x slower per step: set data.image_size=32 on a faster machine).

Variant ``regularized``: adds StyleGAN2's path-length regulariser (weight 2, every step) and
style mixing (p = 0.9) and trains 30000 steps (~16 steps/s, ~33 minutes idle). Measured in
docs/gans.md: better-behaved latent directions, worse classifier-FID.

Variant ``late_norm``: ``regularized`` plus an AdaIN-style instance normalisation on the last
block only (W+ layers 4 and 5, ``model.instance_norm=(4, 5)``) and R1 gamma 1.0: the recipe
on which colour edits most often change the colour and keep the position (3 of 13 seeds,
docs/gans.md, "Other recipes"). Same as
``:regularized --set gan.r1_gamma=1.0 --set "model.instance_norm=(4, 5)"``.

Variant ``late_norm_fourier``: ``late_norm`` with StyleGAN3's Fourier-feature input
translated by w (``model.synthesis_input='fourier'``, `jaxgen.nn.stylegan.FourierInput`)
instead of the learned constant: with a constant input, about half of the latents whose
position a colour edit loses hold two objects, the fade between two fixed places that such an
input implies (docs/gans.md, "What an edit also changes").
"""
from experiments.config import apply_override
from experiments.families.gan.config import (DataConfig, GANConfig, GANEvalConfig, GANSettings,
                                             LoopConfig, SampleConfig)

# Each recipe: (the recipe it extends, its own settings in ``--set`` syntax). A recipe is its
# parent's config with these applied, so ``:late_norm`` *is* ``:regularized --set ...``.
VARIANTS = {
    "regularized": (None, ("model.style_mixing_prob=0.9", "gan.pl_weight=2.0",
                           "train.num_steps=30000")),
    "late_norm": ("regularized", ("model.instance_norm=(4, 5)", "gan.r1_gamma=1.0")),
    "late_norm_fourier": ("late_norm", ("model.synthesis_input=fourier",)),
    "smoke": ("regularized", ()),  # then shrunk to toy size in get_config
}


def get_config(variant=None):
  config = GANConfig(
      name="stylegan_shapes",
      seed=0,
      data=DataConfig(name="shapes", image_size=16, batch_size=32),
      model=dict(arch="stylegan", z_dim=64, w_dim=64, mapping_layers=4, channel_base=512,
                 channel_max=64, mapping_lr_multiplier=0.01, w_avg_beta=0.995,
                 mbstd_group_size=4),
      gan=GANSettings(loss="nonsaturating", r1_gamma=0.1, g_learning_rate=2e-3,
                      d_learning_rate=2e-3, beta1=0.0, beta2=0.99, fid_every=1000,
                      fid_samples=500, classifier_steps=800),
      train=LoopConfig(num_steps=20_000, ema_decay=0.999, ema_warmup=True, log_every=100,
                       checkpoint_every=1000, sample_every=2000),
      sample=SampleConfig(num=64),
      eval=GANEvalConfig(num_samples=1000),
  )
  if variant is None:
    return config
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r} of stylegan_shapes; expected one of "
                     f"{sorted(VARIANTS)} or none")
  lineage, name = [], variant
  while name is not None:
    lineage.append(name)
    name = VARIANTS[name][0]
  for name in reversed(lineage):
    for item in VARIANTS[name][1]:
      apply_override(config, item)
  if variant == "smoke":
    config.data.batch_size = 8
    config.data.image_size = 16
    config.model.update(z_dim=8, w_dim=8, mapping_layers=2, channel_base=64, channel_max=8)
    config.train.num_steps = 4
    config.train.log_every, config.train.checkpoint_every, config.train.sample_every = 2, 4, 0
    config.sample.num = 8
    config.eval.num_samples = 16
    config.gan.fid_every, config.gan.fid_samples, config.gan.classifier_steps = 2, 16, 10
  return config
