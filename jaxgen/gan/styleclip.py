"""Text-driven editing of a style-based generator with CLIP (StyleCLIP: Patashnik et al. 2021,
"StyleCLIP: Text-Driven Manipulation of StyleGAN Imagery").

Two of the paper's three methods and its text-to-image use, as pure functions of callables:

* **Latent optimisation** (sec. 4, eq. 1): from a source latent w_s, minimise
  ``D_CLIP(G(w), t) + lambda_L2 ||w - w_s||^2 (+ lambda_keep ||f(G(w)) - f(G(w_s))||^2)``
  with D_CLIP the cosine distance of CLIP's image and text features, and an optional
  attribute / identity term on any feature function f (the paper's ArcFace term, lambda_ID).
  One `lax.scan` of optax steps (`make_latent_optimizer`); vmap it over latents and prompts.
* **Global directions** (sec. 6): the text pair's direction in CLIP space,
  Delta t = normalise(E_T(target) - E_T(source)), becomes a direction in the style space S
  through each channel's relevance R_c = Delta i_c . Delta t, where Delta i_c is the mean
  normalised change of the CLIP image features when channel c of the styles is moved by
  +- its standard deviation (`channel_image_directions`, computed once per generator and
  CLIP, whatever the text). Channels with |R_c| < beta are zeroed (disentanglement threshold
  beta) and s' = s + alpha Delta s (`global_direction`, `apply_global_direction`).
* **Text to image**: optimise from the mean w (and other starts) for a prompt alone, keeping
  the start with the lowest CLIP distance (`make_text_to_image`).

The callables: ``generate_fn(latents [B, ...]) -> images [B, H, W, C]`` and
``encode_image_fn(images [B, H, W, C]) -> features [B, E]`` (CLIP's image tower, any
preprocessing inside); text features are given as arrays. The style space of a
`jaxgen.nn.StyleGenerator` is in `jaxgen.gan.style_space`.
"""
from __future__ import annotations

import math
import numbers
from typing import Callable

import jax
import jax.numpy as jnp
import optax
from flax import struct

from jaxgen.clip.losses import normalize
from jaxgen.gan.projector import projector_learning_rate

__all__ = ["LatentOptimizationResult", "TextToImageResult", "apply_global_direction",
           "channel_image_directions", "channel_relevance", "check_strength", "clip_distance",
           "clip_edit_loss", "global_direction", "make_latent_optimizer",
           "make_latent_optimizer_steps", "make_text_to_image", "mean_text_features",
           "resize_for_clip", "text_direction"]


def clip_distance(image_features, text_features) -> jax.Array:
  """D_CLIP = 1 - cos(image, text) over the last axis (StyleCLIP sec. 4; both normalised
  here, so any scale of the features is accepted): [..., E] -> [...]; text features [E] serve
  every image."""
  image, text = normalize(image_features), normalize(text_features)
  return 1.0 - jnp.sum(image * jnp.broadcast_to(text, image.shape), axis=-1)


def mean_text_features(features) -> jax.Array:
  """Prompt ensembling (Radford et al. 2021 sec. 3.1.4; StyleCLIP sec. 6 averages Delta t
  over prompt templates): the normalised mean of normalised features [K, E] -> [E]."""
  features = jnp.asarray(features)
  if features.ndim != 2 or features.shape[0] == 0:
    raise ValueError(f"mean_text_features expects features [K, E] with K >= 1, got shape "
                     f"{features.shape}.")
  return normalize(jnp.mean(normalize(features), axis=0))


def text_direction(source_features, target_features) -> jax.Array:
  """Delta t = normalise(E_T(target) - E_T(source)) (StyleCLIP sec. 6), [..., E]."""
  return normalize(normalize(target_features) - normalize(source_features))


def resize_for_clip(images, size: int):
  """Images [B, H, W, C] resized to CLIP's side `size` (antialiased bilinear; identity when
  they already have it)."""
  b, h, w, c = images.shape
  if (h, w) == (size, size):
    return images
  return jax.image.resize(images, (b, size, size, c), method="linear", antialias=True)


