"""Evaluation of a jitted function over host arrays in fixed-size chunks.

A jitted function compiles once per input shape. Applying it to N examples in chunks of
`batch_size` therefore pads the last, shorter chunk to `batch_size` rows, so that one
compiled shape serves every N, and drops the padded rows from the outputs.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np

__all__ = ["map_batched"]


def map_batched(fn: Callable[..., Any], *arrays: Any, batch_size: int,
                key: jax.Array | None = None, num: int | None = None, pad: bool = True,
                progress: bool | str = False) -> Any:
  """`fn` applied to `arrays` in chunks of `batch_size` rows, outputs concatenated on the host.

  Chunk i holds rows `[i * batch_size, (i + 1) * batch_size)` of every array; the last chunk
  is padded with zeros to `batch_size` rows (unless ``pad=False``), so `fn` always sees the same shapes (and, if
  jitted, compiles once whatever N). Padded rows are dropped from the outputs. Rows must be
  independent: `fn`'s output row j may depend only on input row j (per-example
  computations, not batch statistics).

  `fn` is called as given, not jitted here: pass a jitted function, or a Python function that
  calls one with large constant arguments (e.g. parameters) so that they are not baked into
  a compiled program.

  Args:
    fn: `fn(*chunks) -> outputs`, or `fn(key_i, *chunks)` when `key` is given. Every output
      leaf must have `batch_size` rows on axis 0.
    *arrays: the batched arguments: host arrays `[N, ...]` (anything `np.asarray` takes; a
      device array is copied to the host once), pytrees of them, or None (passed to `fn` as
      None). All leaves share the leading size N.
    batch_size: rows per call of `fn`.
    key: PRNG key; chunk i then gets `jax.random.fold_in(key, i)` as `fn`'s first argument
      (the chunking of diffusion sampling), so the result depends on `batch_size`.
    num: N when no array gives it (all None, e.g. sampling with only a key); must match
      the arrays' leading size otherwise.
    pad: pad the last chunk to `batch_size` rows (one compiled shape). False calls `fn` on
      the shorter chunk as it is (a second compile), for an `fn` whose rows are not
      independent of the chunk's size, e.g. sampling noise of the chunk's shape from `key_i`.
    progress: show a tqdm progress bar over the chunks; a string is its description.

  Returns:
    The outputs of `fn` with the same pytree structure, as numpy arrays of N rows
    (`[N, ...]`), the chunks concatenated in order.

  Raises:
    ValueError: batch_size < 1, no rows (N = 0, or no arrays and no `num`), or arrays
      whose leading sizes differ.
  """
  if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) \
      or batch_size < 1:
    raise ValueError(f"map_batched: batch_size must be an int >= 1, got {batch_size!r}")
  arrays = jax.tree.map(np.asarray, arrays)  # sliced and padded on the host
  leaves = jax.tree_util.tree_leaves(arrays)
  shapes = [x.shape for x in leaves]
  if any(not s for s in shapes):
    raise ValueError("map_batched: every array argument needs a leading (batch) axis; got a "
                     f"scalar among shapes {shapes}")
  sizes = {s[0] for s in shapes}
  if num is not None:
    sizes.add(int(num))
  if len(sizes) > 1:
    given = f"shapes {shapes}" + ("" if num is None else f" and num={num}")
    raise ValueError(f"map_batched: the arrays (and num) must share one leading size N, got "
                     f"{given}")
  if not sizes:
    raise ValueError("map_batched: no array argument gives the number of rows; pass num=N")
  n = sizes.pop()
  if n < 1:
    raise ValueError("map_batched got no rows (N = 0); nothing to evaluate")

  def chunk(x, start):
    part = x[start:start + batch_size]
    short = batch_size - part.shape[0]
    if short and pad:  # keep one compiled batch shape
      part = np.concatenate([part, np.zeros((short,) + part.shape[1:], part.dtype)])
    return part

  starts = range(0, n, batch_size)
  if progress:
    from tqdm.auto import tqdm  # pylint: disable=import-outside-toplevel
    starts = tqdm(starts, desc=progress if isinstance(progress, str) else None,
                  disable=len(starts) < 2)
  outs = []
  for i, start in enumerate(starts):
    args = jax.tree.map(lambda x, start=start: chunk(x, start), arrays)
    if key is not None:
      args = (jax.random.fold_in(key, i),) + tuple(args)
    keep = min(batch_size, n - start)
    rows = batch_size if pad else keep
    out = jax.device_get(fn(*args))
    for leaf in jax.tree_util.tree_leaves(out):
      if np.ndim(leaf) == 0 or np.shape(leaf)[0] != rows:
        raise ValueError(f"map_batched: every output of fn must have the chunk's rows on axis "
                         f"0 (batch_size={batch_size} rows on axis 0 when padded, here {rows}), "
                         f"got shape {np.shape(leaf)}")
    outs.append(jax.tree.map(lambda v, keep=keep: v[:keep], out))
  return jax.tree.map(lambda *parts: np.concatenate(parts), *outs)
