"""Meshes, batch shardings and placing trees on them.

jaxgen's default data parallelism is ``jax.jit`` over a one-axis mesh named ``data``:
batches are sharded along their leading axis with ``NamedSharding(mesh, P("data"))`` and
parameters are replicated, so XLA inserts the gradient all-reduce itself. The same train
step also works under ``jax.pmap(..., axis_name="data")`` for users who drive pmap
themselves (see :func:`jaxgen.training.make_train_step`, argument ``axis_name``).

For more than one process, or for sharded parameters, :func:`make_global_mesh` builds a mesh
over the GLOBAL ``jax.devices()`` with axes ``("data", "fsdp")`` (plus ``"model"`` when asked
for). The batch is split over both ``data`` and ``fsdp`` (every device sees different
examples, as in ZeRO-3 / FSDP, Rajbhandari et al. 2020); parameters are sharded over
``fsdp`` by the rules of :mod:`jaxgen.parallel.rules`. :func:`global_batch` assembles the
global batch from each process's own examples.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"
FSDP_AXIS = "fsdp"
MODEL_AXIS = "model"
BATCH_AXES = (DATA_AXIS, FSDP_AXIS)  # the mesh axes the leading (batch) axis is split over


def make_mesh(devices: Sequence[jax.Device] | None = None, axis: str = DATA_AXIS) -> Mesh:
  """A one-axis mesh over `devices` (default: all local devices)."""
  devices = list(jax.local_devices() if devices is None else devices)
  return Mesh(np.asarray(devices), (axis,))


def make_global_mesh(fsdp: int = 1, data: int = -1, model: int = 1, *,
                     devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A mesh over all processes' devices with axes ``("data", "fsdp")`` (``+ ("model",)``
  when ``model > 1``).

  ``fsdp=1`` (the default) is pure data parallelism; ``fsdp=jax.device_count()`` shards every
  large parameter over all devices (ZeRO-3, Rajbhandari et al. 2020). The devices are laid out
  process by process with ``fsdp`` (then ``model``) varying fastest, so with ``fsdp`` dividing
  the devices of one host the parameter gathers stay inside a host and only the gradient
  reduction of ``data`` crosses hosts. A single-process accelerator mesh uses
  ``jax.experimental.mesh_utils.create_device_mesh`` for the physical topology.

  Args:
    fsdp: size of the ``fsdp`` axis (parameters and optimiser state are split over it).
    data: size of the ``data`` axis; -1 takes what is left of the devices.
    model: size of a ``model`` axis (tensor parallelism by explicit rules); 1 leaves it out.
    devices: the devices (default ``jax.devices()``, all processes).
  Returns:
    A `Mesh`; e.g. ``make_global_mesh(fsdp=2)`` on 8 devices has shape data=4, fsdp=2.
  Raises:
    ValueError: a non-positive size, a mesh larger than the devices, or sizes whose product
      is not the number of devices.
  """
  devices = list(jax.devices() if devices is None else devices)
  n = len(devices)
  for name, size in (("fsdp", fsdp), ("model", model)):
    if not isinstance(size, (int, np.integer)) or size < 1:
      raise ValueError(f"mesh axis {name!r} must be a positive integer, got {size!r}")
  if data == -1:
    if n % (fsdp * model):
      raise ValueError(
          f"cannot build a mesh with fsdp={fsdp}, model={model} over {n} devices: "
          f"{n} is not a multiple of fsdp x model = {fsdp * model}. Choose sizes whose "
          f"product divides the device count.")
    data = n // (fsdp * model)
  elif not isinstance(data, (int, np.integer)) or data < 1:
    raise ValueError(f"mesh axis 'data' must be a positive integer or -1, got {data!r}")
  size = data * fsdp * model
  if size > n:
    raise ValueError(f"a mesh of data={data} x fsdp={fsdp} x model={model} = {size} devices "
                     f"is larger than the {n} devices available ({devices[0].platform}).")
  if size != n:
    raise ValueError(f"mesh sizes data={data} x fsdp={fsdp} x model={model} = {size} must "
                     f"multiply to the {n} devices; use data=-1 to take the rest.")
  shape, names = (data, fsdp), (DATA_AXIS, FSDP_AXIS)
  if model > 1:
    shape, names = shape + (model,), names + (MODEL_AXIS,)
  processes = {d.process_index for d in devices}
  if devices[0].platform != "cpu" and len(processes) == 1:
    from jax.experimental import mesh_utils  # pylint: disable=import-outside-toplevel
    try:
      grid = mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
    except (ValueError, NotImplementedError, AssertionError):
      grid = np.asarray(devices).reshape(shape)
  else:
    devices = sorted(devices, key=lambda d: (d.process_index, d.id))
    grid = np.asarray(devices).reshape(shape)
  return Mesh(grid, names)


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


