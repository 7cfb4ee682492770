"""UNet2D: shapes, parameter count, input validation, closed forms of its parts, conditioning, dropout."""
import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from jaxgen.nn import (AttentionBlock, Downsample2D, UNet2D, UNetConfig, UnsupportedOptionError,
                       count_params, init_unet, param_shapes, timestep_embedding,
                       upsample_nearest2x)

TINY = UNetConfig(sample_size=8, block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
                  down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                  up_block_types=("AttnUpBlock2D", "UpBlock2D"), attention_head_dim=8,
                  dropout=0.2, flip_sin_to_cos=False, freq_shift=1)
TINY_COND = dataclasses.replace(TINY, num_class_embeds=5)
DIFFUSERS_CIFAR10_PARAMS = 35_746_307  # sum(p.numel()) of diffusers 0.42.1 UNet2DModel, same config


@pytest.fixture(scope="module")
def tiny():
  model = UNet2D(TINY)
  params = init_unet(model, jax.random.key(0))
  apply = jax.jit(lambda p, x, t, k, train: model.apply({"params": p}, x, t, train=train,
                                                        rngs={"dropout": k}),
                  static_argnames="train")
  return model, params, apply


@pytest.fixture(scope="module")
def tiny_cond():
  model = UNet2D(TINY_COND)
  params = init_unet(model, jax.random.key(1))
  apply = jax.jit(lambda p, x, t, y: model.apply({"params": p}, x, t, y))
  return model, params, apply


def _x(key, b=2, h=8, w=8, c=3):
  return jax.random.normal(key, (b, h, w, c), jnp.float32)


def _random_params(module, *args, seed=0):
  """Parameters of a small module drawn on the host (no per-parameter compile)."""
  shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), *args))["params"]
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map(lambda s: jnp.asarray(rng.normal(0, 0.5, s.shape), jnp.float32), shapes)


def test_cifar10_param_count_and_names():
  model = UNet2D(UNetConfig.ddpm_cifar10())
  shapes = param_shapes(model)
  n = count_params(shapes)
  assert n == DIFFUSERS_CIFAR10_PARAMS
  assert abs(n - 35.7e6) / 35.7e6 < 0.005
  assert shapes["conv_in"]["kernel"].shape == (3, 3, 3, 128)
  assert shapes["time_embedding"]["linear_1"]["kernel"].shape == (128, 512)
  assert shapes["down_blocks_0"]["resnets_1"]["conv1"]["kernel"].shape == (3, 3, 128, 128)
  assert shapes["down_blocks_1"]["attentions_1"]["to_q"]["kernel"].shape == (256, 256)
  assert "attentions_0" not in shapes["down_blocks_0"]
  assert "downsamplers_0" not in shapes["down_blocks_3"]
  assert shapes["mid_block"]["attentions_0"]["group_norm"]["scale"].shape == (256,)
  assert shapes["up_blocks_2"]["upsamplers_0"]["conv"]["kernel"].shape == (3, 3, 256, 256)
  assert shapes["up_blocks_0"]["resnets_0"]["conv_shortcut"]["kernel"].shape == (1, 1, 512, 256)
  assert "upsamplers_0" not in shapes["up_blocks_3"]
  assert shapes["conv_out"]["kernel"].shape == (3, 3, 128, 3)
  assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(shapes))


def test_init_unet_distributions():
  model = UNet2D(TINY_COND)
  params = init_unet(model, jax.random.key(4))
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)), 0,
                                             jnp.zeros((1,), jnp.int32)))["params"]
  assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(shapes)
  flat = {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(params).items()}
  for name, v in flat.items():
    if name.endswith("kernel"):
      bound = 1.0 / math.sqrt(np.prod(v.shape[:-1]))
      assert np.abs(v).max() <= bound and np.abs(v).max() > 0.8 * bound, name
    elif name.endswith("scale"):
      assert (v == 1).all(), name
    elif name.endswith("bias"):
      assert (v == 0).all(), name
  w = flat["down_blocks_1/resnets_0/conv2/kernel"]  # 3*3*16 fan-in: var = 1 / (3 fan_in)
  assert abs(w.var() * 3 * 144 - 1) < 0.1
  assert abs(flat["class_embedding/embedding"].std() - 1) < 0.15
  again = init_unet(model, jax.random.key(4))
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(params),
                                                    jax.tree_util.tree_leaves(again)))


