"""The GAN family's runner entry points (DCGAN and the style-based generator).

  python -m experiments.main train --config experiments/configs/dcgan_digits.py --workdir DIR
  python -m experiments.main sample --workdir DIR --num 16 --seed 0     # seeds 0..15
  python -m experiments.main evaluate --workdir DIR

Model: ``config.model = {'arch': 'dcgan' | 'stylegan', ...}`` (see `build_models`). Family
settings in ``config.options`` (defaults in `DEFAULT_OPTIONS`). Image i of a grid uses seed
``seed + i`` (``z = normal(key(seed + i))``), so the same seed always gives the same image.
Classifier-FID of EMA samples against the test split is logged every ``options.fid_every``
steps; the feature network is an attribute classifier cached in ``WORKDIR/attr_classifier``
(for ``shapes``: heads shape / color / size / position; otherwise the dataset label).
"""
from __future__ import annotations

import json
import logging
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments import common, loop
from experiments.config import Config
from jaxgen import data as jdata
from jaxgen import gan
from jaxgen import metrics as M
from jaxgen import parallel
from jaxgen.nn import StyleDiscriminator, StyleGenerator
from jaxgen.nn.gan import dcgan_from_dict
from jaxgen.nn.stylegan import check_truncation_psi, stylegan_config_from_dict
from jaxgen.training import restore_arrays, save

log = logging.getLogger(__name__)
NonFiniteLossError = loop.NonFiniteLossError

DEFAULT_OPTIONS = {
    "loss": "nonsaturating",     # 'minimax', 'nonsaturating' or 'hinge'
    "r1_gamma": 0.0,             # R1 weight gamma (0: off)
    "pl_weight": 0.0,            # path-length regulariser weight (0: off; stylegan only)
    "pl_interval": 1,            # ... applied every this many steps (see make_gan_step)
    "g_learning_rate": 2e-4,
    "d_learning_rate": 2e-4,
    "beta1": 0.5,
    "beta2": 0.999,
    "truncation_psi": 1.0,       # for `sample`
    "fid_every": 0,              # classifier-FID of EMA samples during training (0: end only)
    "fid_samples": 500,
    "classifier_steps": 600,     # attribute / feature classifier training steps
}
CLASSIFIER_DIR = "attr_classifier"
# the class probability above which a sample's attribute value counts as definite (the
# confident-sample counts of `evaluate`; `gan_tools` uses it for arithmetic's groups and edits)
CONFIDENT = 0.9


def options(config: Config) -> dict:
  unknown = set(config.options) - set(DEFAULT_OPTIONS)
  if unknown:
    raise ValueError(f"unknown GAN options {sorted(unknown)}; expected some of "
                     f"{sorted(DEFAULT_OPTIONS)}.")
  opts = {**DEFAULT_OPTIONS, **config.options}
  if opts["pl_weight"] and config.model.get("arch") != "stylegan":
    raise ValueError(f"options.pl_weight={opts['pl_weight']} needs model.arch='stylegan' (the "
                     f"path-length regulariser differentiates the synthesis w.r.t. w), got "
                     f"{config.model.get('arch')!r}.")
  return opts


def build_models(config: Config, image_shape):
  """(generator, discriminator) from ``config.model`` with 'arch' 'dcgan' or 'stylegan'."""
  fields = dict(config.model)
  arch = fields.pop("arch", None)
  if arch == "dcgan":
    return dcgan_from_dict(fields, image_shape)
  if arch == "stylegan":
    sc = stylegan_config_from_dict(fields, image_shape)
    return StyleGenerator(sc), StyleDiscriminator(sc)
  raise ValueError(f"config.model['arch'] must be 'dcgan' or 'stylegan', got {arch!r}.")


def _optimizers(opts):
  def adam(lr):
    return optax.adam(lr, b1=opts["beta1"], b2=opts["beta2"])
  return adam(opts["g_learning_rate"]), adam(opts["d_learning_rate"])


def attribute_heads(source) -> dict:
  """Classifier heads of a dataset: shapes' four attributes, else its label."""
  attrs = getattr(source, "attributes", None)
  if attrs:
    return {name: len(values) for name, values in attrs.items()}
  if not source.num_classes:
    raise ValueError(f"dataset {source.name!r} has no labels: classifier-FID needs them.")
  return {"label": int(source.num_classes)}


