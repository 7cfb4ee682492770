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

_counter = itertools.count()


@pytest.fixture
def key():
  """A fresh key per test, never reused across tests."""
  return jax.random.fold_in(jax.random.key(20261125), next(_counter))
