"""Multi-process set-up on JAX's own runtime (``jax.distributed``) and small host-level
agreements between processes (a flag, JSON states).

One process runs per host (TPU VM, or GPU node / GPU under SLURM); each sees its local devices
and, after ``jax.distributed.initialize``, the global ``jax.devices()``. The same program runs
in every process (multi-controller SPMD): a jitted step over a global mesh is one program
across all of them.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any, Mapping

import jax
import numpy as np

log = logging.getLogger(__name__)

_EXPLICIT = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def _int_env(env: Mapping[str, str], name: str) -> int | None:
  if name not in env:
    return None
  try:
    return int(env[name])
  except ValueError:
    raise ValueError(f"environment variable {name}={env[name]!r} must be an integer") from None


def cluster_kind(env: Mapping[str, str] | None = None) -> str | None:
  """Which multi-process launch the environment describes, or None for a single process.

  ``"explicit"``: ``JAX_COORDINATOR_ADDRESS`` (with ``JAX_NUM_PROCESSES`` and
  ``JAX_PROCESS_ID``); ``"slurm"``: a SLURM step of more than one task; ``"mpi"``: Open MPI
  with more than one rank; ``"tpu"``: a TPU slice of more than one host (jax finds the rest).
  """
  env = os.environ if env is None else env
  if env.get("JAX_COORDINATOR_ADDRESS"):
    return "explicit"
  if "SLURM_JOB_ID" in env and (_int_env(env, "SLURM_NTASKS") or 1) > 1:
    return "slurm"
  if (_int_env(env, "OMPI_COMM_WORLD_SIZE") or 1) > 1:
    return "mpi"
  if "," in env.get("TPU_WORKER_HOSTNAMES", "") or env.get("MEGASCALE_COORDINATOR_ADDRESS"):
    return "tpu"
  return None


def maybe_initialize_distributed(env: Mapping[str, str] | None = None, **kwargs) -> bool:
  """Calls ``jax.distributed.initialize`` when the environment names a multi-process run.

  Call it first thing, before anything touches a device. It does nothing in a single
  process, and nothing when already initialized (so it may be called more than once).
  With ``JAX_COORDINATOR_ADDRESS=host:port`` the process count and this process's id come
  from ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``; under SLURM, Open MPI or on a TPU slice
  jax detects all three itself.

  Args:
    env: the environment to read (default ``os.environ``).
    **kwargs: passed on to ``jax.distributed.initialize`` (e.g. ``local_device_ids``,
      ``initialization_timeout``).
  Returns:
    True when this call initialized the distributed runtime.
  Raises:
    ValueError: ``JAX_COORDINATOR_ADDRESS`` without ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID``
      outside a cluster jax detects, or a non-integer value.
  """
  env = os.environ if env is None else env
  if jax.distributed.is_initialized():
    return False
  kind = cluster_kind(env)
  if kind is None:
    return False
  if kind == "explicit":
    num, pid = _int_env(env, "JAX_NUM_PROCESSES"), _int_env(env, "JAX_PROCESS_ID")
    env_no_explicit = {k: v for k, v in env.items() if k not in _EXPLICIT}
    if (num is None or pid is None) and cluster_kind(env_no_explicit) is None:
      raise ValueError(
          f"JAX_COORDINATOR_ADDRESS={env['JAX_COORDINATOR_ADDRESS']!r} is set, so this is a "
          "multi-process run, but JAX_NUM_PROCESSES and JAX_PROCESS_ID are not both set: "
          "set them to the number of processes and to this process's index (0-based).")
    kwargs = {"coordinator_address": env["JAX_COORDINATOR_ADDRESS"], "num_processes": num,
              "process_id": pid, **kwargs}
  jax.distributed.initialize(**kwargs)
  log.info("jax.distributed initialized (%s): process %d of %d, %d of %d devices local",
           kind, jax.process_index(), jax.process_count(), jax.local_device_count(),
           jax.device_count())
  return True


def is_primary() -> bool:
  """Whether this process writes the run's shared files (``run.json``, metrics): process 0."""
  return jax.process_index() == 0


def any_process(flag: bool) -> bool:
  """True on every process when `flag` is true on any (e.g. SIGTERM reached one host). Every
  process must call it at the same point; in a single process it returns `flag`."""
  if jax.process_count() == 1:
    return bool(flag)
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  return bool(np.any(multihost_utils.process_allgather(np.asarray(flag, np.int32))))


def process_allgather_json(obj: Any) -> list:
  """Every process's `obj` (JSON-serialisable), in process order, on every process."""
  if jax.process_count() == 1:
    return [obj]
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  data = np.frombuffer(json.dumps(obj).encode(), np.uint8)
  sizes = np.asarray(multihost_utils.process_allgather(np.int32(data.size))).reshape(-1)
  padded = np.zeros(int(sizes.max()), np.uint8)
  padded[:data.size] = data
  rows = np.asarray(multihost_utils.process_allgather(padded)).reshape(len(sizes), -1)
  return [json.loads(bytes(row[:size]).decode()) for row, size in zip(rows, sizes)]