def attribute_classifier(workdir: str, config: Config, source=None, seed: int = 0):
  """The attribute / feature classifier, trained once on the train split and cached."""
  path = os.path.join(workdir, CLASSIFIER_DIR)
  if os.path.isfile(os.path.join(path, "config.json")):
    try:
      return M.load_classifier(path)
    except Exception as e:  # noqa: BLE001 -- a corrupt cache is retrained
      log.warning("cached classifier in %s is unreadable (%s); retraining it", path, e)
  source = source or common.build_source(config, "train")
  heads = attribute_heads(source)
  train = jdata.load_all(source)
  bundle = M.train_classifier(train["image"], {k: train[k] for k in heads}, heads=heads,
                              key=jax.random.key(seed + 1000),
                              num_steps=options(config)["classifier_steps"],
                              augment_noise=0.05, augment_shift=0)
  M.save_classifier(path, bundle)
  return bundle


def make_generate_fn(generator):
  """jit(variables, z [B, z_dim], psi) -> images [B, H, W, C] clipped to [-1, 1]."""
  style = isinstance(generator, StyleGenerator)

  @jax.jit
  def run(variables, z, psi):
    x = generator.apply(variables, z, psi) if style else generator.apply(variables, z)
    return jnp.clip(x, -1.0, 1.0)

  def generate(variables, z, truncation_psi=1.0, batch_size: int = 256):
    if style:
      check_truncation_psi(truncation_psi)  # before any work
    elif truncation_psi != 1.0:
      raise ValueError("truncation needs a style-based generator (a mapped w); the DCGAN "
                       "samples z directly: use truncation_psi=1.")
    z = np.asarray(z, np.float32)
    outs = []
    for s in range(0, z.shape[0], batch_size):
      chunk = z[s:s + batch_size]
      pad = batch_size - chunk.shape[0]
      if pad:  # one compiled shape for every call and chunk
        chunk = np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:], chunk.dtype)])
      out = np.asarray(run(variables, jnp.asarray(chunk), jnp.float32(truncation_psi)))
      outs.append(out[:out.shape[0] - pad])
    return np.concatenate(outs)

  return generate


def seed_images(generate, variables, z_dim: int, seeds, truncation_psi=1.0):
  """Images for integer seeds (image i depends only on seeds[i])."""
  return generate(variables, gan.latents_from_seeds(np.asarray(seeds), z_dim), truncation_psi)


def _validate(config: Config, mesh) -> None:
  if config.data.batch_size % mesh.devices.size:
    raise ValueError(f"data.batch_size={config.data.batch_size} must be a multiple of the "
                     f"{mesh.devices.size} devices used for data parallelism")
  if config.train.num_steps < 1:
    raise ValueError(f"train.num_steps must be >= 1, got {config.train.num_steps}")


