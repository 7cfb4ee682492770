"""The config of the guidance families ``cfg`` and ``classifier_guidance``: a diffusion config
(`experiments.families.ddpm.config`) plus what guidance adds."""
from __future__ import annotations

import dataclasses
from typing import Literal

from experiments.config import overrides_of
from experiments.families.ddpm.config import DDPMConfig
from jaxgen.nn.noisy_classifier import NoisyClassifierConfig


@dataclasses.dataclass
class GuidanceSection:
  """What the model is conditioned on and the guidance scales of `sample` / `evaluate`."""
  # label: the dataset label. shapes_words (shapes only): each training image is conditioned
  # on one "word", its shape (0-2) or its colour (3-6), chosen once per image, which makes
  # "a circle, not red" expressible for negative prompts.
  condition: Literal["label", "shapes_words"] = "label"
  scales: tuple[float, ...] = (0.0, 1.0, 3.0, 5.0)   # the sweep of `evaluate`
  sample_scale: float = 3.0                           # the scale of `sample`
  negative_scale: float = 3.0                         # positive CFG scale g of the negative sweep


@dataclasses.dataclass
class NoisyClassifierSection:
  """The noise-aware classifier p(y | x_t, t) of classifier guidance (Dhariwal & Nichol 2021)."""
  model: dict = overrides_of(NoisyClassifierConfig, exclude=("num_classes",))
  num_steps: int = 2000
  batch_size: int = 128
  learning_rate: float = 1e-3
  warmup_steps: int = 100
  ema_decay: float = 0.999


@dataclasses.dataclass
class GuidanceConfig(DDPMConfig):
  name: str = "cfg"
  family: Literal["cfg", "classifier_guidance"] = "cfg"
  guidance: GuidanceSection = dataclasses.field(default_factory=GuidanceSection)
  noisy_classifier: NoisyClassifierSection = dataclasses.field(
      default_factory=NoisyClassifierSection)

  def validate(self) -> None:
    super().validate()
    if self.guidance.condition == "shapes_words" and self.data.name != "shapes":
      raise ValueError("guidance.condition='shapes_words' needs data.name='shapes'")
    if self.family == "cfg" and self.train.cond_drop_prob <= 0:
      raise ValueError("the cfg family trains for classifier-free guidance: set "
                       "train.cond_drop_prob > 0 (e.g. 0.1) so the model learns the null class")
