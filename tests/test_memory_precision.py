"""Memory and precision of training: gradient accumulation against the full batch, remat of
U-Net blocks against the plain blocks, and bfloat16 computation against the float32 loss
curve of the demo model."""
import re
import typing

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments import config as C
from experiments.configs import ddpm_digits
from experiments.families.ddpm import model as B
from jaxgen import data as jdata
from jaxgen import diffusion as D
from jaxgen.nn import (UNet2D, UNet2DConditionConfig, UNet2DConditionModel, UNetConfig,
                       init_unet)
from jaxgen.nn.remat import REMAT_POLICIES
from jaxgen.nn.unet_condition import init_unet_condition
from jaxgen.training import TrainState, accumulate_gradients, make_train_step

PLAIN = UNetConfig(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 8),
                   layers_per_block=1, down_block_types=("DownBlock2D",) * 2,
                   up_block_types=("UpBlock2D",) * 2, norm_num_groups=4, num_class_embeds=11)
CFG = UNetConfig(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                 layers_per_block=1, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                 up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=4,
                 attention_head_dim=None, num_class_embeds=11)
COND = UNet2DConditionConfig(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
                             down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                             up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                             cross_attention_dim=6, attention_head_dim=2)


def _max_rel(a, b):
  num = max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
  return num / max(float(jnp.max(jnp.abs(y))) for y in jax.tree.leaves(b))


@pytest.fixture(scope="module")
def unet():
  model = UNet2D(CFG)
  params = init_unet(model, jax.random.key(0))
  batch = {"image": jax.random.uniform(jax.random.key(1), (16, 8, 8, 1), minval=-1, maxval=1),
           "label": jnp.arange(16, dtype=jnp.int32) % 10}
  return model, params, batch


def test_accumulated_step_equals_the_full_batch_step(unet):
  """Four micro-batches of 4 give the update of one batch of 16: the same per-example noise,
  timesteps and condition dropout (offsets), the mean gradient, the same SGD step."""
  _, _, batch = unet
  model = UNet2D(PLAIN)
  schedule = D.make_schedule("linear", 100)
  state = TrainState.create(apply_fn=model.apply, params=init_unet(model, jax.random.key(0)),
                            tx=optax.sgd(0.1))
  outs = []
  for k in (1, 4):
    step = jax.jit(make_train_step(model, schedule, ema_decay=0.5, cond_drop_prob=0.3,
                                   null_label=10, accum_steps=k))
    outs.append(step(state, batch, jax.random.key(2)))
  (full, m_full), (acc, m_acc) = outs
  assert _max_rel(acc.params, full.params) < 1e-6
  np.testing.assert_allclose(m_acc["loss"], m_full["loss"], rtol=1e-6)
  np.testing.assert_allclose(m_acc["l2_grads"], m_full["l2_grads"], rtol=1e-5)
  assert float(m_full["l2_updates"]) > 0


def test_accumulate_gradients_is_the_mean_gradient_in_closed_form():
  """A least-squares loss: the accumulated gradient is X^T (X w - y) / n."""
  x = jax.random.normal(jax.random.key(0), (12, 3))
  y = jax.random.normal(jax.random.key(1), (12,))
  w = jnp.array([0.5, -1.0, 2.0])

  def loss_fn(params, batch, key, offset):
    r = batch["x"] @ params - batch["y"]
    return 0.5 * jnp.mean(r * r), {"n": jnp.float32(batch["x"].shape[0])}

  (loss, aux), g = accumulate_gradients(loss_fn, w, {"x": x, "y": y}, jax.random.key(0), 0, 3)
  np.testing.assert_allclose(g, x.T @ (x @ w - y) / 12, rtol=1e-5)
  np.testing.assert_allclose(loss, 0.5 * jnp.mean((x @ w - y) ** 2), rtol=1e-6)
  assert float(aux["n"]) == 4.0  # metrics are the micro-batches' mean
  with pytest.raises(ValueError, match="accum_steps=5 must divide the batch of 12"):
    accumulate_gradients(loss_fn, w, {"x": x, "y": y}, jax.random.key(0), 0, 5)
  with pytest.raises(ValueError, match="accum_steps must be an int >= 1"):
    make_train_step(UNet2D(CFG), D.make_schedule("linear", 10), accum_steps=0)


def _grad_of(model, params, args):
  """(loss, grads) of a squared output, and the number of checkpointed calls in its jaxpr."""
  def f(p):
    return jnp.mean(model.apply({"params": p}, *args) ** 2)
  checkpoints = len(re.findall(r"\b(?:remat2?|checkpoint)\[", str(jax.make_jaxpr(f)(params))))
  return jax.jit(jax.value_and_grad(f))(params), checkpoints


