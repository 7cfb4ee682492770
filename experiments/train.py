"""``train``: the training loop (importable; ``main.py`` only parses flags)."""
from __future__ import annotations

import logging
import math
import os

import jax
import numpy as np

from experiments import common, loop
from experiments.config import Config
from jaxgen import data as jdata
from jaxgen import parallel
from jaxgen.metrics import save_image_grid
from jaxgen.nn import init_unet
from jaxgen.training import TrainState, make_optimizer, make_train_step, save

log = logging.getLogger(__name__)
NonFiniteLossError = loop.NonFiniteLossError  # re-exported: callers catch it from here


def _validate(config: Config, mesh) -> None:
  n = mesh.devices.size
  if config.data.batch_size % n:
    raise ValueError(f"data.batch_size={config.data.batch_size} must be a multiple of the "
                     f"{n} devices used for data parallelism")
  if config.train.num_steps < 1:
    raise ValueError(f"train.num_steps must be >= 1, got {config.train.num_steps}")


def train(config: Config, workdir: str) -> dict:
  """Trains (or resumes) a diffusion model in ``workdir``.

  Returns:
    A summary: {"step", "loss", "terminated", "resumed_from"}.
  Raises:
    NonFiniteLossError: the loss became NaN/inf (the last good checkpoint stays on disk).
  """
  os.makedirs(workdir, exist_ok=True)
  mesh = parallel.make_mesh()
  _validate(config, mesh)
  source = common.build_source(config, "train")
  model = common.build_model(config, source.image_shape, source.num_classes)
  schedule = common.build_schedule(config)
  common.save_config(workdir, config)
  common.write_run_json(os.path.join(workdir, "run.json"), config, command="train",
                        model=model.config.to_diffusers_dict())

  tc = config.train
  root = jax.random.key(config.seed)
  init_key, train_key, sample_key = (jax.random.fold_in(root, i) for i in range(3))
  params = init_unet(model, init_key)
  tx = make_optimizer(tc.learning_rate, warmup_steps=tc.warmup_steps, total_steps=tc.num_steps,
                      decay=tc.lr_decay, weight_decay=tc.weight_decay, grad_clip=tc.grad_clip)
  state = TrainState.create(apply_fn=model.apply, params=params, tx=tx)
  state = parallel.replicate(state, mesh)
  loader = jdata.Loader(source, config.data.batch_size, seed=config.seed)

  manager, state, resumed_from = common.restore_or_start(workdir, state, loader,
                                                        max_to_keep=tc.max_to_keep, log=log)

  step_fn = jax.jit(make_train_step(
      model, schedule, prediction_type=config.diffusion.prediction_type,
      ema_decay=tc.ema_decay, ema_warmup=tc.ema_warmup, cond_drop_prob=tc.cond_drop_prob,
      null_label=common.null_label(model)), donate_argnums=0)
  sample_fn = common.make_sample_fn(model, schedule, config, config.sample.sampler)
  table = common.sampling_table(config)

  def write_samples(state, step: int):
    n = config.sample.num
    labels = (np.arange(n) % source.num_classes
              if model.config.num_class_embeds is not None else None)
    imgs = common.draw_samples(sample_fn, state.ema_params, jax.random.fold_in(sample_key, step),
                               n, config.sample.batch_size, source.image_shape, table,
                               config.sample.eta, labels)
    path = os.path.join(workdir, "samples", f"step_{step:07d}.png")
    save_image_grid(path, imgs, nrow=int(math.ceil(math.sqrt(n))))
    np.savez_compressed(path[:-4] + ".npz", images=imgs)
    common.write_run_json(os.path.join(workdir, "samples", "run.json"), config, command="train",
                          step=step, sampler=config.sample.sampler, steps=config.sample.steps)

  def checkpoint(state):
    if not loop.all_finite(state.params):
      raise NonFiniteLossError("parameters are not finite; not saving a checkpoint")
    save(manager, state, loader.get_state())

  def step(state, batch):
    batch = {k: batch[k] for k in ("image", "label") if k in batch}
    return step_fn(state, parallel.shard_batch(batch, mesh), train_key)

  last_loss = float("nan")

  def on_log(done, m):
    nonlocal last_loss
    last_loss = m["loss"]
    if not math.isfinite(last_loss):
      raise NonFiniteLossError(
          f"loss is {last_loss} at step {done}; stopping. The last good checkpoint "
          f"(step {manager.latest_step()}) is kept in {manager.directory}; lower "
          "train.learning_rate or check the data for NaNs before resuming.")
    m["examples_per_sec"] = m["steps_per_sec"] * config.data.batch_size
    metrics.write(done, m)
    return {"loss": f"{last_loss:.4f}", "it_s": f"{m['steps_per_sec']:.1f}"}

  metrics = loop.MetricsLog(workdir)
  try:
    state, terminated = loop.run(
        state, step, loader, image_shape=source.image_shape, num_steps=tc.num_steps,
        desc="train", log_every=tc.log_every, checkpoint_every=tc.checkpoint_every,
        checkpoint=checkpoint, on_log=on_log,
        hooks=[(tc.sample_every, write_samples)])
    if not terminated:
      checkpoint(state)
      if config.sample.num:
        write_samples(state, int(jax.device_get(state.step)))
  finally:
    manager.wait_until_finished()
    manager.close()
    metrics.close()
  return {"step": int(jax.device_get(state.step)), "loss": last_loss, "terminated": terminated,
          "resumed_from": resumed_from, "state": state}
