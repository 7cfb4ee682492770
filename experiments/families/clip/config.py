"""The config of the clip family: a small CLIP (Radford et al. 2021) trained from scratch on
the `shapes` captions."""
from __future__ import annotations

import dataclasses
from typing import Literal

from experiments.config import Config, DataConfig, EvalConfig, TrainConfig

__all__ = ["CLIPExperiment", "CLIPModelSection", "CLIPTrainConfig", "DataConfig",
           "EvalConfig"]


@dataclasses.dataclass
class CLIPModelSection:
  """The two towers (`jaxgen.nn.CLIPConfig`); image size and channels come from the data."""
  width: int = 64                  # hidden size of both towers
  layers: int = 2                  # transformer blocks per tower
  heads: int = 4
  mlp_ratio: int = 4
  patch_size: int = 4
  projection_dim: int = 64
  hidden_act: Literal["quick_gelu", "gelu"] = "quick_gelu"
  max_length: int = 16             # text positions (the captions need 9 tokens + bos/eos)
  vocab_size: int = 600            # of the BPE trained on the captions (>= 514: bytes + specials)
  logit_scale_init: float = 2.6592  # log(1 / 0.07), CLIP's initial temperature


@dataclasses.dataclass
class CLIPTrainConfig(TrainConfig):
  loss: Literal["clip", "siglip"] = "clip"   # InfoNCE, or SigLIP's sigmoid loss


@dataclasses.dataclass
class CLIPEvalConfig(EvalConfig):
  num_samples: int = 2000          # test images scored
  matrix_size: int = 16            # images x captions in the similarity PNG


@dataclasses.dataclass
class CLIPExperiment(Config):
  name: str = "clip"
  family: str = "clip"
  model: CLIPModelSection = dataclasses.field(default_factory=CLIPModelSection)
  train: CLIPTrainConfig = dataclasses.field(default_factory=CLIPTrainConfig)
  eval: CLIPEvalConfig = dataclasses.field(default_factory=CLIPEvalConfig)

  def validate(self) -> None:
    if self.data.name != "shapes":
      raise ValueError(f"the clip family trains on the shapes captions: data.name must be "
                       f"'shapes', got {self.data.name!r}")
    m = self.model
    if m.width % m.heads:
      raise ValueError(f"model.width={m.width} must be a multiple of model.heads={m.heads}")
