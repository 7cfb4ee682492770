"""Latent directions: supervised (InterFaceGAN) and unsupervised (Voynov & Babenko 2020).

Supervised (Shen, Gu, Tang, Zhou 2020, "Interpreting the Latent Space of GANs for Semantic
Face Editing", sec. 2.2-2.3): label generated samples with an attribute classifier, keep the
most confident ones on either side, fit a linear classifier on their latents; its unit normal
n is the editing direction, an edit is z' = z + m n. Conditional editing (eq. 4) projects the
directions of attributes to keep fixed out of n: n' = n - C^T (C C^T)^-1 C n.

Unsupervised (Voynov & Babenko 2020, "Unsupervised Discovery of Interpretable Directions in
the GAN Latent Space", sec. 3): a learnable matrix A of K directions and a reconstructor R are
trained jointly, the generator frozen: for a random z, index k and shift eps, R sees
(G(z), G(z + eps A e_k)) and predicts k (cross-entropy) and eps (mean absolute error).
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

__all__ = ["attribute_index", "attribute_score", "attribute_logodds", "select_confident",
           "fit_linear_classifier", "supervised_direction", "conditional_direction",
           "edit_latents", "layer_mask", "layerwise_ws", "projection_std",
           "normalize_directions", "VoynovState", "init_voynov", "make_voynov_step"]


def attribute_index(attributes: Mapping[str, Sequence[str]], name: str, value) -> int:
  """Index of ``value`` (a value name or an int) of attribute ``name``.

  Raises:
    ValueError: unknown attribute or value (the message lists the known ones).
  """
  if name not in attributes:
    raise ValueError(f"unknown attribute {name!r}; expected one of {tuple(attributes)}.")
  values = tuple(attributes[name])
  if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
    if 0 <= value < len(values):
      return int(value)
  elif value in values:
    return values.index(value)
  raise ValueError(f"attribute {name!r} has no value {value!r}; expected one of {values} "
                   f"or an index in [0, {len(values)}).")


def attribute_score(probs, positive, negative=None):
  """log P(positive classes) - log P(negative classes) (default: all other classes).

  Args:
    probs: [N, K] class probabilities of one attribute.
    positive: class index or sequence of indices.
    negative: class index / sequence, or None for the complement of `positive`.

  Returns:
    [N] scores (a logit for binary attributes).
  """
  probs = jnp.asarray(probs)
  pos, neg = _class_masks(probs.shape[-1], positive, negative)
  eps = 1e-6
  return (jnp.log(probs @ pos.astype(probs.dtype) + eps)
          - jnp.log(probs @ neg.astype(probs.dtype) + eps))


def _class_masks(k: int, positive, negative):
  pos = np.zeros(k, bool)
  pos[np.atleast_1d(positive)] = True
  neg = ~pos if negative is None else np.isin(np.arange(k), np.atleast_1d(negative))
  if (pos & neg).any() or not pos.any() or not neg.any():
    raise ValueError(f"positive {positive!r} and negative {negative!r} classes must be "
                     f"non-empty and disjoint subsets of range({k}).")
  return pos, neg


def attribute_logodds(logits, positive, negative=None):
  """Exact log-odds log P(positive) - log P(negative) from a classifier's logits.

  With p = softmax(logits), log sum_{i in S} p_i = logsumexp(logits[S]) - logsumexp(logits),
  so the normaliser cancels: the result is logsumexp(logits[pos]) - logsumexp(logits[neg]).
  Unlike `attribute_score` on probabilities there is no epsilon and no float32 saturation
  (p rounds to 1.0 once the logit margin exceeds ~17); for a binary attribute it is the
  logit of P(positive), a strictly increasing function of it.

  Args:
    logits: [..., K] unnormalised class scores of one attribute.
    positive: class index or sequence of indices.
    negative: class index / sequence, or None for the complement of `positive`.

  Returns:
    [...] log-odds.
  """
  logits = jnp.asarray(logits, jnp.float32)
  pos, neg = _class_masks(logits.shape[-1], positive, negative)
  shape = (1,) * (logits.ndim - 1) + (-1,)  # explicit broadcast (rank promotion may raise)
  return (jax.nn.logsumexp(jnp.where(pos.reshape(shape), logits, -jnp.inf), axis=-1)
          - jax.nn.logsumexp(jnp.where(neg.reshape(shape), logits, -jnp.inf), axis=-1))


def projection_std(latents, direction) -> float:
  """Standard deviation of the latents' coordinate along a unit ``direction``: std(x . n).

  InterFaceGAN's edit z + m n has m in units of this spread, since for z ~ N(0, I) and a unit
  n, z . n ~ N(0, 1). In W the spread along n is whatever the mapping network made it, so an
  edit with the same meaning is w + m * projection_std(w, n) * n.

  Args:
    latents: [N, D] samples of the latent distribution (e.g. mapped w).
    direction: [D] unit vector.

  Returns:
    The (population) standard deviation of latents @ direction, a Python float.
  """
  x = np.asarray(latents, np.float64)
  n = np.asarray(direction, np.float64)
  if x.ndim != 2 or n.shape != (x.shape[1],):
    raise ValueError(f"need latents [N, D] and direction [D], got {x.shape} and {n.shape}.")
  return float(np.std(x @ n))


def select_confident(scores, fraction: float):
  """Indices of the top and bottom ``fraction`` of scores (InterFaceGAN keeps 2% each side
  of 500k samples).

  Returns:
    (positive_idx [n], negative_idx [n]) numpy int arrays, n = max(1, fraction * N).
  """
  scores = np.asarray(scores)
  if not 0 < fraction <= 0.5:
    raise ValueError(f"fraction must be in (0, 0.5], got {fraction}.")
  n = max(1, int(fraction * scores.shape[0]))
  order = np.argsort(scores, kind="stable")
  return order[-n:], order[:n]


def fit_linear_classifier(x, y, *, method: str = "svm", l2: float = 1e-2,
                          num_iterations: int = 30):
  """A linear classifier sign(x . w + b) fitted by Newton's method (full batch, in JAX).

  'logistic': mean log-loss + l2/2 ||w||^2. 'svm': the L2-loss linear SVM,
  mean max(0, 1 - s (x . w + b))^2 + l2/2 ||w||^2 with s = 2y - 1 (Newton with the
  generalised Hessian, Keerthi & DeCoste 2005). The bias is not regularised.

  Args:
    x: [N, D] features (latents).
    y: [N] labels in {0, 1}.
    method: 'logistic' or 'svm'.
    l2: ridge weight (> 0 keeps separable problems bounded).
    num_iterations: Newton iterations.

  Returns:
    (w [D], b []) float32.
  """
  if method not in ("logistic", "svm"):
    raise ValueError(f"method must be 'logistic' or 'svm', got {method!r}.")
  x = jnp.asarray(x, jnp.float32)
  y = jnp.asarray(y, jnp.float32)
  if x.ndim != 2 or y.shape != (x.shape[0],):
    raise ValueError(f"need x [N, D] and y [N], got {x.shape} and {y.shape}.")
  n, d = x.shape
  xa = jnp.concatenate([x, jnp.ones((n, 1), x.dtype)], axis=1)  # [N, D+1]
  reg = jnp.concatenate([jnp.full((d,), l2), jnp.zeros((1,))]).astype(jnp.float32)
  s = 2.0 * y - 1.0

  def newton(_, theta):
    f = xa @ theta
    if method == "logistic":
      p = jax.nn.sigmoid(f)
      g = xa.T @ (p - y) / n + reg * theta
      h = (xa.T * (p * (1 - p))[None]) @ xa / n
    else:
      margin = jnp.maximum(0.0, 1.0 - s * f)
      active = (margin > 0).astype(x.dtype)
      g = -2.0 * xa.T @ (s * margin) / n + reg * theta
      h = 2.0 * (xa.T * active[None]) @ xa / n
    h = h + jnp.diag(reg + 1e-6)
    return theta - jnp.linalg.solve(h, g)

  theta = jax.lax.fori_loop(0, num_iterations, newton, jnp.zeros((d + 1,), jnp.float32))
  return theta[:d], theta[d]


def supervised_direction(latents, scores, *, fraction: float = 0.1, method: str = "svm",
                         l2: float = 1e-2):
  """The InterFaceGAN direction of an attribute.

  Args:
    latents: [N, D] latents of generated samples (z or w).
    scores: [N] attribute scores of those samples (e.g. `attribute_score`).
    fraction: keep this top / bottom fraction as positives / negatives.
    method, l2: see `fit_linear_classifier`.

  Returns:
    (n [D] unit normal pointing towards higher scores, info dict with 'train_accuracy',
    'num_per_side', 'bias').
  """
  latents = np.asarray(latents, np.float32)
  pos, neg = select_confident(scores, fraction)
  x = np.concatenate([latents[pos], latents[neg]])
  y = np.concatenate([np.ones(len(pos)), np.zeros(len(neg))])
  w, b = fit_linear_classifier(x, y, method=method, l2=l2)
  norm = float(jnp.linalg.norm(w))
  if not norm > 0:
    raise ValueError("the linear classifier has a zero normal: the scores do not separate "
                     "the latents (check the attribute and the classifier).")
  acc = float(jnp.mean(((jnp.asarray(x) @ w + b) > 0) == (y > 0)))
  return w / norm, {"train_accuracy": acc, "num_per_side": int(len(pos)), "bias": float(b)}


def conditional_direction(primary, conditions):
  """Projects the condition directions out of ``primary`` and renormalises (InterFaceGAN
  eq. 4): n' = n - C^T (C C^T)^+ C n (pseudo-inverse, so redundant conditions are allowed).

  Args:
    primary: [D] direction to edit along.
    conditions: [K, D] (or [D]) directions of attributes to keep fixed.

  Returns:
    [D] unit vector orthogonal to every condition.
  """
  n = jnp.asarray(primary, jnp.float32)
  c = jnp.atleast_2d(jnp.asarray(conditions, jnp.float32))
  if c.shape[-1] != n.shape[-1]:
    raise ValueError(f"conditions {c.shape} and primary {n.shape} have different dimensions.")
  coef = jnp.linalg.pinv(c @ c.T) @ (c @ n)  # pinv: (anti)parallel conditions are fine
  out = n - c.T @ coef
  norm = jnp.linalg.norm(out)
  if not isinstance(norm, jax.core.Tracer) and float(norm) < 1e-6 * float(jnp.linalg.norm(n)):
    raise ValueError("the primary direction lies in the span of the conditions; nothing is "
                     "left after projecting them out.")
  return out / norm


def layer_mask(num_ws: int, layers) -> np.ndarray:
  """[num_ws] float32 mask selecting the W+ layers an edit applies to.

  Layer-restricted editing (Härkönen et al. 2020, "GANSpace", sec. 3: an edit applied to a
  range of the synthesis layers; Karras et al. 2019, sec. 3.1: coarse styles set geometry,
  fine styles colour) moves only the chosen layers' w, so attributes held by the other
  layers stay put.

  Args:
    num_ws: layers L of the synthesis (``StyleGANConfig.num_ws``).
    layers: indices in [0, L) (any order, no repeats), or None for all layers.

  Raises:
    ValueError: an empty selection, a repeated index or one outside [0, L).
  """
  if layers is None:
    return np.ones(num_ws, np.float32)
  idx = [int(i) for i in np.atleast_1d(np.asarray(layers))]
  if not idx or len(set(idx)) != len(idx) or min(idx) < 0 or max(idx) >= num_ws:
    raise ValueError(f"layers must be distinct indices in [0, {num_ws}) (the synthesis has "
                     f"{num_ws} w layers), got {list(idx)}.")
  mask = np.zeros(num_ws, np.float32)
  mask[idx] = 1.0
  return mask


def layerwise_ws(w, w_layers, mask):
  """W+ latents whose masked layers take `w_layers` and the others `w`: the labelled set of a
  layer-wise InterFaceGAN fit.

  Fitting a direction on w, where every layer shares one w, finds how an attribute varies
  when all styles move together; when the attribute lives in some layers only (Karras et
  al. 2019, sec. 3.1: coarse styles geometry, fine ones colour), labelling images whose
  chosen layers take an independent w (style mixing, Karras et al. 2019, sec. 3.1) and
  fitting the classifier on that w alone gives the direction of those layers, the others
  held fixed. Pure and vmap-able.

  Args:
    w: [N, D] latents of the unmasked layers.
    w_layers: [N, D] latents of the masked layers.
    mask: [L] 0/1 layer mask (`layer_mask`).

  Returns:
    [N, L, D].

  Raises:
    ValueError: `w` and `w_layers` of different shapes, or a mask that is not one-dimensional.
  """
  w, w_layers = jnp.asarray(w), jnp.asarray(w_layers)
  mask = jnp.asarray(mask)
  if w.shape != w_layers.shape or w.ndim != 2:
    raise ValueError(f"w and w_layers must both be [N, D], got {w.shape} and "
                     f"{w_layers.shape}.")
  if mask.ndim != 1:
    raise ValueError(f"mask must be [L] (layer_mask), got shape {mask.shape}.")
  return jnp.where(mask[None, :, None] > 0, w_layers[:, None], w[:, None])


def edit_latents(latents, direction, magnitudes, mask=None):
  """z' = z + m n for every magnitude m (InterFaceGAN eq. 3), optionally on some W+ layers.

  Args:
    latents: [B, D], or [B, L, D] (W+) when `mask` is given.
    direction: [D].
    magnitudes: [M].
    mask: None, or [L] weights of the layers to edit (`layer_mask`): ws'_l = ws_l + m mask_l n.

  Returns:
    [M, B, D], or [M, B, L, D] with a mask.
  """
  m = jnp.asarray(magnitudes, jnp.float32)
  latents, n = jnp.asarray(latents), jnp.asarray(direction)
  if mask is None:
    return latents[None] + m[:, None, None] * n[None, None]
  mask = jnp.asarray(mask, jnp.float32)
  if latents.ndim != 3 or latents.shape[1] != mask.shape[0]:
    raise ValueError(f"a layer mask of {mask.shape[0]} layers needs W+ latents [B, "
                     f"{mask.shape[0]}, D], got {latents.shape}.")
  return latents[None] + m[:, None, None, None] * mask[None, None, :, None] * n[None, None, None]


# --- Voynov & Babenko ------------------------------------------------------------------

def normalize_directions(matrix, kind: str = "unit"):
  """Rows of ``matrix`` [K, D] as directions: 'unit' (each row unit length) or 'orthonormal'
  (Gram-Schmidt via QR, K <= D)."""
  if kind == "unit":
    return matrix / jnp.linalg.norm(matrix, axis=-1, keepdims=True)
  if kind == "orthonormal":
    q, r = jnp.linalg.qr(matrix.T)
    return (q * jnp.sign(jnp.diagonal(r))[None]).T
  raise ValueError(f"directions kind must be 'unit' or 'orthonormal', got {kind!r}.")


class VoynovState(struct.PyTreeNode):
  step: jax.Array      # []
  params: Any          # {'directions': [K, D], 'reconstructor': Flax params}
  opt_state: optax.OptState
  r_apply: Callable = struct.field(pytree_node=False)
  tx: optax.GradientTransformation = struct.field(pytree_node=False)
  kind: str = struct.field(pytree_node=False, default="unit")

  def directions(self):
    """[K, D] the normalised directions."""
    return normalize_directions(self.params["directions"], self.kind)


def init_voynov(reconstructor: nn.Module, key, *, latent_dim: int, image_shape,
                tx: optax.GradientTransformation, kind: str = "unit") -> VoynovState:
  """Random directions A ~ N(0, I) (normalised when used) and a fresh reconstructor."""
  k = reconstructor.num_directions
  if kind == "orthonormal" and k > latent_dim:
    raise ValueError(f"{k} orthonormal directions do not fit in {latent_dim} dimensions.")
  normalize_directions(jnp.ones((1, 1)), kind)  # validates kind
  a_key, r_key = jax.random.split(key)
  dummy = jnp.zeros((1,) + tuple(image_shape), jnp.float32)
  params = {"directions": jax.random.normal(a_key, (k, latent_dim)),
            "reconstructor": jax.jit(reconstructor.init)(r_key, dummy, dummy)["params"]}
  return VoynovState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                     r_apply=reconstructor.apply, tx=tx, kind=kind)


def make_voynov_step(sample_fn: Callable, generate_fn: Callable, *, batch_size: int,
                     shift_scale: float = 6.0, min_shift: float = 0.5,
                     shift_weight: float = 0.25) -> Callable:
  """Builds ``step(state, g_variables, key) -> (state, metrics)``.

  Args:
    sample_fn: ``(g_variables, key, batch_size) -> latents [B, D]`` (e.g. z ~ N(0, I), or
      mapped w for the W space).
    generate_fn: ``(g_variables, latents [B, D]) -> images [B, H, W, C]`` (frozen generator).
    batch_size: latents per step.
    shift_scale: eps ~ U[-scale, scale] ...
    min_shift: ... with |eps| >= min_shift (Voynov & Babenko's setting: 6 and 0.5).
    shift_weight: weight of the shift regression (their lambda = 0.25).

  Returns:
    The step; metrics: loss, direction_accuracy, shift_error.
  """
  if not 0 <= min_shift < shift_scale:
    raise ValueError(f"need 0 <= min_shift < shift_scale, got {min_shift}, {shift_scale}.")

  def step(state: VoynovState, g_variables, key):
    key = jax.random.fold_in(key, state.step)
    z_key, k_key, e_key = jax.random.split(key, 3)
    z = sample_fn(g_variables, z_key, batch_size)
    num_dirs = state.params["directions"].shape[0]
    k = jax.random.randint(k_key, (batch_size,), 0, num_dirs)
    eps = jax.random.uniform(e_key, (batch_size,), minval=-shift_scale, maxval=shift_scale)
    eps = jnp.where(eps >= 0, 1.0, -1.0) * jnp.maximum(jnp.abs(eps), min_shift)
    images_a = jax.lax.stop_gradient(generate_fn(g_variables, z))

    def loss_fn(params):
      dirs = normalize_directions(params["directions"], state.kind)
      images_b = generate_fn(g_variables, z + eps[:, None] * dirs[k])
      logits, eps_pred = state.r_apply({"params": params["reconstructor"]}, images_a,
                                       images_b)
      ce = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, k))
      shift_err = jnp.mean(jnp.abs(eps_pred - eps))
      acc = jnp.mean(jnp.argmax(logits, -1) == k)
      return ce + shift_weight * shift_err, {"direction_accuracy": acc,
                                             "shift_error": shift_err}

    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), dict(
        metrics, loss=loss)

  return step
