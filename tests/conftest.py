"""Strict test configuration (after equinox's conftest): fake CPU devices, no implicit
rank promotion, fresh keys from a fixture."""
import os

# Eight fake CPU devices for the data-parallel tests; must be set before jax is imported.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import itertools  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
# A per-run persistent compilation cache: identical programs compiled again in the same run
# (e.g. the runner trained twice for the resume test) load instead of recompiling.
import tempfile  # noqa: E402
jax.config.update("jax_compilation_cache_dir", tempfile.mkdtemp(prefix="jaxgen-xla-cache-"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

_counter = itertools.count()


@pytest.fixture
def key():
  """A fresh key per test, never reused across tests."""
  return jax.random.fold_in(jax.random.key(20261125), next(_counter))
