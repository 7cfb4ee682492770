"""The input pipeline on grain's random-access dataset API, beside :class:`Loader`.

`GrainLoader` has :class:`jaxgen.data.Loader`'s interface (``batch_size``, iteration over
dicts of numpy batches with the same keys and dtypes, a JSON ``get_state()`` /
``set_state()``), so `jaxgen.training.train_loop` takes either. The pipeline follows the
``MapDataset`` documentation of grain 0.2.18 (https://google-grain.readthedocs.io: shuffle
before repeat, so each epoch is shuffled anew; ``batch`` batches each epoch separately)::

  MapDataset.source(records)     # a jaxgen Source read one record at a time
    .shuffle(seed)               # a global permutation, a new one per epoch
    [start:stop]                 # this host's slice, ShardOptions(drop_remainder=True)
    .apply(Batch(B, drop_remainder=True))   # batched within an epoch
    .repeat(num_epochs)
    .to_iter_dataset(ReadOptions)  # thread prefetch; .mp_prefetch for worker processes

So, as with `Loader`, epoch ``e`` is one permutation of the whole split, host ``k`` of
``K`` takes its own ``len(source) // K`` examples of it (hosts never share an example in an
epoch), and every epoch yields ``(len(source) // K) // B`` full batches. The permutation is
grain's (``index_shuffle``), not `Loader`'s ``PCG64([seed, e])``: the two loaders yield the
same batches only without shuffling. grain seeds epoch ``e`` with ``seed + e``, so
the user's seed is first mixed (``SeedSequence``) into grain's 32-bit seed: runs with seeds
0 and 1 do not see the same orders one epoch apart.

grain 0.2.18 reads its absl flags in worker processes; a script that does not parse absl
flags (no ``absl.app.run``) would fail there, so ``worker_count > 0`` marks them parsed (their
defaults) when nothing parsed them yet.
"""
from __future__ import annotations

import json
from typing import Any

import numpy as np

from jaxgen.data.sources import Source
from jaxgen.data.loader import check_loader_args

_CONFIG_KEYS = ("seed", "batch_size", "shuffle", "shard_index", "num_shards",
                "num_examples", "worker_count")
_STATE_KEYS = frozenset({"epoch", "position", "grain", *_CONFIG_KEYS})


class SourceRecords:
  """A jaxgen `Source` as a grain ``RandomAccessDataSource``: one record per index.

  ``records[i]`` is a dict of numpy arrays without the batch axis (``'image'``
  ``[H, W, C]`` float32, ``'index'`` and the integer fields as int32 scalars), read as
  ``source[[i]]``. The ``repr`` names the split, so grain's own checks can tell sources apart.
  It pickles with its source (grain's worker processes receive it).
  """

  def __init__(self, source: Source):
    self.source = source

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    batch = self.source[np.array([index], np.int64)]
    return {k: v[0] for k, v in batch.items()}

  def __repr__(self) -> str:
    return f"SourceRecords({self.source!r})"


def grain_seed(seed: int) -> int:
  """The 32-bit seed grain's shuffle gets for the user's `seed` (``SeedSequence`` mixing)."""
  return int(np.random.SeedSequence(int(seed)).generate_state(1, np.uint32)[0])


