"""The autoencoder family's runner (``family="autoencoder"``): AE, VAE, beta-VAE, CVAE, VQ-VAE
and VQGAN, chosen by ``config.options["kind"]``.

Options (``config.options``; defaults in :data:`DEFAULTS`):
  kind: "ae" | "vae" | "vqvae" | "vqgan";  conditional: feed the label (CVAE);
  likelihood / log_scale / beta / kl_warmup_steps: the VAE objective;
  betas: a list of beta values: one run per beta in WORKDIR/beta_<b>/ (a beta sweep);
  num_codes / vq_beta / codebook_update / codebook_decay / dead_threshold: VQ;
  rec_loss: "mse" | "l1" pixel loss of VQ models (default: mse for vqvae, l1 for vqgan);
  disc (PatchDiscriminatorConfig fields) / disc_start / disc_weight / disc_learning_rate /
  perceptual ("classifier" | "vgg16:PATH" | "none") / perceptual_weight: VQGAN;
  adam_b1 / adam_b2: Adam betas of every optimizer (GANs: 0.5 / 0.9 as in VQGAN).
``config.model`` holds `jaxgen.nn.AutoencoderConfig` fields (image size and channels come
from the data). Sampling and evaluation live in ``experiments.autoencoders_eval``.
"""
from __future__ import annotations

import copy
import math
import os

import jax

from experiments import common, loop
from experiments.config import Config
from experiments.loop import NonFiniteLossError
from jaxgen import data as jdata
from jaxgen import metrics as M
from jaxgen import parallel
from jaxgen import vae as V
from jaxgen.nn import (Autoencoder, AutoencoderConfig, PatchDiscriminator,
                       PatchDiscriminatorConfig, init_autoencoder, init_discriminator)
from jaxgen.training import TrainState, make_optimizer, save

KINDS = ("ae", "vae", "vqvae", "vqgan")
DEFAULTS = dict(kind="vae", conditional=False, likelihood="gaussian", log_scale=0.0, beta=1.0,
                kl_warmup_steps=0, betas=None, num_codes=64, vq_beta=0.25,
                codebook_update="ema", codebook_decay=0.99, dead_threshold=1.0, rec_loss=None,
                disc=None, disc_start=0, disc_weight=0.8, disc_learning_rate=None,
                perceptual="classifier", perceptual_weight=1.0, perceptual_classifier_steps=400,
                adam_b1=0.9, adam_b2=0.999)
PERCEPTUAL_DIR = "perceptual_classifier"


def options(config: Config) -> dict:
  """The family options with defaults filled in, validated (before any compile)."""
  unknown = set(config.options) - set(DEFAULTS)
  if unknown:
    raise ValueError(f"unknown autoencoder options {sorted(unknown)}; known: {sorted(DEFAULTS)}")
  o = dict(DEFAULTS, **config.options)
  if o["kind"] not in KINDS:
    raise ValueError(f"options.kind must be one of {KINDS}, got {o['kind']!r}")
  if o["rec_loss"] is None:
    o["rec_loss"] = "l1" if o["kind"] == "vqgan" else "mse"
  if o["rec_loss"] not in ("mse", "l1"):
    raise ValueError(f"options.rec_loss must be 'mse' or 'l1', got {o['rec_loss']!r}")
  for name in ("beta", "vq_beta", "disc_weight", "perceptual_weight"):
    V.check_beta(o[name], f"options.{name}")
  for b in o["betas"] or ():
    V.check_beta(b, "every entry of options.betas")
  if o["kind"] in ("vqvae", "vqgan") and (not isinstance(o["num_codes"], int)
                                          or o["num_codes"] < 1):
    raise ValueError(f"options.num_codes (the codebook size) must be a positive int, got "
                     f"{o['num_codes']!r}")
  if o["likelihood"] not in V.LIKELIHOODS:
    raise ValueError(f"options.likelihood must be one of {V.LIKELIHOODS}, got {o['likelihood']!r}")
  if o["conditional"] and o["kind"] != "vae":
    raise ValueError("options.conditional is supported for kind='vae' (the CVAE)")
  p = o["perceptual"]
  if not (p in ("classifier", "none") or (isinstance(p, str) and p.startswith("vgg16:"))):
    raise ValueError(f"options.perceptual must be 'classifier', 'none' or 'vgg16:PATH', got {p!r}")
  return o


def build_model(config: Config, source) -> Autoencoder:
  o = options(config)
  fields = dict(config.model)
  h, w, c = source.image_shape
  fields.setdefault("image_size", (h, w))
  fields.setdefault("in_channels", c)
  fields["double_latent"] = o["kind"] == "vae"
  if o["conditional"]:
    if source.num_classes is None:
      raise ValueError(f"dataset {config.data.name!r} has no labels for a conditional VAE")
    fields["num_classes"] = source.num_classes
  fields = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
  model_config = AutoencoderConfig(**fields)
  if model_config.image_shape != tuple(source.image_shape):
    raise ValueError(f"config model image_size/in_channels give images of shape "
                     f"{model_config.image_shape}, but dataset {config.data.name!r} has "
                     f"{tuple(source.image_shape)}; drop them from config.model (they default "
                     "to the data's)")
  return Autoencoder(model_config)