# --------------------------------------------------------------------- latent optimisation


@struct.dataclass
class LatentOptimizationResult:
  """What `make_latent_optimizer`'s function returns for one source latent.

  Attributes:
    latent: the optimised latent, the shape of the source ([D] or W+ [L, D]).
    clip_distance: D_CLIP of the final latent's image and the text (scalar).
    loss: the objective at every step (before that step's update).  # [T]
  """
  latent: jax.Array
  clip_distance: jax.Array
  loss: jax.Array


def clip_edit_loss(latent, source, text_features, generate_fn: Callable,
                   encode_image_fn: Callable, *, l2_weight: float, keep_fn=None,
                   keep_weight: float = 0.0, keep_target=None):
  """StyleCLIP eq. 1 for one latent: ``D_CLIP(G(w), t) + l2_weight ||w - w_s||^2
  + keep_weight ||f(G(w)) - f(G(w_s))||^2``.

  Args:
    latent: w ([D] or W+ [L, D]); source: w_s of the same shape.
    text_features: t [E].
    generate_fn, encode_image_fn: as in the module docstring (batched).
    l2_weight: lambda_L2.
    keep_fn: optional f(images [B, H, W, C]) -> features [B, F]; keep_weight its weight;
      keep_target: f(G(w_s)) [F] (computed here when None).

  Returns:
    (loss, D_CLIP), both scalars.
  """
  image = generate_fn(latent[None])
  dist = clip_distance(encode_image_fn(image)[0], text_features)
  loss = dist + l2_weight * jnp.sum(jnp.square(latent - source))
  if keep_fn is not None and keep_weight:
    if keep_target is None:
      keep_target = keep_fn(generate_fn(source[None]))[0]
    loss = loss + keep_weight * jnp.sum(jnp.square(keep_fn(image)[0] - keep_target))
  return loss, dist


def make_latent_optimizer_steps(generate_fn: Callable, encode_image_fn: Callable, *,
                                num_steps: int = 100, learning_rate: float = 0.1,
                                l2_weight: float = 0.008, keep_fn=None,
                                keep_weight: float = 0.0,
                                optimizer: optax.GradientTransformation | None = None):
  """The pieces `make_latent_optimizer` scans, for a caller that drives the steps itself.

  Arguments as `make_latent_optimizer`. Returns ``(init, step, finish)``:
  ``init(source, text_features, start=None) -> carry``, ``step(carry) -> (carry, loss)``
  (one optimiser step) and ``finish(carry) -> LatentOptimizationResult`` (its ``loss`` empty).
  Each is pure and vmaps over latents and prompts. `make_latent_optimizer` is
  ``lax.scan(step)`` between the other two; a Python loop over a jitted `step` gives the same
  latents (a test checks it) and, on XLA:CPU, runs several times faster than the loop that
  ``lax.scan`` compiles to (docs/gans.md, "Text-driven editing").
  """
  if not isinstance(num_steps, int) or num_steps < 1:
    raise ValueError(f"num_steps must be a positive int, got {num_steps!r}.")
  for name, value in (("learning_rate", learning_rate), ("l2_weight", l2_weight),
                      ("keep_weight", keep_weight)):
    if not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0:
      raise ValueError(f"{name} must be a finite number >= 0, got {value!r}.")
  if optimizer is None:
    optimizer = optax.adam(lambda step: projector_learning_rate(
        step / num_steps, learning_rate))

  def objective(latent, source, text_features, keep_target):
    return clip_edit_loss(latent, source, text_features, generate_fn, encode_image_fn,
                          l2_weight=l2_weight, keep_fn=keep_fn, keep_weight=keep_weight,
                          keep_target=keep_target)

  grad_fn = jax.value_and_grad(objective, has_aux=True)

  def init(source, text_features, start=None):
    source = jnp.asarray(source, jnp.float32)
    keep_target = None
    if keep_fn is not None and keep_weight:
      keep_target = jax.lax.stop_gradient(keep_fn(generate_fn(source[None]))[0])
    latent = source if start is None else jnp.asarray(start, jnp.float32)
    return {"latent": latent, "opt_state": optimizer.init(latent), "source": source,
            "text": jnp.asarray(text_features), "keep_target": keep_target}

  def step(carry):
    (loss, _), grad = grad_fn(carry["latent"], carry["source"], carry["text"],
                              carry["keep_target"])
    updates, opt_state = optimizer.update(grad, carry["opt_state"], carry["latent"])
    return {**carry, "latent": optax.apply_updates(carry["latent"], updates),
            "opt_state": opt_state}, loss

  def finish(carry):
    _, dist = objective(carry["latent"], carry["source"], carry["text"], carry["keep_target"])
    return LatentOptimizationResult(carry["latent"], dist, jnp.zeros((0,), jnp.float32))

  return init, step, finish


