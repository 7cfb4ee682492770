"""map_batched: chunked evaluation against closed forms, pytrees, None arguments, per-chunk keys,
one compile for every N, clear errors."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxgen
from jaxgen.batching import map_batched


def test_affine_map_on_n_not_divisible_by_batch_size():
  fn = jax.jit(lambda x: x * 2 + 1)
  x = np.arange(7 * 3, dtype=np.float32).reshape(7, 3)
  out = map_batched(fn, x, batch_size=3)  # chunks of 3, 3, 1 (+ 2 padded rows)
  assert isinstance(out, np.ndarray) and out.shape == (7, 3) and out.dtype == np.float32
  np.testing.assert_array_equal(out, x * 2 + 1)
  np.testing.assert_array_equal(map_batched(fn, x, batch_size=100), x * 2 + 1)
  np.testing.assert_array_equal(map_batched(fn, jnp.asarray(x), batch_size=1), x * 2 + 1)
  assert jaxgen.map_batched is map_batched


def test_pytree_inputs_and_outputs_and_none():
  def fn(pair, y, scale):
    a, b = pair
    return {"sum": a + b[:, None], "prod": (a * b[:, None], None if y is not None else b),
            "scaled": a * scale}

  a = np.arange(10, dtype=np.float32).reshape(5, 2)
  b = np.arange(5, dtype=np.int32)
  out = map_batched(jax.jit(fn), (a, b), None, np.full((5,), 3.0, np.float32)[:, None],
                    batch_size=2)
  np.testing.assert_array_equal(out["sum"], a + b[:, None])
  np.testing.assert_array_equal(out["prod"][0], a * b[:, None])
  np.testing.assert_array_equal(out["prod"][1], b)  # fn saw y=None
  assert out["prod"][1].dtype == np.int32
  np.testing.assert_array_equal(out["scaled"], 3 * a)


def test_per_chunk_key_is_fold_in_of_the_chunk_index():
  key = jax.random.key(3)
  fn = jax.jit(lambda k, x: x + jax.random.normal(k, x.shape))
  x = np.zeros((5, 2), np.float32)
  out = map_batched(fn, x, batch_size=2, key=key)
  want = np.concatenate([np.asarray(jax.random.normal(jax.random.fold_in(key, i), (2, 2)))
                         for i in range(3)])[:5]
  np.testing.assert_array_equal(out, want)
  # Without array arguments, num gives N: sampling N rows in chunks of batch_size.
  draw = jax.jit(lambda k: jax.random.uniform(k, (4, 3)))
  got = map_batched(draw, batch_size=4, key=key, num=6, progress="sampling")
  want = np.concatenate([np.asarray(draw(jax.random.fold_in(key, i))) for i in range(2)])[:6]
  np.testing.assert_array_equal(got, want)


def test_one_compile_for_every_n():
  @jax.jit
  @chex.assert_max_traces(n=1)
  def fn(x):
    return jnp.sin(x)

  for n in (1, 3, 4, 9, 13):
    x = np.linspace(0, 1, n * 2, dtype=np.float32).reshape(n, 2)
    np.testing.assert_allclose(map_batched(fn, x, batch_size=4, progress=True), np.sin(x),
                               rtol=1e-6)


def test_errors():
  fn = jax.jit(lambda x: x)
  x = np.zeros((4, 2), np.float32)
  with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
    map_batched(fn, x, batch_size=0)
  with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
    map_batched(fn, x, batch_size=2.0)
  with pytest.raises(ValueError, match="no rows"):
    map_batched(fn, x[:0], batch_size=2)
  with pytest.raises(ValueError, match=r"one leading size N, got shapes \[\(4, 2\), \(3,\)\]"):
    map_batched(jax.jit(lambda x, y: x), x, np.zeros(3), batch_size=2)
  with pytest.raises(ValueError, match="num=5"):
    map_batched(fn, x, batch_size=2, num=5)
  with pytest.raises(ValueError, match="pass num=N"):
    map_batched(jax.jit(lambda y: y), None, batch_size=2)
  with pytest.raises(ValueError, match="leading"):
    map_batched(fn, np.float32(1.0), batch_size=2)
  with pytest.raises(ValueError, match="batch_size=2 rows on axis 0"):
    map_batched(jax.jit(lambda x: x.sum()), x, batch_size=2)


def test_map_batched_without_padding_calls_fn_on_the_short_chunk(key):
  """pad=False: the last chunk keeps its own size (what sampling noise of the chunk's shape
  needs); chunk i still gets fold_in(key, i)."""
  from jaxgen.batching import map_batched
  sizes = []

  def fn(k, rows):
    sizes.append(len(rows))
    return np.asarray(jax.random.normal(k, (len(rows), 2)))

  out = map_batched(fn, np.arange(7), batch_size=3, key=key, pad=False)
  assert sizes == [3, 3, 1] and out.shape == (7, 2)
  want = np.concatenate([np.asarray(jax.random.normal(jax.random.fold_in(key, i), (n, 2)))
                         for i, n in enumerate((3, 3, 1))])
  np.testing.assert_array_equal(out, want)
