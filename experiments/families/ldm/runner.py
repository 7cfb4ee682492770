"""What the ldm family builds from a config (the U-Net, its state and loss, the scheduler
configs, the training inputs) and the trained-workdir loader; ``train`` is in
`experiments.families.ldm.training`.

The U-Net stage trains on precomputed inputs: the autoencoder's posterior (mean and log-variance)
of every training image, from which each step draws a latent (`z = (mean + sigma eps) * scale`,
as LDM samples its first stage), and the text encoder's last hidden state of each caption,
looked up per example, with the empty prompt's in its place with probability
``ldm.prompt_dropout`` (classifier-free guidance training, Ho & Salimans 2022). The loss is
L_simple (Ho et al. 2020) on the scaled latents (Rombach et al. 2022, eq. 2 with the
conditioning of eq. 3).

Keys: ``root = key(seed)``; the U-Net is drawn from ``fold_in(root, 0)``, the train steps from
``fold_in(root, 1)``, the latent statistics from ``seed``; the loader shuffles with ``seed``.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from experiments import workdir as W
from experiments.config import unet_compute_dtype
from experiments.families.clip import data as CD
from experiments.families.ldm import stages as S
from experiments.families.ldm.config import LDMExperiment
from jaxgen import data as jdata
from jaxgen import diffusion as D
from jaxgen.diffusion.losses import example_keys
from jaxgen.diffusion.schedulers import SchedulerConfig
from jaxgen.nn import UNet2DConditionConfig, UNet2DConditionModel
from jaxgen.nn.unet_condition import init_unet_condition
from jaxgen.training import TrainState, make_optimizer

_BETA_SCHEDULES = {"linear": "linear", "scaled_linear": "scaled_linear",
                   "cosine": "squaredcos_cap_v2"}
_SCHEDULER_CLASSES = {"ddim": "DDIMScheduler", "ddpm": "DDPMScheduler",
                      "dpmpp_2m": "DPMSolverMultistepScheduler"}


def scheduler_config(config: LDMExperiment, sampler: str) -> SchedulerConfig:
  """The diffusers scheduler config of the training schedule for `sampler` (ddim, ddpm,
  dpmpp_2m), with Stable Diffusion's settings: leading spacing with steps_offset 1,
  set_alpha_to_one False; ``diffusion.clip_sample`` for DDIM / DDPM."""
  if sampler not in _SCHEDULER_CLASSES:
    raise ValueError(f"unknown sampler {sampler!r}; expected one of {list(_SCHEDULER_CLASSES)}")
  d = config.diffusion
  return SchedulerConfig(_SCHEDULER_CLASSES[sampler], (
      ("num_train_timesteps", d.num_timesteps), ("beta_start", d.beta_start),
      ("beta_end", d.beta_end), ("beta_schedule", _BETA_SCHEDULES[d.schedule]),
      ("prediction_type", d.prediction_type), ("clip_sample", d.clip_sample),
      ("set_alpha_to_one", False), ("steps_offset", 1),
      ("rescale_betas_zero_snr", d.rescale_zero_terminal_snr)))


def schedule(config: LDMExperiment):
  d = config.diffusion
  return D.make_schedule(d.schedule, d.num_timesteps, beta_start=d.beta_start,
                         beta_end=d.beta_end, rescale_zero_terminal_snr=d.rescale_zero_terminal_snr)


def build_model(config: LDMExperiment, input_shape, text_width: int) -> UNet2DConditionModel:
  """The U-Net for inputs [h, w, C] (latents or images) and text embeddings of `text_width`."""
  h, w, c = input_shape
  unet = UNet2DConditionConfig(**config.model, sample_size=h if h == w else (h, w),
                               in_channels=c, out_channels=c, cross_attention_dim=text_width)
  f = 2 ** (len(unet.block_out_channels) - 1)
  if h % f or w % f:
    raise ValueError(f"inputs of {h}x{w} do not halve {len(unet.block_out_channels) - 1} times "
                     f"(model.block_out_channels={unet.block_out_channels})")
  return UNet2DConditionModel(unet, dtype=unet_compute_dtype(config.train),
                              remat_policy=config.train.remat_policy)


def init_state(config: LDMExperiment, model, key) -> TrainState:
  tc = config.train
  tx = make_optimizer(tc.learning_rate, warmup_steps=tc.warmup_steps, total_steps=tc.num_steps,
                      decay=tc.lr_decay, weight_decay=tc.weight_decay, grad_clip=tc.grad_clip)
  return TrainState.create(apply_fn=model.apply, params=init_unet_condition(model, key), tx=tx)


def make_loss_fn(config: LDMExperiment, model, table, scale: float | None):
  """``loss_fn(params, batch, key, offset)``: batch ``image`` is the posterior [B, h, w, 2C]
  (latent space) or the images (pixel space), ``caption`` the caption rows [B]."""
  table = jnp.asarray(table)
  sched, p_drop = schedule(config), config.ldm.prompt_dropout
  pred = config.diffusion.prediction_type

  def loss_fn(params, batch, key, offset):
    post_key, drop_key, noise_key = jax.random.split(key, 3)
    x = batch["image"]
    b = x.shape[0]
    if scale is not None:  # one posterior draw per example, from its global index
      c = x.shape[-1] // 2
      eps = jax.vmap(lambda k: jax.random.normal(k, x.shape[1:-1] + (c,)))(
          example_keys(post_key, b, offset))
      x = (x[..., :c] + jnp.exp(0.5 * x[..., c:]) * eps) * scale
    drop = jax.vmap(lambda k: jax.random.bernoulli(k, p_drop))(example_keys(drop_key, b, offset))
    ctx = table[jnp.where(drop, S.EMPTY, batch["caption"])]
    model_fn = lambda x_t, t: model.apply({"params": params}, x_t, t, ctx)
    losses = D.diffusion_loss(model_fn, sched, x, noise_key, prediction_type=pred,
                              example_offset=offset)
    return jnp.mean(losses), {"prompt_dropped": jnp.mean(drop.astype(jnp.float32))}

  return loss_fn


@dataclasses.dataclass
class Inputs:
  """What the U-Net stage trains on: the source (posteriors or images, and caption rows), the
  input shape the U-Net sees, the latent statistics (None in pixel space)."""
  source: jdata.ArraySource
  input_shape: tuple
  stats: dict | None


def training_inputs(config: LDMExperiment, workdir: str, ae) -> Inputs:
  src = CD.source("train", config.data.image_size, held_out=True)
  if ae is None:
    return Inputs(src, src.image_shape, None)
  arrays = jdata.load_all(src)
  post = S.posteriors(ae, arrays["image"])
  stats = S.latent_stats(workdir, post, config.seed, config.ldm.latent_scale)
  stats["autoencoder_step"] = ae.step
  latents = jdata.ArraySource("shapes_posteriors", "train", post.astype(np.float32),
                              {"caption": arrays["caption"]})
  return Inputs(latents, post.shape[1:-1] + (post.shape[-1] // 2,), stats)


@dataclasses.dataclass
class Trained:
  """A trained ldm workdir: its config, the frozen stages, the U-Net's EMA parameters."""
  config: LDMExperiment
  workdir: str
  text_encoder: S.TextEncoder
  autoencoder: S.FrozenAutoencoder | None
  model: UNet2DConditionModel
  params: dict
  step: int
  stats: dict | None
  input_shape: tuple

  @property
  def image_shape(self) -> tuple:
    return (self.config.data.image_size or 32,) * 2 + (3,)


