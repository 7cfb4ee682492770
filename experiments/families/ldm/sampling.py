"""Text-to-image with a trained ldm workdir: the in-memory Stable Diffusion pipeline, batched
sampling of many prompts, prompt grids, and the ``generate`` command.

A latent-space workdir becomes a `jaxgen.pipelines.StableDiffusionPipeline` (its tokenizer and
text tower, the U-Net, the KL autoencoder with ``scaling_factor`` the training latents' scale,
a scheduler built from the training schedule) and samples with `jaxgen.pipelines.txt2img`,
the same code that reproduces diffusers' pipeline. A pixel-space workdir runs the same guided
sampler (`jaxgen.pipelines.guided_sample`) on images directly.
"""
from __future__ import annotations

import dataclasses
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, ImageDraw

from experiments import workdir as W
from experiments.families.ldm.config import SAMPLERS
from experiments.families.ldm.runner import Trained, load_trained, scheduler_config
from jaxgen import metrics as M
from jaxgen.data import SHAPES_HELD_OUT, shapes_caption
from jaxgen.pipelines import StableDiffusionPipeline, encode_prompts, guided_sample, txt2img
from jaxgen.training import write_run_json

# The grid written after training and by ``sample``: four training captions, four held out.
GRID_PROMPTS = ("a large red circle at the top left", "a small green square in the center",
                "a large blue triangle at the bottom right", "a small yellow square on the left",
                *(shapes_caption(*c) for c in SHAPES_HELD_OUT[:4]))


def pipeline(t: Trained, sampler: str) -> StableDiffusionPipeline:
  """The workdir's components as a Stable Diffusion pipeline (pixel space: ``vae`` None)."""
  vae, params = None, {"text_encoder": t.text_encoder.params, "unet": t.params}
  if t.autoencoder is not None:
    from jaxgen.nn.autoencoder_kl import AutoencoderKL  # pylint: disable=import-outside-toplevel
    kl = dataclasses.replace(t.autoencoder.module.config, scaling_factor=t.stats["scale"],
                             sample_size=t.image_shape[0])
    vae, params["vae"] = AutoencoderKL(kl), t.autoencoder.params
  return StableDiffusionPipeline(
      tokenizer=t.text_encoder.tokenizer, text_encoder=t.text_encoder.model, unet=t.model,
      vae=vae, scheduler=scheduler_config(t.config, sampler), params=params, folder=t.workdir)


def _check_sampler(sampler: str) -> str:
  if sampler not in SAMPLERS:
    raise ValueError(f"unknown sampler {sampler!r}; expected one of {list(SAMPLERS)}")
  return sampler


def sample_images(t: Trained, prompts, key, *, guidance: float | None = None,
                  steps: int | None = None, sampler: str | None = None,
                  negative_prompts=None, batch_size: int | None = None) -> np.ndarray:
  """One image per prompt, as uint8 [N, H, W, 3].

  Prompts go through in chunks of ``batch_size`` (``sample.batch_size``; the last chunk padded
  with empty prompts, so that every chunk shares one compile); chunk i draws from
  ``fold_in(key, i)``. ``negative_prompts``: None, one string, or one per prompt.
  """
  s = t.config.sample
  guidance = s.guidance if guidance is None else guidance
  steps, sampler = steps or s.steps, _check_sampler(sampler or s.sampler)
  prompts = list(prompts)
  if not prompts:
    raise ValueError("no prompts to sample: give at least one")
  neg = negative_prompts
  if neg is not None and not isinstance(neg, str) and len(neg) != len(prompts):
    raise ValueError(f"{len(neg)} negative prompts for {len(prompts)} prompts")
  pipe = pipeline(t, sampler)
  b = min(batch_size or s.batch_size, len(prompts))
  out = []
  for i, start in enumerate(range(0, len(prompts), b)):
    chunk = prompts[start:start + b]
    n = len(chunk)
    chunk = chunk + [""] * (b - n)
    neg_chunk = None
    if neg is not None:
      neg_chunk = [neg] * b if isinstance(neg, str) else list(neg[start:start + b]) + [""] * (b - n)
    k = jax.random.fold_in(key, i)
    if pipe.vae is not None:
      x = txt2img(pipe, chunk, k, num_inference_steps=steps, guidance_scale=guidance,
                  negative_prompts=neg_chunk)
    else:
      x = _pixel_sample(pipe, chunk, k, t.input_shape, steps, guidance, neg_chunk)
    out.append(np.asarray(M.to_uint8(np.asarray(x)[:n] * 2.0 - 1.0)))
  return np.concatenate(out)


def _pixel_sample(pipe, prompts, key, shape, steps, guidance, negative):
  init_key, step_key = jax.random.split(key)
  cond, uncond = encode_prompts(pipe, prompts, negative)
  x = jax.random.normal(init_key, (len(prompts),) + tuple(shape), jnp.float32)
  x = guided_sample(pipe.unet, pipe.params["unet"], pipe.scheduler, cond, uncond, x, step_key,
                    num_inference_steps=steps, guidance_scale=guidance)
  return jnp.clip((x + 1.0) / 2.0, 0.0, 1.0)


