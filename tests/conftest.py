"""Strict test configuration (after equinox's conftest): fake CPU devices, no implicit
rank promotion, fresh keys from a fixture."""
import os

# Eight fake CPU devices for the data-parallel tests; must be set before jax is imported.
# The test models are tiny, so compiling dominates the suite: unless JAXGEN_TEST_FULL_XLA=1,
# XLA's CPU backend skips its LLVM optimisations (FAST_COMPILE_FLAGS; -46% wall time for a
# smoke GAN training, -27% for tests/test_guidance.py). Subprocesses inherit the environment;
# tests/test_notebooks.py clears XLA_FLAGS for its kernels and each notebook chooses in its
# small mode (02_guidance keeps the optimisations: its guided sampling is bound by run time).
FAST_COMPILE_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
  _flags += " --xla_force_host_platform_device_count=8"
if os.environ.get("JAXGEN_TEST_FULL_XLA") != "1" and "xla_backend_optimization_level" not in _flags:
  _flags += " " + FAST_COMPILE_FLAGS
os.environ["XLA_FLAGS"] = _flags.strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import itertools  # noqa: E402
import zlib  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
# One persistent compilation cache for the whole run: made by the first process that loads
# this file (pytest-xdist's controller, before it starts the workers), then inherited through
# the environment by every worker and by the processes tests start (runner subprocesses,
# notebook kernels). Identical programs compiled again (the runner trained twice for a resume
# test, one smoke model trained by tests in two files) load instead of recompiling.
import tempfile  # noqa: E402
if not os.environ.get("JAXGEN_TEST_XLA_CACHE"):
  os.environ["JAXGEN_TEST_XLA_CACHE"] = tempfile.mkdtemp(prefix="jaxgen-xla-cache-")
  _OWN_CACHE = True
else:
  _OWN_CACHE = False
os.environ["JAX_COMPILATION_CACHE_DIR"] = os.environ["JAXGEN_TEST_XLA_CACHE"]
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.5"
jax.config.update("jax_compilation_cache_dir", os.environ["JAXGEN_TEST_XLA_CACHE"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def pytest_unconfigure(config):
  """The process that made the compilation cache removes it at the end of the run."""
  if _OWN_CACHE and not hasattr(config, "workerinput"):
    import shutil
    shutil.rmtree(os.environ["JAXGEN_TEST_XLA_CACHE"], ignore_errors=True)


def _key_data(nodeid: str) -> int:
  return zlib.crc32(nodeid.encode()) & 0x7FFFFFFF


def pytest_collection_modifyitems(items):
  """Two tests must never get the same key (`key` derives it from the test id)."""
  seen = {}
  for item in items:
    other = seen.setdefault(_key_data(item.nodeid), item.nodeid)
    if other != item.nodeid:
      raise pytest.UsageError(f"tests {other} and {item.nodeid} would share a random key; "
                              "rename one or change _key_data in tests/conftest.py.")


@pytest.fixture
def key(request):
  """A fresh key per test, derived from the test's id: never shared by two tests (checked at
  collection), and the same whichever tests run before it (alone, the whole suite, or split
  across pytest-xdist workers by `./run.sh test`)."""
  return jax.random.fold_in(jax.random.key(20261125), _key_data(request.node.nodeid))


def _sigterm_on_batch(monkeypatch, at: int) -> None:
  """Patches `jaxgen.data.Loader` so that SIGTERM reaches the main thread as the `at`-th batch
  (counted over every loader made afterwards) is drawn."""
  import signal
  import threading

  from jaxgen import data as jdata
  calls = itertools.count(1)

  class SigtermLoader(jdata.Loader):
    def __next__(self):
      if next(calls) == at:
        # To the main thread, where the loop's handler runs. os.kill(getpid) lets the kernel
        # pick any thread; under load a worker was once seen to abort from a native thread
        # after that (probably the one the signal interrupted; not proven).
        signal.pthread_kill(threading.main_thread().ident, signal.SIGTERM)
      return super().__next__()

  monkeypatch.setattr(jdata, "Loader", SigtermLoader)


@pytest.fixture
def sigterm_on_batch(monkeypatch):
  """``sigterm_on_batch(at=3)``: SIGTERM arrives as the at-th batch is drawn (undo with
  ``monkeypatch.undo()``)."""
  return lambda at=3: _sigterm_on_batch(monkeypatch, at)


@pytest.fixture
def sigterm_resume(monkeypatch, tmp_path):
  """``sigterm_resume(train, config, num_steps)``: trains `config` straight through; trains
  it again with SIGTERM sent as the 3rd batch is drawn (the loop saves at step 3 and stops);
  resumes that run to the end; asserts the resumed state equals the straight one bit for bit.
  Returns (straight, resumed) summaries."""
  import numpy as np

  def run(train, config, num_steps: int):
    full = train(config, str(tmp_path / "full"))
    _sigterm_on_batch(monkeypatch, 3)
    cut = train(config, str(tmp_path / "cut"))
    assert cut["terminated"] and cut["step"] == 3
    monkeypatch.undo()
    resumed = train(config, str(tmp_path / "cut"))
    assert resumed["resumed_from"] == 3 and resumed["step"] == num_steps
    assert not resumed["terminated"]
    for a, b in zip(jax.tree.leaves(full["state"].arrays()),
                    jax.tree.leaves(resumed["state"].arrays())):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    return full, resumed

  return run