def test_remat_unet_has_the_same_parameters_outputs_and_gradients(unet):
  model, params, batch = unet
  args = (batch["image"], jnp.arange(16) * 6, batch["label"])
  remat = UNet2D(CFG, remat_policy="nothing_saveable")
  assert jax.tree.structure(init_unet(remat, jax.random.key(0))) == jax.tree.structure(params)
  (v0, g0), jaxpr0 = _grad_of(model, params, args)
  (v1, g1), jaxpr1 = _grad_of(remat, params, args)
  np.testing.assert_allclose(v1, v0, rtol=1e-6)
  assert _max_rel(g1, g0) < 1e-5
  # the blocks run under jax.checkpoint (5 of them: 2 down, mid, 2 up); the plain model has none
  assert (jaxpr1, jaxpr0) == (5, 0)


def test_remat_conditional_unet_matches_the_plain_one():
  model = UNet2DConditionModel(COND)
  params = init_unet_condition(model, jax.random.key(0))
  x = jax.random.normal(jax.random.key(1), (2, 8, 8, 4))
  ctx = jax.random.normal(jax.random.key(2), (2, 3, 6))
  args = (x, jnp.array([3, 700]), ctx)
  (v0, g0), _ = _grad_of(model, params, args)
  (v1, g1), jaxpr = _grad_of(UNet2DConditionModel(COND, remat_policy="dots_saveable"), params, args)
  np.testing.assert_allclose(v1, v0, rtol=1e-6)
  assert _max_rel(g1, g0) < 1e-5
  assert jaxpr == 5


def test_unknown_remat_policy_and_bad_accum_steps_are_refused(unet):
  model, params, batch = unet
  with pytest.raises(ValueError, match=r"UNet2D.remat_policy='everything'.*one of"):
    UNet2D(CFG, remat_policy="everything").apply({"params": params}, batch["image"], 0,
                                                  batch["label"])
  assert "nothing_saveable" in REMAT_POLICIES
  assert typing.get_args(C.RematPolicy) == REMAT_POLICIES  # the config's choices are the module's
  config = ddpm_digits.get_config("smoke")
  with pytest.raises(C.ConfigError, match=r"train.accum_steps=3.*divides data.batch_size=16"):
    C.apply_overrides(config, ["train.accum_steps=3"])
  with pytest.raises(C.ConfigError, match=r"train.compute_dtype='float16'.*bfloat16"):
    C.apply_overrides(config, ["train.compute_dtype=float16"])
  with pytest.raises(C.ConfigError, match=r"train.remat_policy='all'"):
    C.apply_overrides(config, ["train.remat_policy=all"])


BF16_STEPS, BF16_WINDOW, BF16_TOL = 80, 20, 0.02


def test_bfloat16_training_follows_the_float32_loss_curve():
  """The demo's U-Net (ddpm_digits) trained 80 steps from one initialisation with the same
  batches and noise, computing in float32 and in bfloat16 (float32 parameters, Adam state and
  loss): the mean loss of every 20-step window agrees within 2% while the loss halves (here
  the windows differ by ~0.1%)."""
  config = ddpm_digits.get_config()
  source = jdata.get_source("digits", "train")
  loader = jdata.Loader(source, 32, seed=0)
  batches = [next(loader) for _ in range(BF16_STEPS)]
  curves = {}
  for dtype in ("float32", "bfloat16"):
    C.apply_overrides(config, [f"train.compute_dtype={dtype}"])
    model = B.build_model(config, source.image_shape)
    assert model.dtype == (jnp.bfloat16 if dtype == "bfloat16" else jnp.float32)
    state = TrainState.create(apply_fn=model.apply, params=init_unet(model, jax.random.key(0)),
                              tx=optax.adam(1e-3))
    step = jax.jit(make_train_step(model, B.build_schedule(config), ema_decay=0.9),
                   donate_argnums=0)
    losses = []
    for batch in batches:
      state, m = step(state, {"image": jnp.asarray(batch["image"])}, jax.random.key(1))
      losses.append(m["loss"])
    assert jax.tree.leaves(state.params)[0].dtype == jnp.float32
    curves[dtype] = np.asarray(losses)
  assert not np.array_equal(curves["float32"], curves["bfloat16"])  # bfloat16 is in effect
  f32, bf16 = (curves[d].reshape(-1, BF16_WINDOW).mean(axis=1) for d in ("float32", "bfloat16"))
  assert f32[-1] < 0.6 * f32[0], f32  # it is learning
  np.testing.assert_array_less(np.abs(bf16 - f32) / f32, BF16_TOL)
