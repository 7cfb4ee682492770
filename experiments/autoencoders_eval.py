"""``sample`` and ``evaluate`` for the autoencoder family (see ``experiments.autoencoders``).

evaluate reports, on the test split: reconstruction MSE and PSNR, classifier-FID of the
reconstructions (and of prior samples for a VAE) against the test images with the
train-vs-test floor of the same features, ELBO in bits per dimension and KL per latent
dimension (VAE), codebook perplexity and usage (VQ), and the accuracy with which a held-out
classifier recognises the requested label in CVAE samples.
"""
from __future__ import annotations

import functools
import json
import math
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np

from experiments import autoencoders as A
from experiments import common
from jaxgen import data as jdata
from jaxgen import metrics as M
from jaxgen import vae as V
from jaxgen.nn import Autoencoder
from jaxgen.training import restore_arrays

FID_CLASSIFIER_DIR = "classifier_fid"
CHUNK = 250  # images per jitted call (padded): one compile per function


def load_trained(workdir: str):
  """(config, source, model, state, step) of the newest readable checkpoint in ``workdir``."""
  config = common.load_workdir_config(workdir)
  if A.options(config)["betas"]:
    raise ValueError(f"{workdir} is a beta sweep: load one of its runs, e.g. "
                     f"{A.sweep_dir(workdir, A.options(config)['betas'][0])}")
  source = common.build_source(config, "train")
  model = A.build_model(config, source)
  abstract = jax.eval_shape(lambda k: A.init_state(config, model, k, source.image_shape),
                            jax.random.key(0))
  zeros = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), abstract)
  state, step = restore_arrays(os.path.join(workdir, "checkpoints"), zeros)
  return config, source, model, state, step


def eval_params(config, state):
  """(autoencoder params, codebook embedding or None): EMA parameters for AE/VAE; for VQ
  models the raw parameters, which the EMA codebook was fitted to."""
  kind = A.options(config)["kind"]
  if kind in ("ae", "vae"):
    return state.ema_params, None
  g = state.g if kind == "vqgan" else state
  return g.params["model"], g.embedding()


def _fns(model: Autoencoder, likelihood: str):
  return _fns_for(model.config, likelihood)


@functools.lru_cache(maxsize=8)
def _fns_for(config, likelihood: str):
  model = Autoencoder(config)
  @jax.jit
  def recon(params, emb, x, y):
    z = V.encode(model, params, x, y, embedding=emb)
    return V.decode(model, params, z, y, likelihood=likelihood)

  @jax.jit
  def generate(params, z, y):
    return V.decode(model, params, z, y, likelihood=likelihood)

  @jax.jit
  def vae_terms(params, x, y, key, log_scale):
    out = model.apply({"params": params}, x, y, method=Autoencoder.encode)
    mean, logvar = V.split_moments(out)
    z = V.reparameterize(key, mean, logvar)
    dec = model.apply({"params": params}, z, y, method=Autoencoder.decode)
    terms = V.negative_elbo(x, dec, mean, logvar, likelihood=likelihood, log_scale=log_scale)
    kl_dims = 0.5 * (mean * mean + jnp.exp(logvar) - 1.0 - logvar)
    return terms["neg_elbo"], terms["nll"], kl_dims, mean

  @jax.jit
  def indices(params, emb, x, y):
    return V.encode_indices(model, params, x, emb, y)

  return recon, generate, vae_terms, indices


def _chunked(fn, arrays, *rest):
  """Applies fn(*rest_before, *chunk_arrays...) in padded chunks of CHUNK along axis 0."""
  n = len(arrays[0])
  outs = []
  for s in range(0, n, CHUNK):
    chunk = [None if a is None else np.asarray(a[s:s + CHUNK]) for a in arrays]
    pad = CHUNK - len(chunk[0])
    chunk = [None if c is None else np.concatenate([c, np.repeat(c[-1:], pad, 0)]) for c in chunk]
    out = jax.device_get(fn(*rest, *chunk))
    outs.append(jax.tree.map(lambda o: o[:CHUNK - pad], out))
  return jax.tree.map(lambda *xs: np.concatenate(xs), *outs)


def reconstruct(config, model, state, images, labels=None) -> np.ndarray:
  params, emb = eval_params(config, state)
  recon = _fns(model, A.options(config)["likelihood"])[0]
  return _chunked(lambda x, y: recon(params, emb, x, y), [images, labels])


def prior_samples(config, model, state, key, num: int, labels=None) -> np.ndarray:
  """VAE decodes of z ~ N(0, I) (given labels for a CVAE)."""
  params, _ = eval_params(config, state)
  z = np.asarray(V.sample_prior(key, num, model.config.latent_shape))
  generate = _fns(model, A.options(config)["likelihood"])[1]
  return _chunked(lambda z, y: generate(params, z, y), [z, labels])


