"""Builders shared by the runner's commands: data, model, schedule, samplers, run metadata."""
from __future__ import annotations

import dataclasses
import json
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from experiments.config import Config
from jaxgen import data as jdata
from jaxgen import diffusion as D
from jaxgen.nn import UNet2D, UNetConfig

CONFIG_FILE = "config.json"


def build_source(config: Config, split: str):
  return jdata.get_source(config.data.name, split, image_size=config.data.image_size,
                          data_dir=config.data.data_dir)


def build_schedule(config: Config) -> D.Schedule:
  c = config.diffusion
  return D.make_schedule(c.schedule, c.num_timesteps, beta_start=c.beta_start,
                         beta_end=c.beta_end, rescale_zero_terminal_snr=c.rescale_zero_terminal_snr)


def build_model(config: Config, image_shape, num_classes: int | None = None) -> UNet2D:
  """The U-Net for images of ``image_shape`` (H, W, C); channel counts and sample size are
  filled in from the data, and a mismatch with explicit settings is an error."""
  h, w, c = image_shape
  fields = dict(config.model)
  for key, value in (("in_channels", c), ("out_channels", c)):
    if fields.setdefault(key, value) != value:
      raise ValueError(f"config model.{key}={fields[key]} does not match the {c}-channel "
                       f"images of dataset {config.data.name!r} (shape {tuple(image_shape)})")
  fields.setdefault("sample_size", h)
  if config.train.cond_drop_prob > 0 and fields.get("num_class_embeds") is None:
    if num_classes is None:
      raise ValueError(f"dataset {config.data.name!r} has no labels for a conditional model")
    fields["num_class_embeds"] = num_classes + 1  # the last class is the learned null class
  ucfg = UNetConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})
  f = ucfg.downsample_factor
  if h % f or w % f:
    raise ValueError(f"images of {h}x{w} cannot pass {ucfg.num_levels} U-Net levels (sizes must "
                     f"be multiples of {f}); set data.image_size or fewer block_out_channels")
  return UNet2D(ucfg)


def null_label(model: UNet2D) -> int | None:
  n = model.config.num_class_embeds
  return None if n is None else n - 1


def sampling_table(config: Config, steps: int | None = None, spacing: str | None = None):
  """The padded timestep table: one compiled sampler serves every step count."""
  T = config.diffusion.num_timesteps
  table = D.timesteps(T, steps or config.sample.steps, spacing or config.sample.spacing)
  return D.pad_table(table, T)


def make_sample_fn(model: UNet2D, schedule: D.Schedule, config: Config, method: str):
  """jit(params, key, table, eta, labels) -> images [B, H, W, C] in [-1, 1]."""
  dc = config.diffusion

  @jax.jit
  def run(params, key, table, eta, labels, shape_ref):
    def denoise(x, t):
      return model.apply({"params": params}, x, t, labels)
    x = D.sample(denoise, schedule, key, shape_ref.shape, table, method=method, eta=eta,
                 prediction_type=dc.prediction_type, variance_type=dc.variance_type,
                 clip_sample=dc.clip_sample)
    return jnp.clip(x, -1.0, 1.0)

  def sample_fn(params, key, table, eta, labels, shape):
    return run(params, key, table, jnp.float32(eta), labels,
               jax.ShapeDtypeStruct(shape, jnp.float32))

  return sample_fn


def draw_samples(sample_fn, params, key, num: int, batch_size: int, image_shape, table,
                 eta: float = 0.0, labels=None, desc: str = "sampling") -> np.ndarray:
  """``num`` images in chunks of ``batch_size`` (chunk i uses ``fold_in(key, i)``)."""
  out = []
  chunks = range(0, num, batch_size)
  for i, start in enumerate(tqdm(chunks, desc=desc, leave=False, disable=len(chunks) < 2)):
    b = min(batch_size, num - start)
    y = None if labels is None else jnp.asarray(labels[start:start + b], jnp.int32)
    out.append(np.asarray(sample_fn(params, jax.random.fold_in(key, i), table, eta, y,
                                    (b,) + tuple(image_shape))))
  return np.concatenate(out)


def versions() -> dict:
  import flax
  import optax
  import orbax.checkpoint
  import jaxgen
  return {"jaxgen": jaxgen.__version__, "jax": jax.__version__, "flax": flax.__version__,
          "optax": optax.__version__, "orbax": orbax.checkpoint.__version__,
          "numpy": np.__version__, "python": platform.python_version(),
          "devices": [str(d) for d in jax.devices()]}


def write_run_json(path: str, config: Config, **extra) -> None:
  """``run.json``: seeds, config, versions, schedule and sampler settings, beside an output."""
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  record = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "seed": config.seed,
            "config": config.to_dict(), "versions": versions(),
            "schedule": dataclasses.asdict(config.diffusion), **extra}
  with open(path, "w") as f:
    json.dump(record, f, indent=2, default=str)


def save_config(workdir: str, config: Config) -> None:
  with open(os.path.join(workdir, CONFIG_FILE), "w") as f:
    json.dump(config.to_dict(), f, indent=2)


def load_workdir_config(workdir: str) -> Config:
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{workdir!r} is not a training directory (no {CONFIG_FILE}); "
                            "train first with `python -m experiments.main train --config "
                            "experiments/configs/NAME.py --workdir DIR`")
  with open(path) as f:
    return Config.from_dict(json.load(f))


def restore_or_start(workdir: str, state, loader, *, max_to_keep: int, log=None):
  """Opens WORKDIR/checkpoints and resumes from its newest readable checkpoint, if any.

  Restores the state and the data loader's position (so a resumed run sees the same batches
  as an uninterrupted one); a corrupt newest checkpoint falls back to the previous one
  (`jaxgen.training.restore_latest`).

  Args:
    workdir: the run directory.
    state: a freshly initialised state (the restore target's structure and sharding).
    loader: the `jaxgen.data.Loader`, whose position is restored in place.
    max_to_keep: checkpoints kept by the manager.
    log: optional logger for the "resumed" line.

  Returns:
    (manager, state, resumed_from) with resumed_from None for a fresh start.
  """
  from jaxgen.training import make_manager, restore_latest
  manager = make_manager(os.path.join(workdir, "checkpoints"), max_to_keep=max_to_keep)
  restored = restore_latest(manager, state)
  if restored is None:
    return manager, state, None
  state, data_state, resumed_from = restored
  if data_state is not None:
    loader.set_state(data_state)
  if log is not None:
    log.info("resumed from step %d", resumed_from)
  return manager, state, resumed_from