def test_cifar10_output_shape():
  model = UNet2D(UNetConfig.ddpm_cifar10())
  shapes = param_shapes(model)
  x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
  out = jax.eval_shape(lambda p, x: model.apply({"params": p}, x, jnp.array([0, 999])), shapes, x)
  assert out.shape == (2, 32, 32, 3) and out.dtype == jnp.float32


@pytest.mark.parametrize("hw", [(8, 8), (16, 8), (24, 40)])
def test_shapes_any_valid_size(hw):
  cfg = dataclasses.replace(TINY, in_channels=2, out_channels=5)
  model = UNet2D(cfg)
  shapes = param_shapes(model)
  x = jax.ShapeDtypeStruct((3, *hw, 2), jnp.float32)
  out = jax.eval_shape(lambda p, x: model.apply({"params": p}, x, 7), shapes, x)
  assert out.shape == (3, *hw, 5)


def _shape_call(cfg, x_shape, t=0, y=None, x_dtype=jnp.float32):
  model = UNet2D(cfg)
  shapes = param_shapes(model)
  x = jax.ShapeDtypeStruct(x_shape, x_dtype)
  return jax.eval_shape(lambda p, x: model.apply({"params": p}, x, t, y), shapes, x)


@pytest.mark.parametrize("x_shape, match", [
    ((8, 8, 3), "NHWC"),
    ((2, 8, 8, 4), r"\[B, H, W, 3\]"),
    ((2, 3, 8, 8), "NCHW"),
    ((2, 9, 8, 3), "multiples of 2\\*\\*\\(num_levels-1\\) = 2"),
    ((2, 8, 7, 3), "multiples"),
])
def test_bad_x_shape(x_shape, match):
  with pytest.raises(ValueError, match=match):
    _shape_call(TINY, x_shape)


def test_bad_size_names_expected_shape():
  with pytest.raises(ValueError, match=r"= 8 for 4 levels.*\[2, 32, 32, 3\]"):
    _shape_call(UNetConfig.ddpm_cifar10(), (2, 36, 32, 3))


def test_bad_inputs():
  with pytest.raises(TypeError, match="floating"):
    _shape_call(TINY, (2, 8, 8, 3), x_dtype=jnp.int32)
  with pytest.raises(ValueError, match=r"scalar or have shape \[B\]"):
    _shape_call(TINY, (2, 8, 8, 3), t=jnp.zeros((3,), jnp.int32))
  with pytest.raises(ValueError, match="num_class_embeds=None"):
    _shape_call(TINY, (2, 8, 8, 3), y=jnp.zeros((2,), jnp.int32))
  with pytest.raises(ValueError, match="class-conditional"):
    _shape_call(TINY_COND, (2, 8, 8, 3))
  with pytest.raises(ValueError, match=r"y must have shape \[B\]"):
    _shape_call(TINY_COND, (2, 8, 8, 3), y=jnp.zeros((3,), jnp.int32))
  with pytest.raises(TypeError, match="integer class labels"):
    _shape_call(TINY_COND, (2, 8, 8, 3), y=jnp.zeros((2,), jnp.float32))


def test_label_out_of_range_is_caught_when_concrete(tiny_cond, key):
  model, params, apply = tiny_cond
  for bad in ([0, 5], [-1, 0]):
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
      model.apply({"params": params}, _x(key), 0, jnp.array(bad, jnp.int32))
  # Under jit the labels are unknown at trace time: invalid ones give NaN for that example only.
  out = np.asarray(apply(params, _x(key, b=4), jnp.zeros((4,), jnp.int32),
                         jnp.array([0, 5, -1, 4], jnp.int32)))
  assert np.isfinite(out[[0, 3]]).all() and np.isnan(out[[1, 2]]).all()


