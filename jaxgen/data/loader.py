"""A deterministic, checkpointable, host-sharded iterator of numpy batches.

Epoch ``e`` visits the permutation ``Generator(PCG64([seed, e])).permutation(N)`` of the
split (or ``arange(N)`` without shuffling). Host ``k`` of ``K`` takes its own slice of
every epoch's order, so hosts never see the same example in an epoch. The whole
iteration state is ``(epoch, position)``: a restored loader yields exactly the batch the
original would have yielded next, with no stored RNG state.
"""
from __future__ import annotations

from typing import Any

import jax
import numpy as np

from jaxgen.data.sources import Source

_STATE_KEYS = frozenset({"epoch", "position", "seed", "batch_size", "shuffle",
                         "drop_remainder", "shard_index", "num_shards", "num_examples"})


def check_loader_args(seed, shard_index: int | None, num_shards: int | None,
                      num_epochs: int | None) -> tuple[int, int]:
  """The checks every loader makes of its seed, shard and epoch arguments.

  Returns:
    ``(shard_index, num_shards)``, defaulting to ``jax.process_index()`` and
    ``jax.process_count()``.
  Raises:
    ValueError: a negative or non-integer seed, a bad shard index, a non-positive number of
      epochs.
  """
  num_shards = jax.process_count() if num_shards is None else num_shards
  shard_index = jax.process_index() if shard_index is None else shard_index
  if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
    raise ValueError(f"seed must be a non-negative int, got {seed!r}.")
  if num_shards < 1 or not 0 <= shard_index < num_shards:
    raise ValueError(f"need 0 <= shard_index < num_shards, got shard_index={shard_index}, "
                     f"num_shards={num_shards}.")
  if num_epochs is not None and num_epochs < 1:
    raise ValueError(f"num_epochs must be None (infinite) or >= 1, got {num_epochs}.")
  return shard_index, num_shards


class Loader:
  """Iterates host batches (dicts of numpy arrays) of a :class:`Source`.

  With ``drop_remainder=True`` every host sees ``len(source) // num_shards`` examples
  per epoch (the tail of the permutation is dropped so all hosts take the same number of
  steps) and yields only full batches. With ``drop_remainder=False`` the hosts split the
  whole epoch (slice sizes differ by at most one) and the last batch may be smaller,
  which is what an exact evaluation pass needs (use ``shuffle=False, num_epochs=1``);
  hosts may then take different numbers of steps.

  Attributes:
    steps_per_epoch: batches this host yields per epoch.
    epoch: current epoch.
    position: batches already yielded in the current epoch.
  """

  def __init__(self, source: Source, batch_size: int, *, seed: int, shuffle: bool = True,
               drop_remainder: bool = True, shard_index: int | None = None,
               num_shards: int | None = None, num_epochs: int | None = None):
    """Builds the loader at epoch 0, position 0.

    Args:
      source: the split to iterate.
      batch_size: examples per batch on this host (the global batch is
        ``batch_size * num_shards``).
      seed: integer seed of the epoch permutations.
      shuffle: permute each epoch; False visits indices in order.
      drop_remainder: yield only full batches (see the class docstring).
      shard_index: this host's index; default ``jax.process_index()``.
      num_shards: number of hosts; default ``jax.process_count()``.
      num_epochs: stop after this many epochs; None iterates forever.

    Raises:
      ValueError: for a non-positive batch size or one larger than this host's slice,
        a bad shard index or a non-positive number of epochs.
    """
    shard_index, num_shards = check_loader_args(seed, shard_index, num_shards, num_epochs)
    self.source = source
    self.batch_size = int(batch_size)
    self.seed, self.shuffle, self.drop_remainder = int(seed), bool(shuffle), bool(drop_remainder)
    self.shard_index, self.num_shards = int(shard_index), int(num_shards)
    self.num_epochs = num_epochs
    self.num_examples = len(source)
    n = self.num_examples
    if drop_remainder:
      per_host = n // num_shards
      self._bounds = (shard_index * per_host, (shard_index + 1) * per_host)
    else:
      edges = np.linspace(0, n, num_shards + 1).round().astype(int)
      self._bounds = (int(edges[shard_index]), int(edges[shard_index + 1]))
    per_host = self._bounds[1] - self._bounds[0]
    if batch_size <= 0 or batch_size > per_host:
      raise ValueError(
          f"batch_size must be in [1, {per_host}] (this host's share of the {n} examples "
          f"of {source.name!r} split {source.split!r} over {num_shards} host(s)); got "
          f"{batch_size}. batch_size is the per-host batch.")
    self.steps_per_epoch = per_host // batch_size if drop_remainder else -(-per_host // batch_size)
    self.epoch, self.position = 0, 0
    self._cached_epoch, self._cached_order = -1, None

  def epoch_indices(self, epoch: int) -> np.ndarray:
    """This host's indices for `epoch`, in visiting order (``[per_host]`` int64)."""
    if epoch != self._cached_epoch:
      if self.shuffle:
        rng = np.random.Generator(np.random.PCG64([self.seed, epoch]))
        order = rng.permutation(self.num_examples)
      else:
        order = np.arange(self.num_examples)
      self._cached_epoch, self._cached_order = epoch, order[self._bounds[0]:self._bounds[1]]
    return self._cached_order

  def __iter__(self) -> "Loader":
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    if self.num_epochs is not None and self.epoch >= self.num_epochs:
      raise StopIteration
    order = self.epoch_indices(self.epoch)
    start = self.position * self.batch_size
    batch = self.source[order[start:start + self.batch_size]]
    self.position += 1
    if self.position >= self.steps_per_epoch:
      self.epoch, self.position = self.epoch + 1, 0
    return batch

  def get_state(self) -> dict[str, Any]:
    """The iteration state, a small JSON-serialisable dict (store it with checkpoints)."""
    return {"epoch": self.epoch, "position": self.position, "seed": self.seed,
            "batch_size": self.batch_size, "shuffle": self.shuffle,
            "drop_remainder": self.drop_remainder, "shard_index": self.shard_index,
            "num_shards": self.num_shards, "num_examples": self.num_examples}

  def set_state(self, state: dict[str, Any]) -> None:
    """Restores a state from :meth:`get_state`; the next batch is the one it pointed to.

    Raises:
      ValueError: if keys are missing or unknown, or the state was saved by a loader
        with another seed, batch size, sharding or split size (its position would then
        mean other examples).
    """
    if not isinstance(state, dict) or set(state) != _STATE_KEYS:
      got = sorted(state) if isinstance(state, dict) else type(state).__name__
      raise ValueError(f"a Loader state is a dict with keys {sorted(_STATE_KEYS)}, got {got}.")
    mine = self.get_state()
    diff = {k: (state[k], mine[k]) for k in _STATE_KEYS - {"epoch", "position"}
            if state[k] != mine[k]}
    if diff:
      raise ValueError(
          "the state was saved by a loader configured differently (saved vs this loader): "
          + ", ".join(f"{k}={a!r} vs {b!r}" for k, (a, b) in sorted(diff.items()))
          + "; build the Loader with the saved settings to resume.")
    epoch, position = state["epoch"], state["position"]
    if not (isinstance(epoch, int) and isinstance(position, int) and epoch >= 0
            and 0 <= position < self.steps_per_epoch):
      raise ValueError(f"invalid epoch/position {epoch!r}/{position!r}: need epoch >= 0 and "
                       f"0 <= position < steps_per_epoch={self.steps_per_epoch}.")
    self.epoch, self.position = epoch, position