def build_discriminator(config: Config) -> PatchDiscriminator:
  return PatchDiscriminator(PatchDiscriminatorConfig(**(options(config)["disc"] or {})))


def _tx(config: Config, lr: float | None = None):
  tc, o = config.train, options(config)
  return make_optimizer(lr or tc.learning_rate, warmup_steps=tc.warmup_steps,
                        total_steps=tc.num_steps, decay=tc.lr_decay,
                        weight_decay=tc.weight_decay, grad_clip=tc.grad_clip,
                        b1=o["adam_b1"], b2=o["adam_b2"])


def init_state(config: Config, model: Autoencoder, key: jax.Array, image_shape):
  """TrainState (AE/VAE), VQTrainState (VQ-VAE) or VQGANState (VQGAN)."""
  o = options(config)
  k_model, k_code, k_disc = jax.random.split(key, 3)
  params = init_autoencoder(model, k_model)
  if o["kind"] in ("ae", "vae"):
    return TrainState.create(apply_fn=model.apply, params=params, tx=_tx(config))
  cb = V.init_codebook(k_code, o["num_codes"], model.config.latent_channels)
  g = V.VQTrainState.create_vq(apply_fn=model.apply, model_params=params, codebook=cb,
                               tx=_tx(config), codebook_update=o["codebook_update"])
  if o["kind"] == "vqvae":
    return g
  disc = build_discriminator(config)
  dp = init_discriminator(disc, k_disc, image_shape)
  d = TrainState.create(apply_fn=disc.apply, params=dp, tx=_tx(config, o["disc_learning_rate"]))
  return V.VQGANState(g=g, d=d)


def perceptual_net(config: Config, workdir: str):
  """The VQGAN perceptual feature network (None when options.perceptual == 'none')."""
  p = options(config)["perceptual"]
  if p == "none":
    return None
  if p.startswith("vgg16:"):
    return V.load_vgg16_lpips(p[len("vgg16:"):])
  path = os.path.join(workdir, PERCEPTUAL_DIR)
  if os.path.isfile(os.path.join(path, "config.json")):
    return V.classifier_feature_net(M.load_classifier(path))
  train = jdata.load_all(common.build_source(config, "train"))
  heads = attribute_labels(train)
  bundle = M.train_classifier(train["image"], heads, key=jax.random.key(config.seed + 2024),
                              num_steps=options(config)["perceptual_classifier_steps"],
                              features=(16, 32), embed_dim=32)
  M.save_classifier(path, bundle)
  return V.classifier_feature_net(bundle)


def attribute_labels(arrays: dict) -> dict:
  """Every integer attribute of a dataset (shapes: shape, color, size, position), else label."""
  names = [k for k in jdata.SHAPES_ATTRIBUTES if k in arrays]
  return {k: arrays[k] for k in names} if names else {"label": arrays["label"]}


def make_steps(config: Config, model: Autoencoder):
  """Jitted step functions for the kind; VQGAN returns (g_step, d_step)."""
  o, tc = options(config), config.train
  common_kw = dict(ema_decay=tc.ema_decay, ema_warmup=tc.ema_warmup)
  if o["kind"] in ("ae", "vae"):
    step = V.make_autoencoder_step(model, kind=o["kind"], likelihood=o["likelihood"],
                                   log_scale=o["log_scale"], beta=o["beta"],
                                   kl_warmup_steps=o["kl_warmup_steps"], **common_kw)
    return jax.jit(step, donate_argnums=0)
  vq_kw = dict(beta=o["vq_beta"], codebook_update=o["codebook_update"],
               codebook_decay=o["codebook_decay"], dead_threshold=o["dead_threshold"])
  if o["kind"] == "vqvae":
    return jax.jit(V.make_vq_step(model, rec_loss=o["rec_loss"], **vq_kw, **common_kw),
                   donate_argnums=0)
  g, d = V.make_vqgan_steps(model, build_discriminator(config), disc_start=o["disc_start"],
                            rec_loss=o["rec_loss"],
                            disc_weight=o["disc_weight"], perceptual_weight=o["perceptual_weight"],
                            **vq_kw, **common_kw)
  return jax.jit(g, donate_argnums=0), jax.jit(d, donate_argnums=0)