def test_timestep_embedding_closed_form():
  t = np.array([0, 1, 10, 500, 999, 2.5])
  for dim, flip, shift in [(32, False, 1), (32, True, 0), (9, True, 1)]:
    half = dim // 2
    freqs = np.exp(-math.log(10000.0) * np.arange(half) / (half - shift))
    args = t[:, None] * freqs[None, :]
    sin, cos = np.sin(args), np.cos(args)
    want = np.concatenate([cos, sin] if flip else [sin, cos], axis=1)
    if dim % 2:
      want = np.pad(want, ((0, 0), (0, 1)))
    got = timestep_embedding(jnp.asarray(t, jnp.float32), dim, flip_sin_to_cos=flip, freq_shift=shift)
    assert got.shape == (len(t), dim) and got.dtype == jnp.float32
    # float32 arguments t*f (|t f| <= 999) carry ~1e-4 absolute error.
    np.testing.assert_allclose(np.asarray(got), want, atol=3e-4, rtol=0)
    np.testing.assert_allclose(np.asarray(got)[:5], want[:5], atol=3e-4)
    assert np.asarray(got)[0, :half].tolist() == ([1.0] * half if flip else [0.0] * half)


def test_attention_block_closed_form(key):
  b, h, w, c, heads = 2, 4, 3, 8, 2
  block = AttentionBlock(heads=heads, dim_head=c // heads, groups=None, eps=1e-6,
                         rescale_output_factor=2.0)
  x = jax.random.normal(key, (b, h, w, c))
  p = _random_params(block, x)
  got = np.asarray(block.apply({"params": p}, x))
  xs = np.asarray(x, np.float64).reshape(b, h * w, c)
  lin = lambda name, v: v @ np.asarray(p[name]["kernel"], np.float64) + np.asarray(p[name]["bias"])
  q, k, v = (lin(n, xs).reshape(b, h * w, heads, c // heads) for n in ("to_q", "to_k", "to_v"))
  logits = np.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(c // heads)
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  o = np.einsum("bhqk,bkhd->bqhd", probs, v).reshape(b, h * w, c)
  want = ((lin("to_out_0", o) + xs) / 2.0).reshape(b, h, w, c)
  np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-5)


def test_resampling_closed_forms(key):
  x = jax.random.normal(key, (2, 4, 6, 3))
  np.testing.assert_array_equal(np.asarray(upsample_nearest2x(x)),
                                np.repeat(np.repeat(np.asarray(x), 2, axis=1), 2, axis=2))
  down = Downsample2D(5, padding=0)
  p = _random_params(down, x)
  got = down.apply({"params": p}, x)
  # DDPM convention: pad one row/column at the bottom/right, then a VALID stride-2 conv.
  xp = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
  want = jax.lax.conv_general_dilated(xp, p["conv"]["kernel"], (2, 2), "VALID",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))
  want = want + p["conv"]["bias"][None, None, None, :]
  assert got.shape == (2, 2, 3, 5)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)


def test_timestep_forms_agree(tiny, key):
  _, params, apply = tiny
  x = _x(key)
  k = jax.random.key(0)
  ref = apply(params, x, jnp.array([17, 17]), k, False)
  for t in (17,):  # a Python scalar is broadcast to [B] (each form compiles anew)
    np.testing.assert_allclose(np.asarray(apply(params, x, t, k, False)), np.asarray(ref), atol=1e-6)
  other = apply(params, x, jnp.array([17, 400]), k, False)
  np.testing.assert_allclose(np.asarray(other[0]), np.asarray(ref[0]), atol=1e-6)
  assert not np.allclose(np.asarray(other[1]), np.asarray(ref[1]), atol=1e-4)


def test_dropout_only_in_training(tiny, key):
  model, params, apply = tiny
  x = _x(key)
  t = jnp.array([3, 900])
  k1, k2 = jax.random.split(jax.random.fold_in(key, 1))
  evals = [np.asarray(apply(params, x, t, k, False)) for k in (k1, k2)]
  np.testing.assert_array_equal(evals[0], evals[1])  # the key is unused in eval mode
  no_drop = UNet2D(dataclasses.replace(TINY, dropout=0.0))
  no_drop_out = jax.jit(lambda p: no_drop.apply({"params": p}, x, t, train=True))(params)
  np.testing.assert_allclose(np.asarray(no_drop_out), evals[0], atol=1e-6)
  tr1, tr1b, tr2 = (np.asarray(apply(params, x, t, k, True)) for k in (k1, k1, k2))
  np.testing.assert_array_equal(tr1, tr1b)
  assert not np.allclose(tr1, evals[0], atol=1e-3)
  assert not np.allclose(tr1, tr2, atol=1e-3)
  with pytest.raises(ValueError, match="dropout key"):
    model.apply({"params": params}, x, t, train=True)


