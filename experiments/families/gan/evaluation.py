"""``evaluate`` of the GAN family: classifier-FID of EMA samples against the test split, with
the real-vs-real floor and the untrained-generator baseline, the attribute classifier's test
accuracy, and the samples' attribute histograms and confident fractions."""
from __future__ import annotations


import jax
import numpy as np
import optax

from experiments import workdir as W
from experiments.families.gan import model as B
from experiments.families.gan.trained import CONFIDENT, load_trained
from jaxgen import data as jdata
from jaxgen import gan
from jaxgen import metrics as M

__all__ = ["evaluate"]


def evaluate(workdir: str, *, num_samples: int | None = None, seed: int = 1) -> dict:
  """Evaluates the newest checkpoint of a GAN workdir on seeds ``10000 * seed + i``.

  Writes ``eval/eval_step<step>.json``, ``eval/samples_step<step>.png`` (the first 100
  samples) and ``eval/run.json``, and appends the scalar results to ``metrics.jsonl``.

  Args:
    workdir: a trained GAN workdir.
    num_samples: samples drawn (default ``eval.num_samples``).
    seed: picks the seeds and the real subset of the FID floor.

  Returns:
    {"checkpoint_step", "num_samples", "classifier_test_accuracy" ({head: accuracy}),
    "fid_samples_vs_test", "fid_floor_train_vs_test", "confident_fraction" ({head: fraction}),
    "sample_histograms" ({head: counts}), and "fid_untrained_vs_test" with
    ``eval.untrained_baseline``}.
  """
  t = load_trained(workdir)
  config = t.config
  n = num_samples or config.eval.num_samples
  clf = t.classifier()
  train = jdata.load_all(t.source)
  test = jdata.load_all(W.build_source(config, "test"))
  heads = [name for name, _ in clf.config.heads]
  fid_to_test = W.fid_to(clf, test["image"])
  generate = B.make_generate_fn(t.generator)
  seeds = np.arange(n) + 10_000 * seed
  samples = B.seed_images(generate, t.variables, t.z_dim, seeds)
  probs = M.classifier_predict(clf, samples)
  result = {
      "checkpoint_step": t.step, "num_samples": n,
      "classifier_test_accuracy": M.classifier_accuracy(
          clf, test["image"], {k: test[k] for k in heads}),
      "fid_samples_vs_test": fid_to_test(samples),
      "fid_floor_train_vs_test": fid_to_test(W.real_subset(train["image"], n, seed)),
      "confident_fraction": {k: float(np.mean(p.max(-1) >= CONFIDENT)) for k, p in probs.items()},
      "sample_histograms": {k: np.bincount(p.argmax(-1), minlength=p.shape[-1]).tolist()
                            for k, p in probs.items()},
  }
  if config.eval.untrained_baseline:
    init = gan.GANState.create(t.generator, t.discriminator, jax.random.key(config.seed + 7),
                               g_tx=optax.identity(), d_tx=optax.identity())
    result["fid_untrained_vs_test"] = fid_to_test(
        B.seed_images(generate, init.generator_variables(ema=False), t.z_dim, seeds))
  return W.write_evaluation(workdir, config, t.step, result, samples, seed=seed, num_samples=n)