class GrainLoader:
  """Iterates host batches (dicts of numpy arrays) of a :class:`Source` through grain.

  Every host sees ``len(source) // num_shards`` examples per epoch and yields only full
  batches (`Loader` with ``drop_remainder=True``; an exact evaluation pass with a partial
  last batch is `Loader`'s job). The state is the epoch, the position in it and grain's own
  iterator state, in a JSON dict (`jaxgen.training` saves it with each checkpoint).

  Attributes:
    steps_per_epoch: batches this host yields per epoch.
    epoch: current epoch.
    position: batches already yielded in the current epoch.
  """

  def __init__(self, source: Source, batch_size: int, *, seed: int, shuffle: bool = True,
               shard_index: int | None = None, num_shards: int | None = None,
               num_epochs: int | None = None, worker_count: int = 0,
               read_threads: int = 1, prefetch_batches: int = 2):
    """Builds the loader at epoch 0, position 0 (grain starts reading at the first batch).

    Args:
      source: the split to iterate.
      batch_size: examples per batch on this host (the global batch is
        ``batch_size * num_shards``).
      seed: non-negative integer seed of the epoch permutations.
      shuffle: permute each epoch; False visits this host's slice in index order.
      shard_index: this host's index; default ``jax.process_index()``.
      num_shards: number of hosts; default ``jax.process_count()``.
      num_epochs: stop after this many epochs; None iterates forever.
      worker_count: grain worker processes (``mp_prefetch``); 0 reads in this process.
      read_threads: grain's ``ReadOptions.num_threads``: threads reading batches ahead
        (0: read when asked).
      prefetch_batches: grain's ``ReadOptions.prefetch_buffer_size``, in batches (grain's
        default of 500 elements would hold 500 whole batches here).

    Raises:
      ValueError: for a negative or non-integer seed, a non-positive batch size or one
        larger than this host's slice, a bad shard index, a non-positive number of epochs
        or negative worker/thread/prefetch counts.
    """
    import grain  # pylint: disable=import-outside-toplevel  # only when a GrainLoader is built

    shard_index, num_shards = check_loader_args(seed, shard_index, num_shards, num_epochs)
    for name, value in (("worker_count", worker_count), ("read_threads", read_threads),
                        ("prefetch_batches", prefetch_batches)):
      if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name} must be an int >= 0, got {value!r}.")
    n = len(source)
    self.shard_options = grain.sharding.ShardOptions(
        shard_index=int(shard_index), shard_count=int(num_shards), drop_remainder=True)
    per_host = n // num_shards
    if not isinstance(batch_size, (int, np.integer)) or not 0 < batch_size <= per_host:
      raise ValueError(
          f"batch_size must be in [1, {per_host}] (this host's share of the {n} examples "
          f"of {source.name!r} split {source.split!r} over {num_shards} host(s)); got "
          f"{batch_size!r}. batch_size is the per-host batch.")
    self.source = source
    self.batch_size = int(batch_size)
    self.seed, self.shuffle = int(seed), bool(shuffle)
    self.shard_index, self.num_shards = int(shard_index), int(num_shards)
    self.num_epochs, self.worker_count = num_epochs, int(worker_count)
    self.num_examples = n
    self.steps_per_epoch = per_host // self.batch_size
    self._read_options = grain.ReadOptions(num_threads=int(read_threads),
                                           prefetch_buffer_size=int(prefetch_batches))
    start = self.shard_index * per_host
    ds = grain.MapDataset.source(SourceRecords(source))
    if self.shuffle:
      ds = ds.shuffle(seed=grain_seed(self.seed))
    # Slicing after the shuffle keeps the epoch in the index: each epoch's permutation of
    # the whole split is cut into the hosts' slices.
    ds = ds[start:start + per_host]
    ds = ds.apply(grain.transforms.Batch(self.batch_size, drop_remainder=True))
    self.dataset = ds.repeat(num_epochs)
    self._iterator, self._pending_state = None, None
    self._batches = 0  # yielded since epoch 0

  @property
  def epoch(self) -> int:
    return self._batches // self.steps_per_epoch

  @property
  def position(self) -> int:
    return self._batches % self.steps_per_epoch

  def _grain_iterator(self):
    """grain's iterator over the batches, built on first use (workers start then)."""
    if self._iterator is None:
      import grain  # pylint: disable=import-outside-toplevel

      ds = self.dataset.to_iter_dataset(self._read_options)
      if self.worker_count:
        _mark_absl_flags_parsed()
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=self.worker_count))
      self._iterator = iter(ds)
      if self._pending_state is not None:  # left by close()
        self._iterator.set_state(self._pending_state)
        self._pending_state = None
    return self._iterator

  def __iter__(self) -> "GrainLoader":
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    if self.num_epochs is not None and self._batches >= self.num_epochs * self.steps_per_epoch:
      raise StopIteration
    batch = next(self._grain_iterator())
    if self.worker_count:
      # Workers hand over shared-memory arrays; plain copies free that memory at once (and
      # keep grain's shared-memory finalisers out of interpreter shutdown).
      batch = {k: np.array(v) for k, v in batch.items()}
    self._batches += 1
    return batch

  def close(self) -> None:
    """Stops grain's prefetch threads and worker processes; iterating again restarts them
    at the current position."""
    if self._iterator is not None:
      state = self._iterator.get_state()
      if hasattr(self._iterator, "close"):
        self._iterator.close()
      self._iterator = None
      self._pending_state = state

  def get_state(self) -> dict[str, Any]:
    """The iteration state, a small JSON-serialisable dict (store it with checkpoints).

    ``'grain'`` holds grain's iterator state (JSON-decoded; grain's ``DataLoader`` would
    give it as JSON bytes), the other keys `Loader`'s names for the same settings.
    """
    grain_state = json.loads(json.dumps(self._grain_iterator().get_state()))
    return {"epoch": self.epoch, "position": self.position, "seed": self.seed,
            "batch_size": self.batch_size, "shuffle": self.shuffle,
            "shard_index": self.shard_index, "num_shards": self.num_shards,
            "num_examples": self.num_examples, "worker_count": self.worker_count,
            "grain": grain_state}

  def set_state(self, state: dict[str, Any]) -> None:
    """Restores a state from :meth:`get_state`; the next batch is the one it pointed to.

    Raises:
      ValueError: if keys are missing or unknown (e.g. a `Loader` state), or the state was
        saved by a loader with another seed, batch size, sharding, split size or number of
        workers (grain's state then means other examples, or has another layout).
    """
    if not isinstance(state, dict) or set(state) != _STATE_KEYS:
      got = sorted(state) if isinstance(state, dict) else type(state).__name__
      raise ValueError(f"a GrainLoader state is a dict with keys {sorted(_STATE_KEYS)}, got "
                       f"{got}" + ("; it looks like a Loader state: resume with the Loader "
                                   "that saved it." if isinstance(state, dict) and
                                   "drop_remainder" in state else "."))
    mine = {"seed": self.seed, "batch_size": self.batch_size, "shuffle": self.shuffle,
            "shard_index": self.shard_index, "num_shards": self.num_shards,
            "num_examples": self.num_examples, "worker_count": self.worker_count}
    diff = {k: (state[k], mine[k]) for k in _CONFIG_KEYS if state[k] != mine[k]}
    if diff:
      raise ValueError(
          "the state was saved by a GrainLoader configured differently (saved vs this "
          "loader): " + ", ".join(f"{k}={a!r} vs {b!r}" for k, (a, b) in sorted(diff.items()))
          + "; build the GrainLoader with the saved settings to resume.")
    epoch, position = state["epoch"], state["position"]
    if not (isinstance(epoch, int) and isinstance(position, int) and epoch >= 0
            and 0 <= position < self.steps_per_epoch):
      raise ValueError(f"invalid epoch/position {epoch!r}/{position!r}: need epoch >= 0 and "
                       f"0 <= position < steps_per_epoch={self.steps_per_epoch}.")
    done = epoch * self.steps_per_epoch + position
    if not isinstance(state["grain"], dict):
      raise ValueError(f"state['grain'] must be grain's iterator state (a dict), got "
                       f"{type(state['grain']).__name__}.")
    if not self.worker_count and state["grain"].get("next_index") != done:
      raise ValueError(f"state['grain'] {state['grain']!r} does not match epoch/position "
                       f"{epoch}/{position} (expected next_index={done}).")
    try:
      self._grain_iterator().set_state(state["grain"])
    except (KeyError, TypeError, ValueError) as e:
      raise ValueError(f"grain refused the iterator state {state['grain']!r}: {e}") from e
    self._pending_state = None
    self._batches = done


def _mark_absl_flags_parsed() -> None:
  """Lets grain's workers read their absl flags' defaults when no one parsed the flags."""
  from absl import flags  # pylint: disable=import-outside-toplevel

  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
