"""``train``, ``sample`` and the trained-workdir loader of the autoencoder family.

Keys: ``root = key(seed)``; the state is drawn from ``fold_in(root, 0)``, the train steps from
``fold_in(root, 1)``; the loader shuffles with ``seed``. A beta sweep (``autoencoder.betas``)
trains one run per beta in ``WORKDIR/beta_<b>/``, each with the same seed.
"""
from __future__ import annotations

import dataclasses
import math
import os

import jax
import numpy as np

from experiments import workdir as W
from experiments.families.autoencoder import model as B
from experiments.families.autoencoder.config import AutoencoderExperiment
from experiments.families.autoencoder.inference import prior_samples, reconstruct
from jaxgen import data as jdata
from jaxgen import metrics as M
from jaxgen import parallel
from jaxgen.training import Terminated, train_loop, write_run_json

PRIOR_GRID_SEED = 99  # the prior grid written after training uses key(seed + 99)


def sweep_dir(workdir: str, beta: float) -> str:
  """The run directory of one beta of a sweep."""
  return os.path.join(workdir, f"beta_{float(beta):g}")


def sweep_run(config: AutoencoderExperiment, beta: float) -> AutoencoderExperiment:
  """The config of one run of a beta sweep (``beta`` set, no ``betas``)."""
  return dataclasses.replace(config, autoencoder=dataclasses.replace(
      config.autoencoder, beta=float(beta), betas=None))


def train(config: AutoencoderExperiment, workdir: str) -> dict:
  """Trains (or resumes) in ``workdir``; a beta sweep trains its runs in turn and stops at
  the first one SIGTERM stops.

  Returns:
    {"step", "loss", "terminated", "resumed_from", "state"}; for a sweep
    {"runs": {"beta=<b>": summary without the state}, "step", "terminated"}.
  Raises:
    ValueError: a bad config or data (before anything compiles).
    NonFiniteLossError: the loss became NaN/inf (the last good checkpoint stays on disk).
  """
  config.validate()
  W.save_config(workdir, config)
  betas = config.autoencoder.betas
  if not betas:
    return _train_one(config, workdir)
  runs, terminated = {}, False
  for b in betas:
    out = _train_one(sweep_run(config, b), sweep_dir(workdir, b))
    out.pop("state", None)
    runs[f"beta={b}"] = out
    if out["terminated"]:
      terminated = True
      break
  return {"runs": runs, "step": config.train.num_steps, "terminated": terminated}


def _train_one(config: AutoencoderExperiment, workdir: str) -> dict:
  a, tc = config.autoencoder, config.train
  source = W.build_source(config, "train")
  model = B.build_model(config, source)
  W.save_config(workdir, config)
  mesh = parallel.make_mesh()
  root = jax.random.key(config.seed)
  init_key, train_key = jax.random.fold_in(root, 0), jax.random.fold_in(root, 1)
  perceptual = None
  if a.kind == "vqgan":
    try:
      perceptual = parallel.replicate(B.perceptual_net(config, workdir), mesh)
    except Terminated:  # its classifier saved a checkpoint; training again resumes it
      return {"step": 0, "loss": float("nan"), "terminated": True, "resumed_from": None,
              "state": None}
  step_fn = B.make_step(config, model, train_key, perceptual)

  def write_grids_hook(state, step: int):
    if config.sample.num:
      write_grids(workdir, config, model, state, step)

  out = train_loop(
      lambda: B.init_state(config, model, init_key, source.image_shape), step_fn,
      num_steps=tc.num_steps, workdir=workdir,
      loader=jdata.Loader(source, config.data.batch_size, seed=config.seed),
      batch_keys=("image", "label") if a.conditional else ("image",),
      image_shape=source.image_shape, mesh=mesh, log_every=tc.log_every,
      checkpoint_every=tc.checkpoint_every, max_to_keep=tc.max_to_keep,
      postfix=lambda m: {"loss": f"{m['loss']:.4f}"},
      hooks=[(tc.sample_every, write_grids_hook)], at_end=[write_grids_hook],
      run_record=W.run_record(config, "train", model=model.config.to_dict()),
      tensorboard=False, desc=f"train {a.kind}",
      hint="Lower train.learning_rate (or raise train.warmup_steps) before resuming.")
  return out.summary("loss")


