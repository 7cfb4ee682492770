"""``evaluate`` of the ddpm family: classifier-FID of EMA samples against the test split, with
its floor and the untrained baseline, sample confidence and class coverage, and the
variational bound in bits per dimension (Ho et al. 2020, sec. 4.2)."""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from experiments import workdir as W
from experiments.families.ddpm import model as B
from experiments.families.ddpm.runner import class_labels, load_trained
from jaxgen import data as jdata
from jaxgen import diffusion as D
from jaxgen import metrics as M
from jaxgen.nn import init_unet

CLASSIFIER_DIR = "classifier"


def evaluate(workdir: str, *, num_samples: int | None = None, seed: int = 1) -> dict:
  t = load_trained(workdir)
  config, source, model = t.config, t.source, t.model
  n = num_samples or config.eval.num_samples
  train = jdata.load_all(source)
  test = jdata.load_all(W.build_source(config, "test"))
  if "label" not in train:
    raise ValueError(f"dataset {config.data.name!r} has no labels: classifier-FID needs them")
  clf = W.cached_classifier(os.path.join(workdir, CLASSIFIER_DIR), train["image"],
                            {"label": train["label"]}, key=jax.random.key(1000),
                            num_steps=config.eval.classifier_steps)
  test_acc = M.classifier_accuracy(clf, test["image"], {"label": test["label"]})
  fid_to_test = W.fid_to(clf, test["image"])

  table = B.sampling_table(config)
  fn = B.make_sample_fn(model, t.schedule, config, config.sample.sampler)
  labels = class_labels(model, n, source.num_classes)
  key = jax.random.key(seed)
  samples = B.draw_samples(fn, t.state.ema_params, key, n, config.sample.batch_size,
                           source.image_shape, table, config.sample.eta, labels,
                           desc="EMA samples")
  probs = M.classifier_predict(clf, samples)["label"]
  result = {
      "checkpoint_step": t.step, "num_samples": n,
      "sampler": config.sample.sampler, "sampling_steps": config.sample.steps,
      "classifier_test_accuracy": float(np.mean(list(test_acc.values()))),
      "fid_samples_vs_test": fid_to_test(samples),
      "fid_floor_train_vs_test": fid_to_test(W.real_subset(train["image"], n, seed)),
      "confident_fraction": float(np.mean(probs.max(-1) >= 0.9)),
      "class_histogram": np.bincount(probs.argmax(-1), minlength=probs.shape[-1]).tolist(),
  }
  result["fid_ratio_to_floor"] = result["fid_samples_vs_test"] / result["fid_floor_train_vs_test"]
  if config.eval.untrained_baseline:
    init = init_unet(model, jax.random.key(config.seed + 7))
    untrained = B.draw_samples(fn, init, key, n, config.sample.batch_size, source.image_shape,
                               table, config.sample.eta, labels, desc="untrained samples")
    result["fid_untrained_vs_test"] = fid_to_test(untrained)
  if config.eval.bpd_examples:
    x0 = jnp.asarray(test["image"][:config.eval.bpd_examples])
    y = None if labels is None else jnp.asarray(test["label"][:x0.shape[0]])
    dc = config.diffusion
    bpd = jax.jit(lambda p, x, k: D.variational_bound_bpd(
        lambda xt, tt: model.apply({"params": p}, xt, tt, y), t.schedule, x, k,
        prediction_type=dc.prediction_type, variance_type=dc.variance_type))(
            t.state.ema_params, x0, jax.random.key(seed + 1))
    result["test_bpd"] = float(jnp.mean(bpd))
  return W.write_evaluation(workdir, config, t.step, result, samples, seed=seed, num_samples=n)
