"""``evaluate``: classifier-FID of EMA samples against the test split, with its floor and the
untrained baseline, sample confidence and class coverage, and the variational bound in bpd."""
from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from experiments import common
from experiments.sample import load_trained
from jaxgen import data as jdata
from jaxgen import diffusion as D
from jaxgen import metrics as M
from jaxgen.nn import init_unet

CLASSIFIER_DIR = "classifier"


def feature_classifier(workdir: str, config, train_arrays, seed: int = 0):
  """The classifier-FID feature network, trained once on the train split and cached."""
  path = os.path.join(workdir, CLASSIFIER_DIR)
  if os.path.isfile(os.path.join(path, "config.json")):
    try:
      return M.load_classifier(path)
    except Exception as e:  # noqa: BLE001 -- a corrupt cache is retrained
      print(f"cached classifier in {path} is unreadable ({e}); retraining it")
  bundle = M.train_classifier(train_arrays["image"], {"label": train_arrays["label"]},
                              key=jax.random.key(seed + 1000),
                              num_steps=config.eval.classifier_steps)
  M.save_classifier(path, bundle)
  return bundle


def evaluate(workdir: str, *, num_samples: int | None = None, seed: int = 1) -> dict:
  config, source, model, schedule, state, step = load_trained(workdir)
  n = num_samples or config.eval.num_samples
  train = jdata.load_all(source)
  test = jdata.load_all(common.build_source(config, "test"))
  if "label" not in train:
    raise ValueError(f"dataset {config.data.name!r} has no labels: classifier-FID needs them")
  clf = feature_classifier(workdir, config, train)
  test_acc = M.classifier_accuracy(clf, test["image"], {"label": test["label"]})
  test_feats = M.classifier_features(clf, test["image"])

  def fid_to_test(images):
    return M.frechet_distance(*M.feature_statistics(M.classifier_features(clf, images)),
                              *M.feature_statistics(test_feats))

  table = common.sampling_table(config)
  fn = common.make_sample_fn(model, schedule, config, config.sample.sampler)
  labels = (np.arange(n) % source.num_classes
            if model.config.num_class_embeds is not None else None)
  key = jax.random.key(seed)
  samples = common.draw_samples(fn, state.ema_params, key, n, config.sample.batch_size,
                                source.image_shape, table, config.sample.eta, labels,
                                desc="EMA samples")
  rng = np.random.default_rng(seed)
  real = train["image"][rng.choice(len(train["image"]), size=min(n, len(train["image"])),
                                   replace=False)]
  probs = M.classifier_predict(clf, samples)["label"]
  result = {
      "checkpoint_step": step, "num_samples": n,
      "sampler": config.sample.sampler, "sampling_steps": config.sample.steps,
      "classifier_test_accuracy": float(np.mean(list(test_acc.values()))
                                        if isinstance(test_acc, dict) else test_acc),
      "fid_samples_vs_test": fid_to_test(samples),
      "fid_floor_train_vs_test": fid_to_test(real),
      "confident_fraction": float(np.mean(probs.max(-1) >= 0.9)),
      "class_histogram": np.bincount(probs.argmax(-1), minlength=probs.shape[-1]).tolist(),
  }
  result["fid_ratio_to_floor"] = result["fid_samples_vs_test"] / result["fid_floor_train_vs_test"]
  if config.eval.untrained_baseline:
    init = init_unet(model, jax.random.key(config.seed + 7))
    untrained = common.draw_samples(fn, init, key, n, config.sample.batch_size,
                                    source.image_shape, table, config.sample.eta, labels,
                                    desc="untrained samples")
    result["fid_untrained_vs_test"] = fid_to_test(untrained)
  if config.eval.bpd_examples:
    x0 = jnp.asarray(test["image"][:config.eval.bpd_examples])
    y = None if labels is None else jnp.asarray(test["label"][:x0.shape[0]])
    dc = config.diffusion
    bpd = jax.jit(lambda p, x, k: D.variational_bound_bpd(
        lambda xt, t: model.apply({"params": p}, xt, t, y), schedule, x, k,
        prediction_type=dc.prediction_type, variance_type=dc.variance_type))(
            state.ema_params, x0, jax.random.key(seed + 1))
    result["test_bpd"] = float(jnp.mean(bpd))
  out = os.path.join(workdir, "eval")
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, f"eval_step{step}.json"), "w") as f:
    json.dump(result, f, indent=2)
  M.save_image_grid(os.path.join(out, f"samples_step{step}.png"), samples[:100], nrow=10)
  common.write_run_json(os.path.join(out, "run.json"), config, command="evaluate",
                        checkpoint_step=step, seed=seed, num_samples=n)
  with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
    f.write(json.dumps({"step": step, **{f"eval/{k}": v for k, v in result.items()
                                          if isinstance(v, (int, float))}}) + "\n")
  return result
