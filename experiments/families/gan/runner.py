"""``train`` and ``sample`` of the GAN family.

Image i of a grid uses seed ``seed + i`` (``z = normal(key(seed + i))``), so the same seed
always gives the same image. The classifier-FID of EMA samples against the test split is
logged every ``gan.fid_every`` steps and at the end (the feature network is the workdir's
attribute classifier, `experiments.families.gan.trained.attribute_classifier`).
"""
from __future__ import annotations

import logging
import os

import jax
import numpy as np

from experiments import workdir as W
from experiments.families.gan import model as B
from experiments.families.gan.config import GANConfig
from experiments.families.gan.trained import attribute_classifier, load_trained
from jaxgen import data as jdata
from jaxgen import gan
from jaxgen.training import train_loop

log = logging.getLogger(__name__)
__all__ = ["sample", "train"]
HINT = ("Lower gan.g_learning_rate / gan.d_learning_rate or raise gan.r1_gamma before "
        "resuming.")


def train(config: GANConfig, workdir: str) -> dict:
  """Trains (or resumes) a GAN in ``workdir`` through `jaxgen.training.train_loop`.

  Keys: ``root = key(config.seed)``; the networks are drawn from ``fold_in(root, 0)``, every
  step's noise from ``fold_in(root, 1)`` (folded with the step inside the step function); the
  loader shuffles with ``config.seed``.

  Returns:
    {"step", "d_loss", "g_loss", "fid", "terminated", "resumed_from", "state"}.
  Raises:
    ConfigError: an invalid config (before anything is built).
    NonFiniteLossError: a loss or the parameters became NaN/inf (the last good checkpoint
      stays on disk).
  """
  config.validate()
  settings, tc = config.gan, config.train
  gan.get_losses(settings.loss)
  source = W.build_source(config, "train")
  generator, discriminator = B.build_models(config, source.image_shape)
  W.save_config(workdir, config)
  root = jax.random.key(config.seed)
  init_key, train_key = jax.random.fold_in(root, 0), jax.random.fold_in(root, 1)
  step_fn = jax.jit(gan.make_gan_step(loss=settings.loss, r1_gamma=settings.r1_gamma,
                                      ema_decay=tc.ema_decay, ema_warmup=tc.ema_warmup,
                                      pl_weight=settings.pl_weight,
                                      pl_interval=settings.pl_interval), donate_argnums=0)
  generate = B.make_generate_fn(generator)
  fid_state: dict = {}  # the classifier's FID function, on first use

  def fid_now(state) -> float:
    if not fid_state:
      clf = attribute_classifier(workdir, config, source)
      test = jdata.load_all(W.build_source(config, "test"))
      fid_state["fid"] = W.fid_to(clf, test["image"])
    imgs = B.seed_images(generate, state.generator_variables(), state.z_dim,
                         np.arange(settings.fid_samples))
    return fid_state["fid"](imgs)

  fid = None

  def track_fid(state, step: int):
    nonlocal fid
    fid = fid_now(state)
    log.info("step %d: classifier-FID %.3f", step, fid)
    return {"fid": fid}  # the loop writes it to metrics.jsonl / TensorBoard

  def write_samples(state, step: int):
    n = config.sample.num
    if not n:
      return
    imgs = B.seed_images(generate, state.generator_variables(), state.z_dim, np.arange(n))
    W.write_images(os.path.join(workdir, "samples", f"step_{step:07d}.png"), imgs,
                   seeds=np.arange(n), record=W.run_record(config, "train", step=step))

  at_end = [write_samples] + ([track_fid] if settings.fid_every else [])
  out = train_loop(
      lambda: B.init_state(config, generator, discriminator, init_key),
      lambda state, batch: step_fn(state, batch, train_key),
      num_steps=tc.num_steps, workdir=workdir,
      loader=jdata.Loader(source, config.data.batch_size, seed=config.seed),
      batch_keys=("image",), image_shape=source.image_shape,
      log_every=tc.log_every, checkpoint_every=tc.checkpoint_every,
      max_to_keep=tc.max_to_keep, finite_keys=("d_loss", "g_loss"),
      postfix=lambda m: {"d": f"{m['d_loss']:.3f}", "g": f"{m['g_loss']:.3f}"},
      hooks=[(settings.fid_every, track_fid), (tc.sample_every, write_samples)],
      at_end=at_end, run_record=W.run_record(config, "train"), desc="train gan", hint=HINT)
  return dict(out.summary("d_loss", "g_loss"), fid=fid)


def sample(workdir: str, *, num: int = 64, seed: int = 0, seeds=None,
           truncation_psi: float | None = None) -> str:
  """Writes ``samples/seeds<a>-<b>_psi<psi>_step<step>.png`` (+ .npz of images and seeds, and
  .run.json): the EMA generator's images of seeds ``seed .. seed + num - 1`` (or `seeds`).

  Args:
    workdir: a trained GAN workdir.
    num, seed: the seeds' count and first seed.
    seeds: explicit seeds instead.
    truncation_psi: in [0, 1] (style-based generators); default ``gan.truncation_psi``.

  Returns:
    The PNG path.
  """
  t = load_trained(workdir)
  psi = t.config.gan.truncation_psi if truncation_psi is None else truncation_psi
  seeds = list(range(seed, seed + num)) if seeds is None else list(seeds)
  if not seeds or num < 1:
    raise ValueError(f"need at least one seed, got num={num} seeds={seeds}.")
  imgs = B.seed_images(B.make_generate_fn(t.generator), t.variables, t.z_dim, seeds, psi)
  name = f"seeds{seeds[0]}-{seeds[-1]}_psi{psi:g}_step{t.step}"
  return W.write_images(os.path.join(workdir, "samples", name + ".png"), imgs,
                        seeds=np.asarray(seeds),
                        record=W.run_record(t.config, "sample", checkpoint_step=t.step,
                                            seeds=seeds, truncation_psi=psi))