def train(config: Config, workdir: str) -> dict:
  """Trains (or resumes) a GAN in ``workdir``.

  Returns:
    {"step", "d_loss", "g_loss", "fid", "terminated", "resumed_from", "state"}.
  """
  opts = options(config)
  gan.get_losses(opts["loss"])
  os.makedirs(workdir, exist_ok=True)
  mesh = parallel.make_mesh()
  _validate(config, mesh)
  source = common.build_source(config, "train")
  generator, discriminator = build_models(config, source.image_shape)
  common.save_config(workdir, config)
  common.write_run_json(os.path.join(workdir, "run.json"), config, command="train")
  tc = config.train
  root = jax.random.key(config.seed)
  init_key, train_key = jax.random.fold_in(root, 0), jax.random.fold_in(root, 1)
  g_tx, d_tx = _optimizers(opts)
  state = gan.GANState.create(generator, discriminator, init_key, g_tx=g_tx, d_tx=d_tx,
                              path_length=opts["pl_weight"] > 0)
  state = parallel.replicate(state, mesh)
  loader = jdata.Loader(source, config.data.batch_size, seed=config.seed)
  manager, state, resumed_from = common.restore_or_start(workdir, state, loader,
                                                        max_to_keep=tc.max_to_keep)
  step_fn = jax.jit(gan.make_gan_step(loss=opts["loss"], r1_gamma=opts["r1_gamma"],
                                      ema_decay=tc.ema_decay, ema_warmup=tc.ema_warmup,
                                      pl_weight=opts["pl_weight"],
                                      pl_interval=opts["pl_interval"]),
                    donate_argnums=0)
  generate = make_generate_fn(generator)

  fid_state = {}

  def fid_now(state) -> float:
    if not fid_state:
      clf = attribute_classifier(workdir, config, source, config.seed)
      test = jdata.load_all(common.build_source(config, "test"))
      fid_state.update(clf=clf, stats=M.feature_statistics(
          M.classifier_features(clf, test["image"])))
    imgs = seed_images(generate, state.generator_variables(), state.z_dim,
                       np.arange(opts["fid_samples"]))
    mu, sigma = M.feature_statistics(M.classifier_features(fid_state["clf"], imgs))
    return M.frechet_distance(mu, sigma, *fid_state["stats"])

  def write_samples(state, step: int):
    n = config.sample.num
    imgs = seed_images(generate, state.generator_variables(), state.z_dim, np.arange(n))
    path = os.path.join(workdir, "samples", f"step_{step:07d}.png")
    M.save_image_grid(path, imgs, nrow=int(math.ceil(math.sqrt(n))))
    np.savez_compressed(path[:-4] + ".npz", images=imgs, seeds=np.arange(n))

  def checkpoint(state):
    # Never overwrite the last good checkpoint with NaN/inf weights (the losses are only
    # checked every log_every steps).
    if not loop.all_finite((state.g_params, state.g_ema, state.d_params)):
      raise NonFiniteLossError(
          f"GAN parameters are not finite at step {int(jax.device_get(state.step))}; not "
          f"saving a checkpoint. The last good one (step {manager.latest_step()}) is kept.")
    # A host copy: saving replicated device arrays costs one small compile per leaf shape.
    save(manager, jax.device_get(state), loader.get_state())

  def step(state, batch):
    return step_fn(state, parallel.shard_batch({"image": batch["image"]}, mesh), train_key)

  last, fid = {}, None

  def on_log(done, m):
    last.clear()
    last.update(m)
    if not all(math.isfinite(m[k]) for k in ("d_loss", "g_loss")):
      raise NonFiniteLossError(
          f"GAN losses d={m['d_loss']} g={m['g_loss']} at step {done}; stopping. "
          f"The last good checkpoint (step {manager.latest_step()}) is kept; lower the "
          "learning rates or raise options.r1_gamma before resuming.")
    metrics.write(done, m)
    return {"d": f"{m['d_loss']:.3f}", "g": f"{m['g_loss']:.3f}"}

  def track_fid(state, done):
    nonlocal fid
    fid = fid_now(state)
    metrics.write(done, {"fid": fid})
    log.info("step %d: classifier-FID %.3f", done, fid)

  metrics = loop.MetricsLog(workdir)
  try:
    state, terminated = loop.run(
        state, step, loader, image_shape=source.image_shape, num_steps=tc.num_steps,
        desc="train gan", log_every=tc.log_every, checkpoint_every=tc.checkpoint_every,
        checkpoint=checkpoint, on_log=on_log,
        hooks=[(opts["fid_every"], track_fid), (tc.sample_every, write_samples)])
    if not terminated:
      checkpoint(state)
      done = int(jax.device_get(state.step))
      if config.sample.num:
        write_samples(state, done)
      if opts["fid_every"]:
        track_fid(state, done)
  finally:
    manager.wait_until_finished()
    manager.close()
    metrics.close()
  return {"step": int(jax.device_get(state.step)), "d_loss": last.get("d_loss"),
          "g_loss": last.get("g_loss"), "fid": fid, "terminated": terminated,
          "resumed_from": resumed_from, "state": state}


def load_trained(workdir: str):
  """(config, source, generator, state, step) of the newest readable checkpoint."""
  config = common.load_workdir_config(workdir)
  source = common.build_source(config, "train")
  generator, discriminator = build_models(config, source.image_shape)
  opts = options(config)
  g_tx, d_tx = _optimizers(opts)
  abstract = jax.eval_shape(lambda k: gan.GANState.create(
      generator, discriminator, k, g_tx=g_tx, d_tx=d_tx,
      path_length=opts["pl_weight"] > 0).arrays(), jax.random.key(0))
  zeros = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), abstract)
  state = gan.GANState(**zeros, g_apply=generator.apply, d_apply=discriminator.apply,
                       g_tx=g_tx, d_tx=d_tx, z_dim=gan.generator_z_dim(generator))
  state, step = restore_arrays(os.path.join(workdir, "checkpoints"), state)
  return config, source, generator, state, step


