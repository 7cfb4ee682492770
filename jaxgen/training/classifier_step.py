"""Train step of a noise-aware classifier p(y | x_t, t) for classifier guidance.

Dhariwal & Nichol 2021 (sec. 4) train the guidance classifier on noised data: each example is
noised to a uniformly drawn timestep with the diffusion model's forward process,
x_t = sqrt(ab_t) x_0 + sqrt(1 - ab_t) eps, and classified with cross-entropy. The randomness
of example i comes from ``fold_in(key, offset + i)`` (as in the diffusion loss), so a batch split
over devices draws what one device would.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from jaxgen.diffusion.losses import sample_t_and_noise
from jaxgen.diffusion.process import q_sample
from jaxgen.diffusion.schedules import Schedule
from jaxgen.training.step import LossFn, make_step_from_loss


def noisy_classifier_loss_fn(model, schedule: Schedule, *, label_key: str = "label",
                             num_classes: int | None = None) -> LossFn:
  """Cross-entropy of ``model(x_t, t)`` against ``batch[label_key]`` at random t.

  Args:
    model: a module with ``apply({"params": p}, x_t, t, train=..., rngs=...) -> logits [B, K]``
      (e.g. :class:`jaxgen.nn.noisy_classifier.NoisyClassifier`).
    schedule: the diffusion model's schedule (the classifier must see its noise levels).
    label_key: which batch entry holds the int labels [B].
    num_classes: K, to check the model's head; default ``model.config.num_classes``.
  Returns:
    ``loss_fn(params, batch, key, offset) -> (loss, {"accuracy": batch accuracy})``.
  """
  k = num_classes or getattr(getattr(model, "config", None), "num_classes", None)

  def loss_fn(params, batch, key, offset):
    if label_key not in batch:
      raise ValueError(f"the classifier batch needs a {label_key!r} entry [B] of int labels; "
                       f"got keys {sorted(batch)}")
    x0, y = batch["image"], batch[label_key]
    if y.shape != (x0.shape[0],) or not jnp.issubdtype(y.dtype, jnp.integer):
      raise ValueError(f"batch[{label_key!r}] must be int labels of shape [{x0.shape[0]}], got "
                       f"{y.dtype} {y.shape}")
    noise_key, dropout_key = jax.random.split(key)
    t, noise = sample_t_and_noise(noise_key, x0.shape, schedule.num_timesteps, offset)
    x_t = q_sample(schedule, x0, t, noise.astype(x0.dtype))
    logits = model.apply({"params": params}, x_t, t, train=True,
                         rngs={"dropout": jax.random.fold_in(dropout_key, offset)})
    if k is not None and logits.shape[-1] != k:
      raise ValueError(f"classifier head has {logits.shape[-1]} classes, expected {k}")
    loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))
    accuracy = jnp.mean((jnp.argmax(logits, -1) == y).astype(jnp.float32))
    return loss, {"accuracy": accuracy}

  return loss_fn


def make_classifier_train_step(model, schedule: Schedule, *, label_key: str = "label",
                               ema_decay: float = 0.999, ema_warmup: bool = True,
                               axis_name: str | None = None) -> Callable:
  """``step(state, batch, key) -> (state, metrics)`` for a noise-aware classifier: the loss of
  :func:`noisy_classifier_loss_fn` with AdamW, EMA and norms (:func:`make_step_from_loss`).
  ``batch`` is ``{"image": [B, H, W, C] in [-1, 1], label_key: [B] int}``; jit it with
  ``donate_argnums=0``."""
  loss_fn = noisy_classifier_loss_fn(model, schedule, label_key=label_key)
  return make_step_from_loss(loss_fn, ema_decay=ema_decay, ema_warmup=ema_warmup,
                             axis_name=axis_name)
