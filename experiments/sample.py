"""``sample``: draw images from a trained workdir's EMA parameters."""
from __future__ import annotations

import math
import os

import jax
import numpy as np

from experiments import common
from jaxgen.metrics import save_image_grid
from jaxgen.nn import init_unet
from jaxgen.training import TrainState, make_optimizer, restore_arrays


def load_trained(workdir: str):
  """(config, source, model, schedule, state, step) of the newest readable checkpoint."""
  config = common.load_workdir_config(workdir)
  source = common.build_source(config, "train")
  model = common.build_model(config, source.image_shape, source.num_classes)
  schedule = common.build_schedule(config)
  abstract_params = jax.eval_shape(lambda k: init_unet(model, k),
                                   jax.random.key(0))
  params = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), abstract_params)
  tc = config.train
  tx = make_optimizer(tc.learning_rate, warmup_steps=tc.warmup_steps, total_steps=tc.num_steps,
                      decay=tc.lr_decay, weight_decay=tc.weight_decay, grad_clip=tc.grad_clip)
  state = TrainState.create(apply_fn=model.apply, params=params, tx=tx)
  state, step = restore_arrays(os.path.join(workdir, "checkpoints"), state)
  return config, source, model, schedule, state, step


def sample(workdir: str, *, num: int = 64, sampler: str | None = None, steps: int | None = None,
           seed: int = 0, eta: float | None = None, labels=None) -> str:
  """Writes ``samples/<name>.png`` and ``.npz`` (+ run.json); returns the PNG path."""
  config, source, model, schedule, state, step = load_trained(workdir)
  sampler = sampler or config.sample.sampler
  steps = steps or config.sample.steps
  eta = config.sample.eta if eta is None else eta
  if num < 1:
    raise ValueError(f"--num must be >= 1, got {num}")
  table = common.sampling_table(config, steps)  # validates steps <= T before any compile
  if model.config.num_class_embeds is not None and labels is None:
    labels = np.arange(num) % source.num_classes
  fn = common.make_sample_fn(model, schedule, config, sampler)
  imgs = common.draw_samples(fn, state.ema_params, jax.random.key(seed), num,
                             config.sample.batch_size, source.image_shape, table, eta, labels)
  name = f"sample_{sampler}{steps}_seed{seed}_step{step}"
  path = os.path.join(workdir, "samples", name + ".png")
  save_image_grid(path, imgs, nrow=int(math.ceil(math.sqrt(num))))
  np.savez_compressed(path[:-4] + ".npz", images=imgs,
                      labels=np.asarray([] if labels is None else labels))
  common.write_run_json(os.path.join(workdir, "samples", name + ".run.json"), config,
                        command="sample", checkpoint_step=step, sampler=sampler, steps=steps,
                        eta=eta, seed=seed, num=num)
  return path