def make_latent_optimizer(generate_fn: Callable, encode_image_fn: Callable, *,
                          num_steps: int = 100, learning_rate: float = 0.1,
                          l2_weight: float = 0.008, keep_fn=None, keep_weight: float = 0.0,
                          optimizer: optax.GradientTransformation | None = None):
  """StyleCLIP's latent optimisation (sec. 4) as one `lax.scan` of optimiser steps.

  Args:
    generate_fn, encode_image_fn: as in the module docstring.
    num_steps: optimiser steps T (the paper: 200-300 on FFHQ).
    learning_rate: peak step size of the default optimiser, Adam with the StyleGAN2 projector
      schedule that StyleCLIP's `optimization/run_optimization.py` also uses (linear ramp-up
      over 5%, cosine ramp-down over the last 25%; the paper's lr 0.1).
    l2_weight: lambda_L2 (the paper's 0.008 for edits; 0 for generation from text).
    keep_fn, keep_weight: the optional attribute / identity term (`clip_edit_loss`).
    optimizer: any optax transformation instead of the default.

  Returns:
    ``optimize(source, text_features, start=None) -> LatentOptimizationResult``: one source
    latent w_s ([D] or [L, D]) and text features [E]; the optimisation starts at `start`
    (default: the source). Vmap it over a batch of latents and prompts.
  """
  init, step, finish = make_latent_optimizer_steps(
      generate_fn, encode_image_fn, num_steps=num_steps, learning_rate=learning_rate,
      l2_weight=l2_weight, keep_fn=keep_fn, keep_weight=keep_weight, optimizer=optimizer)

  def optimize(source, text_features, start=None):
    carry, losses = jax.lax.scan(lambda c, _: step(c), init(source, text_features, start),
                                 None, length=num_steps)
    return finish(carry).replace(loss=losses)

  return optimize


@struct.dataclass
class TextToImageResult:
  """`make_text_to_image`'s output for one prompt.

  Attributes:
    latent: the best start's optimised latent ([D] or [L, D]).
    best: index of that start.
    clip_distance: the final D_CLIP of every start.  # [R]
    latents: every start's optimised latent.  # [R, ...]
  """
  latent: jax.Array
  best: jax.Array
  clip_distance: jax.Array
  latents: jax.Array


def make_text_to_image(generate_fn: Callable, encode_image_fn: Callable, *,
                       num_steps: int = 100, learning_rate: float = 0.1,
                       l2_weight: float = 0.0, **kwargs):
  """Generation from text with a CLIP loss over the generator's latent (StyleCLIP's
  optimisation with no source image, the paper's "free generation" mode from the mean
  latent), with restarts.

  Returns:
    ``generate(starts [R, ...], text_features [E]) -> TextToImageResult``: each start (e.g.
    the mean w first, then truncated random ws) is optimised for the prompt alone
    (`l2_weight` anchors it to its start; 0 by default), vmapped over the starts; the start
    with the lowest final CLIP distance is kept.
  """
  optimize = make_latent_optimizer(generate_fn, encode_image_fn, num_steps=num_steps,
                                   learning_rate=learning_rate, l2_weight=l2_weight, **kwargs)

  def generate(starts, text_features):
    res = jax.vmap(optimize, in_axes=(0, None))(starts, text_features)
    best = jnp.argmin(res.clip_distance)
    return TextToImageResult(res.latent[best], best, res.clip_distance, res.latent)

  return generate