def test_class_conditioning_adds_to_time_embedding(tiny_cond, key):
  model, params, apply = tiny_cond
  x = _x(key)
  t = jnp.array([5, 5])
  y = jnp.array([1, 3], jnp.int32)
  out = apply(params, x, t, y)
  assert out.shape == (2, 8, 8, 3)
  swapped = apply(params, x[::-1], t, y[::-1])
  np.testing.assert_allclose(np.asarray(swapped[::-1]), np.asarray(out), atol=1e-6)
  other = apply(params, x, t, jnp.array([2, 3], jnp.int32))
  assert not np.allclose(np.asarray(other[0]), np.asarray(out[0]), atol=1e-4)
  np.testing.assert_allclose(np.asarray(other[1]), np.asarray(out[1]), atol=1e-6)
  # A zero class embedding reduces the model to the unconditional one with the same weights.
  zeroed = dict(params, class_embedding={"embedding": jnp.zeros_like(params["class_embedding"]["embedding"])})
  uncond_params = {k: v for k, v in params.items() if k != "class_embedding"}
  uncond = UNet2D(dataclasses.replace(TINY_COND, num_class_embeds=None))
  uncond_out = jax.jit(lambda p: uncond.apply({"params": p}, x, t))(uncond_params)
  np.testing.assert_allclose(np.asarray(apply(zeroed, x, t, y)), np.asarray(uncond_out), atol=1e-5)


def test_bfloat16_compute_close_to_float32(tiny, key):
  model, params, apply = tiny
  x = _x(key)
  ref = np.asarray(apply(params, x, 50, jax.random.key(0), False))
  bf = UNet2D(TINY, dtype=jnp.bfloat16)
  out = jax.jit(lambda p, x: bf.apply({"params": p}, x, 50))(params, x)
  assert out.dtype == jnp.float32
  rel = np.linalg.norm(np.asarray(out) - ref) / np.linalg.norm(ref)
  assert rel < 5e-2


def test_config_round_trip_and_defaults():
  cfg = UNetConfig.ddpm_cifar10()
  d = cfg.to_diffusers_dict()
  assert d["block_out_channels"] == [128, 256, 256, 256] and d["freq_shift"] == 1
  assert d["down_block_types"][1] == "AttnDownBlock2D" and d["up_block_types"][2] == "AttnUpBlock2D"
  assert UNetConfig.from_diffusers_dict({**d, "_class_name": "UNet2DModel",
                                         "_diffusers_version": "0.1.1"}) == cfg
  # Missing keys take diffusers' defaults; lists become tuples.
  small = UNetConfig.from_diffusers_dict({"block_out_channels": [32, 64], "norm_num_groups": 8,
                                          "down_block_types": ["DownBlock2D"] * 2,
                                          "up_block_types": ["UpBlock2D"] * 2})
  assert small.block_out_channels == (32, 64) and small.flip_sin_to_cos and small.norm_eps == 1e-5
  assert small.attention_head_dim == 8 and small.time_embed_dim == 128


@pytest.mark.parametrize("option, value", [
    ("time_embedding_type", "fourier"), ("resnet_time_scale_shift", "scale_shift"),
    ("downsample_type", "resnet"), ("upsample_type", "resnet"), ("class_embed_type", "timestep"),
    ("act_fn", "gelu"), ("mid_block_type", "UNetMidBlock2DCrossAttn"),
])
def test_unsupported_options_are_named(option, value):
  d = UNetConfig.ddpm_cifar10().to_diffusers_dict()
  d[option] = value
  with pytest.raises(UnsupportedOptionError, match=option):
    UNetConfig.from_diffusers_dict(d)
  with pytest.raises(NotImplementedError, match=option):
    UNetConfig(**{**UNetConfig.ddpm_cifar10().__dict__, option: value})


