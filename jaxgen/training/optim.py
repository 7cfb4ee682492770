"""Optimizers: AdamW with linear warm-up and global-norm gradient clipping."""
from __future__ import annotations

import optax


def make_optimizer(learning_rate: float, *, warmup_steps: int = 0, total_steps: int | None = None,
                   decay: str = "constant", weight_decay: float = 0.0, grad_clip: float | None = 1.0,
                   b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8
                   ) -> optax.GradientTransformation:
  """AdamW (Loshchilov & Hutter 2019) with linear warm-up to ``learning_rate`` over
  ``warmup_steps``, then constant or cosine decay to 0 at ``total_steps``, after clipping the
  gradient's global norm to ``grad_clip`` (DDPM used lr 2e-4, warm-up 5000, clip 1.0).

  Raises:
    ValueError: for a non-positive learning rate, unknown decay, or cosine without total_steps.
  """
  if not learning_rate > 0:
    raise ValueError(f"learning_rate must be > 0, got {learning_rate}")
  if decay not in ("constant", "cosine"):
    raise ValueError(f"unknown learning-rate decay {decay!r}; expected 'constant' or 'cosine'")
  if decay == "cosine":
    if not total_steps or total_steps <= warmup_steps:
      raise ValueError("cosine decay needs total_steps > warmup_steps")
    lr = optax.warmup_cosine_decay_schedule(0.0, learning_rate, max(warmup_steps, 1),
                                            total_steps, end_value=0.0)
  elif warmup_steps > 0:
    lr = optax.join_schedules([optax.linear_schedule(0.0, learning_rate, warmup_steps),
                               optax.constant_schedule(learning_rate)], [warmup_steps])
  else:
    lr = optax.constant_schedule(learning_rate)
  chain = [] if grad_clip is None else [optax.clip_by_global_norm(grad_clip)]
  chain.append(optax.adamw(lr, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay))
  return optax.chain(*chain)
