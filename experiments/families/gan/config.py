"""The config of the ``gan`` family: a DCGAN or a style-based generator, trained adversarially.

Sections: ``model`` (the architecture: ``arch`` 'dcgan' or 'stylegan' and that architecture's
fields), ``gan`` (losses, regularisers, the two Adam optimisers, sampling and the classifier-FID
tracked during training), ``train`` (the loop's cadence), ``sample`` and ``eval``.
"""
from __future__ import annotations

import dataclasses
from typing import Literal

from experiments.config import (Config, ConfigError, DataConfig, LoopConfig, SampleConfig,
                                check_fields, overrides_of)
from jaxgen.nn import StyleGANConfig

__all__ = ["DCGAN_KEYS", "DataConfig", "GANConfig", "GANEvalConfig", "GANSettings", "LoopConfig",
           "SampleConfig", "STYLEGAN_KEYS"]

Norm = Literal["batch", "none"]
# The fields of a DCGAN's two networks a config may set (`jaxgen.nn.dcgan_from_dict`; image
# size and channels come from the data, z_dim is the model section's own).
DCGAN_GENERATOR = {"features": int, "start_size": int, "norm": Norm}
DCGAN_DISCRIMINATOR = {"features": int, "end_size": int, "norm": Norm}
DCGAN_KEYS = ("arch", "discriminator", "generator", "z_dim")
STYLEGAN_KEYS = ("arch",) + tuple(f.name for f in dataclasses.fields(StyleGANConfig))


@dataclasses.dataclass
class GANSettings:
  """What the GAN family trains and samples with (the ``gan`` section)."""
  loss: Literal["minimax", "nonsaturating", "hinge"] = "nonsaturating"
  r1_gamma: float = 0.0            # R1 weight gamma (0: off)
  pl_weight: float = 0.0           # path-length regulariser weight (0: off; stylegan only)
  pl_interval: int = 1             # ... applied every this many steps (`gan.make_gan_step`)
  g_learning_rate: float = 2e-4
  d_learning_rate: float = 2e-4
  beta1: float = 0.5
  beta2: float = 0.999
  truncation_psi: float = 1.0      # of `sample`
  fid_every: int = 0               # classifier-FID of EMA samples during training (0: end only)
  fid_samples: int = 500
  classifier_steps: int = 600      # training steps of the attribute / feature classifier


@dataclasses.dataclass
class GANEvalConfig:
  num_samples: int = 1000          # samples `evaluate` draws
  untrained_baseline: bool = True  # also the FID of an untrained generator's samples


@dataclasses.dataclass
class GANConfig(Config):
  """A GAN: ``model`` holds ``arch`` ('dcgan' | 'stylegan') and that architecture's fields:
  `jaxgen.nn.StyleGANConfig` fields for 'stylegan'; ``z_dim`` and ``generator`` /
  ``discriminator`` dicts of DCGAN fields for 'dcgan'. Image size and channels come from the
  data."""
  name: str = "gan"
  family: str = "gan"
  model: dict = overrides_of(StyleGANConfig, extra={
      "arch": Literal["dcgan", "stylegan"], "generator": dict, "discriminator": dict})
  gan: GANSettings = dataclasses.field(default_factory=GANSettings)
  train: LoopConfig = dataclasses.field(default_factory=LoopConfig)
  sample: SampleConfig = dataclasses.field(default_factory=SampleConfig)
  eval: GANEvalConfig = dataclasses.field(default_factory=GANEvalConfig)

  def validate(self) -> None:
    """The model section's keys are those of its ``arch``; the path-length regulariser needs
    a style-based generator.

    Raises:
      ConfigError: naming the key and listing the allowed ones.
    """
    arch = self.model.get("arch")
    if arch is None:
      raise ConfigError("model.arch is missing: set model.arch='dcgan' or 'stylegan'")
    allowed = DCGAN_KEYS if arch == "dcgan" else STYLEGAN_KEYS
    unknown = sorted(set(self.model) - set(allowed))
    if unknown:
      raise ConfigError(f"model.{unknown[0]} does not apply to model.arch={arch!r}; the allowed "
                        f"keys of model for {arch!r}: {sorted(allowed)}")
    if arch == "dcgan":
      for part, schema in (("generator", DCGAN_GENERATOR),
                           ("discriminator", DCGAN_DISCRIMINATOR)):
        if part in self.model:
          self.model[part] = check_fields(self.model[part], schema, f"model.{part}")
    if self.gan.pl_weight and arch != "stylegan":
      raise ConfigError(f"gan.pl_weight={self.gan.pl_weight} needs model.arch='stylegan' (the "
                        f"path-length regulariser differentiates the synthesis w.r.t. w), got "
                        f"{arch!r}.")