def test_invalid_configs_are_named():
  d = UNetConfig.ddpm_cifar10().to_diffusers_dict()
  with pytest.raises(UnsupportedOptionError, match="down_block_types"):
    UNetConfig.from_diffusers_dict({**d, "down_block_types": ["CrossAttnDownBlock2D"] + ["DownBlock2D"] * 3})
  with pytest.raises(ValueError, match="up_block_types"):
    UNetConfig.from_diffusers_dict({**d, "up_block_types": ["UpBlok2D"] * 4})
  with pytest.raises(ValueError, match="foo_bar"):
    UNetConfig.from_diffusers_dict({**d, "foo_bar": 1})
  assert UNetConfig.from_diffusers_dict({**d, "foo_bar": 1}, ignore_unknown=True) == UNetConfig.ddpm_cifar10()
  with pytest.raises(ValueError, match="_class_name"):
    UNetConfig.from_diffusers_dict({**d, "_class_name": "UNet2DConditionModel"})
  with pytest.raises(ValueError, match="same non-zero length"):
    UNetConfig.from_diffusers_dict({**d, "block_out_channels": [128, 256]})
  with pytest.raises(ValueError, match="norm_num_groups"):
    UNetConfig.from_diffusers_dict({**d, "norm_num_groups": 48})


@pytest.mark.parametrize("shape", [(3, 5, 6, 16), (3, 16), (2, 7, 16)])
def test_group_norm_matches_float64_formula(shape):
  """jaxgen's GroupNorm (per-channel stats first, folded affine) equals Wu & He eq. 1-2."""
  from jaxgen.nn import GroupNorm
  x = np.random.default_rng(0).normal(2.0, 3.0, shape).astype(np.float32)
  scale = np.random.default_rng(1).normal(size=16).astype(np.float32)
  bias = np.random.default_rng(2).normal(size=16).astype(np.float32)
  out = GroupNorm(4, epsilon=1e-5).apply({"params": {"scale": scale, "bias": bias}}, x)
  xg = x.astype(np.float64).reshape(shape[0], -1, 4, 4)
  mu = xg.mean(axis=(1, 3), keepdims=True)
  var = ((xg - mu) ** 2).mean(axis=(1, 3), keepdims=True)
  ref = ((xg - mu) / np.sqrt(var + 1e-5)).reshape(shape) * scale + bias
  np.testing.assert_allclose(np.asarray(out), ref, atol=2e-5, rtol=1e-5)
  with pytest.raises(ValueError, match="divisible by num_groups=3"):
    GroupNorm(3).init(jax.random.key(0), x)