@dataclasses.dataclass
class Trained:
  """A trained autoencoder workdir: config, train split, model, state and its step."""
  config: AutoencoderExperiment
  source: jdata.Source
  model: object
  state: object
  step: int


def load_trained(workdir: str) -> Trained:
  """The newest readable checkpoint of an autoencoder workdir (not a sweep's top level)."""
  config = W.load_config(workdir)
  betas = config.autoencoder.betas
  if betas:
    raise ValueError(f"{workdir} is a beta sweep: load one of its runs, e.g. "
                     f"{sweep_dir(workdir, betas[0])}")
  source = W.build_source(config, "train")
  model = B.build_model(config, source)
  state, step = W.restore(
      workdir, lambda: B.init_state(config, model, jax.random.key(0), source.image_shape))
  return Trained(config, source, model, state, step)


def write_grids(workdir: str, config: AutoencoderExperiment, model, state, step: int) -> str:
  """``samples/recon_step<N>.png``: test images (rows of 8) above their reconstructions, and
  for a VAE ``samples/prior_step<N>.png`` (+ .npz; a CVAE: one row of 8 per label), with
  ``samples/run.json``. Returns the last grid's path."""
  a = config.autoencoder
  test = jdata.load_all(W.build_source(config, "test"))
  n = max(8, min(config.sample.num, 64) // 8 * 8)
  y = test["label"][:n] if a.conditional else None
  rec = reconstruct(config, model, state, test["image"][:n], y)
  out = os.path.join(workdir, "samples")
  both = np.concatenate([test["image"][:n].reshape((n // 8, 8) + rec.shape[1:]),
                         rec.reshape((n // 8, 8) + rec.shape[1:])], axis=1)
  path = os.path.join(out, f"recon_step{step:07d}.png")
  M.save_image_grid(path, both.reshape((-1,) + rec.shape[1:]), nrow=8)
  if a.kind == "vae":
    k, labels = config.sample.num, None
    if a.conditional:
      c = model.config.num_classes
      k, labels = c * 8, np.repeat(np.arange(c), 8)
    imgs = prior_samples(config, model, state, jax.random.key(config.seed + PRIOR_GRID_SEED),
                         k, labels)
    path = W.write_images(os.path.join(out, f"prior_step{step:07d}.png"), imgs,
                          nrow=8 if labels is not None else int(math.ceil(math.sqrt(k))))
  write_run_json(os.path.join(out, "run.json"), W.run_record(config, "train", step=step))
  return path


def sample(workdir: str, *, num: int = 64, seed: int = 0) -> str:
  """VAE/CVAE: prior samples (a CVAE: labels 0, 1, ... in turn); AE/VQ-VAE/VQGAN: ``num``
  test images drawn by ``default_rng(seed)``, then their reconstructions (a VQ model's
  uniform code prior gives no useful samples). Writes ``samples/<name>.png`` and ``.npz``
  (images, labels) with a ``.run.json``; returns the PNG path."""
  if num < 1:
    raise ValueError(f"--num must be >= 1, got {num}")
  t = load_trained(workdir)
  config, a = t.config, t.config.autoencoder
  if a.kind == "vae":
    labels = np.arange(num) % t.source.num_classes if a.conditional else None
    imgs = prior_samples(config, t.model, t.state, jax.random.key(seed), num, labels)
    name = f"prior_seed{seed}_step{t.step}"
  else:
    test = jdata.load_all(W.build_source(config, "test"))
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(test["image"]), size=min(num, len(test["image"])), replace=False)
    imgs = np.concatenate([test["image"][idx],
                           reconstruct(config, t.model, t.state, test["image"][idx])])
    labels, name = None, f"recon_seed{seed}_step{t.step}"
  return W.write_images(
      os.path.join(workdir, "samples", name + ".png"), imgs, nrow=int(math.ceil(math.sqrt(num))),
      labels=np.asarray([] if labels is None else labels),
      record=W.run_record(config, "sample", checkpoint_step=t.step, seed=seed, num=num))
