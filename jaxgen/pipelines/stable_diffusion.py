"""Stable Diffusion text-to-image and image-to-image (Rombach et al. 2022) on diffusers folders.

A diffusers `StableDiffusionPipeline` folder (`model_index.json`, `tokenizer/`,
`text_encoder/`, `unet/`, `vae/`, `scheduler/`; safetensors only) loads into a
`StableDiffusionPipeline`: the CLIP tokenizer and text encoder, the cross-attention U-Net,
the KL autoencoder and a scheduler config. Sampling follows diffusers' pipeline step for
step, so that the same initial latents give the same images:

  1. prompts -> ids [B, 77] (truncated as CLIPTokenizer does, with a warning) -> the text
     encoder's last hidden state [B, 77, D]; the unconditional embedding is that of the empty
     prompt, or of the negative prompts, which replace it;
  2. latents [B, H/8, W/8, 4] (NHWC) times the scheduler's init_noise_sigma;
  3. classifier-free guidance (Ho & Salimans 2022) as one batched U-Net call on
     [uncond; cond], `e_u + g (e_c - e_u)`, inside the scheduler's sampler, one `lax.scan`;
  4. the VAE decodes `latents / scaling_factor (+ shift_factor)`; images `(x + 1) / 2`
     clipped to [0, 1].
The denoising loop is one jitted function per (shape, steps, scheduler): the guidance scale
is an array argument, so every scale shares one compile.

img2img is SDEdit (Meng et al. 2022): the image's posterior latent is noised to the timestep
that `strength` selects and denoised from there.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import warnings
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.diffusion.guidance import cfg
from jaxgen.diffusion.schedulers import (SUPPORTED_SCHEDULERS, SchedulerConfig,
                                         load_scheduler_config, scheduler_sample)

COMPONENTS = {  # folder -> accepted class names in model_index.json
    "tokenizer": ("CLIPTokenizer", "CLIPTokenizerFast"),
    "text_encoder": ("CLIPTextModel",),
    "unet": ("UNet2DConditionModel",),
    "vae": ("AutoencoderKL",),
    "scheduler": SUPPORTED_SCHEDULERS,
}
PIPELINE_CLASSES = ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline")


@dataclasses.dataclass(frozen=True, eq=False)
class StableDiffusionPipeline:
  """The loaded components of a Stable Diffusion pipeline.

  Attributes:
    tokenizer: `jaxgen.text.CLIPTokenizer`.
    text_encoder: `jaxgen.nn.CLIPTextModel`.
    unet: `jaxgen.nn.unet_condition.UNet2DConditionModel`.
    vae: `jaxgen.nn.autoencoder_kl.AutoencoderKL`.
    scheduler: the `SchedulerConfig` sampling uses.
    params: {"text_encoder", "unet", "vae"} parameter trees.
    folder: where it was loaded from (None when built in memory).
  """
  tokenizer: Any
  text_encoder: Any
  unet: Any
  vae: Any
  scheduler: SchedulerConfig
  params: dict
  folder: str | None = None

  @property
  def vae_scale_factor(self) -> int:
    """Image pixels per latent pixel: 2 ** (VAE levels - 1) (8 for Stable Diffusion)."""
    return 2 ** (len(self.vae.config.block_out_channels) - 1)

  @property
  def default_size(self) -> tuple[int, int]:
    """(H, W) of the images when none is asked for: the U-Net's sample_size times the factor."""
    s = self.unet.config.sample_size or 64
    h, w = (s, s) if isinstance(s, int) else tuple(s)
    return h * self.vae_scale_factor, w * self.vae_scale_factor

  def with_scheduler(self, scheduler: str | SchedulerConfig) -> StableDiffusionPipeline:
    """The same pipeline sampling with another scheduler: a class name (the current config's
    betas with that class's defaults, as diffusers' `from_config`) or a `SchedulerConfig`."""
    return dataclasses.replace(self, scheduler=_pick_scheduler(self.scheduler, scheduler))


def _pick_scheduler(current: SchedulerConfig, scheduler) -> SchedulerConfig:
  if scheduler is None:
    return current
  if isinstance(scheduler, SchedulerConfig):
    return scheduler
  if isinstance(scheduler, str):
    if scheduler not in SUPPORTED_SCHEDULERS:
      raise ValueError(f"unsupported scheduler {scheduler!r}; supported: "
                       f"{list(SUPPORTED_SCHEDULERS)}")
    return current.with_class(scheduler)
  raise TypeError(f"scheduler must be a class name or a SchedulerConfig, got "
                  f"{type(scheduler).__name__}")