def load_stages(config: LDMExperiment, workdir: str):
  """(text encoder, autoencoder or None, latent stats or None, the U-Net's input shape)."""
  dirs = S.stage_dirs(config, workdir)
  te = S.load_text_encoder(dirs["text_encoder"])
  ae, stats = None, None
  shape = (config.data.image_size or 32,) * 2 + (3,)
  if dirs["autoencoder"] is not None:
    ae = S.load_autoencoder(dirs["autoencoder"])
    stats = S.latent_stats(workdir, None, config.seed, config.ldm.latent_scale)
    c = ae.module.config.latent_channels
    f = 2 ** (len(ae.module.config.block_out_channels) - 1)
    shape = (shape[0] // f, shape[1] // f, c)
  return te, ae, stats, shape


def load_trained(workdir: str) -> Trained:
  """The newest readable U-Net checkpoint of an ldm workdir with its stages.

  Raises:
    ValueError: the workdir belongs to another family. FileNotFoundError: not trained.
  """
  config = W.load_config(workdir)
  if config.family != "ldm":
    raise ValueError(f"{workdir!r} is a {config.family!r} workdir; this command needs an ldm "
                     "workdir (trained with experiments/configs/ldm_shapes.py)")
  te, ae, stats, shape = load_stages(config, workdir)
  model = build_model(config, shape, te.width)
  state, step = W.restore(workdir, lambda: init_state(config, model, jax.random.key(0)))
  return Trained(config, workdir, te, ae, model, state.ema_params, step, stats, shape)
