"""``evaluate`` of the ldm family: does the model draw what the prompt says?

The judge is an attribute classifier (heads shape / colour / size / position) trained on every
real training image, held-out combinations included (it is the evaluator, not part of the
generator), cached in ``WORKDIR/attr_classifier``. It reads:

* prompt following at ``sample.guidance``: ``eval.samples_per_prompt`` samples of each of
  ``eval.seen_prompts`` training captions and of the ten held-out ones; the share with all four
  attributes as prompted, and the accuracy per attribute;
* the guidance trade-off: for each of ``eval.guidance_scales``, ``eval.sweep_samples`` samples of
  the captions of the first test images; CLIP score (the cosine of the text encoder's CLIP,
  `jaxgen.metrics.clip_score`), classifier-FID against the whole test split, all-four accuracy;
* negative prompting: "a circle" without and with the negative prompt "red", and with the
  colour it draws most often as the negative prompt: the share of each colour;
* memorisation: each sample's nearest training image in pixel space, against the same distance
  for real test images (a grid of samples above their nearest neighbours);
* sampling time per image (after the compile).
"""
from __future__ import annotations

import os
import time

import jax
import numpy as np

from experiments import workdir as W
from experiments.families.clip import data as CD
from experiments.families.ldm.runner import load_trained
from experiments.families.ldm.sampling import sample_images, write_prompt_grid
from jaxgen import data as jdata
from jaxgen import metrics as M
from jaxgen.data import SHAPES_HELD_OUT, shapes_caption

CLASSIFIER_DIR = "attr_classifier"
ATTRIBUTES = CD.ATTRIBUTES
NEGATIVE = ("a circle", "red")


def attribute_classifier(workdir: str, config):
  """The judge: trained on the whole shapes train split (key ``seed + 1000``)."""
  train = jdata.load_all(jdata.get_source("shapes", "train", image_size=config.data.image_size))
  return W.cached_classifier(os.path.join(workdir, CLASSIFIER_DIR), train["image"],
                             {k: train[k] for k in ATTRIBUTES},
                             heads={k: n for k, n in zip(ATTRIBUTES, CD.SIZES)},
                             key=jax.random.key(config.seed + 1000),
                             num_steps=config.eval.classifier_steps, augment_noise=0.05,
                             augment_shift=0, features=tuple(config.eval.classifier_features))


def _float(images_uint8) -> np.ndarray:
  return jdata.uint8_to_float(np.asarray(images_uint8))


def read_attributes(clf, images_uint8) -> dict:
  """{attribute: predicted value [N]}."""
  probs = M.classifier_predict(clf, _float(images_uint8))
  return {k: np.argmax(probs[k], -1) for k in ATTRIBUTES}


def following(pred: dict, values: np.ndarray) -> dict:
  """Share of samples with all four attributes right and the accuracy per attribute, for
  predictions [N] and prompted values [N, 4]."""
  right = np.stack([pred[k] == values[:, i] for i, k in enumerate(ATTRIBUTES)], -1)
  return {"all_four": float(right.all(-1).mean()),
          "per_attribute": {k: float(right[:, i].mean()) for i, k in enumerate(ATTRIBUTES)}}


def seen_captions(num: int, seed: int) -> list[tuple]:
  """`num` training combinations (not held out), drawn by ``default_rng(seed)``."""
  _, values = CD.caption_table()
  held = {tuple(c) for c in SHAPES_HELD_OUT}
  seen = [tuple(v) for v in values.tolist() if tuple(v) not in held]
  idx = np.random.default_rng(seed).choice(len(seen), size=min(num, len(seen)), replace=False)
  return [seen[i] for i in sorted(idx)]


def _prompt_block(t, clf, combos, n: int, key, guidance) -> tuple[dict, np.ndarray, float]:
  prompts = [shapes_caption(*c) for c in combos for _ in range(n)]
  values = np.asarray([c for c in combos for _ in range(n)], np.int32)
  start = time.perf_counter()
  images = sample_images(t, prompts, key, guidance=guidance)
  seconds = time.perf_counter() - start
  pred = read_attributes(clf, images)
  total = following(pred, values)
  total["per_prompt"] = {
      shapes_caption(*c): following({k: v[i * n:(i + 1) * n] for k, v in pred.items()},
                                    values[i * n:(i + 1) * n])["all_four"]
      for i, c in enumerate(combos)}
  return total, images, seconds / len(images)