def _read_index(folder: str) -> dict:
  file = os.path.join(folder, "model_index.json")
  if not os.path.isfile(file):
    raise FileNotFoundError(f"no model_index.json in {folder!r}; expected a diffusers "
                            "StableDiffusionPipeline folder (model_index.json, tokenizer/, "
                            "text_encoder/, unet/, vae/, scheduler/)")
  try:
    with open(file, encoding="utf-8") as f:
      index = json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f"could not parse {file!r} as JSON: {e}") from None
  name = index.get("_class_name")
  if name not in PIPELINE_CLASSES:
    raise ValueError(f"{file}: _class_name={name!r}; jaxgen loads {list(PIPELINE_CLASSES)} "
                     "folders (SD 1.x / 2.x)")
  for comp, accepted in COMPONENTS.items():
    entry = index.get(comp)
    if not isinstance(entry, (list, tuple)) or len(entry) != 2 or entry[1] is None:
      raise ValueError(f"{file}: the pipeline has no {comp} (entry {entry!r}); Stable Diffusion "
                       f"needs {list(COMPONENTS)}")
    if entry[1] not in accepted:
      raise ValueError(f"{file}: {comp} is a {entry[1]!r}; supported: {list(accepted)}")
    if not os.path.isdir(os.path.join(folder, comp)):
      raise FileNotFoundError(f"the pipeline folder {folder!r} has no {comp}/ folder "
                              f"(model_index.json lists {entry[1]})")
  return index


def _check_weights(folder: str, comp: str, stem: str) -> None:
  """Refuses a component stored only as pickle before any loader reads anything."""
  sub = os.path.join(folder, comp)
  names = os.listdir(sub)
  if any(n.startswith(stem) and n.endswith(".safetensors") or
         n.startswith(stem) and n.endswith(".safetensors.index.json") for n in names):
    return
  pickles = [n for n in names if n.endswith((".bin", ".ckpt", ".pt", ".pth"))]
  hint = (f" It holds {pickles}: pickle checkpoints, which jaxgen never unpickles; convert "
          "them with diffusers/transformers `save_pretrained(..., safe_serialization=True)`."
          if pickles else f" It holds {sorted(names)}.")
  raise FileNotFoundError(f"the {comp} of {folder!r} has no {stem}*.safetensors weights."
                          + hint)


def load_stable_diffusion(folder: str | os.PathLike, *, scheduler: str | SchedulerConfig |
                          None = None, dtype: Any = jnp.float32) -> StableDiffusionPipeline:
  """Loads a diffusers Stable Diffusion pipeline folder (safetensors only, no network).

  Args:
    folder: the pipeline folder (`model_index.json`, `tokenizer/`, `text_encoder/`, `unet/`,
      `vae/`, `scheduler/`). `safety_checker` / `feature_extractor` entries are not loaded.
    scheduler: None (the folder's scheduler), a class name of `SUPPORTED_SCHEDULERS` (the
      folder's betas with that sampler), or a `SchedulerConfig`.
    dtype: computation dtype of the networks (parameters stay float32).

  Returns:
    The `StableDiffusionPipeline`.

  Raises:
    FileNotFoundError: a missing folder, component or weights (also when only a pickle
      `.bin` exists: it names the component and asks for safetensors).
    ValueError: an unsupported pipeline, component or scheduler class (listing the supported
      ones), unreadable configs or weights.
  """
  from jaxgen.interop.clip import load_clip_text_model
  from jaxgen.interop.diffusers_autoencoder_kl import load_diffusers_autoencoder_kl
  from jaxgen.interop.diffusers_unet2d_condition import load_diffusers_unet2d_condition
  from jaxgen.text import load_clip_tokenizer
  folder = os.fspath(folder)
  if not os.path.isdir(folder):
    raise FileNotFoundError(f"{folder!r} is not a directory; expected a diffusers "
                            "StableDiffusionPipeline folder")
  _read_index(folder)
  for comp, stem in (("text_encoder", "model"), ("unet", "diffusion_pytorch_model"),
                     ("vae", "diffusion_pytorch_model")):
    _check_weights(folder, comp, stem)
  sched = _pick_scheduler(load_scheduler_config(os.path.join(folder, "scheduler")), scheduler)
  tokenizer = load_clip_tokenizer(os.path.join(folder, "tokenizer"))
  text_encoder, te_params = load_clip_text_model(os.path.join(folder, "text_encoder"),
                                                 dtype=dtype)
  unet, unet_params = load_diffusers_unet2d_condition(os.path.join(folder, "unet"), dtype=dtype)
  vae, vae_params = load_diffusers_autoencoder_kl(os.path.join(folder, "vae"), dtype=dtype)
  width = text_encoder.config.hidden_size
  if unet.config.cross_attention_dim not in (width, (width,) * len(unet.config.block_out_channels)):
    raise ValueError(f"{folder}: the text encoder's hidden_size {width} differs from the "
                     f"U-Net's cross_attention_dim {unet.config.cross_attention_dim}")
  if vae.config.latent_channels != unet.config.in_channels:
    raise ValueError(f"{folder}: the VAE has {vae.config.latent_channels} latent channels but "
                     f"the U-Net takes {unet.config.in_channels}")
  return StableDiffusionPipeline(
      tokenizer=tokenizer, text_encoder=text_encoder, unet=unet, vae=vae, scheduler=sched,
      params={"text_encoder": te_params, "unet": unet_params, "vae": vae_params},
      folder=folder)


