"""The device mesh of a training run from its config, shared by the U-Net families.

``train.fsdp`` (`experiments.config.UNetTrainConfig`) sets the ``fsdp`` axis of
`jaxgen.parallel.make_global_mesh` over every process's devices; the rest of the devices form
the ``data`` axis. With ``fsdp=1`` on one process the run keeps the training loop's default
(data parallel over the local devices, the state replicated), bit for bit as before.
`experiments.main` calls `jaxgen.parallel.maybe_initialize_distributed` before a training
command, so the same ``train`` command runs on every host of a multi-process launch
(docs/parallelism.md).
"""
from __future__ import annotations

from typing import Any

import jax

from jaxgen import parallel


def training_mesh(train) -> tuple[Any, Any]:
  """``(mesh, state_sharding)`` for `jaxgen.training.train_loop` from ``train.fsdp``.

  ``(None, None)`` (the loop's local data-parallel default) on one process with ``fsdp=1``;
  otherwise the global ``(data, fsdp)`` mesh, with the parameters, EMA and optimiser state
  sharded by the default FSDP rule when ``fsdp > 1`` (replicated when ``fsdp=1``).

  Raises:
    ValueError: ``fsdp`` does not divide the number of devices (`make_global_mesh`).
  """
  if train.fsdp == 1 and jax.process_count() == 1:
    return None, None
  mesh = parallel.make_global_mesh(fsdp=train.fsdp)
  return mesh, (parallel.sharding_from_rules(mesh) if train.fsdp > 1 else None)


def gathered(tree: Any, mesh) -> Any:
  """``tree`` replicated over every device of ``mesh`` (readable as numpy on every process),
  e.g. the EMA parameters before sampling from a sharded run; unchanged when ``mesh`` is None."""
  if mesh is None:
    return tree
  return jax.jit(lambda t: t, out_shardings=parallel.replicated(mesh))(tree)