def write_prompt_grid(path: str, images: np.ndarray, prompts, *, per_row: int) -> str:
  """A PNG: one row of ``per_row`` images per prompt, the prompt written to its right."""
  images = np.asarray(images)
  rows = len(images) // per_row
  tile = max(1, 64 // images.shape[1])
  h = images.shape[1] * tile
  width = (h + 2) * per_row + 300
  canvas = Image.new("RGB", (width, (h + 2) * rows), (255, 255, 255))
  draw = ImageDraw.Draw(canvas)
  for r in range(rows):
    for j in range(per_row):
      im = np.repeat(np.repeat(images[r * per_row + j], tile, 0), tile, 1)
      canvas.paste(Image.fromarray(im), ((h + 2) * j, (h + 2) * r))
    draw.text(((h + 2) * per_row + 6, (h + 2) * r + h // 2 - 6), prompts[r], fill=(0, 0, 0))
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  canvas.save(path)
  return path


def save_samples(path: str, images: np.ndarray, prompts, record: dict, *, per_row: int,
                 negative_prompt: str | None = None) -> str:
  """``path`` (the prompt grid), ``path.npz`` (``images`` uint8 [N, H, W, 3], ``prompts`` [N])
  and ``path.run.json`` (the record)."""
  distinct = list(dict.fromkeys(prompts))
  write_prompt_grid(path, images, distinct, per_row=per_row)
  np.savez_compressed(path[:-4] + ".npz", images=images, prompts=np.asarray(prompts),
                      negative_prompt=np.asarray(negative_prompt or ""))
  write_run_json(path[:-4] + ".run.json", record)
  return path


def generate(workdir: str, prompts, *, num: int = 8, seed: int = 0, guidance=None, steps=None,
             sampler=None, negative_prompt: str | None = None) -> str:
  """`num` images per prompt into ``samples/generate_seed<K>_step<N>.png`` (+ .npz, .run.json);
  returns the PNG's path."""
  if not prompts:
    raise ValueError("give at least one prompt (--prompt TEXT, repeatable)")
  if not all(isinstance(p, str) for p in prompts):
    raise TypeError(f"prompts must be strings, got {prompts!r}")
  if guidance is not None and (isinstance(guidance, bool) or not isinstance(
      guidance, (int, float)) or not math.isfinite(guidance)):
    raise ValueError(f"guidance must be a finite number, got {guidance!r}")
  if num < 1:
    raise ValueError(f"--num must be >= 1, got {num}")
  t = load_trained(workdir)
  s = t.config.sample
  guidance = s.guidance if guidance is None else float(guidance)
  steps, sampler = steps or s.steps, _check_sampler(sampler or s.sampler)
  every = [p for p in prompts for _ in range(num)]
  images = sample_images(t, every, jax.random.key(seed), guidance=guidance, steps=steps,
                         sampler=sampler, negative_prompts=negative_prompt)
  path = os.path.join(workdir, "samples", f"generate_seed{seed}_step{t.step}.png")
  record = W.run_record(t.config, "generate", checkpoint_step=t.step, prompts=list(prompts),
                        negative_prompt=negative_prompt, guidance=guidance, steps=steps,
                        sampler=sampler, num_per_prompt=num, seed=seed)
  return save_samples(path, images, every, record, per_row=num, negative_prompt=negative_prompt)


def prompt_grid(t: Trained, *, num: int | None = None, seed: int = 0) -> str:
  """`GRID_PROMPTS` (four training captions, four held out), ``num`` images each (default
  ``sample.num``), into ``samples/grid_seed<K>_step<N>.png``."""
  num = num or t.config.sample.num
  every = [p for p in GRID_PROMPTS for _ in range(num)]
  images = sample_images(t, every, jax.random.key(seed))
  s = t.config.sample
  path = os.path.join(t.workdir, "samples", f"grid_seed{seed}_step{t.step}.png")
  record = W.run_record(t.config, "sample", checkpoint_step=t.step, prompts=list(GRID_PROMPTS),
                        held_out=list(GRID_PROMPTS[4:]), guidance=s.guidance, steps=s.steps,
                        sampler=s.sampler, num_per_prompt=num, seed=seed)
  return save_samples(path, images, every, record, per_row=num)


def sample(workdir: str, *, num: int = 8, seed: int = 0, sampler: str | None = None,
           steps: int | None = None) -> str:
  """The runner's ``sample``: the prompt grid of a trained workdir."""
  if num < 1:
    raise ValueError(f"--num must be >= 1, got {num}")
  t = load_trained(workdir)
  if sampler or steps:
    t.config.sample = dataclasses.replace(t.config.sample, sampler=sampler or t.config.sample
                                          .sampler, steps=steps or t.config.sample.steps)
  return prompt_grid(t, num=num, seed=seed)
