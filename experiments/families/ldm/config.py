"""The config of the ``ldm`` family: Stable Diffusion in miniature (Rombach et al. 2022).

Three stages, each a run directory of its own family, trained in turn by one ``train``:

  WORKDIR/text_encoder/   the clip family (its text tower is the frozen text encoder)
  WORKDIR/autoencoder/    the autoencoder family with ``model.architecture="kl"``
  WORKDIR/                the text-conditioned U-Net on the autoencoder's latents

``stages`` names the configs the first two are trained from (or trained workdirs to use
instead). Every stage trains without the attribute combinations of
`jaxgen.data.SHAPES_HELD_OUT`, so that prompts naming them test composition.
"""
from __future__ import annotations

import dataclasses
from typing import Literal

from experiments.config import (Config, ConfigError, DataConfig, EvalConfig, TrainConfig,
                                UNetTrainConfig, check_unet_train, overrides_of)
from experiments.families.ddpm.config import DiffusionConfig
from jaxgen.nn import UNet2DConditionConfig

__all__ = ["DataConfig", "DiffusionConfig", "LDMEvalConfig", "LDMExperiment", "LDMSampleConfig",
           "LDMSection", "LDMTrainConfig", "StagesSection"]

SAMPLERS = ("ddim", "ddpm", "dpmpp_2m")


@dataclasses.dataclass
class StagesSection:
  """Where the frozen parts come from.

  Attributes:
    text_encoder: the clip config (``NAME[:variant]`` or a path) trained in
      ``WORKDIR/text_encoder`` when ``text_encoder_workdir`` is None.
    text_encoder_workdir: a trained clip workdir to use instead (trained with
      ``data.held_out=True``).
    autoencoder: the KL autoencoder config trained in ``WORKDIR/autoencoder``.
    autoencoder_workdir: a trained autoencoder workdir (``model.architecture="kl"``,
      ``data.held_out=True``) to use instead.
  """
  text_encoder: str = "clip_shapes"
  text_encoder_workdir: str | None = None
  autoencoder: str = "vae_kl_shapes"
  autoencoder_workdir: str | None = None


@dataclasses.dataclass
class LDMSection:
  """What the U-Net models.

  Attributes:
    space: "latent" (diffusion on the autoencoder's latents) or "pixel" (the same U-Net on
      the images themselves: the comparison the lecture makes; no autoencoder stage).
    prompt_dropout: probability that a training caption is replaced by the empty prompt
      (classifier-free guidance training: the empty prompt is the unconditional model).
    latent_scale: the factor latents are multiplied by; None: 1 / std of the training
      latents (LDM's rescaling, sec. 4.3.2 / appendix G of Rombach et al. 2022).
  """
  space: Literal["latent", "pixel"] = "latent"
  prompt_dropout: float = 0.1
  latent_scale: float | None = None


@dataclasses.dataclass
class LDMTrainConfig(UNetTrainConfig):
  pass


@dataclasses.dataclass
class LDMSampleConfig:
  """Defaults of ``generate`` and of the grid written after training."""
  sampler: Literal["ddim", "ddpm", "dpmpp_2m"] = "ddim"
  steps: int = 50
  guidance: float = 3.0
  num: int = 8                     # images per prompt in the grid written after training
  batch_size: int = 256            # images per compiled sampler call


@dataclasses.dataclass
class LDMEvalConfig(EvalConfig):
  """``evaluate``: prompt following with the attribute classifier, the guidance sweep,
  negative prompting, nearest training images."""
  samples_per_prompt: int = 64
  seen_prompts: int = 20           # training captions scored (drawn with the seed)
  guidance_scales: tuple[float, ...] = (1.0, 3.0, 5.0, 7.5)
  sweep_samples: int = 500         # samples per guidance scale (CLIP score, classifier-FID)
  negative_samples: int = 128      # samples of "a circle" with and without negative "red"
  classifier_features: tuple[int, ...] = (32, 64, 128)  # the judge's conv stages (channels);
  # three stages read the shape of the smallest drawings (two read 74% of real test shapes)


@dataclasses.dataclass
class LDMExperiment(Config):
  """A text-conditioned (latent) diffusion experiment (``family="ldm"``): ``model`` holds
  `jaxgen.nn.UNet2DConditionConfig` fields (sizes and channels follow the stages)."""
  name: str = "ldm"
  family: str = "ldm"
  stages: StagesSection = dataclasses.field(default_factory=StagesSection)
  ldm: LDMSection = dataclasses.field(default_factory=LDMSection)
  model: dict = overrides_of(UNet2DConditionConfig, exclude=(
      "sample_size", "in_channels", "out_channels", "cross_attention_dim"))
  diffusion: DiffusionConfig = dataclasses.field(default_factory=lambda: DiffusionConfig(
      schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False))
  train: LDMTrainConfig = dataclasses.field(default_factory=LDMTrainConfig)
  sample: LDMSampleConfig = dataclasses.field(default_factory=LDMSampleConfig)
  eval: LDMEvalConfig = dataclasses.field(default_factory=LDMEvalConfig)

  def validate(self) -> None:
    check_unet_train(self)
    if self.data.name != "shapes":
      raise ConfigError(f"the ldm family trains on the shapes captions: data.name must be "
                        f"'shapes', got {self.data.name!r}")
    if not self.data.held_out:
      raise ConfigError("data.held_out must be True for the ldm family: its stages train "
                        "without jaxgen.data.SHAPES_HELD_OUT, the prompts of the composition "
                        "test")
    if not 0.0 <= self.ldm.prompt_dropout < 1.0:
      raise ConfigError(f"ldm.prompt_dropout must be in [0, 1), got {self.ldm.prompt_dropout}")
    if self.ldm.latent_scale is not None and not self.ldm.latent_scale > 0:
      raise ConfigError(f"ldm.latent_scale must be positive (or None), got "
                        f"{self.ldm.latent_scale}")
    if self.sample.steps < 1 or self.sample.batch_size < 1:
      raise ConfigError("sample.steps and sample.batch_size must be positive")
    if not self.eval.guidance_scales:
      raise ConfigError("eval.guidance_scales must name at least one scale")
