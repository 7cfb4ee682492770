"""Parallelism on JAX's own runtime: meshes, sharding rules, multi-process set-up.

* `make_mesh` / `shard_batch` / `replicate`: data parallelism over the local devices (a
  ``data`` axis, parameters replicated): the default of `jaxgen.training.train_loop`.
* `make_global_mesh`: a ``("data", "fsdp")`` mesh over every process's devices;
  `global_batch` builds the global batch from each process's own examples.
* `state_shardings` / `sharding_from_rules`: parameters, EMA parameters and optimiser state
  sharded by big_vision-style ``(regex, spec)`` rules with FSDP as the default (ZeRO-3,
  Rajbhandari et al. 2020); `place` puts a state onto them.
* `maybe_initialize_distributed`: ``jax.distributed.initialize`` when launched as several
  processes (explicit coordinator, SLURM, Open MPI, TPU slice).

See docs/parallelism.md for launch commands and measured memory.
"""
from jaxgen.parallel.distributed import (any_process, cluster_kind, is_primary,
                                         maybe_initialize_distributed, process_allgather_json)
from jaxgen.parallel.mesh import (BATCH_AXES, DATA_AXIS, FSDP_AXIS, MODEL_AXIS, batch_axes,
                                  batch_sharding, data_parallel_size, data_sharding,
                                  fully_addressable, global_batch, make_global_mesh, make_mesh,
                                  place, replicate, replicated, shard_batch)
from jaxgen.parallel.rules import (FSDP_MIN_SIZE, check_spec, fsdp_spec, param_specs, path_name,
                                   sharding_from_rules, state_shardings, state_specs)