def _np_group_norm(x, groups, eps, p):  # x [B, H, W, C] float64
  b, h, w, c = x.shape
  xg = x.reshape(b, h * w, groups, c // groups)
  mu = xg.mean(axis=(1, 3), keepdims=True)
  var = ((xg - mu) ** 2).mean(axis=(1, 3), keepdims=True)
  return ((xg - mu) / np.sqrt(var + eps)).reshape(x.shape) * p["scale"] + p["bias"]


def _np_conv(x, p):  # SAME conv, stride 1, kernel [k, k, Cin, Cout] (HWIO), x [B, H, W, Cin]
  k = np.asarray(p["kernel"], np.float64)
  r = k.shape[0] // 2
  xp = np.pad(x, ((0, 0), (r, r), (r, r), (0, 0)))
  h, w = x.shape[1:3]
  out = sum(np.einsum("bhwi,io->bhwo", xp[:, i:i + h, j:j + w], k[i, j])
            for i in range(k.shape[0]) for j in range(k.shape[1]))
  return out + np.asarray(p["bias"], np.float64)


def _np_silu(x):
  return x / (1 + np.exp(-x))


@pytest.mark.parametrize("with_temb", [True, False])
def test_resnet_block_closed_form_with_and_without_time_embedding(key, with_temb):
  """shortcut(x) + conv2(silu(norm2(conv1(silu(norm1(x))) [+ proj(silu(temb))]))), / s."""
  from jaxgen.nn import ResnetBlock2D
  kx, kt = jax.random.split(key)
  x = jax.random.normal(kx, (2, 4, 5, 8))
  temb = jax.random.normal(kt, (2, 6)) if with_temb else None
  block = ResnetBlock2D(12, 4, 1e-6, output_scale_factor=2.0)
  p = _random_params(block, x, temb)
  names = {"norm1", "conv1", "norm2", "conv2", "conv_shortcut"}
  assert set(p) == (names | {"time_emb_proj"} if with_temb else names)  # diffusers' names
  got = np.asarray(block.apply({"params": p}, x, temb))
  p = jax.tree.map(lambda v: np.asarray(v, np.float64), p)
  xs = np.asarray(x, np.float64)
  h = _np_conv(_np_silu(_np_group_norm(xs, 4, 1e-6, p["norm1"])), p["conv1"])
  if with_temb:
    t = _np_silu(np.asarray(temb, np.float64)) @ p["time_emb_proj"]["kernel"]
    h = h + (t + p["time_emb_proj"]["bias"])[:, None, None, :]
  h = _np_conv(_np_silu(_np_group_norm(h, 4, 1e-6, p["norm2"])), p["conv2"])
  want = (_np_conv(xs, p["conv_shortcut"]) + h) / 2.0
  assert got.shape == (2, 4, 5, 12)
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


def test_init_from_shapes_keys_distributions_and_jit():
  """init_unet = the generic init with split(key) = (kernel key, embedding key); the same
  draw eagerly and under jit; each kernel family has its closed-form moments."""
  from jaxgen.nn import init_from_shapes
  model = UNet2D(TINY_COND)
  shapes = param_shapes(model)
  key = jax.random.key(6)
  k_kernel, k_embed = jax.random.split(key)
  direct = init_from_shapes(shapes, k_kernel, kernel="uniform", embedding_key=k_embed)
  leaves = jax.tree_util.tree_leaves
  for got in (init_unet(model, key), jax.jit(lambda k: init_unet(model, k))(key)):
    assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(shapes)
    assert all(np.array_equal(a, b) for a, b in zip(leaves(got), leaves(direct)))
  normal = init_from_shapes(shapes, k_kernel, kernel="lecun_normal", embedding_key=k_embed)
  jitted = jax.jit(lambda k, e: init_from_shapes(shapes, k, kernel="lecun_normal",
                                                 embedding_key=e))(k_kernel, k_embed)
  for a, b in zip(leaves(normal), leaves(jitted)):  # XLA may round the division differently
    np.testing.assert_allclose(a, b, rtol=3e-7, atol=0)
  w_u = np.asarray(direct["down_blocks_1"]["resnets_0"]["conv2"]["kernel"])  # fan_in 3*3*16
  w_n = np.asarray(normal["down_blocks_1"]["resnets_0"]["conv2"]["kernel"])
  assert abs(w_u.var() * 3 * 144 - 1) < 0.1 and np.abs(w_u).max() <= 1 / 12
  assert abs(w_n.var() * 144 - 1) < 0.1 and abs(w_n.mean()) < 0.01
  # The embeddings come from embedding_key alone: the same for both kernel families.
  np.testing.assert_array_equal(normal["class_embedding"]["embedding"],
                                direct["class_embedding"]["embedding"])
  assert jax.eval_shape(lambda k: init_unet(model, k), key)["conv_in"]["kernel"].shape \
      == shapes["conv_in"]["kernel"].shape


def test_init_from_shapes_errors():
  from jaxgen.nn import init_from_shapes
  shapes = param_shapes(UNet2D(TINY_COND))
  with pytest.raises(ValueError, match="embedding_key"):
    init_from_shapes(shapes, jax.random.key(0), kernel="uniform")
  with pytest.raises(ValueError, match="unknown kernel distribution 'xavier'"):
    init_from_shapes(shapes, jax.random.key(0), kernel="xavier")
  odd = {"dense": {"kernel": jax.ShapeDtypeStruct((2, 3), jnp.float32),
                   "gamma": jax.ShapeDtypeStruct((3,), jnp.float32)}}
  with pytest.raises(ValueError, match="no initializer for parameter dense/gamma"):
    init_from_shapes(odd, jax.random.key(0))
