"""``evaluate`` of the autoencoder family, on the test split.

Reconstruction MSE and PSNR; classifier-FID of the reconstructions (and of prior samples for
a VAE) against the test images, with the train-vs-test floor of the same features; for a VAE
the ELBO in bits per dimension, KL per latent dimension and active units; for VQ models the
codebook perplexity and usage; for a CVAE the fraction of samples that a held-out classifier
recognises as the requested label. A beta sweep tabulates its runs in ``eval/sweep.json``.
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from experiments import workdir as W
from experiments.families.autoencoder.config import AutoencoderExperiment
from experiments.families.autoencoder.inference import (code_indices, eval_params,
                                                        prior_samples, reconstruct, vae_terms)
from experiments.families.autoencoder.model import attribute_labels
from experiments.families.autoencoder.runner import load_trained, sweep_dir
from jaxgen import data as jdata
from jaxgen import metrics as M
from jaxgen import vae as V
from jaxgen.training import write_run_json

FID_CLASSIFIER_DIR = "classifier_fid"
SWEEP_KEYS = ("test_mse", "test_psnr", "kl_per_latent_dim", "test_kl", "elbo_bpd",
              "fid_recon_vs_test", "fid_samples_vs_test", "active_units")


def fid_classifier(directory: str, config: AutoencoderExperiment, train: dict):
  """The evaluation's feature classifier (heads: label and, for shapes, every attribute; key
  ``seed + 1000``), trained once on the train split and cached in ``directory``. It is a
  different network (seed, width) from VQGAN's perceptual-loss classifier."""
  heads = dict(attribute_labels(train), label=train["label"])
  return W.cached_classifier(directory, train["image"], heads,
                             key=jax.random.key(config.seed + 1000),
                             num_steps=config.eval.classifier_steps)


def bin_width(config: AutoencoderExperiment) -> float:
  """Quantisation step of the data in [-1, 1]: digits have 17 grey levels, others 8 bits."""
  if config.data.name == "digits" and config.data.image_size in (None, 8):
    return 2.0 / 16.0
  return 2.0 / 255.0


def evaluate(workdir: str, *, num_samples: int | None = None, seed: int = 1) -> dict:
  """Evaluates a trained workdir, or each run of a beta sweep (one feature classifier in
  ``WORKDIR/classifier_fid`` for all of them); writes ``eval/eval_step<N>.json`` (a sweep:
  ``eval/sweep.json``) and returns the result."""
  config = W.load_config(workdir)
  if config.autoencoder.betas:
    return _evaluate_sweep(workdir, config, num_samples, seed)
  return _evaluate_one(workdir, num_samples, seed)


def _evaluate_sweep(workdir: str, config: AutoencoderExperiment, num_samples, seed) -> dict:
  train = jdata.load_all(W.build_source(config, "train"))
  clf = fid_classifier(os.path.join(workdir, FID_CLASSIFIER_DIR), config, train)
  rows = []
  for b in config.autoencoder.betas:
    r = _evaluate_one(sweep_dir(workdir, b), num_samples, seed, clf=clf)
    rows.append({"beta": float(b), **{k: r[k] for k in SWEEP_KEYS}})
  result = {"sweep": rows}
  W.write_json(os.path.join(workdir, "eval", "sweep.json"), result)
  return result


def _evaluate_one(workdir: str, num_samples, seed: int, clf=None) -> dict:
  t = load_trained(workdir)
  config, source, model, state, step = t.config, t.source, t.model, t.state, t.step
  a = config.autoencoder
  n = num_samples or config.eval.num_samples
  train = jdata.load_all(source)
  test = jdata.load_all(W.build_source(config, "test"))
  if clf is None:
    clf = fid_classifier(os.path.join(workdir, FID_CLASSIFIER_DIR), config, train)
  fid_to_test = W.fid_to(clf, test["image"])

  y = test["label"] if a.conditional else None
  rec = reconstruct(config, model, state, test["image"], y)
  real = W.real_subset(train["image"], len(test["image"]), seed)
  result = {"kind": a.kind, "checkpoint_step": step, "num_test": int(len(rec)),
            "test_mse": float(M.mse(test["image"], rec)),
            "test_psnr": float(M.psnr(test["image"], rec)),
            "fid_recon_vs_test": fid_to_test(rec),
            "fid_floor_train_vs_test": fid_to_test(real),
            "classifier_test_accuracy": M.classifier_accuracy(clf, test["image"],
                                                              {"label": test["label"]})["label"]}
  params, emb = eval_params(config, state)
  out = os.path.join(workdir, "eval")
  if a.kind == "vae":
    result.update(_vae_metrics(config, model, params, test, y, seed))
    labels = np.arange(n) % source.num_classes if a.conditional else None
    samples = prior_samples(config, model, state, jax.random.key(seed), n, labels)
    result["fid_samples_vs_test"] = fid_to_test(samples)
    result["num_samples"] = n
    if a.conditional:
      pred = M.classifier_predict(clf, samples)["label"].argmax(-1)
      result["conditional_accuracy"] = float(np.mean(pred == labels))
    M.save_image_grid(os.path.join(out, f"samples_step{step}.png"), samples[:100], nrow=10)
  if emb is not None:
    idx = code_indices(model, params, emb, test["image"])
    m = V.codebook_metrics(V.code_counts(jnp.asarray(idx), emb.shape[0]))
    result.update(codebook_size=int(emb.shape[0]), codebook_perplexity=float(m["perplexity"]),
                  codebook_perplexity_fraction=float(m["perplexity"]) / emb.shape[0],
                  codes_used=float(m["codes_used"]))
  W.write_json(os.path.join(out, f"eval_step{step}.json"), result)
  M.save_image_grid(os.path.join(out, f"recon_step{step}.png"),
                    np.concatenate([test["image"][:50], rec[:50]]), nrow=10)
  write_run_json(os.path.join(out, "run.json"), W.run_record(
      config, "evaluate", checkpoint_step=step, seed=seed))
  W.log_eval(workdir, step, result)
  return result


def _vae_metrics(config: AutoencoderExperiment, model, params, test: dict, y, seed: int) -> dict:
  """ELBO / NLL in bits per dimension, KL per latent dimension and active units on ``test``
  (one reparameterised sample per image, key ``seed + 5``)."""
  a = config.autoencoder
  neg_elbo, nll, kl_dims, mean = vae_terms(config, model, params, test["image"], y,
                                           jax.random.key(seed + 5))
  d = int(np.prod(test["image"].shape[1:]))
  bw = bin_width(config) if a.likelihood == "gaussian" else None
  kl_per_dim = kl_dims.reshape(len(kl_dims), -1).mean(0)  # [latent dims]
  # Active units (Burda et al. 2016): latent dims whose posterior mean varies, Cov > 0.01.
  active = int(np.sum(mean.reshape(len(mean), -1).var(0) > 0.01))
  return {"elbo_bpd": float(np.mean(V.bits_per_dim(neg_elbo, d, bw))),
          "nll_bpd": float(np.mean(V.bits_per_dim(nll, d, bw))),
          "test_kl": float(kl_per_dim.sum()), "kl_per_latent_dim": float(kl_per_dim.mean()),
          "kl_per_dim_max": float(kl_per_dim.max()), "latent_dims": int(kl_per_dim.size),
          "active_units": active}