def sample(workdir: str, *, num: int = 64, sampler=None, steps=None, seed: int = 0, eta=None,
           seeds=None, truncation_psi: float | None = None) -> str:
  """Writes a grid of images for seeds ``seed .. seed + num - 1`` (or ``seeds``) from the EMA
  generator; returns the PNG path. ``sampler``/``steps``/``eta`` are diffusion options
  and must be left unset."""
  if sampler is not None or steps is not None or eta is not None:
    raise ValueError("a GAN samples in one pass: --sampler/--steps/--eta do not apply.")
  config, _, generator, state, step = load_trained(workdir)
  psi = options(config)["truncation_psi"] if truncation_psi is None else truncation_psi
  seeds = list(range(seed, seed + num)) if seeds is None else list(seeds)
  if not seeds or num < 1:
    raise ValueError(f"need at least one seed, got num={num} seeds={seeds}.")
  imgs = seed_images(make_generate_fn(generator), state.generator_variables(), state.z_dim,
                     seeds, psi)
  name = f"seeds{seeds[0]}-{seeds[-1]}_psi{psi:g}_step{step}"
  path = os.path.join(workdir, "samples", name + ".png")
  M.save_image_grid(path, imgs, nrow=int(math.ceil(math.sqrt(len(seeds)))))
  np.savez_compressed(path[:-4] + ".npz", images=imgs, seeds=np.asarray(seeds))
  common.write_run_json(os.path.join(workdir, "samples", name + ".run.json"), config,
                        command="sample", checkpoint_step=step, seeds=seeds,
                        truncation_psi=psi)
  return path


def evaluate(workdir: str, *, num_samples: int | None = None, seed: int = 1) -> dict:
  """Classifier-FID of EMA samples vs the test split (with the real-vs-real floor and the
  untrained-generator baseline), the classifier's test accuracy, sample attribute histograms."""
  config, source, generator, state, step = load_trained(workdir)
  n = num_samples or config.eval.num_samples
  clf = attribute_classifier(workdir, config, source, config.seed)
  train = jdata.load_all(source)
  test = jdata.load_all(common.build_source(config, "test"))
  heads = [name for name, _ in clf.config.heads]
  test_stats = M.feature_statistics(M.classifier_features(clf, test["image"]))

  def fid_to_test(images):
    return M.frechet_distance(*M.feature_statistics(M.classifier_features(clf, images)),
                              *test_stats)

  generate = make_generate_fn(generator)
  seeds = np.arange(n) + 10_000 * seed
  samples = seed_images(generate, state.generator_variables(), state.z_dim, seeds)
  rng = np.random.default_rng(seed)
  real = train["image"][rng.choice(len(train["image"]), size=min(n, len(train["image"])),
                                   replace=False)]
  probs = M.classifier_predict(clf, samples)
  result = {
      "checkpoint_step": step, "num_samples": n,
      "classifier_test_accuracy": M.classifier_accuracy(
          clf, test["image"], {k: test[k] for k in heads}),
      "fid_samples_vs_test": fid_to_test(samples),
      "fid_floor_train_vs_test": fid_to_test(real),
      "confident_fraction": {k: float(np.mean(p.max(-1) >= CONFIDENT)) for k, p in probs.items()},
      "sample_histograms": {k: np.bincount(p.argmax(-1), minlength=p.shape[-1]).tolist()
                            for k, p in probs.items()},
  }
  if config.eval.untrained_baseline:
    init = gan.GANState.create(generator, build_models(config, source.image_shape)[1],
                               jax.random.key(config.seed + 7), g_tx=optax.identity(),
                               d_tx=optax.identity())
    result["fid_untrained_vs_test"] = fid_to_test(
        seed_images(generate, init.generator_variables(ema=False), state.z_dim, seeds))
  out = os.path.join(workdir, "eval")
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, f"eval_step{step}.json"), "w") as f:
    json.dump(result, f, indent=2)
  M.save_image_grid(os.path.join(out, f"samples_step{step}.png"), samples[:100], nrow=10)
  common.write_run_json(os.path.join(out, "run.json"), config, command="evaluate",
                        checkpoint_step=step, seed=seed, num_samples=n)
  return result