def nearest_distances(images_uint8, reference_uint8, chunk: int = 256) -> tuple:
  """(RMS pixel distance in [0, 1] units to the nearest reference image [N], its index [N])."""
  ref = reference_uint8.reshape(len(reference_uint8), -1).astype(np.float32) / 255.0
  ref_sq = (ref ** 2).sum(-1)
  dist, idx = [], []
  for s in range(0, len(images_uint8), chunk):
    x = images_uint8[s:s + chunk].reshape(-1, ref.shape[1]).astype(np.float32) / 255.0
    d = np.maximum((x ** 2).sum(-1)[:, None] + ref_sq[None] - 2.0 * x @ ref.T, 0.0)
    idx.append(np.argmin(d, -1))
    dist.append(np.sqrt(d[np.arange(len(x)), idx[-1]] / ref.shape[1]))
  return np.concatenate(dist), np.concatenate(idx)


def _clip_score(t, images_uint8, prompts) -> float:
  c = t.text_encoder.clip
  size = c.model.config.vision_config.image_size
  x = _float(images_uint8)
  f = x.shape[1] // size
  x = x.reshape(len(x), size, f, size, f, 3).mean((2, 4))  # box-filtered to CLIP's size
  ids = t.text_encoder.tokenizer(list(prompts))
  return float(np.mean(M.clip_score(c.model, c.params, x, ids, preprocess=False)))