# --------------------------------------------------------------------- global directions


def channel_image_directions(features_fn: Callable, styles, std, *, step: float = 1.0,
                             chunk: int = 8) -> jax.Array:
  """Delta i_c for every style channel c (StyleCLIP sec. 6, "global directions").

  For each channel, the styles of N images are moved by -+ ``step * std[c]`` along that
  channel alone; the difference of the CLIP image features of the two images, normalised
  per image, is averaged over the N images and normalised again. This does not depend on
  the text: computed once, it serves every text pair (`channel_relevance`).

  Args:
    features_fn: styles [N, S] -> CLIP image features [N, E] (e.g. the image tower of
      `jaxgen.gan.style_space.synthesis_from_styles`).
    styles: the styles of N images.  # [N, S]
    std: per-channel standard deviation of the styles.  # [S]
    step: the perturbation in standard deviations (each side).
    chunk: channels evaluated at once (`lax.map` batch size).

  Returns:
    Unit vectors Delta i_c (a zero row where a channel changes nothing).  # [S, E]
  """
  styles, std = jnp.asarray(styles), jnp.asarray(std)
  if styles.ndim != 2 or std.shape != styles.shape[-1:]:
    raise ValueError(f"expected styles [N, S] and std [S], got shapes {styles.shape} and "
                     f"{std.shape}.")
  num = styles.shape[-1]

  def one(c):
    delta = (jax.nn.one_hot(c, num, dtype=styles.dtype) * (step * std))[None]
    diff = features_fn(styles + delta) - features_fn(styles - delta)   # [N, E]
    return normalize(jnp.mean(normalize(diff), axis=0))

  return jax.lax.map(one, jnp.arange(num), batch_size=chunk)


def channel_relevance(channel_directions, text_dir) -> jax.Array:
  """R_c = Delta i_c . Delta t: [S, E], [E] -> [S] (StyleCLIP sec. 6)."""
  return jnp.asarray(channel_directions) @ jnp.asarray(text_dir)


def global_direction(relevance, std, threshold: float) -> jax.Array:
  """Delta s from the channels' relevance R [S] (StyleCLIP sec. 6): R_c where |R_c| >= beta
  (the disentanglement threshold), 0 elsewhere, scaled as the reference code does so that the
  most relevant channel moves by one standard deviation: Delta s_c = std_c R_c / max|R|.

  Returns:
    Delta s [S] (all zeros when no channel reaches the threshold).
  """
  if not isinstance(threshold, numbers.Real) or not threshold >= 0:
    raise ValueError(f"the threshold beta must be a number >= 0, got {threshold!r}.")
  relevance = jnp.asarray(relevance)
  kept = jnp.where(jnp.abs(relevance) >= threshold, relevance, 0.0)
  peak = jnp.max(jnp.abs(kept))
  return jnp.where(peak > 0, jnp.asarray(std) * kept / jnp.where(peak > 0, peak, 1.0), 0.0)


def check_strength(strength) -> float:
  """The strength alpha as a float; ValueError unless it is a finite real number."""
  if isinstance(strength, bool) or not isinstance(strength, numbers.Real) \
      or not math.isfinite(strength):
    raise ValueError(f"the strength alpha must be a finite number, got {strength!r}.")
  return float(strength)


def apply_global_direction(styles, delta, strength) -> jax.Array:
  """s' = s + alpha Delta s (StyleCLIP sec. 6): styles [..., S], Delta s [S]."""
  styles = jnp.asarray(styles)
  return styles + check_strength(strength) * jnp.broadcast_to(jnp.asarray(delta), styles.shape)
