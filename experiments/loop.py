"""The step loop every family's ``train`` shares: batches, checks, progress bar, metrics log,
SIGTERM, checkpoint and periodic-hook cadence. The families keep what differs (state, step
function, what a log line holds, what runs every N steps, the final checkpoint)."""
from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from tqdm.auto import tqdm

from jaxgen import data as jdata

log = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
  """Training produced a NaN/inf loss or parameters; the last good checkpoint is kept."""


def all_finite(tree) -> bool:
  """True when every array leaf of `tree` is free of NaN and inf (checked before saving)."""
  return bool(jax.device_get(jax.tree.reduce(
      lambda a, b: a & b, jax.tree.map(lambda x: jnp.all(jnp.isfinite(x)), tree))))


def sigterm_blocked() -> bool:
  """Whether SIGTERM is blocked in the calling thread (`experiments.main.block_sigterm`)."""
  return (hasattr(signal, "pthread_sigmask")
          and signal.SIGTERM in signal.pthread_sigmask(signal.SIG_BLOCK, []))


class Terminate:
  """SIGTERM -> ``requested``: the loop saves and stops at the next step boundary.

  In the main thread a Python signal handler is installed for the duration (elsewhere the loop
  runs without one). If SIGTERM is also blocked there (the runner's ``train`` blocks it before
  jax starts any thread, `experiments.main.block_sigterm`), a watcher thread takes it with
  ``signal.sigtimedwait`` and SIGTERM is unblocked on exit, so outside the loop it ends the
  process as usual (one that arrived before the loop is taken at its first step)."""

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
  `tensorboard`, scalars ``train/<name>`` to ``workdir/tensorboard``."""

  def __init__(self, workdir: str, tensorboard: bool = True):
    self._file = open(os.path.join(workdir, "metrics.jsonl"), "a")
    self._writer = None
    if tensorboard:
      from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
      self._writer = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, metrics: dict) -> None:
    self._file.write(json.dumps({"step": step, **metrics}) + "\n")
    self._file.flush()
    if self._writer is not None:
      for k, v in metrics.items():
        self._writer.add_scalar(f"train/{k}", v, step)

  def close(self) -> None:
    self._file.close()
    if self._writer is not None:
      self._writer.close()


def run(state, step_fn: Callable, loader, *, image_shape, num_steps: int, desc: str,
        log_every: int, checkpoint_every: int, checkpoint: Callable,
        on_log: Callable[[int, dict], dict],
        hooks: Sequence[tuple[int, Callable]] = ()) -> tuple[object, bool]:
  """Runs steps ``state.step .. num_steps - 1``.

  Every step: the next batch is checked (`jdata.check_batch`: shape, dtype, NaN) and
  ``state, metrics = step_fn(state, batch)``. Every `log_every` steps and at the last one:
  the metrics come to the host with ``steps_per_sec`` added and go to
  ``on_log(step, metrics)``, which records them (or raises, e.g. `NonFiniteLossError`) and
  returns the progress bar's postfix. Then, in order: on SIGTERM ``checkpoint(state)`` and stop;
  every `checkpoint_every` steps ``checkpoint(state)``; every hook ``(every, fn)`` with
  ``every > 0`` calls ``fn(state, step)``. The last step's checkpoint and outputs are the
  caller's.

  Returns:
    (state, terminated).
  """
  start = int(jax.device_get(state.step))
  it = iter(loader)
  with Terminate() as term, tqdm(total=num_steps, initial=start, desc=desc, dynamic_ncols=True,
                                 mininterval=1.0) as bar:
    t0, n0 = time.perf_counter(), start
    for step in range(start, num_steps):
      batch = next(it)
      jdata.check_batch(batch, image_shape)  # cheap on the host
      state, metrics = step_fn(state, batch)
      done = step + 1
      bar.update(1)
      if done % log_every == 0 or done == num_steps:
        m = {k: float(v) for k, v in jax.device_get(metrics).items()}
        m["steps_per_sec"] = (done - n0) / max(time.perf_counter() - t0, 1e-9)
        t0, n0 = time.perf_counter(), done
        bar.set_postfix(on_log(done, m))
      if term.requested:
        checkpoint(state)
        log.warning("SIGTERM: saved a checkpoint at step %d and stopped", done)
        return state, True
      if done % checkpoint_every == 0 and done < num_steps:
        checkpoint(state)
      for every, fn in hooks:
        if every and done % every == 0 and done < num_steps:
          fn(state, done)
  return state, False
