"""Mesh and sharding helpers.

jaxgen's default data parallelism is ``jax.jit`` over a one-axis mesh named ``data``:
batches are sharded along their leading axis with ``NamedSharding(mesh, P("data"))`` and
parameters are replicated, so XLA inserts the gradient all-reduce itself. The same train
step also works under ``jax.pmap(..., axis_name="data")`` for users who drive pmap
themselves (see :func:`jaxgen.training.make_train_step`, argument ``axis_name``).
"""
from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(devices: Sequence[jax.Device] | None = None, axis: str = DATA_AXIS) -> Mesh:
  """A one-axis mesh over `devices` (default: all local devices)."""
  devices = list(jax.local_devices() if devices is None else devices)
  return Mesh(np.asarray(devices), (axis,))


def data_sharding(mesh: Mesh, axis: str = DATA_AXIS) -> NamedSharding:
  """Sharding that splits the leading (batch) axis over `axis`."""
  return NamedSharding(mesh, P(axis))


def replicated(mesh: Mesh) -> NamedSharding:
  """Sharding that puts a full copy on every device of `mesh`."""
  return NamedSharding(mesh, P())


def shard_batch(batch: Any, mesh: Mesh, axis: str = DATA_AXIS) -> Any:
  """Places a host batch (pytree of arrays with a leading batch axis) on `mesh`.

  Raises:
    ValueError: if a leaf's batch size is not divisible by the number of devices.
  """
  n = mesh.shape[axis]
  sharding = data_sharding(mesh, axis)

  def put(x):
    x = np.asarray(x)
    if x.ndim == 0 or x.shape[0] % n:
      raise ValueError(
          f"batch leaf of shape {x.shape} cannot be split over {n} devices on mesh "
          f"axis {axis!r}: the leading (batch) size must be a multiple of {n}.")
    return jax.device_put(x, sharding)

  return jax.tree.map(put, batch)


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Places a full copy of `tree` on every device of `mesh`."""
  return jax.device_put(tree, replicated(mesh))
