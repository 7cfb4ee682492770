"""Tests of jaxgen.data.GrainLoader: the Loader's interface on grain's dataset API (batches,
host shards, seeds, exact resume from a JSON state, state checks), and `train_loop` with it."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxgen import data, parallel
from jaxgen.training import TrainState, make_step_from_loss, train_loop

ONE_HOST = dict(shard_index=0, num_shards=1)


@pytest.fixture(scope="module")
def digits_test():
  return data.get_source("digits", "test")  # 300 examples, 8x8x1


def _take(loader, n):
  return [next(loader) for _ in range(n)]


def _assert_same(want, got):
  assert len(want) == len(got)
  for a, b in zip(want, got):
    assert a.keys() == b.keys()
    for k in a:
      assert a[k].dtype == b[k].dtype, k
      np.testing.assert_array_equal(a[k], b[k])


def test_batches_have_loader_keys_shapes_dtypes_and_equal_it_without_shuffle(digits_test):
  grain = data.GrainLoader(digits_test, 32, seed=0, shuffle=False, **ONE_HOST)
  loader = data.Loader(digits_test, 32, seed=0, shuffle=False, **ONE_HOST)
  assert grain.batch_size == 32 and grain.steps_per_epoch == loader.steps_per_epoch == 9
  batch = next(grain)
  assert batch["image"].shape == (32, 8, 8, 1) and batch["image"].dtype == np.float32
  assert {k: v.dtype for k, v in batch.items() if k != "image"} == {
      "index": np.int32, "label": np.int32}
  assert all(type(v) is np.ndarray for v in batch.values())
  data.check_batch(batch, digits_test.image_shape)
  # Unshuffled, both loaders visit each epoch's first 288 indices in order: equal batches,
  # across the epoch boundary too.
  _assert_same([next(loader)] + _take(loader, 11), [batch] + _take(grain, 11))
  assert (grain.epoch, grain.position) == (loader.epoch, loader.position) == (1, 3)


def test_two_shards_partition_the_dropped_remainder_epoch(digits_test):
  for shuffle in (True, False):
    per_host = [np.concatenate([b["index"] for b in data.GrainLoader(
        digits_test, 25, seed=4, shuffle=shuffle, shard_index=k, num_shards=2, num_epochs=1)])
                for k in range(2)]
    assert [len(p) for p in per_host] == [150, 150]  # 150 // 25 full batches each
    union = np.concatenate(per_host)
    assert len(np.unique(union)) == 300  # disjoint, together the whole (even) split
  odd = [np.concatenate([b["index"] for b in data.GrainLoader(
      digits_test, 33, seed=4, shard_index=k, num_shards=3, num_epochs=1)]) for k in range(3)]
  assert [len(p) for p in odd] == [99, 99, 99]  # 100 per host, the partial batch dropped
  assert len(np.unique(np.concatenate(odd))) == 297
  loader = data.GrainLoader(digits_test, 100, seed=4, shard_index=1, num_shards=3, num_epochs=2)
  assert len(list(loader)) == 2 and loader.epoch == 2
  with pytest.raises(StopIteration):
    next(loader)


def test_deterministic_per_seed_each_epoch_a_new_permutation(digits_test):
  def indices(seed, n=36):  # two epochs of 18 batches
    return np.concatenate([b["index"] for b in _take(
        data.GrainLoader(digits_test, 16, seed=seed, **ONE_HOST), n)])

  a = indices(3)
  np.testing.assert_array_equal(a, indices(3))
  assert not np.array_equal(a, indices(4))
  epoch0, epoch1 = a[:288], a[288:576]
  assert len(np.unique(epoch0)) == len(np.unique(epoch1)) == 288  # each at most once
  assert not np.array_equal(epoch0, epoch1)
  assert not np.array_equal(np.sort(epoch0), np.arange(288))  # a permutation of all 300
  # grain seeds epoch e with seed + e; the mixed seeds keep seed 4 from replaying
  # seed 3's second epoch.
  assert not np.array_equal(epoch1, indices(4)[:288])


@pytest.mark.parametrize("taken", [2, 5])  # resume inside epoch 0; 5 + 3 crosses into epoch 1
def test_resume_from_json_state_gives_the_identical_next_batches(digits_test, taken):
  kw = dict(seed=11, **ONE_HOST)
  original = data.GrainLoader(digits_test, 40, **kw)  # 7 steps per epoch
  _take(original, taken)
  state = json.loads(json.dumps(original.get_state()))
  assert (state["epoch"], state["position"], state["seed"]) == (0, taken, 11)
  restored = data.GrainLoader(digits_test, 40, **kw)
  restored.set_state(state)
  _assert_same(_take(original, 3), _take(restored, 3))
  assert restored.get_state() == original.get_state()
  assert restored.epoch == (1 if taken == 5 else 0)
  # A later epoch and a restore into a loader that was already iterating.
  _take(original, 9)
  state = json.loads(json.dumps(original.get_state()))
  assert state["epoch"] == 2
  _take(restored, 1)
  restored.set_state(state)
  _assert_same(_take(original, 3), _take(restored, 3))


def test_close_and_iterate_on_resumes_where_it_stopped(digits_test):
  a, b = (data.GrainLoader(digits_test, 40, seed=2, **ONE_HOST) for _ in range(2))
  _take(a, 3)
  a.close()
  _take(b, 3)
  _assert_same(_take(b, 2), _take(a, 2))


def test_state_from_another_configuration_is_refused(digits_test):
  loader = data.GrainLoader(digits_test, 40, seed=1, **ONE_HOST)
  next(loader)
  state = loader.get_state()
  with pytest.raises(ValueError, match="configured differently.*seed=1 vs 2"):
    data.GrainLoader(digits_test, 40, seed=2, **ONE_HOST).set_state(state)
  with pytest.raises(ValueError, match="batch_size=40 vs 20"):
    data.GrainLoader(digits_test, 20, seed=1, **ONE_HOST).set_state(state)
  with pytest.raises(ValueError, match="num_shards=1 vs 2, shard_index=0 vs 1"):
    data.GrainLoader(digits_test, 40, seed=1, shard_index=1, num_shards=2).set_state(state)
  with pytest.raises(ValueError, match="num_examples=300 vs 1497"):
    data.GrainLoader(data.get_source("digits", "train"), 40, seed=1, **ONE_HOST).set_state(state)
  with pytest.raises(ValueError, match="keys"):
    loader.set_state({k: v for k, v in state.items() if k != "grain"})
  with pytest.raises(ValueError, match="looks like a Loader state"):
    loader.set_state(data.Loader(digits_test, 40, seed=1, **ONE_HOST).get_state())
  with pytest.raises(ValueError, match="position"):
    loader.set_state({**state, "position": 7})
  with pytest.raises(ValueError, match="does not match epoch/position"):
    loader.set_state({**state, "position": 3})
  assert loader.get_state() == state  # nothing refused changed it


def test_bad_arguments_are_refused(digits_test):
  with pytest.raises(ValueError, match="batch_size must be in"):
    data.GrainLoader(digits_test, 0, seed=0, **ONE_HOST)
  with pytest.raises(ValueError, match=r"batch_size must be in \[1, 150\]"):
    data.GrainLoader(digits_test, 151, seed=0, shard_index=0, num_shards=2)
  with pytest.raises(ValueError, match="0 <= shard_index < num_shards.*shard_index=2"):
    data.GrainLoader(digits_test, 10, seed=0, shard_index=2, num_shards=2)
  with pytest.raises(ValueError, match="shard_index=-1"):
    data.GrainLoader(digits_test, 10, seed=0, shard_index=-1, num_shards=2)
  for seed in (-1, 1.5, True):
    with pytest.raises(ValueError, match="seed must be a non-negative int"):
      data.GrainLoader(digits_test, 10, seed=seed, **ONE_HOST)
  with pytest.raises(ValueError, match="num_epochs"):
    data.GrainLoader(digits_test, 10, seed=0, num_epochs=0, **ONE_HOST)
  with pytest.raises(ValueError, match="worker_count must be an int >= 0"):
    data.GrainLoader(digits_test, 10, seed=0, worker_count=-1, **ONE_HOST)
  big = data.GrainLoader(digits_test, 10, seed=2**40, **ONE_HOST)  # any size: mixed to 32 bits
  assert next(big)["index"].shape == (10,)


def test_worker_process_gives_the_same_batches_and_resumes(digits_test):
  kw = dict(seed=5, **ONE_HOST)
  want = _take(data.GrainLoader(digits_test, 40, **kw), 6)
  worker = data.GrainLoader(digits_test, 40, worker_count=1, **kw)
  got = _take(worker, 3)
  state = json.loads(json.dumps(worker.get_state()))
  worker.close()
  resumed = data.GrainLoader(digits_test, 40, worker_count=1, **kw)
  resumed.set_state(state)
  got += _take(resumed, 3)
  resumed.close()
  _assert_same(want, got)
  with pytest.raises(ValueError, match="worker_count=1 vs 0"):
    data.GrainLoader(digits_test, 40, **kw).set_state(state)


# ---------------------------------------------------------------------------- train_loop


def _loss_fn(params, batch, key, offset):
  del key, offset
  x = batch["image"].reshape(batch["image"].shape[0], -1)  # [B, 64]
  loss = jnp.mean((x @ params["w"] - batch["label"].astype(jnp.float32)) ** 2)
  return loss, {}


def _train(workdir, num_steps, seen):
  """A linear regressor on digits for `num_steps`, its batches' indices appended to `seen`."""
  update = jax.jit(lambda state, batch: make_step_from_loss(_loss_fn, ema_decay=0.5)(
      state, batch, jax.random.key(0)), donate_argnums=0)

  def step_fn(state, batch):
    seen.append(np.asarray(batch["index"]))
    return update(state, batch)

  def init():
    tx = optax.sgd(1e-2)
    return TrainState.create(apply_fn=None, params={"w": jnp.zeros((64,))}, tx=tx)

  loader = data.GrainLoader(data.get_source("digits", "test"), 16, seed=7, **ONE_HOST)
  return train_loop(init, step_fn, num_steps=num_steps, workdir=str(workdir), loader=loader,
                    batch_keys=("image", "label", "index"), image_shape=(8, 8, 1),
                    mesh=parallel.make_mesh(jax.devices()[:1]), log_every=1,
                    checkpoint_every=2, tensorboard=False, progress=False)


def test_train_loop_with_grain_loader_resumes_exactly(tmp_path):
  """4 steps in one go = 2 steps, then a second call that resumes to 4: the same batches
  (the GrainLoader state saved with the checkpoint) and the same parameters."""
  whole_seen, split_seen = [], []
  whole = _train(tmp_path / "whole", 4, whole_seen)
  first = _train(tmp_path / "split", 2, split_seen)
  assert (first.step, first.resumed_from) == (2, None)
  resumed = _train(tmp_path / "split", 4, split_seen)
  assert (resumed.step, resumed.resumed_from) == (4, 2)
  assert len(whole_seen) == len(split_seen) == 4
  for a, b in zip(whole_seen, split_seen):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(jax.device_get(whole.state.params["w"]),
                                jax.device_get(resumed.state.params["w"]))
  assert np.abs(jax.device_get(whole.state.params["w"])).sum() > 0