def _prompt_list(prompts, name: str, batch: int | None = None) -> list[str]:
  if isinstance(prompts, str):
    prompts = [prompts] * (batch or 1)
  if not isinstance(prompts, (list, tuple)) or not prompts:
    raise ValueError(f"{name} must be a non-empty list of strings (or one string), got "
                     f"{prompts!r}")
  if not all(isinstance(p, str) for p in prompts):
    raise TypeError(f"{name} must hold strings, got {[type(p).__name__ for p in prompts]}")
  if batch is not None and len(prompts) != batch:
    raise ValueError(f"{name} has {len(prompts)} entries but there are {batch} prompts; give "
                     "one per prompt (or one string for all)")
  return list(prompts)


def _guidance(scale) -> float:
  if isinstance(scale, bool) or not isinstance(scale, (int, float, np.integer, np.floating)):
    raise TypeError(f"guidance_scale must be a number (e.g. 7.5), got {scale!r}")
  if not np.isfinite(scale):
    raise ValueError(f"guidance_scale must be finite, got {scale}")
  return float(scale)


def _steps(n) -> int:
  if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
    raise ValueError(f"num_inference_steps must be a positive int, got {n!r}")
  return int(n)


def tokenize(pipe: StableDiffusionPipeline, prompts: Sequence[str]) -> np.ndarray:
  """Ids [B, model_max_length]; a prompt longer than that is truncated (as transformers'
  CLIPTokenizer with `truncation=True`) and the dropped words are named in a warning."""
  tok = pipe.tokenizer
  keep = tok.model_max_length - 2
  for p, ids in zip(prompts, tok.tokenize(prompts)):
    if len(ids) > keep:
      warnings.warn(f"prompt truncated to CLIP's {tok.model_max_length} tokens; dropped: "
                    f"{tok.decode(ids[keep:])!r} (from {p[:40]!r}...)", stacklevel=3)
  return tok(prompts)


@functools.partial(jax.jit, static_argnums=0)
def _encode_text(model, params, ids):
  return model.apply({"params": params}, ids)[0]


def encode_prompts(pipe: StableDiffusionPipeline, prompts: Sequence[str],
                   negative_prompts: Sequence[str] | str | None = None):
  """(cond, uncond) text embeddings [B, L, D]: the prompts', and the negative prompts' (the
  empty prompt's when None), in one text-encoder call."""
  prompts = _prompt_list(prompts, "prompts")
  neg = [""] * len(prompts) if negative_prompts is None else _prompt_list(
      negative_prompts, "negative_prompts", len(prompts))
  ids = tokenize(pipe, prompts + neg)
  emb = _encode_text(pipe.text_encoder, pipe.params["text_encoder"], jnp.asarray(ids))
  b = len(prompts)
  return emb[:b], emb[b:]


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _denoise(unet, scheduler, steps, start, unet_params, cond, uncond, latents, scale, key, eta):
  def model_fn(x, t, c):
    return unet.apply({"params": unet_params}, x, t, c)
  denoise_fn = cfg(model_fn, cond, uncond, scale)
  return scheduler_sample(scheduler, denoise_fn, latents, key, steps, start=start, eta=eta)


