"""Train step: data parallelism (sharded jit and pmap) against one device, EMA, optimizer."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxgen import diffusion as D
from jaxgen import parallel
from jaxgen.nn import UNet2D, UNetConfig, init_unet
from jaxgen.training import TrainState, ema_update, make_optimizer, make_train_step

CFG = UNetConfig(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                 layers_per_block=1, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                 up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=4,
                 attention_head_dim=None, num_class_embeds=11)


@pytest.fixture(scope="module")
def setup():
  model = UNet2D(CFG)
  schedule = D.make_schedule("linear", 100)
  params = init_unet(model, jax.random.key(0))
  tx = optax.sgd(0.1)  # plain SGD: ||update|| = 0.1 ||grad|| is checkable below
  batch = {"image": jax.random.uniform(jax.random.key(1), (16, 8, 8, 1), minval=-1, maxval=1),
           "label": jnp.arange(16, dtype=jnp.int32) % 10}
  return model, schedule, params, tx, batch


@pytest.fixture(scope="module")
def step_fn(setup):
  """The 1-device step, compiled once for this module (with a trace counter)."""
  model, schedule, _, _, _ = setup
  step = make_train_step(model, schedule, ema_decay=0.75, cond_drop_prob=0.3, null_label=10)
  return step, jax.jit(chex.assert_max_traces(step, n=1))


def _state(setup):
  model, _, params, tx, _ = setup
  return TrainState.create(apply_fn=model.apply, params=params, tx=tx)


def test_one_device_and_eight_devices_agree(setup, step_fn):
  _, _, _, _, batch = setup
  assert jax.device_count() == 8, "conftest sets 8 fake CPU devices"
  step, one = step_fn
  key = jax.random.key(3)
  s1 = _state(setup)
  for _ in range(2):
    s1, m1 = one(s1, batch, key)
  mesh = parallel.make_mesh()
  s8 = parallel.replicate(_state(setup), mesh)
  sharded = jax.jit(step, donate_argnums=0)
  for _ in range(2):
    s8, m8 = sharded(s8, parallel.shard_batch(batch, mesh), key)
  assert len(s8.params["conv_in"]["kernel"].sharding.device_set) == 8
  chex.assert_trees_all_close(s1.params, s8.params, atol=1e-5, rtol=1e-4)
  chex.assert_trees_all_close(s1.ema_params, s8.ema_params, atol=1e-5, rtol=1e-4)
  np.testing.assert_allclose(m1["loss"], m8["loss"], rtol=1e-5)
  assert int(s8.step) == 2


def test_pmap_step_agrees_with_one_device(setup, step_fn):
  model, schedule, _, _, batch = setup
  key = jax.random.key(4)
  # Dropout is 0 here: the only randomness (t, eps, condition dropout) is drawn per example
  # from its global index, so pmap and one device see the same draws.
  s1, m1 = step_fn[1](_state(setup), batch, key)
  pstep = jax.pmap(make_train_step(model, schedule, ema_decay=0.75, cond_drop_prob=0.3,
                                   null_label=10, axis_name="data"),
                   axis_name="data", in_axes=(0, 0, None))
  n = jax.local_device_count()
  rep = jax.tree.map(lambda x: jnp.stack([x] * n), _state(setup))
  shards = jax.tree.map(lambda x: x.reshape((n, -1) + x.shape[1:]), batch)
  sp, mp = pstep(rep, shards, key)
  chex.assert_trees_all_close(s1.params, jax.tree.map(lambda x: x[0], sp.params), atol=1e-5,
                              rtol=1e-4)
  np.testing.assert_allclose(m1["loss"], mp["loss"][0], rtol=1e-5)


def test_step_metrics_and_ema_closed_form(setup, step_fn):
  _, _, params, _, batch = setup
  new, m = step_fn[1](_state(setup), batch, jax.random.key(5))
  for k in ("loss", "l2_grads", "l2_params", "l2_updates"):
    assert np.isfinite(float(m[k])), k
  # SGD: update = -0.1 grad, so ||update|| = 0.1 ||grad||.
  np.testing.assert_allclose(m["l2_updates"], 0.1 * m["l2_grads"], rtol=1e-5)
  want = ema_update(params, new.params, 0.75)
  chex.assert_trees_all_close(new.ema_params, want, atol=1e-7)
  np.testing.assert_allclose(m["l2_params"], optax.global_norm(new.params), rtol=1e-6)


def test_train_step_compiles_once(setup, step_fn):
  _, _, _, _, batch = setup
  s = _state(setup)
  for i in range(3):  # the module's step is wrapped in assert_max_traces(n=1)
    s, _ = step_fn[1](s, batch, jax.random.key(i))
  assert int(s.step) == 3


def test_optimizer_warmup_and_errors():
  tx = make_optimizer(1e-2, warmup_steps=10, grad_clip=None)
  p = {"w": jnp.ones(3)}
  st = tx.init(p)
  up, st = tx.update({"w": jnp.ones(3)}, st, p)
  np.testing.assert_allclose(up["w"], 0.0, atol=1e-12)  # lr is 0 at step 0 of the warm-up
  with pytest.raises(ValueError, match="learning_rate"):
    make_optimizer(0.0)
  with pytest.raises(ValueError, match="cosine"):
    make_optimizer(1e-3, decay="cosine")
