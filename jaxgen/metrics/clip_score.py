"""CLIP score: how well each image follows its prompt, as the cosine of their CLIP features.

For image i and prompt i, `cos(encode_image(x_i), encode_text(ids_i))` (Radford et al. 2021's
similarity without the learnt temperature). The common "CLIP score" of text-to-image papers
(Hessel et al. 2021, "CLIPScore"; torchmetrics' `CLIPScore`) reports `100 * max(cos, 0)`:
`times_100=True` gives that; the default is the plain cosine in [-1, 1].
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.batching import map_batched
from jaxgen.nn.clip import CLIPModel, clip_preprocess

__all__ = ["clip_score"]


@functools.partial(jax.jit, static_argnames=("model", "preprocess"))
def _pair_cosine(model: CLIPModel, params: Any, images: jax.Array, ids: jax.Array, *,
                 preprocess: bool) -> jax.Array:
  if preprocess:
    images = clip_preprocess(images, model.config.vision_config.image_size)
  image = model.apply({"params": params}, images, method="encode_image").astype(jnp.float32)
  text = model.apply({"params": params}, ids, method="encode_text").astype(jnp.float32)
  image = image / jnp.linalg.norm(image, axis=-1, keepdims=True)
  text = text / jnp.linalg.norm(text, axis=-1, keepdims=True)
  return jnp.sum(image * text, axis=-1)  # [B]


def clip_score(model: CLIPModel, params: Any, images: Any, ids: Any, *, batch_size: int = 32,
               preprocess: bool = True, times_100: bool = False) -> np.ndarray:
  """Per-pair CLIP cosine of images and prompts, jitted and evaluated in fixed-size chunks.

  Args:
    model: a CLIPModel (e.g. from `jaxgen.interop.load_clip_model`).
    params: its parameters.
    images: with `preprocess`, uint8 in [0, 255] or float in [-1, 1], any size (resized as
      `clip_preprocess` does); without, already normalised at the model's size.  # [N, H, W, 3]
    ids: token ids of the matching prompts (`load_clip_tokenizer(folder)(prompts)`).  # [N, L]
    batch_size: pairs per compiled call; the last chunk is padded (one compile for any N).
    preprocess: apply `clip_preprocess` to `images`.
    times_100: return `100 * max(cos, 0)`, the usual reporting convention, instead of cos.

  Returns:
    float32 scores, one per pair.  # [N]

  Raises:
    ValueError: images and ids of different counts, bad shapes or pixel range.
  """
  images, ids = np.asarray(images), np.asarray(ids)
  if images.ndim != 4 or ids.ndim != 2 or images.shape[0] != ids.shape[0]:
    raise ValueError(f"clip_score expects images [N, H, W, 3] and ids [N, L] with the same N, "
                     f"got shapes {images.shape} and {ids.shape}")
  if preprocess:  # checks the range on the host once (traced chunks cannot be checked)
    clip_preprocess(images[:1], model.config.vision_config.image_size)
    dtype = images.dtype if images.dtype == np.uint8 else np.float32
    if np.issubdtype(images.dtype, np.floating):
      lo, hi = float(images.min()), float(images.max())
      if lo < -1.0 - 1e-3 or hi > 1.0 + 1e-3:
        raise ValueError(f"clip_score expects float images in [-1, 1] (or uint8), got values in "
                         f"[{lo:.3g}, {hi:.3g}]")
    images = images.astype(dtype)
  cos = map_batched(lambda x, t: _pair_cosine(model, params, x, t, preprocess=preprocess),
                    images, ids.astype(np.int32), batch_size=batch_size)
  cos = np.asarray(cos, np.float32)
  return 100.0 * np.maximum(cos, 0.0) if times_100 else cos  # [N]
