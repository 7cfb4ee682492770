"""Train state: a pytree of step, params, EMA params and optimizer state."""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import struct


class TrainState(struct.PyTreeNode):
  """step, params, ema_params, opt_state; ``apply_fn`` and ``tx`` are static."""
  step: jax.Array                  # [] int32
  params: Any
  ema_params: Any
  opt_state: optax.OptState
  apply_fn: Callable = struct.field(pytree_node=False)
  tx: optax.GradientTransformation = struct.field(pytree_node=False)

  @classmethod
  def create(cls, *, apply_fn: Callable, params: Any, tx: optax.GradientTransformation):
    # A copy: a donated state must not delete the caller's arrays.
    params = jax.tree.map(lambda x: jnp.array(x, copy=True), params)
    return cls(step=jnp.zeros((), jnp.int32), params=params,
               ema_params=jax.tree.map(jnp.copy, params), opt_state=tx.init(params),
               apply_fn=apply_fn, tx=tx)

  def arrays(self) -> dict:
    """The checkpointed part (everything but the static functions)."""
    return {"step": self.step, "params": self.params, "ema_params": self.ema_params,
            "opt_state": self.opt_state}

  def replace_arrays(self, tree: dict) -> "TrainState":
    return self.replace(**tree)


def ema_decay_at(step: jax.Array, decay: float, warmup: bool) -> jax.Array:
  """EMA decay at ``step``; with warm-up min(decay, (1 + step) / (10 + step)), so that short
  runs are not dominated by the random initialization (as in Tensorflow's EMA with
  num_updates)."""
  decay = jnp.asarray(decay, jnp.float32)
  if not warmup:
    return decay
  s = step.astype(jnp.float32)
  return jnp.minimum(decay, (1.0 + s) / (10.0 + s))


def ema_update(ema, params, decay):
  """ema <- decay * ema + (1 - decay) * params."""
  return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)
