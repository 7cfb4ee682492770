"""The config of the ``ddpm`` family (and the sections the guidance families extend)."""
from __future__ import annotations

import dataclasses
from typing import Literal

from experiments.config import (Config, DataConfig, EvalConfig, SampleConfig, UNetTrainConfig,
                                check_unet_train, overrides_of)
from jaxgen.nn import UNetConfig

__all__ = ["DDPMConfig", "DataConfig", "DiffusionConfig", "DiffusionEvalConfig",
           "DiffusionSampleConfig", "DiffusionTrainConfig"]


@dataclasses.dataclass
class DiffusionConfig:
  """The noise schedule and the parameterisation (`jaxgen.diffusion.make_schedule`)."""
  schedule: str = "linear"         # linear | scaled_linear | cosine (= squaredcos_cap_v2)
  num_timesteps: int = 1000
  beta_start: float = 1e-4
  beta_end: float = 0.02
  rescale_zero_terminal_snr: bool = False
  prediction_type: Literal["epsilon", "sample", "v_prediction"] = "epsilon"
  variance_type: Literal["fixed_small", "fixed_large"] = "fixed_small"
  clip_sample: bool = True


@dataclasses.dataclass
class DiffusionTrainConfig(UNetTrainConfig):
  cond_drop_prob: float = 0.0      # > 0: classifier-free guidance training (a null class)


@dataclasses.dataclass
class DiffusionSampleConfig(SampleConfig):
  sampler: Literal["ddpm", "ddim"] = "ddim"
  steps: int = 50
  spacing: Literal["leading", "trailing", "linspace"] = "leading"
  eta: float = 0.0
  batch_size: int = 500            # images per compiled sampler call


@dataclasses.dataclass
class DiffusionEvalConfig(EvalConfig):
  bpd_examples: int = 64           # test images for the variational bound (0: skip)
  untrained_baseline: bool = True  # also the FID of an untrained model's samples


@dataclasses.dataclass
class DDPMConfig(Config):
  """A pixel-space diffusion model: ``model`` holds `jaxgen.nn.UNetConfig` fields (channels
  and sample size default to the data's)."""
  name: str = "ddpm"
  family: str = "ddpm"
  model: dict = overrides_of(UNetConfig)
  diffusion: DiffusionConfig = dataclasses.field(default_factory=DiffusionConfig)
  train: DiffusionTrainConfig = dataclasses.field(default_factory=DiffusionTrainConfig)
  sample: DiffusionSampleConfig = dataclasses.field(default_factory=DiffusionSampleConfig)
  eval: DiffusionEvalConfig = dataclasses.field(default_factory=DiffusionEvalConfig)

  def validate(self) -> None:
    check_unet_train(self)
