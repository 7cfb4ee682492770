"""The training loop every trained model in jaxgen goes through.

`train_loop` owns what is the same for every model: the device mesh and the replicated state,
restoring the newest readable checkpoint (with the data iterator's position), the SIGTERM
watcher (a preemption saves a checkpoint and stops), the stop on a non-finite loss (the last
good checkpoint is kept), ``metrics.jsonl`` and TensorBoard, the progress bar, ``run.json``
and the checkpoint cadence. A model supplies only what differs: how to build its state, its
step, what a log line shows and what runs every N steps.

The state is any pytree with ``arrays()`` / ``replace_arrays(tree)`` (`TrainState`,
`jaxgen.gan.GANState`, the VQ states), so orbax saves exactly its arrays.

Over several processes (`jaxgen.parallel.maybe_initialize_distributed`, a mesh from
`jaxgen.parallel.make_global_mesh`) the same call runs in every process: each process's loader
yields its own examples and the loop assembles the global batch
(`jaxgen.parallel.global_batch`); a ``state_sharding`` places the state sharded (e.g. FSDP,
`jaxgen.parallel.sharding_from_rules`) instead of replicated; every process writes its own
shards of a checkpoint; a SIGTERM that reaches any process stops all of them at the same step
with a checkpoint; process 0 alone writes ``run.json`` and the metrics.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import platform
import signal
import threading
import time
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from jaxgen import parallel
from jaxgen.data import check_batch
from jaxgen.training.checkpoint import make_manager, restore_latest, save

log = logging.getLogger(__name__)

StepFn = Callable[[Any, Any], tuple[Any, Mapping[str, Any]]]
Hook = Callable[[Any, int], None]


class NonFiniteLossError(FloatingPointError):
  """Training produced a NaN/inf loss or parameters; the last good checkpoint is kept."""


class Terminated(Exception):
  """SIGTERM stopped a training run that has no caller to report ``terminated`` to (e.g. a
  classifier trained on the way to an evaluation); its checkpoint is saved, and running the
  same call again resumes it. `train_loop` treats one raised by a hook as its own SIGTERM."""


@jax.jit
def _all_finite(leaves):
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def all_finite(tree) -> bool:
  """True when every array leaf of `tree` is free of NaN and inf (checked before saving).

  One compiled program over all leaves: over several processes, one eager reduction per leaf
  would launch many small programs with collectives, whose interleaving on the CPU's gloo
  collectives can deadlock."""
  leaves = jax.tree.leaves(tree)
  return bool(jax.device_get(_all_finite(leaves))) if leaves else True


def sigterm_blocked() -> bool:
  """Whether SIGTERM is blocked in the calling thread (the runner blocks it before any thread
  starts: `experiments.main.block_sigterm`)."""
  return (hasattr(signal, "pthread_sigmask")
          and signal.SIGTERM in signal.pthread_sigmask(signal.SIG_BLOCK, []))


class Terminate:
  """SIGTERM -> ``requested``: the loop saves and stops at the next step boundary.

  In the main thread a Python signal handler is installed for the duration (elsewhere the loop
  runs without one). If SIGTERM is also blocked there (`experiments.main.block_sigterm`), a watcher thread takes
  it with ``signal.sigtimedwait`` and SIGTERM is unblocked on exit, so outside the loop it ends
  the process as usual (one that arrived before the loop is taken at its first step)."""

  def __init__(self):
    self.requested, self._old = False, None
    self._watcher, self._stop = None, threading.Event()

  def __enter__(self):
    if threading.current_thread() is not threading.main_thread():
      return self  # neither a handler nor the process's signal mask belongs to this thread
    # The handler also serves threads that existed before SIGTERM was blocked.
    self._old = signal.signal(signal.SIGTERM, self._handle)
    if sigterm_blocked():
      self._watcher = threading.Thread(target=self._watch, name="sigterm-watcher", daemon=True)
      self._watcher.start()
    return self

  def _watch(self):
    while not self._stop.is_set():
      if signal.sigtimedwait({signal.SIGTERM}, 0.2) is not None:
        self.requested = True
        return

  def _handle(self, *_):
    self.requested = True

  def __exit__(self, *exc):
    if self._watcher is not None:
      self._stop.set()
      self._watcher.join()
    if self._old is not None:
      signal.signal(signal.SIGTERM, self._old)
    if self._watcher is not None:
      signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})


class MetricsLog:
  """Appends ``{"step": s, **metrics}`` lines to ``workdir/metrics.jsonl`` and, with
  `tensorboard`, scalars ``train/<name>`` to ``workdir/tensorboard``. With ``workdir=None``
  it writes nothing."""

  def __init__(self, workdir: str | None, tensorboard: bool = True):
    self._file, self._writer = None, None
    if workdir is None:
      return
    self._file = open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8")
    if tensorboard:
      from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
      self._writer = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, metrics: Mapping[str, float]) -> None:
    if self._file is None:
      return
    self._file.write(json.dumps({"step": step, **metrics}) + "\n")
    self._file.flush()
    if self._writer is not None:
      for k, v in metrics.items():
        self._writer.add_scalar(f"train/{k}", v, step)

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
    if self._writer is not None:
      self._writer.close()


def versions() -> dict:
  """Versions of jaxgen and its stack, and the devices: recorded in every ``run.json``."""
  import flax  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel
  import orbax.checkpoint  # pylint: disable=import-outside-toplevel

  import jaxgen  # pylint: disable=import-outside-toplevel
  return {"jaxgen": jaxgen.__version__, "jax": jax.__version__, "flax": flax.__version__,
          "optax": optax.__version__, "orbax": orbax.checkpoint.__version__,
          "numpy": np.__version__, "python": platform.python_version(),
          "devices": [str(d) for d in jax.devices()]}


def write_run_json(path: str, record: Mapping[str, Any]) -> None:
  """Writes ``record`` with the time and `versions` to ``path`` (the ``run.json`` that stands
  beside every output: what made it, with which seed and settings)."""
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  full = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **record, "versions": versions()}
  with open(path, "w", encoding="utf-8") as f:
    json.dump(full, f, indent=2, default=str)


@dataclasses.dataclass
class LoopResult:
  """What `train_loop` returns."""
  state: Any                         # the final (or SIGTERM-saved) state
  step: int                          # its step
  terminated: bool                   # stopped by SIGTERM (a checkpoint was saved)
  resumed_from: int | None           # the checkpoint step it resumed from (None: fresh start)
  metrics: dict                      # the last logged metrics (host floats)

  def summary(self, *keys: str) -> dict:
    """{"step", "terminated", "resumed_from", "state"} and the last logged value of each of
    `keys` (NaN when none was logged): what a runner's ``train`` returns."""
    return {"step": self.step, **{k: self.metrics.get(k, float("nan")) for k in keys},
            "terminated": self.terminated, "resumed_from": self.resumed_from,
            "state": self.state}


