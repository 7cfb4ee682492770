"""What the diffusion families build from a config: the U-Net, the schedule, the optimiser,
the train state and the compiled sampler."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from experiments.config import unet_compute_dtype
from experiments.families.ddpm.config import DDPMConfig
from jaxgen import diffusion as D
from jaxgen.batching import map_batched
from jaxgen.nn import UNet2D, UNetConfig, init_unet
from jaxgen.training import TrainState, make_optimizer


def build_model(config: DDPMConfig, image_shape, num_classes: int | None = None) -> UNet2D:
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
  ucfg = UNetConfig(**fields)
  f = ucfg.downsample_factor
  if h % f or w % f:
    raise ValueError(f"images of {h}x{w} cannot pass {ucfg.num_levels} U-Net levels (sizes must "
                     f"be multiples of {f}); set data.image_size or fewer block_out_channels")
  return UNet2D(ucfg, dtype=unet_compute_dtype(config.train), remat_policy=config.train.remat_policy)


def null_label(model: UNet2D) -> int | None:
  n = model.config.num_class_embeds
  return None if n is None else n - 1


def build_schedule(config: DDPMConfig) -> D.Schedule:
  c = config.diffusion
  return D.make_schedule(c.schedule, c.num_timesteps, beta_start=c.beta_start,
                         beta_end=c.beta_end, rescale_zero_terminal_snr=c.rescale_zero_terminal_snr)


def init_state(config: DDPMConfig, model: UNet2D, key) -> TrainState:
  """A fresh train state (U-Net parameters drawn from `key`, AdamW, EMA)."""
  tc = config.train
  tx = make_optimizer(tc.learning_rate, warmup_steps=tc.warmup_steps, total_steps=tc.num_steps,
                      decay=tc.lr_decay, weight_decay=tc.weight_decay, grad_clip=tc.grad_clip)
  return TrainState.create(apply_fn=model.apply, params=init_unet(model, key), tx=tx)


def sampling_table(config: DDPMConfig, steps: int | None = None, spacing: str | None = None):
  """The padded timestep table: one compiled sampler serves every step count."""
  T = config.diffusion.num_timesteps
  table = D.timesteps(T, steps or config.sample.steps, spacing or config.sample.spacing)
  return D.pad_table(table, T)


def make_sample_fn(model: UNet2D, schedule: D.Schedule, config: DDPMConfig, method: str):
  """``sample_fn(params, key, table, eta, labels, shape) -> images [B, H, W, C]`` in [-1, 1]
  (one jitted `jaxgen.diffusion.sample`)."""
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
  """``num`` images in chunks of ``batch_size`` (chunk i uses ``fold_in(key, i)``; the last
  chunk is drawn at its own size, so image j depends only on the key, j and batch_size)."""

  def chunk(k, rows, y):
    return sample_fn(params, k, table, eta, None if y is None else jnp.asarray(y, jnp.int32),
                     (len(rows),) + tuple(image_shape))

  return map_batched(chunk, np.arange(num), labels, batch_size=batch_size, key=key, pad=False,
                     progress=desc)