def batch_axes(mesh: Mesh) -> tuple[str, ...]:
  """The axes of `mesh` the batch is split over: those of ``("data", "fsdp")`` it has.

  Raises:
    ValueError: the mesh has neither axis.
  """
  axes = tuple(a for a in BATCH_AXES if a in mesh.axis_names)
  if not axes:
    raise ValueError(f"mesh axes {mesh.axis_names} have no batch axis: expected 'data' "
                     "and/or 'fsdp' (see jaxgen.parallel.make_global_mesh).")
  return axes


def data_parallel_size(mesh: Mesh) -> int:
  """How many ways the batch is split: the product of the mesh's batch axes."""
  return math.prod(mesh.shape[a] for a in batch_axes(mesh))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Sharding of a global batch: the leading axis over ``("data", "fsdp")``."""
  return NamedSharding(mesh, P(batch_axes(mesh)))


def global_batch(batch: Any, mesh: Mesh) -> Any:
  """The global batch from this process's examples (a pytree of arrays ``[b, ...]``).

  Every process passes its own ``b`` examples (e.g. a `jaxgen.data.Loader` with its
  ``shard_index``); the global batch holds ``b * jax.process_count()`` rows, process ``k``'s
  first rows going to its first devices (``jax.make_array_from_process_local_data``). In a
  single process this is ``jax.device_put`` with `batch_sharding`.

  Raises:
    ValueError: a scalar leaf, or a global batch that is not a multiple of the data-parallel
      size (``data x fsdp`` devices).
  """
  n = data_parallel_size(mesh)
  sharding = batch_sharding(mesh)
  procs = jax.process_count()

  def put(x):
    x = np.asarray(x)
    if x.ndim == 0 or (x.shape[0] * procs) % n:
      raise ValueError(
          f"batch leaf of shape {x.shape} ({procs} process(es)) cannot be split over the "
          f"{n} data-parallel devices of mesh axes {batch_axes(mesh)}: the global batch "
          f"(per-process batch x processes) must be a multiple of {n}.")
    if procs == 1:
      return jax.device_put(x, sharding)
    return jax.make_array_from_process_local_data(sharding, x)

  return jax.tree.map(put, batch)


def fully_addressable(tree: Any) -> bool:
  """Whether every array leaf of `tree` lives on this process's devices only (always true in
  a single process; false for arrays over a multi-process mesh)."""
  return all(getattr(x, "is_fully_addressable", True) for x in jax.tree.leaves(tree))


def place(tree: Any, shardings: Any) -> Any:
  """Puts `tree` (host or device arrays) onto `shardings` (a matching tree of `Sharding`).

  Over a multi-process mesh every process must pass the same values (e.g. a state built from
  the same seed): each process then fills its own shards from its host copy
  (``jax.make_array_from_callback``).
  """
  leaves = jax.tree.leaves(shardings)
  if all(s.is_fully_addressable for s in leaves):
    return jax.device_put(tree, shardings)
  host = jax.device_get(tree)

  def put(x, s):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, s, lambda index: x[index])

  return jax.tree.map(put, host, shardings)