def train_loop(init: Callable[[], Any], step_fn: StepFn, *, num_steps: int,
               workdir: str | None = None, loader=None, batch_keys: Sequence[str] = ("image",),
               image_shape: Sequence[int] | None = None, mesh=None,
               state_sharding: Callable[[Any], Any] | Any | None = None, log_every: int = 50,
               checkpoint_every: int = 500, max_to_keep: int = 3,
               finite_keys: Sequence[str] = ("loss",),
               postfix: Callable[[dict], Mapping[str, str]] | None = None,
               log_fn: Callable[[int, dict], None] | None = None,
               hooks: Sequence[tuple[int, Hook]] = (), at_end: Sequence[Hook] = (),
               run_record: Mapping[str, Any] | None = None, tensorboard: bool = True,
               desc: str = "train", progress: bool = True, hint: str = "") -> LoopResult:
  """Builds (or restores) the state and runs steps ``state.step .. num_steps - 1``.

  Order of work:
    1. checks (before anything compiles): ``num_steps >= 1``; the loader's batch size divides
       over the mesh's devices.
    2. ``run.json`` (``run_record`` + time + versions) into ``workdir``; ``init()`` builds the
       fresh state, which is replicated over ``mesh``; the newest readable checkpoint in
       ``workdir/checkpoints`` replaces it (a corrupt newest one falls back to the previous),
       and the loader's position is restored with it, so the next batch is the one an
       uninterrupted run would see.
    3. every step: the next batch (`jaxgen.data.check_batch`: shape, dtype, NaN), its
       ``batch_keys`` sharded over ``mesh``'s batch axes,
       ``state, metrics = step_fn(state, batch)``; without a loader ``step_fn(state, None)``
       (a step that draws its own data from ``state.step``).
    4. every ``log_every`` steps and at the last one: the metrics come to the host with
       ``steps_per_sec`` added; any of ``finite_keys`` that is NaN/inf raises
       `NonFiniteLossError` (the last good checkpoint stays); ``log_fn(step, metrics)`` may add
       entries; the line goes to ``metrics.jsonl`` / TensorBoard and ``postfix(metrics)`` to the
       progress bar.
    5. then, in order: on SIGTERM a checkpoint and stop; every ``checkpoint_every`` steps a
       checkpoint; every hook ``(every, fn)`` with ``every > 0`` calls ``fn(state, step)`` (a
       hook that raises `Terminated` counts as SIGTERM; a hook that returns a dict of scalars
       has it written to ``metrics.jsonl`` / TensorBoard at that step).
    6. at the end (not after SIGTERM): a checkpoint, then each ``at_end`` hook ``fn(state, step)``.
  A checkpoint is never written from parameters that are not finite.

  Args:
    init: ``() -> state``, the fresh state (host or device arrays).
    step_fn: ``(state, batch) -> (state, metrics)``, usually a jitted function with the state
      donated; ``batch`` is a dict of the ``batch_keys`` present, sharded over the mesh.
    num_steps: the step to train to.
    workdir: run directory (checkpoints, metrics, run.json); None keeps everything in memory
      (no checkpoints: nothing survives SIGTERM).
    loader: a `jaxgen.data.Loader` (or any iterator with ``get_state`` / ``set_state`` and
      ``batch_size``), or None.
    batch_keys: batch entries passed to the step (those the batch has).
    image_shape: (H, W, C) the batches' images must have; None skips the check.
    mesh: device mesh; default `jaxgen.parallel.make_mesh()` (all local devices, axis ``data``).
      The batch is split over its ``data`` and ``fsdp`` axes; a mesh over several processes
      (`jaxgen.parallel.make_global_mesh`) takes each process's loader batch as its share.
    state_sharding: None replicates the state over ``mesh``; otherwise the state's shardings:
      a function ``arrays -> shardings`` (called with ``init().arrays()``, e.g.
      ``jaxgen.parallel.sharding_from_rules(mesh, rules)`` for FSDP) or a pytree of
      `jax.sharding.Sharding` shaped like ``state.arrays()``. A ``step_fn`` jitted without
      shardings follows its inputs' (GSPMD); a step that returns the state with other
      shardings has it put back onto these.
    log_every, checkpoint_every, max_to_keep: cadences and checkpoints kept.
    finite_keys: metrics that must stay finite.
    postfix: metrics -> the progress bar's postfix; default the first finite key.
    log_fn: called with each logged line before it is written (may add entries to it).
    hooks: ``(every, fn(state, step))`` pairs run during training; ``fn`` returns None or a
      dict of scalars to log.
    at_end: ``fn(state, step)`` run after the final checkpoint (returns as ``hooks``).
    run_record: written to ``workdir/run.json``; None writes none.
    tensorboard: also write TensorBoard scalars.
    desc: progress bar label.
    progress: show the progress bar.
    hint: appended to the non-finite-loss error (what to change before resuming).

  Returns:
    A `LoopResult`.
  Raises:
    ValueError: bad settings (before anything compiles) or a bad batch.
    NonFiniteLossError: a loss in ``finite_keys`` or the parameters became NaN/inf.
  """
  if num_steps < 1:
    raise ValueError(f"train.num_steps must be >= 1, got {num_steps}")
  mesh = parallel.make_mesh() if mesh is None else mesh
  n, procs = parallel.data_parallel_size(mesh), jax.process_count()
  batch_size = getattr(loader, "batch_size", None)
  if batch_size is not None and (batch_size * procs) % n:
    per = "" if procs == 1 else f" per process x {procs} processes"
    raise ValueError(f"the batch size ({batch_size}{per}, data.batch_size) must be a "
                     f"multiple of the {n} devices used for data parallelism")
  primary = parallel.is_primary()
  if workdir is not None:
    os.makedirs(workdir, exist_ok=True)
    if run_record is not None and primary:
      write_run_json(os.path.join(workdir, "run.json"), run_record)
  state, shardings = _place_state(init(), mesh, state_sharding)
  manager, resumed_from = None, None
  if workdir is not None:
    manager = make_manager(os.path.join(workdir, "checkpoints"), max_to_keep=max_to_keep)
    restored = restore_latest(manager, state, with_data=loader is not None)
    if restored is not None:
      state, data_state, resumed_from = restored
      if data_state is not None and loader is not None:
        loader.set_state(data_state)
      log.info("resumed from step %d", resumed_from)

  def checkpoint(state):
    if manager is None:
      return
    if not all_finite(state.arrays()):
      raise NonFiniteLossError(
          f"parameters are not finite at step {int(jax.device_get(state.step))}; not saving "
          f"a checkpoint. The last good one (step {manager.latest_step()}) is kept in "
          f"{manager.directory}. {hint}".rstrip())
    data_state = None if loader is None else loader.get_state()
    if parallel.fully_addressable(state.arrays()):
      # A host copy: saving replicated device arrays costs one small compile per leaf shape.
      save(manager, jax.device_get(state), data_state)
    else:  # arrays over several processes: each process writes its own shards
      save(manager, state, data_state)

  keys = tuple(batch_keys)
  reshard: dict = {}

  def step(state, batch):
    if batch is not None:
      if image_shape is not None:
        check_batch(batch, image_shape)  # cheap on the host
      batch = parallel.global_batch({k: batch[k] for k in keys if k in batch}, mesh)
    state, metrics = step_fn(state, batch)
    if shardings is not None and reshard.setdefault(
        "needed", not _has_shardings(state.arrays(), shardings)):  # one program: check once
      state = state.replace_arrays(jax.device_put(state.arrays(), shardings))
    return state, metrics

  last: dict = {}
  bar_postfix = postfix or (lambda m: {k: f"{m[k]:.4f}" for k in finite_keys[:1] if k in m})

  def on_log(done: int, m: dict):
    bad = {k: m[k] for k in finite_keys if k in m and not math.isfinite(m[k])}
    if bad:
      where = "" if manager is None else (
          f" The last good checkpoint (step {manager.latest_step()}) is kept in "
          f"{manager.directory}.")
      raise NonFiniteLossError(
          f"{', '.join(f'{k} is {v}' for k, v in bad.items())} at step {done}; stopping."
          f"{where} {hint}".rstrip())
    if log_fn is not None:
      log_fn(done, m)
    last.clear()
    last.update(m)
    metrics_log.write(done, m)
    return bar_postfix(m)

  metrics_log = MetricsLog(workdir if primary else None, tensorboard=tensorboard)

  def run_hook(fn, state, step: int) -> None:
    extra = fn(state, step)
    if extra is not None:  # a hook's own measurements go beside the loop's lines
      metrics_log.write(step, {k: float(v) for k, v in extra.items()})

  terminated = False
  try:
    start = int(jax.device_get(state.step))
    it = iter(loader) if loader is not None else None
    with Terminate() as term, tqdm(total=num_steps, initial=start, desc=desc,
                                   dynamic_ncols=True, mininterval=1.0,
                                   disable=not progress) as bar:
      t0, n0 = time.perf_counter(), start
      for s in range(start, num_steps):
        state, metrics = step(state, None if it is None else next(it))
        done = s + 1
        bar.update(1)
        if done % log_every == 0 or done == num_steps:
          m = {k: float(v) for k, v in jax.device_get(dict(metrics)).items()}
          m["steps_per_sec"] = (done - n0) / max(time.perf_counter() - t0, 1e-9)
          t0, n0 = time.perf_counter(), done
          bar.set_postfix(on_log(done, m))
        if term.requested if procs == 1 else parallel.any_process(term.requested):
          checkpoint(state)
          log.warning("SIGTERM: saved a checkpoint at step %d and stopped", done)
          terminated = True
          break
        if done % checkpoint_every == 0 and done < num_steps:
          checkpoint(state)
        try:
          for every, fn in hooks:
            if every and done % every == 0 and done < num_steps:
              run_hook(fn, state, done)
        except Terminated:  # a nested run (a hook's classifier) took the SIGTERM
          checkpoint(state)
          log.warning("SIGTERM in a hook: saved a checkpoint at step %d and stopped", done)
          terminated = True
          break
    step_now = int(jax.device_get(state.step))
    if not terminated:
      if manager is None or manager.latest_step() != step_now:  # a finished run trained again
        checkpoint(state)                                        # has its last checkpoint
      for fn in at_end:
        run_hook(fn, state, step_now)
  finally:
    if manager is not None:
      manager.wait_until_finished()
      manager.close()
    metrics_log.close()
  return LoopResult(state=state, step=step_now, terminated=terminated,
                    resumed_from=resumed_from, metrics=dict(last))


def _place_state(state, mesh, state_sharding):
  """The fresh state on ``mesh``: replicated, or with the given shardings (then returned)."""
  if state_sharding is None:
    if jax.process_count() == 1:
      return parallel.replicate(state, mesh), None
    state_sharding = lambda arrays: jax.tree.map(lambda _: parallel.replicated(mesh), arrays)
  arrays = state.arrays()
  shardings = state_sharding(arrays) if callable(state_sharding) else state_sharding
  try:
    jax.tree.map(lambda *_: None, arrays, shardings)
  except ValueError as e:
    raise ValueError("state_sharding must give one Sharding per leaf of state.arrays() "
                     f"(the same tree structure): {e}") from None
  return state.replace_arrays(parallel.place(arrays, shardings)), shardings


def _has_shardings(arrays, shardings) -> bool:
  return all(getattr(x, "sharding", None) is not None
             and x.sharding.is_equivalent_to(s, x.ndim)
             for x, s in zip(jax.tree.leaves(arrays), jax.tree.leaves(shardings)))
