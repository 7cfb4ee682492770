"""Sharding of parameters, EMA parameters and optimiser state from regex rules.

Rules are ``(regex, spec)`` pairs, as in big_vision's sharding rules: each parameter's path
(its keys joined by ``/``, e.g. ``down_0/ResnetBlock_0/Conv_0/kernel``) is searched
(``re.search``) with each regex in order and the first match decides. A ``spec`` is

* a `PartitionSpec` (or a tuple / list of its entries): exactly that placement;
* ``"replicate"`` or ``None``: a full copy on every device;
* ``"fsdp"``: the default rule below.

A parameter no rule matches takes the default rule, fully-sharded data parallelism (ZeRO-3,
Rajbhandari et al. 2020, "ZeRO: Memory Optimizations Toward Training Trillion Parameter
Models"): an array of at least ``min_size`` elements has its largest axis that the ``fsdp``
mesh axis divides split over ``fsdp`` (ties go to the later axis); smaller arrays, and those
with no such axis, are replicated. XLA's SPMD partitioner (GSPMD, Xu et al. 2021) then
all-gathers a parameter where it is used and reduce-scatters its gradient.

EMA parameters and the optimiser state mirror the parameters: a leaf whose path ends with a
parameter's path (``opt_state/1/0/mu/<param path>``) and has its shape gets that parameter's
spec; everything else (step counters, scalars) is replicated.
"""
from __future__ import annotations

import math
import re
import warnings
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxgen.parallel.mesh import FSDP_AXIS

FSDP_MIN_SIZE = 2 ** 14  # elements (64 KiB in float32): biases and norms stay replicated

Rule = tuple[str, Any]


def path_name(path) -> str:
  """A key path as the ``/``-joined string the rules match (``params/Conv_0/kernel``)."""
  return jax.tree_util.keystr(tuple(path), simple=True, separator="/")


def fsdp_spec(shape: Sequence[int], fsdp_size: int, *, axis: str = FSDP_AXIS,
              min_size: int = FSDP_MIN_SIZE) -> P:
  """The default rule: `axis` on the largest dimension of `shape` that `fsdp_size` divides,
  for arrays of at least `min_size` elements; ``P()`` (replicated) otherwise."""
  shape = tuple(shape)
  if fsdp_size <= 1 or math.prod(shape) < min_size:
    return P()
  dims = [i for i, d in enumerate(shape) if d % fsdp_size == 0]
  if not dims:
    return P()
  i = max(dims, key=lambda j: (shape[j], j))
  return P(*([None] * i), axis)


def _axes(entry) -> tuple[str, ...]:
  if entry is None:
    return ()
  return tuple(entry) if isinstance(entry, (tuple, list)) else (entry,)


def check_spec(name: str, shape: Sequence[int], spec: P, mesh: Mesh) -> None:
  """Raises ValueError naming parameter `name` when `spec` cannot shard `shape` on `mesh`:
  more entries than dimensions, an axis the mesh lacks or uses twice, or a dimension its
  mesh axes do not divide."""
  shape = tuple(shape)
  if len(spec) > len(shape):
    raise ValueError(f"sharding rule gives parameter {name!r} of shape {shape} the spec "
                     f"{spec}, which has more entries than the array has dimensions.")
  seen = set()
  for dim, entry in enumerate(spec):
    axes = _axes(entry)
    for a in axes:
      if a not in mesh.shape:
        raise ValueError(f"sharding rule gives parameter {name!r} the spec {spec}, but the "
                         f"mesh has no axis {a!r} (its axes: {tuple(mesh.axis_names)}).")
      if a in seen:
        raise ValueError(f"sharding rule gives parameter {name!r} the spec {spec}, which "
                         f"uses mesh axis {a!r} twice.")
      seen.add(a)
    ways = math.prod(mesh.shape[a] for a in axes)
    if shape[dim] % ways:
      raise ValueError(
          f"sharding rule gives parameter {name!r} of shape {shape} the spec {spec}: "
          f"dimension {dim} (size {shape[dim]}) is not divisible by the {ways} devices of "
          f"mesh axes {axes}. Change the rule (e.g. shard another dimension) or the mesh.")


def _resolve(spec, shape, mesh: Mesh, min_size: int) -> P:
  if spec is None or spec == "replicate":
    return P()
  if isinstance(spec, str):
    if spec != "fsdp":
      raise ValueError(f"unknown sharding rule {spec!r}; expected a PartitionSpec, a tuple "
                       "of mesh axis names, 'fsdp' or 'replicate'.")
    return fsdp_spec(shape, mesh.shape.get(FSDP_AXIS, 1), min_size=min_size)
  if isinstance(spec, P):
    return spec
  if isinstance(spec, (tuple, list)):
    return P(*spec)
  raise ValueError(f"unknown sharding rule {spec!r}; expected a PartitionSpec, a tuple of "
                   "mesh axis names, 'fsdp' or 'replicate'.")


