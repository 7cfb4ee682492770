"""The frozen stages of the ldm family: the CLIP text encoder and the KL autoencoder.

Each is a run directory of its own family (clip, autoencoder), trained there by that family's
``train`` (so it resumes, checkpoints and stops on SIGTERM as that family does) from the
config ``stages`` names, with ``data.held_out=True``. A trained workdir named in ``stages``
is checked and used as it is.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from experiments import config as C
from experiments import workdir as W
from experiments.families.ldm.config import LDMExperiment
from jaxgen.batching import map_batched

TEXT_ENCODER_DIR, AUTOENCODER_DIR = "text_encoder", "autoencoder"
LATENT_STATS = "latent_stats.json"
EMPTY = 216  # row of the empty prompt in `caption_embeddings` (after the 216 captions)


def stage_dirs(config: LDMExperiment, workdir: str) -> dict[str, str | None]:
  """{"text_encoder": dir, "autoencoder": dir or None (pixel space)}."""
  s = config.stages
  out = {"text_encoder": s.text_encoder_workdir or os.path.join(workdir, TEXT_ENCODER_DIR),
         "autoencoder": None}
  if config.ldm.space == "latent":
    out["autoencoder"] = s.autoencoder_workdir or os.path.join(workdir, AUTOENCODER_DIR)
  return out


def stage_config(spec: str, family: str, what: str, image_size: int | None):
  """The config of a stage: ``spec`` loaded with ``data.held_out=True``; it must be of
  `family` (and train on ``shapes`` images of the ldm's size, for the autoencoder)."""
  config = C.load_config(spec, ["data.held_out=True"])
  if config.family != family:
    raise C.ConfigError(f"stages.{what}={spec!r} is a {config.family!r} config; the {what} "
                        f"stage needs a {family!r} config")
  _check_stage(config, family, what, image_size, spec)
  return config


def _check_stage(config, family: str, what: str, image_size, where: str) -> None:
  if config.family != family:
    raise ValueError(f"{where} is a {config.family!r} run; stages.{what} needs a {family!r} "
                     "one")
  if not config.data.held_out:
    raise ValueError(f"{where} was trained on every shapes combination (data.held_out is "
                     "False), so the held-out prompts would not test composition; train it with "
                     "--set data.held_out=True")
  if family == "autoencoder":
    if config.model.get("architecture") != "kl" or config.autoencoder.kind != "vae":
      raise ValueError(f"{where}: the autoencoder stage needs model.architecture='kl' with "
                       "autoencoder.kind='vae' (LDM's KL autoencoder)")
    if (config.data.image_size or 32) != (image_size or 32):
      raise ValueError(f"{where} trains on {config.data.image_size}px images, the ldm config "
                       f"on {image_size}px")


def check_stage_workdir(workdir: str, family: str, what: str, image_size) -> None:
  """A trained workdir named in ``stages``: of the right family, trained with held_out."""
  _check_stage(W.load_config(workdir), family, what, image_size, workdir)


def train_stages(config: LDMExperiment, workdir: str) -> dict:
  """Trains (or resumes, or checks) the text encoder and the autoencoder.

  Returns:
    {stage: summary (step, loss, terminated, resumed_from) or "given"}; a stage that SIGTERM
    stopped has ``terminated`` True and the later stages are not started.
  """
  from experiments.families import get_family  # pylint: disable=import-outside-toplevel
  dirs, s = stage_dirs(config, workdir), config.stages
  plan = [("text_encoder", "clip", s.text_encoder, s.text_encoder_workdir)]
  if dirs["autoencoder"] is not None:
    plan.append(("autoencoder", "autoencoder", s.autoencoder, s.autoencoder_workdir))
  out = {}
  for what, family, spec, given in plan:
    if given is not None:
      check_stage_workdir(given, family, what, config.data.image_size)
      out[what] = "given"
      continue
    stage = stage_config(spec, family, what, config.data.image_size)
    summary = get_family(family).train(stage, dirs[what])
    summary.pop("state", None)
    out[what] = summary
    if summary.get("terminated"):
      break
  return out


# --------------------------------------------------------------------- the text encoder


@dataclasses.dataclass(frozen=True, eq=False)
class TextEncoder:
  """The frozen text tower of a clip workdir.

  Attributes:
    tokenizer: `jaxgen.text.CLIPTokenizer` with ``model_max_length`` the tower's positions.
    model: `jaxgen.nn.CLIPTextModel`; params its EMA parameters.
    clip: the whole trained clip (`experiments.families.clip.runner.Trained`: CLIP score).
  """
  tokenizer: object
  model: object
  params: dict
  clip: object

  @property
  def width(self) -> int:
    return self.model.config.hidden_size

  @property
  def length(self) -> int:
    return self.model.config.max_position_embeddings


def load_text_encoder(workdir: str) -> TextEncoder:
  from experiments.families.clip import data as CD  # pylint: disable=import-outside-toplevel
  from experiments.families.clip.runner import load_trained  # pylint: disable=C0415
  from jaxgen.nn import CLIPTextModel  # pylint: disable=import-outside-toplevel
  t = load_trained(workdir)
  tok = CD.tokenizer(workdir, t.config.model.vocab_size, CD.caption_table()[0])
  text_config = t.model.config.text_config
  tok.model_max_length = text_config.max_position_embeddings
  return TextEncoder(tok, CLIPTextModel(text_config), t.params["text_model"], t)


@functools.partial(jax.jit, static_argnums=0)
def _hidden(model, params, ids):
  return model.apply({"params": params}, ids)[0]


def caption_embeddings(te: TextEncoder) -> np.ndarray:
  """float32 [217, L, D]: the text encoder's last hidden state for every shapes caption (in
  the clip family's caption order) and, in row `EMPTY`, for the empty prompt."""
  from experiments.families.clip import data as CD  # pylint: disable=import-outside-toplevel
  texts = CD.caption_table()[0] + [""]
  return np.asarray(_hidden(te.model, te.params, jnp.asarray(te.tokenizer(texts))))


# --------------------------------------------------------------------- the autoencoder


@dataclasses.dataclass(frozen=True, eq=False)
class FrozenAutoencoder:
  """The KL autoencoder of an autoencoder workdir: ``module`` an `AutoencoderKL` (scaling
  factor 1), ``params`` its EMA parameters, ``step`` its checkpoint's step."""
  module: object
  params: dict
  step: int


def load_autoencoder(workdir: str) -> FrozenAutoencoder:
  from experiments.families.autoencoder.runner import load_trained  # pylint: disable=C0415
  from jaxgen.nn.autoencoder_kl import AutoencoderKL  # pylint: disable=import-outside-toplevel
  t = load_trained(workdir)
  return FrozenAutoencoder(AutoencoderKL(t.model.config.kl_config), t.state.ema_params["kl"],
                           t.step)


@functools.partial(jax.jit, static_argnums=0)
def _encode(module, params, x):
  mean, logvar = module.apply({"params": params}, x, method="encode")
  return jnp.concatenate([mean, logvar], axis=-1)


def posteriors(ae: FrozenAutoencoder, images) -> np.ndarray:
  """float32 [N, h, w, 2C]: the posterior's mean and log-variance (concatenated on channels) of
  images [N, H, W, 3] in [-1, 1]."""
  return map_batched(lambda x: _encode(ae.module, ae.params, x), images, batch_size=250)


def latent_stats(workdir: str, posterior: np.ndarray, seed: int, scale: float | None) -> dict:
  """LDM's rescaling: ``scale = 1 / std`` of latents drawn from the training posteriors (one
  draw each, key ``seed``), computed once and kept in ``WORKDIR/latent_stats.json`` so that a
  resumed run and every sample use the same factor; a config's ``ldm.latent_scale`` wins."""
  path = os.path.join(workdir, LATENT_STATS)
  if posterior is None and not os.path.isfile(path):
    raise FileNotFoundError(f"{workdir!r} has no {LATENT_STATS} (written when the U-Net stage "
                            "starts); train the workdir first")
  if os.path.isfile(path):
    with open(path, encoding="utf-8") as f:
      stats = json.load(f)
  else:
    c = posterior.shape[-1] // 2
    mean, logvar = posterior[..., :c], posterior[..., c:]
    noise = np.asarray(jax.random.normal(jax.random.key(seed), mean.shape, jnp.float32))
    z = mean + np.exp(0.5 * logvar) * noise
    stats = {"std": float(z.std()), "mean": float(z.mean()),
             "channel_mean": [float(v) for v in z.mean(axis=(0, 1, 2))],
             "channel_std": [float(v) for v in z.std(axis=(0, 1, 2))],
             "posterior_sigma_mean": float(np.exp(0.5 * logvar).mean()),
             "num_images": int(len(z))}
    stats["scale_from_std"] = 1.0 / stats["std"]
    W.write_json(path, stats)
  stats["scale"] = float(scale) if scale is not None else stats["scale_from_std"]
  return stats