@functools.partial(jax.jit, static_argnums=0)
def _decode(vae, params, latents):
  cfg_ = vae.config
  z = latents / cfg_.scaling_factor
  if getattr(cfg_, "shift_factor", None) is not None:
    z = z + cfg_.shift_factor
  images = vae.apply({"params": params}, z, method="decode")
  return jnp.clip(images / 2 + 0.5, 0.0, 1.0)


@functools.partial(jax.jit, static_argnums=0)
def _encode_image(vae, params, images, noise):
  mean, logvar = vae.apply({"params": params}, images * 2.0 - 1.0, method="encode")
  z = mean + jnp.exp(0.5 * logvar) * noise
  cfg_ = vae.config
  if getattr(cfg_, "shift_factor", None) is not None:
    z = z - cfg_.shift_factor
  return z * cfg_.scaling_factor


def guided_sample(unet, unet_params, scheduler: SchedulerConfig, cond, uncond, x_T, key, *,
                  num_inference_steps: int, guidance_scale: float, start: int = 0,
                  eta: float = 0.0) -> jax.Array:
  """The denoising loop of `txt2img` / `img2img` on its own: any cross-attention U-Net, in
  latent or pixel space.

  Args:
    unet, unet_params: `UNet2DConditionModel` and its parameters.
    scheduler: the sampler's `SchedulerConfig`.
    cond, uncond: text embeddings [B, L, D] (the prompts', the empty or negative prompts').
    x_T: the starting sample [B, h, w, C] (noise times ``init_noise_sigma``).
    key: PRNG key (DDPM noise, DDIM eta).
    num_inference_steps, guidance_scale, eta: as `txt2img`; start: first table entry run.

  Returns:
    The denoised samples [B, h, w, C]; one compile per (shapes, steps, scheduler).
  """
  return _denoise(unet, scheduler, _steps(num_inference_steps), start, unet_params, cond,
                  uncond, x_T, jnp.float32(_guidance(guidance_scale)), key, jnp.float32(eta))


def decode_latents(pipe: StableDiffusionPipeline, latents) -> jax.Array:
  """Images [B, H, W, 3] in [0, 1] from scaled latents [B, h, w, C] (the VAE's
  ``scaling_factor`` and ``shift_factor`` undone, as the pipelines do)."""
  return _decode(pipe.vae, pipe.params["vae"], jnp.asarray(latents, jnp.float32))


def _latent_shape(pipe, batch, height, width):
  dh, dw = pipe.default_size
  h, w = height or dh, width or dw
  f = pipe.vae_scale_factor * 2 ** (len(pipe.unet.config.block_out_channels) - 1)
  if h % f or w % f:
    raise ValueError(f"height and width must be multiples of {f} (VAE factor "
                     f"{pipe.vae_scale_factor} x U-Net downsampling), got {h} x {w}")
  return (batch, h // pipe.vae_scale_factor, w // pipe.vae_scale_factor,
          pipe.unet.config.in_channels)


def txt2img(pipe: StableDiffusionPipeline, prompts: Sequence[str], key: jax.Array, *,
            num_inference_steps: int = 50, guidance_scale: float = 7.5,
            negative_prompts: Sequence[str] | str | None = None, latents=None,
            height: int | None = None, width: int | None = None, eta: float = 0.0) -> jax.Array:
  """Text to image: `StableDiffusionPipeline(prompts, ..., output_type="np")` in JAX.

  Args:
    pipe: the loaded pipeline.
    prompts: B prompts.
    key: PRNG key (initial latents when `latents` is None; DDIM eta / DDPM noise).
    num_inference_steps: sampler steps.
    guidance_scale: classifier-free guidance scale g (1 = the conditional model alone).
    negative_prompts: None, one string, or B strings replacing the empty prompt.
    latents: optional initial latents [B, H/8, W/8, C] (NHWC), as diffusers' `latents`.
    height, width: image size, the U-Net's sample_size x 8 by default.
    eta: DDIM's eta.

  Returns:
    float32 images [B, H, W, 3] in [0, 1].
  """
  prompts = _prompt_list(prompts, "prompts")
  scale, steps = _guidance(guidance_scale), _steps(num_inference_steps)
  shape = _latent_shape(pipe, len(prompts), height, width)
  init_key, step_key = jax.random.split(key)
  if latents is None:
    latents = jax.random.normal(init_key, shape, jnp.float32)
  else:
    latents = jnp.asarray(latents, jnp.float32)
    if latents.shape != shape:
      raise ValueError(f"latents must have shape {shape} (B, H/{pipe.vae_scale_factor}, "
                       f"W/{pipe.vae_scale_factor}, {shape[-1]}; NHWC), got {latents.shape}")
  cond, uncond = encode_prompts(pipe, prompts, negative_prompts)
  x = latents * pipe.scheduler.init_noise_sigma
  x = _denoise(pipe.unet, pipe.scheduler, steps, 0, pipe.params["unet"], cond, uncond, x,
               jnp.float32(scale), step_key, jnp.float32(eta))
  return _decode(pipe.vae, pipe.params["vae"], x)