def param_specs(params: Any, mesh: Mesh, rules: Sequence[Rule] = (), *,
                min_size: int = FSDP_MIN_SIZE, prefix: str = "") -> Any:
  """A `PartitionSpec` for every leaf of `params` (arrays or ``jax.ShapeDtypeStruct``).

  Args:
    params: the parameter pytree.
    mesh: the mesh the specs refer to (its ``fsdp`` size drives the default rule).
    rules: ``(regex, spec)`` pairs, first match wins (see the module docstring).
    min_size: arrays with fewer elements are replicated by the default rule.
    prefix: not matched, only shown in messages (where in the state `params` sits).
  Returns:
    The pytree of specs, shaped like `params`.
  Raises:
    ValueError: a rule's spec that leaves a shape indivisible (naming the parameter), an
      unknown mesh axis, or an unknown spec.
  Warns:
    UserWarning: for each rule that matches no parameter (a typo in a regex).
  """
  compiled = []
  for regex, spec in rules:
    try:
      compiled.append((re.compile(regex), spec))
    except re.error as e:
      raise ValueError(f"sharding rule regex {regex!r} is not a valid regex: {e}") from e
  used = [False] * len(compiled)
  names = []

  def spec_for(path, x):
    name = path_name(path)
    names.append(name)
    shape = np.shape(x)
    chosen = "fsdp"
    for i, (rx, spec) in enumerate(compiled):
      if rx.search(name):
        used[i], chosen = True, spec
        break
    spec = _resolve(chosen, shape, mesh, min_size)
    check_spec(prefix + name, shape, spec, mesh)
    return spec

  specs = jax.tree_util.tree_map_with_path(spec_for, params)
  for (rx, _), hit in zip(compiled, used):
    if not hit:
      warnings.warn(f"sharding rule {rx.pattern!r} matches no parameter (paths look like "
                    f"{names[:3]}); it has no effect.", stacklevel=2)
  return specs


def state_specs(arrays: Any, mesh: Mesh, rules: Sequence[Rule] = (), *,
                params_key: str = "params", min_size: int = FSDP_MIN_SIZE) -> Any:
  """Specs for a whole train state's arrays (e.g. ``TrainState.arrays()``).

  The rules apply to ``arrays[params_key]``; every other leaf whose path ends with a
  parameter's path and has its shape (EMA parameters, optax's ``mu`` / ``nu``) takes that
  parameter's spec, and the rest (``step``, optax counts) is replicated. A state without a
  ``params_key`` entry (e.g. a GAN state holding two networks) has the rules applied to all
  of its leaves.
  """
  if not (isinstance(arrays, Mapping) and params_key in arrays):
    return param_specs(arrays, mesh, rules, min_size=min_size)
  pspecs = param_specs(arrays[params_key], mesh, rules, min_size=min_size,
                       prefix=params_key + "/")
  flat, _ = jax.tree_util.tree_flatten_with_path(arrays[params_key])
  table = {path_name(path): (np.shape(x), s) for (path, x), s in
           zip(flat, jax.tree.leaves(pspecs, is_leaf=lambda x: isinstance(x, P)))}

  def mirror(path, x):
    parts = path_name(path).split("/")
    for k in range(len(parts)):
      hit = table.get("/".join(parts[k:]))
      if hit is not None and hit[0] == np.shape(x):
        return hit[1]
    return P()

  specs = {k: (pspecs if k == params_key else jax.tree_util.tree_map_with_path(mirror, v))
           for k, v in arrays.items()}
  return type(arrays)(specs) if not isinstance(arrays, dict) else specs


def state_shardings(arrays: Any, mesh: Mesh, rules: Sequence[Rule] = (), *,
                    params_key: str = "params", min_size: int = FSDP_MIN_SIZE) -> Any:
  """`state_specs` as ``NamedSharding`` s on `mesh` (what ``jax.device_put`` / ``jax.jit``'s
  ``in_shardings`` / orbax restore take)."""
  specs = state_specs(arrays, mesh, rules, params_key=params_key, min_size=min_size)
  return jax.tree.map(lambda s: NamedSharding(mesh, s), specs,
                      is_leaf=lambda x: isinstance(x, P))


def sharding_from_rules(mesh: Mesh, rules: Sequence[Rule] = (), *,
                        params_key: str = "params", min_size: int = FSDP_MIN_SIZE
                        ) -> Callable[[Any], Any]:
  """``arrays -> shardings`` with these rules: the ``state_sharding`` argument of
  `jaxgen.training.train_loop` (``sharding_from_rules(mesh)`` is plain FSDP)."""
  return lambda arrays: state_shardings(arrays, mesh, rules, params_key=params_key,
                                        min_size=min_size)
