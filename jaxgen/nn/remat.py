"""Rematerialisation (gradient checkpointing, Chen et al. 2016) of U-Net blocks.

A block called through :func:`call_block` with a policy runs under ``flax.linen.remat``
(`jax.checkpoint`): its activations are not kept for the backward pass but recomputed from
the block's inputs, which trades one more forward of the block for the memory of everything
inside it. The policy names one of `jax.checkpoint_policies` and says what may still be
saved (``"nothing_saveable"``: only the block's inputs; ``"dots_with_no_batch_dims_saveable"``:
also the results of matmuls without batch dimensions, i.e. the dense projections). Parameter
names, values and results are those of the plain block: only memory and time change.
"""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax

REMAT_POLICIES = ("nothing_saveable", "dots_saveable", "dots_with_no_batch_dims_saveable",
                  "everything_saveable")


def check_remat_policy(policy: str | None, owner: str = "remat_policy") -> Callable | None:
  """The `jax.checkpoint_policies` function named ``policy`` (None: no rematerialisation).

  Raises:
    ValueError: for a name not in :data:`REMAT_POLICIES`.
  """
  if policy is None:
    return None
  if policy not in REMAT_POLICIES:
    raise ValueError(f"{owner}={policy!r} is not a rematerialisation policy; expected None or "
                     f"one of {REMAT_POLICIES}")
  return getattr(jax.checkpoint_policies, policy)


def _apply(block: nn.Module, *args):
  *inputs, train = args
  return block(*inputs, train=train)


def call_block(block: nn.Module, policy: str | None, *inputs: Any, train: bool) -> Any:
  """``block(*inputs, train=train)``, rematerialised with ``policy`` unless it is None.

  ``block`` is an unbound submodule made in the caller's compact method (its name and
  parameters are the caller's as without remat); ``train`` is a Python bool (static).
  """
  fn = check_remat_policy(policy)
  if fn is None:
    return block(*inputs, train=train)
  return nn.remat(_apply, static_argnums=(len(inputs) + 1,), policy=fn)(block, *inputs, train)