def evaluate(workdir: str, *, num_samples: int | None = None) -> dict:
  """Writes ``eval/eval_step<N>.json`` (and the grids beside it); returns the figures.
  ``num_samples`` overrides ``eval.samples_per_prompt``."""
  t = load_trained(workdir)
  config, e = t.config, t.config.eval
  n = num_samples or e.samples_per_prompt
  clf = attribute_classifier(workdir, config)
  test = jdata.load_all(jdata.get_source("shapes", "test", image_size=config.data.image_size))
  test_u8 = np.asarray(M.to_uint8(test["image"]))
  clf_acc = M.classifier_accuracy(clf, test["image"], {k: test[k] for k in ATTRIBUTES})
  root = jax.random.key(config.seed + 7)
  g = config.sample.guidance
  result = {"checkpoint_step": t.step, "guidance": g, "sampler": config.sample.sampler,
            "steps": config.sample.steps, "samples_per_prompt": n,
            "classifier_test_accuracy": clf_acc}

  seen = seen_captions(e.seen_prompts, config.seed)
  result["seen"], seen_images, _ = _prompt_block(t, clf, seen, n, jax.random.fold_in(root, 0), g)
  result["held_out"], held_images, per_image = _prompt_block(
      t, clf, list(SHAPES_HELD_OUT), n, jax.random.fold_in(root, 1), g)
  # Timed on the held-out block, which runs the sampler the seen block compiled.
  result["sampling_seconds_per_image"] = per_image

  # Guidance sweep on the captions of the first test images.
  m = min(e.sweep_samples, len(test_u8))
  captions = [shapes_caption(*v) for v in zip(*(test[k][:m].tolist() for k in ATTRIBUTES))]
  values = np.stack([test[k][:m] for k in ATTRIBUTES], -1)
  fid = W.fid_to(clf, test["image"])
  sweep = {}
  for i, scale in enumerate(e.guidance_scales):
    images = sample_images(t, captions, jax.random.fold_in(root, 10 + i), guidance=scale)
    sweep[f"{scale:g}"] = {"clip_score": _clip_score(t, images, captions),
                           "classifier_fid": fid(_float(images)),
                           "all_four": following(read_attributes(clf, images), values)["all_four"]}
  result["guidance_sweep"] = sweep
  from experiments.families.guidance.report import save_plot  # pylint: disable=C0415
  save_plot(os.path.join(workdir, "eval", f"guidance_step{t.step}.png"),
            [{"scale": float(s), "clip_score": v["clip_score"], "fid": v["classifier_fid"],
              "all_four": v["all_four"]} for s, v in sweep.items()],
            title=f"{config.name}: guidance sweep ({m} samples per scale)",
            metrics=(("clip_score", "CLIP score"), ("fid", "classifier-FID vs test"),
                     ("all_four", "all four attributes right")),
            tradeoff=("clip_score", "CLIP score"))
  real = W.real_subset(jdata.load_all(jdata.get_source("shapes", "train"))["image"], m,
                       config.seed)
  result["real_reference"] = {"clip_score": _clip_score(t, test_u8[:m], captions),
                              "classifier_fid_train_vs_test": fid(real), "num": m}

  # Negative prompting: "a circle" without and with the negative "red"; and, since the prompt
  # alone may seldom draw red, also with its most frequent colour as the negative prompt.
  k = e.negative_samples
  colours = list(jdata.shapes_attribute_values("color"))
  circle = list(jdata.shapes_attribute_values("shape")).index("circle")

  def run_negative(i, negative):
    images = sample_images(t, [NEGATIVE[0]] * k, jax.random.fold_in(root, 20 + i), guidance=g,
                           negative_prompts=negative)
    pred = read_attributes(clf, images)
    share = np.bincount(pred["color"], minlength=len(colours)) / len(images)
    return images, {"colour_shares": dict(zip(colours, map(float, share))),
                    "circle": float(np.mean(pred["shape"] == circle))}

  plain_images, plain = run_negative(0, None)
  neg = {"without": plain}
  rows, names = [plain_images[:8]], [NEGATIVE[0]]
  top = max(plain["colour_shares"], key=plain["colour_shares"].get)
  for i, negative in enumerate(dict.fromkeys((NEGATIVE[1], top))):
    images, neg[f"with_{negative}"] = run_negative(1 + i, negative)
    rows.append(images[:8])
    names.append(f"{NEGATIVE[0]}  (negative: {negative})")
  write_prompt_grid(os.path.join(workdir, "eval", f"negative_step{t.step}.png"),
                    np.concatenate(rows), names, per_row=min(8, k))
  result["negative_prompt"] = {"prompt": NEGATIVE[0], "most_frequent_colour": top, **neg}

  # Memorisation: nearest training images of samples, and of real test images.
  train_u8 = np.asarray(M.to_uint8(jdata.load_all(CD.source("train", config.data.image_size,
                                                             held_out=True))["image"]))
  samples = np.concatenate([seen_images, held_images])
  d_samples, nearest = nearest_distances(samples, train_u8)
  d_test, _ = nearest_distances(test_u8[:len(d_samples)], train_u8)
  # the first sample of each of 4 seen and 4 held-out prompts, and their nearest images
  first = lambda images: np.arange(min(4, len(images) // n)) * n
  rows = np.concatenate([first(seen_images), len(seen_images) + first(held_images)])
  picks, nn_idx = samples[rows], nearest[rows]
  result["nearest_training_image"] = {
      "samples_rms_median": float(np.median(d_samples)),
      "test_images_rms_median": float(np.median(d_test)),
      "samples_closer_than_any_test_image": float(np.mean(d_samples < d_test.min()))}
  write_prompt_grid(os.path.join(workdir, "eval", f"nearest_step{t.step}.png"),
                    np.concatenate([picks, train_u8[nn_idx]]),
                    ["samples (4 seen, 4 held-out prompts)", "nearest training image"],
                    per_row=len(picks))
  write_prompt_grid(os.path.join(workdir, "eval", f"held_out_step{t.step}.png"),
                    np.concatenate([held_images[i * n:i * n + min(8, n)]
                                    for i in range(len(SHAPES_HELD_OUT))]),
                    [shapes_caption(*c) for c in SHAPES_HELD_OUT], per_row=min(8, n))
  return W.write_evaluation(workdir, config, t.step, result,
                            num_samples_per_prompt=n)
