"""``evaluate`` of the clip family: zero-shot accuracy per attribute on the test split,
image-to-text and text-to-image retrieval R@1 over the caption set, and a PNG of the
image-caption similarity matrix.

Zero-shot, two rules over the 216 caption prompts: ``zero_shot_accuracy`` takes CLIP's softmax
over every caption (at the learnt temperature) and sums the probabilities of the captions that
state each value (the marginal of the attribute); ``zero_shot_accuracy_mean_prompt`` embeds each
value as the mean of the features of the captions that state it (prompt ensembling, Radford et
al. 2021 sec. 3.1.4) and takes the nearest."""
from __future__ import annotations

import os

import numpy as np
from PIL import Image, ImageDraw

from experiments import workdir as W
from experiments.families.clip import data as CD
from experiments.families.clip.runner import encoders, load_trained
from jaxgen import data as jdata
from jaxgen.metrics import to_uint8


def zero_shot_marginal(image_feats, caption_feats, caption_values, scale: float) -> dict:
  """{attribute: predicted value [N]}: argmax over values of the summed softmax probability
  of the captions stating each value."""
  logits = scale * image_feats @ caption_feats.T                 # [N, 216]
  p = np.exp(logits - logits.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  return {name: np.argmax(np.stack([p[:, caption_values[:, a] == v].sum(-1)
                                    for v in range(CD.SIZES[a])], -1), -1)
          for a, name in enumerate(CD.ATTRIBUTES)}


def zero_shot(image_feats, caption_feats, caption_values) -> dict:
  """{attribute: predicted value [N]} from ensembled value embeddings."""
  out = {}
  for a, name in enumerate(CD.ATTRIBUTES):
    k = CD.SIZES[a]
    classes = np.stack([caption_feats[caption_values[:, a] == v].mean(0) for v in range(k)])
    classes /= np.linalg.norm(classes, axis=-1, keepdims=True)
    out[name] = np.argmax(image_feats @ classes.T, axis=-1)
  return out


def evaluate(workdir: str, *, num_samples: int | None = None) -> dict:
  t = load_trained(workdir)
  n = num_samples or t.config.eval.num_samples
  test = jdata.load_all(CD.source("test", t.config.data.image_size))
  images, captions = test["image"][:n], test["caption"][:n]
  enc_image, enc_text = encoders(t)
  fi, ft = enc_image(images), enc_text(t.ids)                  # [n, D], [216, D]
  _, values = CD.caption_table()
  pred = zero_shot_marginal(fi, ft, values, float(np.minimum(np.exp(
      np.asarray(t.params["logit_scale"])), 100.0)))
  mean_prompt = zero_shot(fi, ft, values)
  sims = fi @ ft.T                                             # [n, 216]
  present = np.unique(captions)
  best_image = np.argmax(sims[:, present], axis=0)             # per present caption
  result = {
      "checkpoint_step": t.step, "num_test_images": int(len(images)),
      "zero_shot_accuracy": {a: float(np.mean(pred[a] == test[a][:n])) for a in CD.ATTRIBUTES},
      "zero_shot_all_four": float(np.mean(np.all([pred[a] == test[a][:n]
                                                  for a in CD.ATTRIBUTES], axis=0))),
      "zero_shot_accuracy_mean_prompt": {a: float(np.mean(mean_prompt[a] == test[a][:n]))
                                         for a in CD.ATTRIBUTES},
      "image_to_text_r1": float(np.mean(np.argmax(sims, -1) == captions)),
      "text_to_image_r1": float(np.mean(captions[best_image] == present)),
      "num_captions_scored": int(len(present)),
  }
  path = os.path.join(workdir, "eval", f"similarity_step{t.step}.png")
  m = t.config.eval.matrix_size
  similarity_png(t, images[:m], captions[:m], path, features=(fi[:m], ft[captions[:m]]))
  return W.write_evaluation(workdir, t.config, t.step, result, num_samples=n)


def similarity_png(t, images, captions, path: str, features=None, cell: int = 20) -> str:
  """Images down the side, their captions (numbered) across, cosine similarity as grey."""
  if features is None:
    enc_image, enc_text = encoders(t)
    features = enc_image(images), enc_text(t.ids[captions])
  sim = features[0] @ features[1].T                            # [m, m]
  m = len(images)
  lo, hi = float(sim.min()), float(sim.max())
  grey = ((sim - lo) / max(hi - lo, 1e-9) * 255).astype(np.uint8)
  tiles = to_uint8(images)
  tiles = np.repeat(np.repeat(tiles, max(1, cell // tiles.shape[1]), 1),
                    max(1, cell // tiles.shape[2]), 2)[:, :cell, :cell]
  texts, _ = CD.caption_table()
  width = cell * (m + 1) + 340
  canvas = Image.new("RGB", (width, cell * (m + 1)), (255, 255, 255))
  draw = ImageDraw.Draw(canvas)
  for i in range(m):
    canvas.paste(Image.fromarray(tiles[i][..., :3]), (0, cell * (i + 1)))
    draw.text((cell * (i + 1) + 5, 4), str(i), fill=(0, 0, 0))
    draw.text((cell * (m + 1) + 6, cell * (i + 1) + 4), f"{i}: {texts[captions[i]]}",
              fill=(0, 0, 0))
    for j in range(m):
      g = int(grey[i, j])
      draw.rectangle([cell * (j + 1), cell * (i + 1), cell * (j + 2) - 1, cell * (i + 2) - 1],
                     fill=(g, g, g), outline=(200, 0, 0) if i == j else None)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  canvas.save(path)
  return path


def sample(workdir: str, *, num: int = 16, seed: int = 0) -> str:
  """A PNG of the image-caption similarity of `num` test images and their captions."""
  t = load_trained(workdir)
  test = jdata.load_all(CD.source("test", t.config.data.image_size))
  idx = np.random.default_rng(seed).choice(len(test["image"]), size=num, replace=False)
  return similarity_png(t, test["image"][idx], test["caption"][idx],
                        os.path.join(workdir, "samples", f"similarity_seed{seed}_step{t.step}.png"))
