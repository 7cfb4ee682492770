"""The noise-aware classifier p(y | x_t, t) of classifier guidance (Dhariwal & Nichol 2021,
sec. 4), trained through the shared loop into ``WORKDIR/noisy_classifier``."""
from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from experiments import workdir as W
from experiments.families.ddpm import model as B
from experiments.families.guidance import conditions
from experiments.families.guidance.config import GuidanceConfig
from jaxgen import data as jdata
from jaxgen import diffusion as D
from jaxgen.nn.noisy_classifier import (NoisyClassifier, NoisyClassifierConfig,
                                        init_noisy_classifier, noisy_classifier_param_shapes)
from jaxgen.training import (TrainState, Terminated, make_classifier_train_step,
                             make_optimizer, train_loop)

NOISY_DIR = "noisy_classifier"
TRAIN_KEYS = ("num_steps", "batch_size", "learning_rate", "warmup_steps", "ema_decay")


def build(config: GuidanceConfig, source) -> NoisyClassifier:
  fields = dict(config.noisy_classifier.model)
  fields.setdefault("in_channels", source.image_shape[-1])
  return NoisyClassifier(NoisyClassifierConfig(num_classes=source.num_classes, **fields))


def _state(model, params, lr, warmup, total) -> TrainState:
  tx = make_optimizer(lr, warmup_steps=warmup, total_steps=total, decay="cosine")
  return TrainState.create(apply_fn=model.apply, params=params, tx=tx)


def train_noisy_classifier(config: GuidanceConfig, workdir: str) -> dict:
  """Trains (or resumes) p(y | x_t, t) on noised training images into ``DIR/noisy_classifier``
  (checkpointed: a SIGTERM resumes exactly); reports its test accuracy at a few noise levels."""
  if config.guidance.condition != "label":
    raise ValueError("classifier guidance needs guidance.condition='label' (one class per image)")
  source = conditions.sources(config, "train")
  if source.num_classes is None:
    raise ValueError(f"dataset {config.data.name!r} has no labels for a classifier")
  test = jdata.load_all(conditions.sources(config, "test"))
  nc = config.noisy_classifier
  model, schedule = build(config, source), B.build_schedule(config)
  path = os.path.join(workdir, NOISY_DIR)
  key = jax.random.fold_in(jax.random.key(config.seed), 17)
  step_fn = jax.jit(make_classifier_train_step(model, schedule, ema_decay=nc.ema_decay),
                    donate_argnums=0)
  out = train_loop(
      lambda: _state(model, init_noisy_classifier(model, jax.random.fold_in(key, 0)),
                     nc.learning_rate, nc.warmup_steps, nc.num_steps),
      lambda state, batch: step_fn(state, batch, jax.random.fold_in(key, 1)),
      num_steps=nc.num_steps, workdir=path,
      loader=jdata.Loader(source, nc.batch_size, seed=config.seed + 1),
      batch_keys=("image", "label"), image_shape=source.image_shape, log_every=100,
      checkpoint_every=max(nc.num_steps // 4, 100), max_to_keep=1, tensorboard=False,
      desc="noisy classifier", run_record=W.run_record(config, "train noisy classifier"),
      hint="Lower noisy_classifier.learning_rate before resuming.")
  if out.terminated:
    return {"step": out.step, "terminated": True, "resumed_from": out.resumed_from,
            "state": out.state}
  apply = jax.jit(lambda p, x, t: model.apply({"params": p}, x, t))
  T = schedule.num_timesteps
  accuracy = {}
  x = jnp.asarray(test["image"])
  for t in sorted({0, T // 4, T // 2, 3 * T // 4, T - 1}):
    noise = jax.random.normal(jax.random.fold_in(key, 2), x.shape)
    tt = jnp.full((x.shape[0],), t)
    pred = np.asarray(apply(out.state.ema_params, D.q_sample(schedule, x, tt, noise), tt))
    accuracy[str(t)] = float(np.mean(pred.argmax(-1) == test["label"]))
  info = {"config": model.config.to_dict(), "train": {k: getattr(nc, k) for k in TRAIN_KEYS},
          "step": out.step, "test_accuracy_at_t": accuracy, "terminated": False}
  W.write_json(os.path.join(path, "config.json"), info)
  return dict(info, resumed_from=out.resumed_from, state=out.state)


def load_noisy_classifier(workdir: str, config: GuidanceConfig):
  """(module, EMA params) of ``DIR/noisy_classifier``; trains it first when it is missing."""
  path = os.path.join(workdir, NOISY_DIR)
  if not os.path.isfile(os.path.join(path, "config.json")):
    print(f"no noise-aware classifier in {workdir}; training one (noisy_classifier section)")
    if train_noisy_classifier(config, workdir)["terminated"]:
      raise Terminated("SIGTERM while training the noise-aware classifier: its checkpoint is "
                       f"saved in {path}; run the command again to resume")
  with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
    info = json.load(f)
  model = NoisyClassifier(NoisyClassifierConfig.from_dict(
      {k: tuple(v) if isinstance(v, list) else v for k, v in info["config"].items()}))
  tr = info["train"]
  shapes = noisy_classifier_param_shapes(model)
  state, _ = W.restore(path, lambda: _state(
      model, jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes), tr["learning_rate"],
      tr["warmup_steps"], tr["num_steps"]))
  return model, state.ema_params
