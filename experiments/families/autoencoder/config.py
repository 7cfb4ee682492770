"""The config of the ``autoencoder`` family: AE, VAE, beta-VAE sweep, CVAE, VQ-VAE, VQGAN,
and LDM's KL autoencoder (``model.architecture="kl"`` with kind "vae").

``model`` holds `jaxgen.nn.AutoencoderConfig` fields (image size and channels default to the
data's; ``double_latent`` follows ``autoencoder.kind`` and ``num_classes`` the labels of a
CVAE); ``autoencoder`` holds the objective and its choices (`AutoencoderSection`). The checks
across fields (`AutoencoderExperiment.validate`) run when a config is loaded or overridden,
before anything compiles.
"""
from __future__ import annotations

import dataclasses
from typing import Literal

from experiments.config import (Config, ConfigError, DataConfig, EvalConfig, SampleConfig,
                                TrainConfig, check_section, overrides_of)
from jaxgen import vae as V
from jaxgen.nn import AutoencoderConfig, PatchDiscriminatorConfig

__all__ = ["AutoencoderExperiment", "AutoencoderSection", "DataConfig", "EvalConfig",
           "SampleConfig", "TrainConfig"]

Kind = Literal["ae", "vae", "vqvae", "vqgan"]


@dataclasses.dataclass
class AutoencoderSection:
  """What the autoencoder trains on and how.

  Attributes:
    kind: "ae" (MSE), "vae" (negative ELBO), "vqvae" (codebook), "vqgan" (+ PatchGAN).
    conditional: feed the label to encoder and decoder (the CVAE; kind "vae" only).
    likelihood, log_scale: the VAE decoder's likelihood; log sigma of the Gaussian one.
    beta, kl_warmup_steps: KL weight (beta-VAE) and its linear warm-up.
    betas: one run per beta in ``WORKDIR/beta_<b>/`` (a beta sweep); None trains one run.
    num_codes, vq_beta: codebook size and commitment weight (VQ kinds).
    codebook_update, codebook_decay, dead_threshold: EMA codebook or codebook loss; EMA
      decay; EMA use per step below which a code restarts (0: never).
    rec_loss: pixel loss of the VQ kinds; None: "l1" for vqgan (the paper's), "mse" otherwise.
    disc: `jaxgen.nn.PatchDiscriminatorConfig` fields (vqgan).
    disc_start, disc_weight, disc_learning_rate: step the discriminator starts at, weight of
      its term, its learning rate (None: train.learning_rate).
    perceptual: "classifier" (a small classifier trained on the data, cached in
      ``WORKDIR/perceptual_classifier``), "vgg16:PATH" (LPIPS weights) or "none".
    perceptual_weight, perceptual_classifier_steps: its weight; steps of that classifier.
    adam_b1, adam_b2: Adam betas of every optimiser (VQGAN's GAN setting: 0.5 / 0.9).
  """
  kind: Kind = "vae"
  conditional: bool = False
  likelihood: Literal["gaussian", "bernoulli"] = "gaussian"
  log_scale: float = 0.0
  beta: float = 1.0
  kl_warmup_steps: int = 0
  betas: tuple[float, ...] | None = None
  num_codes: int = 64
  vq_beta: float = 0.25
  codebook_update: Literal["ema", "loss"] = "ema"
  codebook_decay: float = 0.99
  dead_threshold: float = 1.0
  rec_loss: Literal["mse", "l1"] | None = None
  disc: dict = overrides_of(PatchDiscriminatorConfig)
  disc_start: int = 0
  disc_weight: float = 0.8
  disc_learning_rate: float | None = None
  perceptual: str = "classifier"
  perceptual_weight: float = 1.0
  perceptual_classifier_steps: int = 400
  adam_b1: float = 0.9
  adam_b2: float = 0.999

  @property
  def pixel_loss(self) -> str:
    """``rec_loss`` with its default filled in."""
    if self.rec_loss is not None:
      return self.rec_loss
    return "l1" if self.kind == "vqgan" else "mse"

  @property
  def quantized(self) -> bool:
    return self.kind in ("vqvae", "vqgan")


@dataclasses.dataclass
class AutoencoderExperiment(Config):
  """An autoencoder experiment (``family="autoencoder"``)."""
  name: str = "autoencoder"
  family: str = "autoencoder"
  model: dict = overrides_of(AutoencoderConfig, exclude=("double_latent", "num_classes"))
  autoencoder: AutoencoderSection = dataclasses.field(default_factory=AutoencoderSection)
  train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
  sample: SampleConfig = dataclasses.field(default_factory=SampleConfig)
  eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)

  def validate(self) -> None:
    """The checks across fields of ``autoencoder`` (raise ValueError naming the field)."""
    a = check_section(self.autoencoder, "autoencoder")  # also a whole `disc` dict set at once
    for name in ("beta", "vq_beta", "disc_weight", "perceptual_weight"):
      V.check_beta(getattr(a, name), f"autoencoder.{name}")
    for b in a.betas or ():
      V.check_beta(b, "every entry of autoencoder.betas")
    if a.betas is not None and not a.betas:
      raise ConfigError("autoencoder.betas=(): give at least one beta, or None for one run")
    if a.quantized and a.num_codes < 1:
      raise ConfigError(f"autoencoder.num_codes (the codebook size) must be a positive int, "
                        f"got {a.num_codes!r}")
    if a.conditional and a.kind != "vae":
      raise ConfigError(f"autoencoder.conditional is supported for kind='vae' (the CVAE), "
                        f"not kind={a.kind!r}")
    if a.betas and a.kind != "vae":
      raise ConfigError(f"autoencoder.betas (a beta sweep) needs kind='vae', not {a.kind!r}")
    arch = self.model.get("architecture", "conv")
    if arch == "kl" and a.kind not in ("ae", "vae"):
      raise ConfigError(f"model.architecture='kl' (AutoencoderKL) trains with kind 'vae' or "
                        f"'ae', not kind={a.kind!r}; VQ kinds use architecture='conv'")
    if arch == "kl" and a.conditional:
      raise ConfigError("model.architecture='kl' is unconditional; a CVAE (autoencoder."
                        "conditional) needs architecture='conv' or 'mlp'")
    p = a.perceptual
    if not (p in ("classifier", "none") or (p.startswith("vgg16:") and len(p) > 6)):
      raise ConfigError(f"autoencoder.perceptual must be 'classifier', 'none' or "
                        f"'vgg16:PATH', got {p!r}")
    if not 0.0 <= a.codebook_decay < 1.0:
      raise ConfigError(f"autoencoder.codebook_decay must be in [0, 1), got {a.codebook_decay}")
