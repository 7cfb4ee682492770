"""The trained CLIP that guides and scores the GAN family's text-driven tools (`clip_edit`,
`clip_generate`): loading a clip workdir for a generator's images, prompt features (optionally
ensembled over the CLIP's training captions), image features and CLIP scores."""
from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import re

import jax
import jax.numpy as jnp
import numpy as np

from experiments import workdir as W
from jaxgen import clip as C
from jaxgen import gan

__all__ = ["FrozenCLIP", "STOP_WORDS", "caption_matches", "clip_cosines", "clip_images_fn",
           "load_clip", "number", "prompt_features"]

STOP_WORDS = frozenset({"a", "an", "the", "at", "in", "on", "of"})


# --------------------------------------------------------------------- the frozen CLIP


@dataclasses.dataclass(frozen=True, eq=False)
class FrozenCLIP:
  """A trained clip workdir as a frozen judge and guide.

  Attributes:
    workdir, step: the run directory and its checkpoint's step.
    model, params: `jaxgen.nn.CLIPModel` and its EMA parameters.
    tokenizer: its caption tokenizer; max_length: token positions.
    captions: the captions it was trained on (the ensembling vocabulary).
    image_size: CLIP's image side; resize: whether generator images are resized to it.
  """
  workdir: str
  step: int
  model: object
  params: dict
  tokenizer: object
  max_length: int
  captions: tuple
  image_size: int
  resize: bool


def load_clip(workdir: str, image_shape, *, resize: bool = False) -> FrozenCLIP:
  """The clip workdir `workdir` for images of `image_shape` (the generator's [H, W, C]).

  Raises ValueError (before loading any weights) unless it is a clip workdir whose image size
  is the generator's, or `resize` is asked for."""
  from experiments.families.clip import data as CD  # pylint: disable=import-outside-toplevel
  from experiments.families.clip.runner import load_trained  # pylint: disable=C0415
  if not os.path.isfile(os.path.join(workdir, "config.json")):
    raise ValueError(f"--clip {workdir!r} is not a trained workdir (no config.json); train "
                     "one with: python -m experiments.main train --config "
                     "experiments/configs/clip_shapes.py --workdir DIR")
  config = W.load_config(workdir)
  if getattr(config, "family", None) != "clip":
    raise ValueError(f"--clip {workdir!r} holds a {getattr(config, 'family', '?')!r} run; "
                     "expected a workdir of the clip family (experiments/configs/clip_shapes.py).")
  size, side = int(config.data.image_size), int(image_shape[0])
  if size != side and not resize:
    raise ValueError(f"the CLIP in {workdir!r} sees {size}x{size} images but the generator "
                     f"draws {side}x{side}: pass --resize (resize=True) to resize the "
                     f"generator's images to {size}x{size}, or train a CLIP at the "
                     f"generator's size (--set data.image_size={side}).")
  if image_shape[-1] != 3:
    raise ValueError(f"CLIP reads RGB images; the generator draws {image_shape[-1]} channel(s).")
  t = load_trained(workdir)
  texts = CD.caption_table()[0]
  tok = CD.tokenizer(workdir, t.config.model.vocab_size, texts)
  return FrozenCLIP(workdir, t.step, t.model, t.params, tok, t.config.model.max_length,
                    tuple(texts), size, size != side)


def clip_images_fn(clip: FrozenCLIP):
  """``features(params, images [B, H, W, 3] in [-1, 1]) -> CLIP image features [B, E]`` (the
  images resized to CLIP's side when `clip.resize`); traceable, differentiable."""
  def features(params, images):
    images = gan.resize_for_clip(jnp.clip(images, -1.0, 1.0), clip.image_size)
    return clip.model.apply({"params": params}, images, method="encode_image")
  return features


def caption_matches(prompt: str, captions) -> list[str]:
  """The captions that contain every content word of `prompt` (articles and prepositions
  left out), as whole words."""
  words = [w for w in re.findall(r"[a-z]+", prompt.lower()) if w not in STOP_WORDS]
  return [c for c in captions if words and set(words) <= set(c.split())]


def _check_prompt(prompt, flag: str) -> str:
  if not isinstance(prompt, str) or not prompt.strip():
    raise ValueError(f"{flag} must be a non-empty text, got {prompt!r}.")
  return prompt.strip()


def prompt_features(clip: FrozenCLIP, prompts, *, ensemble: bool = False,
                    flag: str = "the prompt") -> np.ndarray:
  """Normalised text features [K, E] of `prompts`. With `ensemble`, each prompt's feature is
  the normalised mean over the CLIP's training captions that contain its words
  (`caption_matches`; prompt ensembling, Radford et al. 2021 sec. 3.1.4)."""
  prompts = [_check_prompt(p, flag) for p in prompts]
  enc = _text_features_fn(clip.model)
  if not ensemble:
    return np.asarray(enc(clip.params, jnp.asarray(clip.tokenizer(prompts, clip.max_length))))
  out = []
  for p in prompts:
    matches = caption_matches(p, clip.captions)
    if not matches:
      vocab = sorted({w for c in clip.captions for w in c.split()} - STOP_WORDS)
      raise ValueError(f"no training caption of the CLIP contains every word of {p!r}; "
                       f"ensembling needs words from {vocab}.")
    feats = enc(clip.params, jnp.asarray(clip.tokenizer(matches, clip.max_length)))
    out.append(np.asarray(gan.mean_text_features(feats)))
  return np.stack(out)


def number(text) -> float:
  """argparse type of --strength: a float, or an error that says a number was expected."""
  try:
    return gan.check_strength(float(text))
  except (TypeError, ValueError) as e:
    raise argparse.ArgumentTypeError(f"--strength must be a number, got {text!r}") from e


@functools.lru_cache(maxsize=None)
def _image_features_fn(model, image_size: int):
  def enc(params, images):
    images = gan.resize_for_clip(jnp.clip(images, -1.0, 1.0), image_size)
    return C.normalize(model.apply({"params": params}, images, method="encode_image"))
  return jax.jit(enc)


@functools.lru_cache(maxsize=None)
def _text_features_fn(model):
  return jax.jit(lambda p, ids: C.normalize(model.apply({"params": p}, ids,
                                                        method="encode_text")))


def clip_cosines(clip: FrozenCLIP, images, text_feats, batch_size: int = 500) -> np.ndarray:
  """cos(CLIP image features, text features) per image: images [N, H, W, 3], text [E] or
  [N, E] -> [N] (the CLIP score, `jaxgen.metrics.clip_score`'s cosine)."""
  enc = _image_features_fn(clip.model, clip.image_size)
  f = np.concatenate([np.asarray(enc(clip.params, jnp.asarray(images[i:i + batch_size])))
                      for i in range(0, len(images), batch_size)])
  return np.sum(f * np.asarray(C.normalize(jnp.asarray(text_feats))), -1)
