"""Sample from a diffusers DDPM checkpoint folder with jaxgen (no torch, no download).

  python -m experiments.sample_diffusers --model PATH/ddpm-cifar10-32 --out samples.png \
      [--sampler ddim|ddpm] [--steps 50] [--num 16] [--seed 0] [--eta 0.0] [--batch 16]

PATH is a local folder holding a UNet2DModel (config.json + diffusion_pytorch_model.safetensors,
at the top or in unet/) and, optionally, its scheduler config (scheduler_config.json at the top
or in scheduler/): the beta schedule, prediction type, variance type, clipping and timestep
spacing are read from it (DDPM defaults otherwise). Writes a PNG grid and a .npz beside it.
"""
from __future__ import annotations

import argparse
import json
import math
import os

import jax
import numpy as np
from tqdm.auto import tqdm

from jaxgen import diffusion as D
from jaxgen.interop import load_diffusers_unet2d
from jaxgen.metrics import save_image_grid

BETA_SCHEDULES = {"linear": "linear", "scaled_linear": "scaled_linear",
                  "squaredcos_cap_v2": "cosine"}


def read_scheduler_config(path: str) -> dict:
  for p in (os.path.join(path, "scheduler", "scheduler_config.json"),
            os.path.join(path, "scheduler_config.json")):
    if os.path.isfile(p):
      with open(p) as f:
        return json.load(f)
  return {}


def schedule_from_config(sc: dict) -> D.Schedule:
  kind = sc.get("beta_schedule", "linear")
  if kind not in BETA_SCHEDULES:
    raise ValueError(f"unsupported beta_schedule {kind!r} in the scheduler config; jaxgen "
                     f"supports {sorted(BETA_SCHEDULES)}")
  if sc.get("trained_betas") is not None:
    return D.schedule_from_betas(np.asarray(sc["trained_betas"], np.float32))
  return D.make_schedule(BETA_SCHEDULES[kind], int(sc.get("num_train_timesteps", 1000)),
                         beta_start=float(sc.get("beta_start", 1e-4)),
                         beta_end=float(sc.get("beta_end", 0.02)),
                         rescale_zero_terminal_snr=bool(sc.get("rescale_betas_zero_snr", False)))


def sample_checkpoint(model_path: str, out: str, *, sampler: str = "ddim", steps: int = 50,
                      num: int = 16, seed: int = 0, eta: float = 0.0, batch: int = 16) -> str:
  if not os.path.isdir(model_path):
    raise FileNotFoundError(f"no folder {model_path!r}: pass the local diffusers checkpoint folder")
  sc = read_scheduler_config(model_path)
  schedule = schedule_from_config(sc)
  model, params = load_diffusers_unet2d(model_path)
  T = schedule.num_timesteps
  table = D.pad_table(D.timesteps(T, steps, sc.get("timestep_spacing", "leading"),
                                  int(sc.get("steps_offset", 0))), T)
  variance = sc.get("variance_type", "fixed_small")
  if variance not in D.VARIANCE_TYPES:
    raise ValueError(f"unsupported variance_type {variance!r}; expected {D.VARIANCE_TYPES}")
  size = model.config.sample_size or 32
  h, w = (size, size) if isinstance(size, int) else tuple(size)
  shape = (batch, h, w, model.config.in_channels)

  @jax.jit
  def run(key):
    x = D.sample(lambda x, t: model.apply({"params": params}, x, t), schedule, key, shape,
                 table, method=sampler, eta=eta,
                 prediction_type=sc.get("prediction_type", "epsilon"),
                 variance_type=variance, clip_sample=bool(sc.get("clip_sample", False)))
    return jax.numpy.clip(x, -1, 1)

  chunks = [np.asarray(run(jax.random.fold_in(jax.random.key(seed), i)))
            for i in tqdm(range(math.ceil(num / batch)), desc="sampling")]
  images = np.concatenate(chunks)[:num]
  save_image_grid(out, images, nrow=int(math.ceil(math.sqrt(num))))
  np.savez_compressed(os.path.splitext(out)[0] + ".npz", images=images)
  return out


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--model", required=True)
  p.add_argument("--out", required=True)
  p.add_argument("--sampler", choices=("ddim", "ddpm"), default="ddim")
  p.add_argument("--steps", type=int, default=50)
  p.add_argument("--num", type=int, default=16)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--eta", type=float, default=0.0)
  p.add_argument("--batch", type=int, default=16)
  a = p.parse_args(argv)
  print(sample_checkpoint(a.model, a.out, sampler=a.sampler, steps=a.steps, num=a.num,
                          seed=a.seed, eta=a.eta, batch=a.batch))


if __name__ == "__main__":
  main()
