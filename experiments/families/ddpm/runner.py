"""``train``, ``sample`` and the trained-workdir loader of the diffusion families.

``sources(config, split)`` gives the dataset split (default `experiments.workdir.build_source`);
the guidance families pass their own (e.g. shapes conditioned on one word per image), so the
labels a model trains on are explicit at the call, never patched in.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Callable

import jax
import numpy as np

from experiments import sharding
from experiments import workdir as W
from experiments.families.ddpm import model as B
from experiments.families.ddpm.config import DDPMConfig
from jaxgen import data as jdata
from jaxgen import parallel
from jaxgen.training import make_train_step, train_loop, write_run_json

log = logging.getLogger(__name__)
Sources = Callable[[DDPMConfig, str], jdata.Source]


def class_labels(model, num: int, num_classes: int | None):
  """Labels 0, 1, ... in turn for a class-conditional model, else None."""
  return None if model.config.num_class_embeds is None else np.arange(num) % num_classes


def train(config: DDPMConfig, workdir: str, *, sources: Sources = W.build_source) -> dict:
  """Trains (or resumes) a diffusion model in ``workdir``.

  Returns:
    {"step", "loss", "terminated", "resumed_from", "state"}.
  Raises:
    NonFiniteLossError: the loss became NaN/inf (the last good checkpoint stays on disk).
  """
  source = sources(config, "train")
  model = B.build_model(config, source.image_shape, source.num_classes)
  schedule = B.build_schedule(config)
  W.save_config(workdir, config)
  tc, root = config.train, jax.random.key(config.seed)
  init_key, train_key, sample_key = (jax.random.fold_in(root, i) for i in range(3))
  step_fn = jax.jit(make_train_step(
      model, schedule, prediction_type=config.diffusion.prediction_type,
      ema_decay=tc.ema_decay, ema_warmup=tc.ema_warmup, cond_drop_prob=tc.cond_drop_prob,
      null_label=B.null_label(model), accum_steps=tc.accum_steps), donate_argnums=0)
  sample_fn = B.make_sample_fn(model, schedule, config, config.sample.sampler)
  table = B.sampling_table(config)
  mesh, state_sharding = sharding.training_mesh(tc)

  def write_samples(state, step: int):
    n = config.sample.num
    if not n:
      return
    labels = class_labels(model, n, source.num_classes)
    imgs = B.draw_samples(sample_fn, sharding.gathered(state.ema_params, mesh),
                          jax.random.fold_in(sample_key, step), n, config.sample.batch_size,
                          source.image_shape, table, config.sample.eta, labels)
    if not parallel.is_primary():
      return
    W.write_images(os.path.join(workdir, "samples", f"step_{step:07d}.png"), imgs)
    write_run_json(os.path.join(workdir, "samples", "run.json"),
                   W.run_record(config, "train", step=step, sampler=config.sample.sampler,
                                steps=config.sample.steps))

  def log_fn(done, m):
    m["examples_per_sec"] = m["steps_per_sec"] * config.data.batch_size

  out = train_loop(
      lambda: B.init_state(config, model, init_key),
      lambda state, batch: step_fn(state, batch, train_key),
      num_steps=tc.num_steps, workdir=workdir,
      loader=jdata.Loader(source, config.data.batch_size, seed=config.seed),
      batch_keys=("image", "label"), image_shape=source.image_shape, mesh=mesh,
      state_sharding=state_sharding,
      log_every=tc.log_every, checkpoint_every=tc.checkpoint_every, max_to_keep=tc.max_to_keep,
      log_fn=log_fn, postfix=lambda m: {"loss": f"{m['loss']:.4f}",
                                        "it_s": f"{m['steps_per_sec']:.1f}"},
      hooks=[(tc.sample_every, write_samples)], at_end=[write_samples],
      run_record=W.run_record(config, "train", model=model.config.to_diffusers_dict(),
                              schedule=dataclasses.asdict(config.diffusion)),
      desc="train", hint="Lower train.learning_rate or check the data for NaNs before resuming.")
  return out.summary("loss")


@dataclasses.dataclass
class Trained:
  """A trained diffusion workdir: config, data source, U-Net, schedule, state, step."""
  config: DDPMConfig
  source: jdata.Source
  model: object
  schedule: object
  state: object
  step: int


def load_trained(workdir: str, *, sources: Sources = W.build_source) -> Trained:
  """The newest readable checkpoint of a diffusion workdir."""
  config = W.load_config(workdir)
  source = sources(config, "train")
  model = B.build_model(config, source.image_shape, source.num_classes)
  state, step = W.restore(workdir, lambda: B.init_state(config, model, jax.random.key(0)))
  return Trained(config, source, model, B.build_schedule(config), state, step)


def sample(workdir: str, *, num: int = 64, sampler: str | None = None, steps: int | None = None,
           seed: int = 0, eta: float | None = None, labels=None) -> str:
  """Writes ``samples/<name>.png`` and ``.npz`` (+ .run.json); returns the PNG path."""
  t = load_trained(workdir)
  config = t.config
  sampler = sampler or config.sample.sampler
  steps = steps or config.sample.steps
  eta = config.sample.eta if eta is None else eta
  if num < 1:
    raise ValueError(f"--num must be >= 1, got {num}")
  table = B.sampling_table(config, steps)  # validates steps <= T before any compile
  if labels is None:
    labels = class_labels(t.model, num, t.source.num_classes)
  fn = B.make_sample_fn(t.model, t.schedule, config, sampler)
  imgs = B.draw_samples(fn, t.state.ema_params, jax.random.key(seed), num,
                        config.sample.batch_size, t.source.image_shape, table, eta, labels)
  name = f"sample_{sampler}{steps}_seed{seed}_step{t.step}"
  return W.write_images(
      os.path.join(workdir, "samples", name + ".png"), imgs,
      labels=np.asarray([] if labels is None else labels),
      record=W.run_record(config, "sample", checkpoint_step=t.step, sampler=sampler, steps=steps,
                          eta=eta, seed=seed, num=num))