def write_grids(workdir, config, model, state, step) -> str:
  """samples/recon_step<N>.png (test originals above reconstructions) and, for a VAE,
  samples/prior_step<N>.png (a CVAE: one row per label). Returns the main grid's path."""
  o = A.options(config)
  test = jdata.load_all(common.build_source(config, "test"))
  n = max(8, min(config.sample.num, 64) // 8 * 8)
  y = test["label"][:n] if o["conditional"] else None
  rec = reconstruct(config, model, state, test["image"][:n], y)
  out = os.path.join(workdir, "samples")
  both = np.concatenate([test["image"][:n].reshape((n // 8, 8) + rec.shape[1:]),
                         rec.reshape((n // 8, 8) + rec.shape[1:])], axis=1)
  path = os.path.join(out, f"recon_step{step:07d}.png")
  M.save_image_grid(path, both.reshape((-1,) + rec.shape[1:]), nrow=8)
  if o["kind"] == "vae":
    k = config.sample.num
    labels = None
    if o["conditional"]:
      c = model.config.num_classes
      k = c * 8
      labels = np.repeat(np.arange(c), 8)
    imgs = prior_samples(config, model, state, jax.random.key(config.seed + 99), k, labels)
    path = os.path.join(out, f"prior_step{step:07d}.png")
    M.save_image_grid(path, imgs, nrow=8 if labels is not None else int(math.ceil(math.sqrt(k))))
    np.savez_compressed(path[:-4] + ".npz", images=imgs)
  common.write_run_json(os.path.join(out, "run.json"), config, command="train", step=step)
  return path


def sample(workdir: str, *, num: int = 64, sampler=None, steps=None, seed: int = 0,
           eta=None) -> str:
  """VAE/CVAE: a grid of prior samples (CVAE: labels 0, 1, ... in turn); AE/VQ-VAE/VQGAN: test
  images and their reconstructions (a VQ model's uniform code prior gives no useful samples).
  ``sampler``, ``steps`` and ``eta`` are diffusion arguments and are ignored."""
  del sampler, steps, eta
  if num < 1:
    raise ValueError(f"--num must be >= 1, got {num}")
  config, source, model, state, step = load_trained(workdir)
  o = A.options(config)
  out = os.path.join(workdir, "samples")
  if o["kind"] == "vae":
    labels = np.arange(num) % source.num_classes if o["conditional"] else None
    imgs = prior_samples(config, model, state, jax.random.key(seed), num, labels)
    name = f"prior_seed{seed}_step{step}"
  else:
    test = jdata.load_all(common.build_source(config, "test"))
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(test["image"]), size=min(num, len(test["image"])), replace=False)
    imgs = np.concatenate([test["image"][idx], reconstruct(config, model, state,
                                                           test["image"][idx])])
    labels, name = None, f"recon_seed{seed}_step{step}"
  path = os.path.join(out, name + ".png")
  M.save_image_grid(path, imgs, nrow=int(math.ceil(math.sqrt(num))))
  np.savez_compressed(path[:-4] + ".npz", images=imgs,
                      labels=np.asarray([] if labels is None else labels))
  common.write_run_json(os.path.join(out, name + ".run.json"), config, command="sample",
                        checkpoint_step=step, seed=seed, num=num)
  return path


def fid_classifier(workdir: str, config, train: dict):
  """Feature / attribute classifier for evaluation (heads: label and, for shapes, every
  attribute), trained once on the train split and cached in WORKDIR/classifier_fid. It is a
  different network (seed, width) from the VQGAN perceptual-loss classifier."""
  path = os.path.join(workdir, FID_CLASSIFIER_DIR)
  if os.path.isfile(os.path.join(path, "config.json")):
    return M.load_classifier(path)
  heads = dict(A.attribute_labels(train), label=train["label"])
  bundle = M.train_classifier(train["image"], heads, key=jax.random.key(config.seed + 1000),
                              num_steps=config.eval.classifier_steps)
  M.save_classifier(path, bundle)
  return bundle


def bin_width(config) -> float:
  """Quantisation step of the data in [-1, 1]: digits have 17 grey levels, others 8 bits."""
  return 2.0 / 16.0 if config.data.name == "digits" and config.data.image_size in (None, 8) \
      else 2.0 / 255.0


def evaluate(workdir: str, *, num_samples: int | None = None, seed: int = 1) -> dict:
  """Evaluates a trained workdir (or each run of a beta sweep); writes eval/eval_step<N>.json."""
  config = common.load_workdir_config(workdir)
  o = A.options(config)
  if o["betas"]:
    rows, shared = [], os.path.join(workdir, FID_CLASSIFIER_DIR)
    for b in o["betas"]:
      sub = A.sweep_dir(workdir, b)
      if os.path.isdir(shared) and not os.path.isdir(os.path.join(sub, FID_CLASSIFIER_DIR)):
        shutil.copytree(shared, os.path.join(sub, FID_CLASSIFIER_DIR))  # one classifier per sweep
      r = evaluate(sub, num_samples=num_samples, seed=seed)
      if not os.path.isdir(shared):
        shutil.copytree(os.path.join(sub, FID_CLASSIFIER_DIR), shared)
      rows.append({"beta": float(b), **{k: r[k] for k in (
          "test_mse", "test_psnr", "kl_per_latent_dim", "test_kl", "elbo_bpd",
          "fid_recon_vs_test", "fid_samples_vs_test", "active_units")}})
    result = {"sweep": rows}
    os.makedirs(os.path.join(workdir, "eval"), exist_ok=True)
    with open(os.path.join(workdir, "eval", "sweep.json"), "w") as f:
      json.dump(result, f, indent=2)
    return result
  config, source, model, state, step = load_trained(workdir)
  n = num_samples or config.eval.num_samples
  train = jdata.load_all(source)
  test = jdata.load_all(common.build_source(config, "test"))
  clf = fid_classifier(workdir, config, train)
  test_feats = M.classifier_features(clf, test["image"])

  def fid_to_test(images):
    return M.frechet_distance(*M.feature_statistics(M.classifier_features(clf, images)),
                              *M.feature_statistics(test_feats))

  y = test["label"] if o["conditional"] else None
  rec = reconstruct(config, model, state, test["image"], y)
  rng = np.random.default_rng(seed)
  real = train["image"][rng.choice(len(train["image"]), size=min(len(test["image"]),
                                                                 len(train["image"])),
                                   replace=False)]
  result = {"kind": o["kind"], "checkpoint_step": step, "num_test": int(len(rec)),
            "test_mse": float(M.mse(test["image"], rec)),
            "test_psnr": float(M.psnr(test["image"], rec)),
            "fid_recon_vs_test": fid_to_test(rec),
            "fid_floor_train_vs_test": fid_to_test(real),
            "classifier_test_accuracy": M.classifier_accuracy(clf, test["image"],
                                                              {"label": test["label"]})["label"]}
  params, emb = eval_params(config, state)
  if o["kind"] == "vae":
    result.update(_vae_metrics(config, model, params, test, y, seed))
    labels = np.arange(n) % source.num_classes if o["conditional"] else None
    samples = prior_samples(config, model, state, jax.random.key(seed), n, labels)
    result["fid_samples_vs_test"] = fid_to_test(samples)
    result["num_samples"] = n
    if o["conditional"]:
      pred = M.classifier_predict(clf, samples)["label"].argmax(-1)
      result["conditional_accuracy"] = float(np.mean(pred == labels))
    M.save_image_grid(os.path.join(workdir, "eval", f"samples_step{step}.png"), samples[:100],
                      nrow=10)
  if emb is not None:
    idx = _chunked(lambda x: _fns(model, "gaussian")[3](params, emb, x, None), [test["image"]])
    m = V.codebook_metrics(V.code_counts(jnp.asarray(idx), emb.shape[0]))
    result.update(codebook_size=int(emb.shape[0]), codebook_perplexity=float(m["perplexity"]),
                  codebook_perplexity_fraction=float(m["perplexity"]) / emb.shape[0],
                  codes_used=float(m["codes_used"]))
  out = os.path.join(workdir, "eval")
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, f"eval_step{step}.json"), "w") as f:
    json.dump(result, f, indent=2)
  M.save_image_grid(os.path.join(out, f"recon_step{step}.png"),
                    np.concatenate([test["image"][:50], rec[:50]]), nrow=10)
  common.write_run_json(os.path.join(out, "run.json"), config, command="evaluate",
                        checkpoint_step=step, seed=seed)
  with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
    f.write(json.dumps({"step": step, **{f"eval/{k}": v for k, v in result.items()
                                          if isinstance(v, (int, float))}}) + "\n")
  return result


def _vae_metrics(config, model, params, test, y, seed) -> dict:
  o = A.options(config)
  vae_terms = _fns(model, o["likelihood"])[2]
  key = jax.random.key(seed + 5)
  neg_elbo, nll, kl_dims, mean = _chunked(
      lambda x, y: vae_terms(params, x, y, key, o["log_scale"]), [test["image"], y])
  d = int(np.prod(test["image"].shape[1:]))
  bw = bin_width(config) if o["likelihood"] == "gaussian" else None
  kl_per_dim = kl_dims.reshape(len(kl_dims), -1).mean(0)  # [latent dims]
  # Active units (Burda et al. 2016): latent dims whose posterior mean varies, Cov > 0.01.
  active = int(np.sum(mean.reshape(len(mean), -1).var(0) > 0.01))
  return {"elbo_bpd": float(np.mean(V.bits_per_dim(neg_elbo, d, bw))),
          "nll_bpd": float(np.mean(V.bits_per_dim(nll, d, bw))),
          "test_kl": float(kl_per_dim.sum()), "kl_per_latent_dim": float(kl_per_dim.mean()),
          "kl_per_dim_max": float(kl_per_dim.max()), "latent_dims": int(kl_per_dim.size),
          "active_units": active}
