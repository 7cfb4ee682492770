"""Checkpoints with orbax: train-state arrays, the data iterator's state and run metadata.

A checkpoint ``<dir>/<step>/`` holds ``state`` (step, params, EMA params, optimizer state) and
``data`` (the loader's JSON state), so a resumed run continues with the very next batch.
Restoring walks back from the newest step when a checkpoint is unreadable (a half-written or
corrupt directory), and says what to do when none is usable.

Arrays may be sharded over several processes: every process calls `save` and writes its own
shards (orbax), and `restore_latest` reads them back onto whatever shardings the target state
has, so a checkpoint written by 4 processes with FSDP restores into one process, replicated.
A multi-process run saves each process's loader state (``{"process_data_states": [...]}``);
one restored by another number of processes starts its loader afresh, with a warning.
"""
from __future__ import annotations

import logging
import os

import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxgen import parallel
from jaxgen.training.state import TrainState

log = logging.getLogger(__name__)

_PER_PROCESS = "process_data_states"


class CheckpointError(RuntimeError):
  """No usable checkpoint where one was required."""


def make_manager(directory: str, *, max_to_keep: int = 3,
                 async_save: bool = True) -> ocp.CheckpointManager:
  """An orbax ``CheckpointManager`` keeping the newest ``max_to_keep`` checkpoints."""
  directory = os.path.abspath(directory)
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                         enable_async_checkpointing=async_save)
  return ocp.CheckpointManager(directory, options=options)


def save(manager: ocp.CheckpointManager, state: TrainState, data_state: dict | None = None,
         *, force: bool = True) -> None:
  """Saves the state's arrays (and the loader state) at ``state.step``."""
  step = int(jax.device_get(state.step))
  items = {"state": ocp.args.StandardSave(state.arrays())}
  if data_state is not None:
    if jax.process_count() > 1:  # each host's loader has its own shard of the data
      data_state = {_PER_PROCESS: parallel.process_allgather_json(data_state)}
    items["data"] = ocp.args.JsonSave(data_state)
  manager.save(step, args=ocp.args.Composite(**items), force=force)


def _own_data_state(data: dict | None, step: int) -> dict | None:
  """This process's loader state out of a restored ``data`` item (None: start afresh)."""
  saved = len(data[_PER_PROCESS]) if isinstance(data, dict) and _PER_PROCESS in data else 1
  if data is None or saved == jax.process_count() == 1:
    return data
  if saved == jax.process_count():
    return data[_PER_PROCESS][jax.process_index()]
  log.warning("the checkpoint at step %d was written by %d process(es), this run has %d: "
              "the data loaders start from their first batch (the model state is restored)",
              step, saved, jax.process_count())
  return None


def _on_this_device(x) -> jax.ShapeDtypeStruct:
  """A host leaf's restore target on this process's first device."""
  return jax.ShapeDtypeStruct(np.shape(x), x.dtype,
                              sharding=jax.sharding.SingleDeviceSharding(jax.local_devices()[0]))


def _restore_step(manager: ocp.CheckpointManager, step: int, targets, with_data: bool):
  """The items of checkpoint ``step`` restored into the first of ``targets`` that works
  (raises the first target's error when none does)."""
  first = None
  for target in targets:
    items = {"state": ocp.args.StandardRestore(target)}
    if with_data:
      items["data"] = ocp.args.JsonRestore()
    try:
      return manager.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:  # noqa: BLE001 -- try the next target
      first = first or e
  raise first


def restore_latest(manager: ocp.CheckpointManager, state: TrainState, *,
                   with_data: bool = True) -> tuple[TrainState, dict | None, int] | None:
  """Restores the newest readable checkpoint into the structure (and shardings) of ``state``.

  Unreadable checkpoints are skipped with a warning (falling back to the previous good one).

  Returns:
    (state, data_state or None, step), or None when the directory has no checkpoint at all.
  Raises:
    CheckpointError: checkpoints exist but none can be read.
  """
  steps = sorted(manager.all_steps(), reverse=True)
  if not steps:
    return None
  arrays = state.arrays()
  # Device arrays restore onto their own shardings; host arrays onto the shardings saved in
  # the checkpoint, or, when those name another topology (a checkpoint of several processes
  # read back in one), onto this process's first device.
  targets = [jax.tree.map(ocp.utils.to_shape_dtype_struct, arrays)]
  if any(s.sharding is None for s in jax.tree.leaves(targets[0])):
    targets.append(jax.tree.map(lambda s: s if s.sharding is not None else _on_this_device(s),
                                targets[0]))
  errors = []
  for step in steps:
    try:
      restored = _restore_step(manager, step, targets, with_data)
      data = restored["data"] if with_data and "data" in restored else None
      return state.replace_arrays(restored["state"]), _own_data_state(data, step), step
    except Exception as e:  # noqa: BLE001 -- any failure to read means "try the previous one"
      log.warning("checkpoint at step %d in %s is unreadable (%s: %s); trying an older one",
                  step, manager.directory, type(e).__name__, e)
      errors.append(f"step {step}: {type(e).__name__}: {e}")
  raise CheckpointError(
      f"no readable checkpoint in {manager.directory}; tried steps {steps}:\n  "
      + "\n  ".join(errors) + "\nDelete the directory to start over, or point --workdir at a "
      "run with a valid checkpoint.")


def restore_arrays(directory: str, state: TrainState) -> tuple[TrainState, int]:
  """Restores the newest readable checkpoint under ``directory`` (read-only use: sampling,
  evaluation). Raises :class:`CheckpointError` if there is none."""
  if not os.path.isdir(directory):
    raise CheckpointError(f"no checkpoint directory {directory!r}: train first with "
                          "`python -m experiments.main train --config ... --workdir DIR`")
  manager = make_manager(directory, async_save=False)
  try:
    out = restore_latest(manager, state, with_data=False)
  finally:
    manager.close()
  if out is None:
    raise CheckpointError(f"{directory!r} holds no checkpoint: train first with "
                          "`python -m experiments.main train --config ... --workdir DIR`")
  return out[0], out[2]