def train(config: Config, workdir: str) -> dict:
  """Trains (or resumes) in ``workdir``; a beta sweep trains one run per beta in
  ``workdir/beta_<b>``. Returns a summary ({"step", "loss", ...}, or {"runs": {...}})."""
  o = options(config)
  os.makedirs(workdir, exist_ok=True)
  common.save_config(workdir, config)
  if not o["betas"]:
    return _train_one(config, workdir)
  runs = {}
  for b in o["betas"]:
    sub = copy.deepcopy(config)
    sub.options.update(beta=float(b), betas=None)
    runs[f"beta={b}"] = _train_one(sub, sweep_dir(workdir, b))
    runs[f"beta={b}"].pop("state", None)
  return {"runs": runs, "step": config.train.num_steps}


def sweep_dir(workdir: str, beta: float) -> str:
  return os.path.join(workdir, f"beta_{float(beta):g}")


def _train_one(config: Config, workdir: str) -> dict:
  o, tc = options(config), config.train
  mesh = parallel.make_mesh()
  if config.data.batch_size % mesh.devices.size:
    raise ValueError(f"data.batch_size={config.data.batch_size} must be a multiple of the "
                     f"{mesh.devices.size} devices")
  if tc.num_steps < 1:
    raise ValueError(f"train.num_steps must be >= 1, got {tc.num_steps}")
  source = common.build_source(config, "train")
  model = build_model(config, source)
  os.makedirs(workdir, exist_ok=True)
  common.save_config(workdir, config)
  common.write_run_json(os.path.join(workdir, "run.json"), config, command="train",
                        model=model.config.to_dict(), options=o)
  root = jax.random.key(config.seed)
  init_key, train_key = jax.random.fold_in(root, 0), jax.random.fold_in(root, 1)
  state = parallel.replicate(init_state(config, model, init_key, source.image_shape), mesh)
  pnet = parallel.replicate(perceptual_net(config, workdir), mesh) if o["kind"] == "vqgan" else None
  loader = jdata.Loader(source, config.data.batch_size, seed=config.seed)
  manager, state, resumed_from = common.restore_or_start(workdir, state, loader,
                                                        max_to_keep=tc.max_to_keep)
  steps = make_steps(config, model)
  keys = ("image", "label") if o["conditional"] else ("image",)

  restarts = 0  # dead-code restarts since this (re)start

  def run_step(state, batch):
    nonlocal restarts
    batch = parallel.shard_batch({k: batch[k] for k in keys}, mesh)
    if o["kind"] != "vqgan":
      state, metrics = steps(state, batch, train_key)
    else:
      g, gm, x_rec = steps[0](state.g, state.d.params, batch, train_key, pnet)
      d, dm = steps[1](state.d, batch, x_rec)
      state, metrics = V.VQGANState(g=g, d=d), dict(gm, **dm)
    if "restarted" in metrics:  # counted every step, not only on logged ones
      restarts = restarts + metrics["restarted"]
      metrics = dict(metrics, restarted_total=restarts)
    return state, metrics

  def checkpoint(state):
    if not loop.all_finite(state.arrays()):
      raise NonFiniteLossError("parameters are not finite; not saving a checkpoint")
    save(manager, state, loader.get_state())

  last_loss = float("nan")

  def on_log(done, m):
    nonlocal last_loss
    last_loss = m["loss"]
    if not math.isfinite(last_loss):
      raise NonFiniteLossError(f"loss is {last_loss} at step {done}; the last good "
                               f"checkpoint (step {manager.latest_step()}) is kept")
    metrics.write(done, m)
    return {"loss": f"{last_loss:.4f}"}

  metrics = loop.MetricsLog(workdir, tensorboard=False)
  try:
    state, terminated = loop.run(
        state, run_step, loader, image_shape=source.image_shape, num_steps=tc.num_steps,
        desc=f"train {o['kind']}", log_every=tc.log_every,
        checkpoint_every=tc.checkpoint_every, checkpoint=checkpoint, on_log=on_log)
    if not terminated:
      checkpoint(state)
  finally:
    manager.wait_until_finished()
    manager.close()
    metrics.close()
  if not terminated and config.sample.num:
    from experiments.autoencoders_eval import write_grids  # pylint: disable=import-outside-toplevel
    write_grids(workdir, config, model, state, int(jax.device_get(state.step)))
  return {"step": int(jax.device_get(state.step)), "loss": last_loss, "terminated": terminated,
          "resumed_from": resumed_from, "state": state}


def sample(workdir: str, **kwargs) -> str:
  """See `experiments.autoencoders_eval.sample`."""
  from experiments.autoencoders_eval import sample as _sample  # pylint: disable=C0415
  return _sample(workdir, **kwargs)


def evaluate(workdir: str, **kwargs) -> dict:
  """See `experiments.autoencoders_eval.evaluate`."""
  from experiments.autoencoders_eval import evaluate as _evaluate  # pylint: disable=C0415
  return _evaluate(workdir, **kwargs)