def img2img(pipe: StableDiffusionPipeline, images, prompts: Sequence[str], key: jax.Array, *,
            strength: float = 0.8, num_inference_steps: int = 50, guidance_scale: float = 7.5,
            negative_prompts: Sequence[str] | str | None = None, eta: float = 0.0,
            noise=None, encoder_noise=None) -> jax.Array:
  """Image to image (SDEdit): `StableDiffusionImg2ImgPipeline(..., output_type="np")` in JAX.

  The image's latent, drawn from the VAE posterior, is noised to the timestep
  `table[t_start]` with `t_start = n - min(int(n * strength), n)` and denoised from there.

  Args:
    pipe, prompts, key, num_inference_steps, guidance_scale, negative_prompts, eta: as
      `txt2img`.
    images: [B, H, W, 3] float in [0, 1] (or uint8).
    strength: in (0, 1]: how much of the chain is rerun (1 = from pure noise).
    noise, encoder_noise: optional standard-normal draws [B, h, w, C] for the forward
      noising and the posterior sample (drawn from `key` otherwise).

  Returns:
    float32 images [B, H, W, 3] in [0, 1].
  """
  prompts = _prompt_list(prompts, "prompts")
  scale, steps = _guidance(guidance_scale), _steps(num_inference_steps)
  if isinstance(strength, bool) or not isinstance(strength, (int, float, np.floating)) \
      or not 0.0 < strength <= 1.0:
    raise ValueError(f"strength must be a number in (0, 1], got {strength!r}")
  x = jnp.asarray(images)
  if x.dtype == jnp.uint8:
    x = x.astype(jnp.float32) / 255.0
  b = len(prompts)
  if x.ndim != 4 or x.shape[0] != b or x.shape[-1] != 3:
    raise ValueError(f"images must be [B={b}, H, W, 3] (NHWC, in [0, 1]), got {x.shape}")
  shape = _latent_shape(pipe, b, x.shape[1], x.shape[2])
  init_t = min(int(steps * strength), steps)
  t_start = max(steps - init_t, 0)
  if init_t < 1:
    raise ValueError(f"strength={strength} with {steps} steps runs no step; raise either")
  start = t_start * pipe.scheduler.order
  k_enc, k_noise, k_steps = jax.random.split(key, 3)
  draws = []
  for name, given, k in (("encoder_noise", encoder_noise, k_enc), ("noise", noise, k_noise)):
    if given is None:
      draws.append(jax.random.normal(k, shape, jnp.float32))
    else:
      given = jnp.asarray(given, jnp.float32)
      if given.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {given.shape}")
      draws.append(given)
  z0 = _encode_image(pipe.vae, pipe.params["vae"], x.astype(jnp.float32), draws[0])
  t0 = int(pipe.scheduler.timesteps(steps)[start])
  latents = pipe.scheduler.add_noise(z0, draws[1], jnp.full((b,), t0, jnp.int32))
  cond, uncond = encode_prompts(pipe, prompts, negative_prompts)
  out = _denoise(pipe.unet, pipe.scheduler, steps, start, pipe.params["unet"], cond, uncond,
                 latents, jnp.float32(scale), k_steps, jnp.float32(eta))
  return _decode(pipe.vae, pipe.params["vae"], out)
