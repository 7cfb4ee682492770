"""Guidance as denoiser transforms: each function takes a model and returns a new
``denoise_fn(x_t, t) -> model_output`` that every sampler (DDPM, DDIM) accepts.

* :func:`cfg` — classifier-free guidance (Ho & Salimans 2022, eq. 6):
  ``out = out(null) + g (out(y) - out(null))``; g = 0 is the unconditional model, g = 1 the
  conditional one. The two outputs come from one batched model call.
* :func:`cfg_negative` — the lecture's negative prompting (the "conjunction and negation" of
  composable diffusion, Liu et al. 2022):
  ``out = out(null) + g (out(y) - out(null)) - g_neg (out(y_neg) - out(null))``.
* :func:`cfg_negative_replace` — the widespread form (Stable Diffusion front ends, diffusers'
  ``negative_prompt``): the negative condition takes the place of the unconditional one,
  ``out = out(y_neg) + g (out(y) - out(y_neg))``.
* ``rescale=phi`` on any CFG transform — guidance rescale (Lin et al. 2023, sec. 3.4).
* :func:`classifier_guidance` — classifier guidance (Dhariwal & Nichol 2021) in score form
  (their Algorithm 2): ``eps' = eps - sqrt(1 - alpha_bar_t) g grad_x log p(y | x_t, t)``.
  :func:`classifier_mean_shift` gives their Algorithm 1 for DDPM: the posterior mean moves by
  ``Sigma g grad_x log p(y | x_t, t)``, through ``sample(..., guidance_grad_fn=...)``.

Relation of the two classifier forms for DDPM. With an epsilon model and no clipping, the DDPM
mean is ``(x_t - beta'_t / sqrt(1 - ab_t) eps) / sqrt(alpha'_t)``, so the score-form shift of
eps moves the mean by ``beta'_t / sqrt(alpha'_t) g grad``, while Algorithm 1 moves it by
``Sigma_t g grad`` with ``Sigma_t = beta'_t`` (``fixed_large``) or ``beta~_t`` (``fixed_small``).
The two agree up to a factor ``sqrt(alpha'_t)`` (fixed_large: close to 1) or
``sqrt(alpha'_t) (1 - ab_prev) / (1 - ab_t)`` (fixed_small: close to 1 except near t = 0,
where Algorithm 1's shift vanishes with the variance).

Conditions are pytrees whose leaves have a leading batch axis [B, ...] (labels [B], text
embeddings [B, L, D], ...); a null condition may omit the batch axis and is broadcast.
Scales are arrays (traced under jit), scalar or per example [B]: one compiled sampler serves
every scale and can be ``jax.vmap``-ped over a vector of scales.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.diffusion.process import _bcast, alpha_bar_at, convert_output, predict_x0_eps
from jaxgen.diffusion.schedules import Schedule

# model_fn(x_t [B, ...], t [B] int32, cond pytree of [B, ...]) -> model output [B, ...]
ModelFn = Callable[[jax.Array, jax.Array, Any], jax.Array]
DenoiseFn = Callable[[jax.Array, jax.Array], jax.Array]
# log_prob_fn(x_t [B, ...], t [B]) -> log p(y | x_t, t) [B], the labels y bound inside.
LogProbFn = Callable[[jax.Array, jax.Array], jax.Array]


def _concrete(x):
  try:
    return np.asarray(x)
  except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
    return None


def check_labels(labels, num_classes: int, *, name: str = "labels") -> jax.Array:
  """Validates class labels for a model with ``num_classes`` real classes.

  The learned null class (index ``num_classes`` in jaxgen's convention) is not a valid label
  to ask for: it is what the guidance transforms pass as ``null_cond``.

  Args:
    labels: int labels [B] (concrete values are range-checked; traced ones cannot be).
    num_classes: number of real classes K.
    name: what to call the labels in error messages.
  Returns:
    labels as int32 [B].
  Raises:
    TypeError: non-integer labels. ValueError: not 1-D, or a value outside [0, K).
  """
  arr = jnp.asarray(labels)
  if not jnp.issubdtype(arr.dtype, jnp.integer):
    raise TypeError(f"{name} must be integer class indices, got dtype {arr.dtype}")
  if arr.ndim != 1:
    raise ValueError(f"{name} must be a 1-D array [B] of class indices, got shape {arr.shape}")
  values = _concrete(arr)
  if values is not None and values.size and (values.min() < 0 or values.max() >= num_classes):
    raise ValueError(f"{name} must lie in [0, {num_classes}) (the model's {num_classes} "
                     f"classes), got min {values.min()} max {values.max()}")
  return arr.astype(jnp.int32)


def _batch_size(cond, what: str) -> int:
  leaves = jax.tree.leaves(cond)
  if not leaves:
    raise ValueError(f"{what} is empty; expected arrays with a leading batch axis [B, ...]")
  sizes = {jnp.shape(leaf)[0] if jnp.ndim(leaf) else None for leaf in leaves}
  if None in sizes or len(sizes) != 1:
    raise ValueError(f"every leaf of {what} needs the same leading batch axis [B, ...], got "
                     f"shapes {[jnp.shape(l) for l in leaves]}")
  return sizes.pop()


def _match(other, cond, what: str):
  """``other`` broadcast to the shapes (and dtypes) of ``cond``: each leaf must have the leaf's
  full shape [B, ...] or its per-example shape [...]."""
  if jax.tree.structure(other) != jax.tree.structure(cond):
    raise ValueError(f"{what} must have the structure of the condition "
                     f"({jax.tree.structure(cond)}), got {jax.tree.structure(other)}")

  def one(o, c):
    o, c = jnp.asarray(o), jnp.asarray(c)
    if jnp.issubdtype(o.dtype, jnp.integer) != jnp.issubdtype(c.dtype, jnp.integer):
      raise TypeError(f"{what} has dtype {o.dtype} but the condition has {c.dtype}")
    if o.shape == c.shape:
      return o.astype(c.dtype)
    if o.shape == c.shape[1:]:
      return jnp.broadcast_to(o, c.shape).astype(c.dtype)
    raise ValueError(f"{what} must have shape {c.shape} or the per-example shape "
                     f"{c.shape[1:]}, got {o.shape}")

  return jax.tree.map(one, other, cond)


def _concat(*conds):
  return jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=0), *conds)


def _per_example(scale, x: jax.Array, name: str) -> jax.Array:
  """A scalar or [B] scale as a float array broadcastable against x [B, ...]."""
  s = jnp.asarray(scale, jnp.float32)
  if s.ndim > 1 or (s.ndim == 1 and s.shape[0] != x.shape[0]):
    raise ValueError(f"{name} must be a scalar or a [B={x.shape[0]}] vector, got shape {s.shape}")
  return _bcast(s, x).astype(x.dtype)


def _timesteps(t, batch: int) -> jax.Array:
  t = jnp.asarray(t)
  if t.ndim == 0:
    return jnp.broadcast_to(t, (batch,))
  if t.shape != (batch,):
    raise ValueError(f"t must be a scalar or a [B={batch}] vector, got shape {t.shape}")
  return t


def _check_batch(x: jax.Array, batch: int, what: str):
  if x.shape[0] != batch:
    raise ValueError(f"{what} has batch size {batch} but x_t has {x.shape[0]}; give one "
                     "condition per example")


def _multi_call(model_fn: ModelFn, x, t, conds):
  """Evaluates model_fn on len(conds) copies of (x, t) in one batched call."""
  b = x.shape[0]
  k = len(conds)
  t = _timesteps(t, b)
  out = model_fn(jnp.concatenate([x] * k), jnp.concatenate([t] * k), _concat(*conds))
  if out.shape[0] != k * b:
    raise ValueError(f"model_fn returned batch {out.shape[0]}, expected {k * b}")
  return [out[i * b:(i + 1) * b] for i in range(k)]


def guidance_combine(out_cond: jax.Array, out_uncond: jax.Array, scale) -> jax.Array:
  """``out_uncond + scale (out_cond - out_uncond)`` (Ho & Salimans 2022, eq. 6, with their
  w = scale - 1). scale: scalar or [B]."""
  g = _per_example(scale, out_cond, "scale")
  return out_uncond + g * (out_cond - out_uncond)


def rescale_guidance(guided: jax.Array, out_cond: jax.Array, phi) -> jax.Array:
  """Guidance rescale (Lin et al. 2023, sec. 3.4):

    rescaled = guided * std(out_cond) / std(guided),  out = phi rescaled + (1 - phi) guided,

  with standard deviations per example over all non-batch axes. The paper rescales x_0
  predictions of a v-model; like diffusers (``guidance_rescale``), jaxgen rescales the model
  output in whatever parameterization it has. phi: scalar or [B] in [0, 1].
  """
  axes = tuple(range(1, guided.ndim))
  std_cond = jnp.std(out_cond, axis=axes, keepdims=True)
  std_guided = jnp.std(guided, axis=axes, keepdims=True)
  ratio = jnp.where(std_guided > 0, std_cond / jnp.where(std_guided > 0, std_guided, 1.0), 1.0)
  p = _per_example(phi, guided, "rescale")
  return p * (guided * ratio) + (1.0 - p) * guided


def _maybe_rescale(guided, out_cond, rescale):
  return guided if rescale is None else rescale_guidance(guided, out_cond, rescale)


def cfg(model_fn: ModelFn, cond, null_cond, scale, *, rescale=None) -> DenoiseFn:
  """Classifier-free guidance (Ho & Salimans 2022): a denoiser computing

    out = model_fn(x, t, null) + scale (model_fn(x, t, cond) - model_fn(x, t, null))

  with one model call on the doubled batch [x; x].

  Args:
    model_fn: ``(x [N, ...], t [N], cond pytree of [N, ...]) -> output [N, ...]``, trained with
      condition dropout so that ``null_cond`` is meaningful.
    cond: the condition, a pytree of [B, ...] arrays (e.g. labels [B] int).
    null_cond: the null condition, same structure, shaped [B, ...] or per example [...]
      (e.g. the null label, a scalar).
    scale: guidance scale g, scalar or [B] (an array: traced, not static).
    rescale: optional guidance-rescale factor phi (:func:`rescale_guidance`).
  Returns:
    ``denoise_fn(x [B, ...], t [B] or scalar) -> output [B, ...]``.
  """
  b = _batch_size(cond, "cond")
  null_cond = _match(null_cond, cond, "null_cond")

  def denoise(x, t):
    _check_batch(x, b, "cond")
    out_c, out_u = _multi_call(model_fn, x, t, [cond, null_cond])
    return _maybe_rescale(guidance_combine(out_c, out_u, scale), out_c, rescale)

  return denoise


def cfg_negative(model_fn: ModelFn, cond, neg_cond, null_cond, scale, neg_scale, *,
                 rescale=None) -> DenoiseFn:
  """Negative prompting in the lecture's form (composable diffusion's negation, Liu et al.
  2022):

    out = out(null) + scale (out(cond) - out(null)) - neg_scale (out(neg) - out(null)),

  three conditions in one batched call. The positive term pulls towards ``cond``, the negative
  one pushes away from ``neg_cond``; with neg_scale = 0 this is :func:`cfg`.

  Args:
    model_fn, cond, null_cond, scale, rescale: as :func:`cfg`.
    neg_cond: the negative condition, shaped like ``cond`` (or per example).
    neg_scale: g_neg, scalar or [B].
  Returns:
    the guided ``denoise_fn(x, t)``.
  """
  b = _batch_size(cond, "cond")
  null_cond = _match(null_cond, cond, "null_cond")
  neg_cond = _match(neg_cond, cond, "neg_cond")

  def denoise(x, t):
    _check_batch(x, b, "cond")
    out_c, out_n, out_u = _multi_call(model_fn, x, t, [cond, neg_cond, null_cond])
    gn = _per_example(neg_scale, x, "neg_scale")
    guided = guidance_combine(out_c, out_u, scale) - gn * (out_n - out_u)
    return _maybe_rescale(guided, out_c, rescale)

  return denoise


def cfg_negative_replace(model_fn: ModelFn, cond, neg_cond, scale, *, rescale=None) -> DenoiseFn:
  """Negative prompting in the widespread "negative replaces unconditional" form (the
  ``negative_prompt`` of Stable Diffusion pipelines):

    out = out(neg) + scale (out(cond) - out(neg)),

  i.e. :func:`cfg` with ``neg_cond`` as the null condition: guidance pushes along
  cond - neg instead of cond - null. Unlike :func:`cfg_negative` it needs no null condition
  and one call fewer, but it cannot weight the two directions separately.
  """
  return cfg(model_fn, cond, neg_cond, scale, rescale=rescale)


def log_prob_from_logits(logits_fn: Callable[[jax.Array, jax.Array], jax.Array],
                         labels) -> LogProbFn:
  """``log_prob_fn(x, t) = log_softmax(logits_fn(x, t))[b, labels[b]]`` [B], for a classifier
  ``logits_fn(x_t [B, ...], t [B]) -> logits [B, K]`` (e.g. a noise-aware classifier)."""
  labels = jnp.asarray(labels)

  def log_prob(x, t):
    logits = logits_fn(x, t)
    if logits.ndim != 2 or logits.shape[0] != x.shape[0]:
      raise ValueError(f"logits_fn must return [B={x.shape[0]}, K] logits, got {logits.shape}")
    if labels.shape != (x.shape[0],):
      raise ValueError(f"labels must have shape [B={x.shape[0]}], got {labels.shape}")
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(logp, labels[:, None].astype(jnp.int32), axis=-1)[:, 0]

  return log_prob


def classifier_grad(log_prob_fn: LogProbFn, x: jax.Array, t) -> jax.Array:
  """grad_x log p(y | x_t, t) per example, [B, ...], by ``jax.grad`` of the batch sum (the
  examples are independent, so the sum's gradient is the per-example gradient)."""
  t = _timesteps(t, x.shape[0])

  def total(z):
    lp = log_prob_fn(z, t)
    if lp.shape != (x.shape[0],):
      raise ValueError(f"log_prob_fn must return [B={x.shape[0]}] log-probabilities, got "
                       f"{lp.shape}")
    return jnp.sum(lp)

  return jax.grad(total)(x)


def classifier_guidance(denoise_fn: DenoiseFn, log_prob_fn: LogProbFn, scale,
                        schedule: Schedule, *, prediction_type: str = "epsilon") -> DenoiseFn:
  """Classifier guidance in score form (Dhariwal & Nichol 2021, sec. 4.2 and Algorithm 2):

    eps' = eps(x_t, t) - sqrt(1 - alpha_bar_t) scale grad_x log p(y | x_t, t),

  which is the eps of the score grad log p(x_t) + scale grad log p(y | x_t). Works with every
  sampler; for DDPM see the module docstring for how it relates to Algorithm 1's mean shift
  (:func:`classifier_mean_shift`).

  Args:
    denoise_fn: ``(x_t, t) -> model output`` (conditional, unconditional or already guided).
    log_prob_fn: ``(x_t [B, ...], t [B]) -> log p(y | x_t, t) [B]`` of a noise-aware
      classifier (see :func:`log_prob_from_logits`).
    scale: g, scalar or [B] (traced).
    schedule: the diffusion schedule (for alpha_bar_t).
    prediction_type: the denoiser's output type; eps is shifted and converted back.
  Returns:
    the guided ``denoise_fn(x, t)``.
  """

  def denoise(x, t):
    t = _timesteps(t, x.shape[0])
    out = denoise_fn(x, t)
    ab = _bcast(alpha_bar_at(schedule, t), x)
    _, eps = predict_x0_eps(ab, x, out, prediction_type)
    g = _per_example(scale, x, "scale")
    eps = eps - jnp.sqrt(1.0 - ab) * g * classifier_grad(log_prob_fn, x, t)
    if prediction_type == "epsilon":
      return eps
    return convert_output(schedule, x, t, eps, "epsilon", prediction_type)

  return denoise


def classifier_mean_shift(log_prob_fn: LogProbFn, scale) -> Callable:
  """Classifier guidance for ancestral DDPM (Dhariwal & Nichol 2021, Algorithm 1): returns
  ``guidance_grad_fn(x_t, t) = scale grad_x log p(y | x_t, t)`` for
  ``sample(..., method="ddpm", guidance_grad_fn=...)``, which moves each step's posterior mean
  by ``Sigma_t guidance_grad`` (Sigma_t: the step's variance)."""

  def grad_fn(x, t):
    return _per_example(scale, x, "scale") * classifier_grad(log_prob_fn, x, t)

  return grad_fn
