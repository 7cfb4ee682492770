"""The conditional U-Net (diffusers UNet2DConditionModel layouts): parity with torch fixtures,
SD 1.5 / 2.1 layouts and parameter counts, import/export round trips, clear errors.

Fixtures come from tests/reference/generate_unet_condition_fixtures.py (diffusers 0.42.1,
float32 forward; the "sd2" weights are stored in float16).
"""
import json
import os
import shutil
import subprocess
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from safetensors.numpy import load_file

from jaxgen.interop.diffusers_unet2d_condition import (load_diffusers_unet2d_condition,
                                                       save_diffusers_unet2d_condition,
                                                       unet_condition_flax_path_to_key,
                                                       unet_condition_params_to_state_dict,
                                                       unet_condition_state_dict_to_params)
from jaxgen.nn.attention import Attention, dot_product_attention
from jaxgen.nn.transformer2d import GEGLU
from jaxgen.nn.unet import UnsupportedOptionError, count_params
from jaxgen.nn.unet_condition import (UNet2DConditionConfig, UNet2DConditionModel,
                                      init_unet_condition, unet_condition_param_shapes)

REF = os.path.join(os.path.dirname(__file__), "reference")
CONFIGS = os.path.join(os.path.dirname(__file__), os.pardir, "jaxgen", "pipelines", "configs")
SD = {"sd15": "stable-diffusion-v1-5", "sd21": "stable-diffusion-2-1"}
NAMES = ("sd1", "sd2")
WEIGHTS = "diffusion_pytorch_model.safetensors"
TOL = 1e-4  # max|a - b| / max|b|, the parity target


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.abs(a - b).max() / np.abs(b).max()


def _folder(name):
  return os.path.join(REF, f"unet_cond_{name}")


def _sd_config(key):
  with open(os.path.join(CONFIGS, SD[key], "unet", "config.json")) as f:
    return UNet2DConditionConfig.from_diffusers_dict(json.load(f))


def _recorded(module, method):
  name = module.name or ""
  return method == "__call__" and (name in ("time_embedding", "conv_in", "mid_block")
                                   or name.startswith(("down_blocks_", "up_blocks_")))


@pytest.fixture(scope="module")
def runs():
  """Loads both fixture folders and runs each once on the stored inputs (one compile each)."""
  out = {}
  for name in NAMES:
    model, params = load_diffusers_unet2d_condition(_folder(name))
    ref = dict(np.load(os.path.join(REF, f"unet_cond_{name}.npz")))
    run = jax.jit(lambda p, x, t, c, model=model: model.apply(
        {"params": p}, x, t, c, capture_intermediates=_recorded, mutable=["intermediates"]))
    pred, state = run(params, ref["x"], ref["t"], ref["encoder_hidden_states"])
    out[name] = (model, params, ref, pred, state["intermediates"])
  return out


@pytest.mark.parametrize("name", NAMES)
def test_output_matches_diffusers(runs, name):
  _, _, ref, pred, _ = runs[name]
  assert pred.dtype == jnp.float32 and pred.shape == ref["out"].shape
  assert _rel(pred, ref["out"]) < TOL  # measured 4.6e-7 (sd1), 1.2e-6 (sd2)


@pytest.mark.parametrize("name", NAMES)
def test_intermediates_match_diffusers(runs, name):
  model, _, ref, _, inter = runs[name]
  keys = [k[len("inter_"):] for k in ref if k.startswith("inter_")]
  n = model.config.num_levels
  assert set(keys) == ({"time_embedding", "conv_in", "mid_block"}
                       | {f"{p}_{i}" for p in ("down_blocks", "up_blocks") for i in range(n)})
  for k in keys:
    got = inter[k]["__call__"][0]
    got = got[0] if isinstance(got, tuple) else got  # down blocks return (h, skips)
    assert got.shape == ref[f"inter_{k}"].shape, k
    assert _rel(got, ref[f"inter_{k}"]) < TOL, k


def test_fp16_checkpoint_loads_as_float32(runs):
  stored = load_file(os.path.join(_folder("sd2"), WEIGHTS))
  assert {a.dtype for a in stored.values()} == {np.dtype(np.float16)}
  _, params, _, _, _ = runs["sd2"]
  assert {p.dtype for p in jax.tree_util.tree_leaves(params)} == {jnp.dtype(jnp.float32)}
  key = "down_blocks.0.attentions.0.transformer_blocks.1.attn2.to_k.weight"
  np.testing.assert_array_equal(
      np.asarray(params["down_blocks_0"]["attentions_0"]["transformer_blocks_1"]["attn2"]["to_k"]
                 ["kernel"]), stored[key].astype(np.float32).T)


@pytest.mark.parametrize("name", NAMES)
def test_loaded_config_matches_json(runs, name):
  model, _, _, _, _ = runs[name]
  with open(os.path.join(_folder(name), "config.json")) as f:
    d = json.load(f)
  assert model.config == UNet2DConditionConfig.from_diffusers_dict(d)
  assert model.config.to_diffusers_dict() == {k: v for k, v in d.items() if not k.startswith("_")}


@pytest.mark.parametrize("key", sorted(SD))
def test_sd_layout_and_param_count_match_diffusers(key):
  with open(os.path.join(REF, "sd_param_counts.json")) as f:
    ref = json.load(f)[key]
  shapes = unet_condition_param_shapes(UNet2DConditionModel(_sd_config(key)))
  assert count_params(shapes) == ref["num_params"]
  got = {}
  for path, s in traverse_util.flatten_dict(shapes).items():
    shape = s.shape
    if path[-1] == "kernel":
      shape = (shape[3], shape[2], shape[0], shape[1]) if len(shape) == 4 else shape[::-1]
    got[unet_condition_flax_path_to_key(path)] = list(shape)
  assert got == ref["shapes"]


@pytest.mark.parametrize("key, heads, widths, context, linear", [
    ("sd15", (8,) * 4, (40, 80, 160, 160), 768, False),
    ("sd21", (5, 10, 20, 20), (64,) * 4, 1024, True),
])
def test_sd_configs_read_attention_head_dim_as_heads(key, heads, widths, context, linear):
  cfg = _sd_config(key)
  assert cfg.heads == heads and cfg.context_dims == (context,)
  assert tuple(c // h for c, h in zip(cfg.block_out_channels, cfg.heads)) == widths
  assert cfg.use_linear_projection == linear and cfg.upcast_attention == linear


def test_key_mapping_examples():
  assert unet_condition_flax_path_to_key(
      ("down_blocks_0", "attentions_1", "transformer_blocks_0", "ff", "net_0", "proj", "kernel")
  ) == "down_blocks.0.attentions.1.transformer_blocks.0.ff.net.0.proj.weight"
  assert unet_condition_flax_path_to_key(
      ("mid_block", "attentions_0", "transformer_blocks_2", "attn1", "to_out_0", "bias")
  ) == "mid_block.attentions.0.transformer_blocks.2.attn1.to_out.0.bias"
  assert unet_condition_flax_path_to_key(("up_blocks_1", "attentions_0", "norm", "scale")) == \
      "up_blocks.1.attentions.0.norm.weight"


def test_round_trip_is_exact(runs, tmp_path):
  model, params, _, _, _ = runs["sd1"]
  save_diffusers_unet2d_condition(tmp_path / "out", model, params)
  model2, params2 = load_diffusers_unet2d_condition(tmp_path / "out")
  assert model2.config == model.config
  for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(params2)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  original = load_file(os.path.join(_folder("sd1"), WEIGHTS))
  written = load_file(str(tmp_path / "out" / WEIGHTS))
  assert set(written) == set(original)
  for k in original:
    np.testing.assert_array_equal(written[k], original[k], err_msg=k)
  d = json.loads((tmp_path / "out" / "config.json").read_text())
  assert d["_class_name"] == "UNet2DConditionModel" and d["attention_head_dim"] == 2


def test_fp16_variant_and_pipeline_folder(runs, tmp_path):
  model, params, _, _, _ = runs["sd2"]
  unet = tmp_path / "pipe" / "unet"
  save_diffusers_unet2d_condition(unet, model, params, dtype=np.float16)
  os.rename(unet / WEIGHTS, unet / "diffusion_pytorch_model.fp16.safetensors")
  (tmp_path / "pipe" / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
  with pytest.raises(FileNotFoundError, match=WEIGHTS):
    load_diffusers_unet2d_condition(tmp_path / "pipe")
  _, p16 = load_diffusers_unet2d_condition(tmp_path / "pipe", variant="fp16")
  for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(p16)):
    assert b.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(b), np.asarray(a))  # already fp16-exact


@pytest.mark.parametrize("name", NAMES)
def test_projections_load_from_either_layout(name):
  """1x1-conv proj_in / proj_out weights load into a linear-projection model and back."""
  sd = load_file(os.path.join(_folder(name), WEIGHTS))
  config = UNet2DConditionConfig.from_diffusers_dict(
      json.load(open(os.path.join(_folder(name), "config.json"))))
  want = unet_condition_state_dict_to_params(sd, config)
  other = {}
  for k, v in sd.items():
    if k.endswith(("proj_in.weight", "proj_out.weight")):
      v = v[:, :, None, None] if v.ndim == 2 else v[:, :, 0, 0]
    other[k] = v
  got = unet_condition_state_dict_to_params(other, config)
  for a, b in zip(jax.tree_util.tree_leaves(want), jax.tree_util.tree_leaves(got)):
    np.testing.assert_array_equal(a, b)


def test_state_dict_round_trip_and_mismatch_errors():
  sd = load_file(os.path.join(_folder("sd1"), WEIGHTS))
  config = UNet2DConditionConfig.from_diffusers_dict(
      json.load(open(os.path.join(_folder("sd1"), "config.json"))))
  back = unet_condition_params_to_state_dict(unet_condition_state_dict_to_params(sd, config))
  assert set(back) == set(sd) and all(np.array_equal(back[k], sd[k]) for k in sd)
  broken = dict(sd)
  del broken["mid_block.attentions.0.transformer_blocks.0.ff.net.2.bias"]
  broken["mid_block.attentions.0.transformer_blocks.0.attn1.to_q.bias"] = np.zeros(12, np.float32)
  with pytest.raises(ValueError, match=r"1 missing key.*ff\.net\.2\.bias.*1 unexpected key.*"
                                       r"attn1\.to_q\.bias"):
    unet_condition_state_dict_to_params(broken, config)
  wider = UNet2DConditionConfig(**{**config.__dict__, "cross_attention_dim": 16})
  with pytest.raises(ValueError, match=r"shape mismatch.*attn2\.to_k\.weight: stored \(8, 32\) -> "
                                       r"\(32, 8\), model expects \(16, 8\)"):
    unet_condition_state_dict_to_params(sd, wider)


@pytest.mark.parametrize("option, value, error", [
    ("addition_embed_type", "text_time", UnsupportedOptionError),
    ("class_embed_type", "timestep", UnsupportedOptionError),
    ("encoder_hid_dim", 16, UnsupportedOptionError),
    ("time_cond_proj_dim", 8, UnsupportedOptionError),
    ("dual_cross_attention", True, UnsupportedOptionError),
    ("attention_type", "gated", UnsupportedOptionError),
    ("resnet_time_scale_shift", "scale_shift", UnsupportedOptionError),
    ("mid_block_type", "UNetMidBlock2DSimpleCrossAttn", UnsupportedOptionError),
    ("down_block_types", ["SimpleCrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
     UnsupportedOptionError),
    ("num_attention_heads", 8, ValueError),
    ("attention_head_dim", [2, 2], ValueError),
    ("conv_in_kernel", 4, ValueError),
    ("some_new_option", 3, ValueError),
])
def test_bad_config_option_is_named(tmp_path, option, value, error):
  folder = tmp_path / "unet"
  shutil.copytree(_folder("sd1"), folder)
  d = json.loads((folder / "config.json").read_text())
  d[option] = value
  (folder / "config.json").write_text(json.dumps(d))
  with pytest.raises(error, match=option):
    load_diffusers_unet2d_condition(folder)
  if option == "some_new_option":
    model, _ = load_diffusers_unet2d_condition(folder, ignore_unknown_config_keys=True)
    assert model.config.attention_head_dim == 2


def test_missing_and_pickle_files_are_explained(tmp_path):
  with pytest.raises(FileNotFoundError, match="UNet2DConditionModel folder"):
    load_diffusers_unet2d_condition(tmp_path / "nowhere")
  folder = tmp_path / "unet"
  shutil.copytree(_folder("sd1"), folder)
  os.remove(folder / WEIGHTS)
  (folder / "diffusion_pytorch_model.bin").write_bytes(b"\x80\x02 not to be unpickled")
  with pytest.raises(FileNotFoundError, match=r"must contain config.json and "
                                              r"diffusion_pytorch_model\.safetensors.*pickle"):
    load_diffusers_unet2d_condition(folder)
  os.remove(folder / "config.json")
  with pytest.raises(FileNotFoundError, match="no config.json"):
    load_diffusers_unet2d_condition(folder)


def test_save_rejects_params_of_another_config(runs, tmp_path):
  _, params, _, _, _ = runs["sd1"]
  model, _, _, _, _ = runs["sd2"]
  with pytest.raises(ValueError, match="missing.*transformer_blocks"):
    save_diffusers_unet2d_condition(tmp_path / "x", model, params)
  with pytest.raises(TypeError, match="UNet2DConditionConfig"):
    save_diffusers_unet2d_condition(tmp_path / "x", "unet", params)


def test_input_errors_are_explained(runs):
  model, params, ref, _, _ = runs["sd1"]
  x, t, c = ref["x"], ref["t"], ref["encoder_hidden_states"]  # [2, 16, 16, 4], [2], [2, 7, 32]

  def call(*args, **kw):
    return model.apply({"params": params}, *args, **kw)

  with pytest.raises(ValueError, match=r"feature width 24 but the config has cross_attention_dim=32"):
    call(x, t, np.zeros((2, 7, 24), np.float32))
  with pytest.raises(ValueError, match="looks NCHW"):
    call(x.transpose(0, 3, 1, 2), t, c)
  with pytest.raises(ValueError, match="multiples of 2\\*\\*\\(num_levels-1\\) = 4"):
    call(x[:, :14], t, c)
  with pytest.raises(ValueError, match="encoder_hidden_states batch 1 != latents batch 2"):
    call(x, t, c[:1])
  with pytest.raises(ValueError, match=r"encoder_hidden_states must be \[B, L, cross_attention_dim\]"):
    call(x, t, c[0])
  with pytest.raises(ValueError, match=r"encoder_hidden_states must be .* got None"):
    call(x, t, None)
  with pytest.raises(ValueError, match="float NHWC"):
    call(x[0], t, c)
  with pytest.raises(ValueError, match=r"t must be a scalar or have shape \[B\] = \[2\]"):
    call(x, np.zeros(3, np.int32), c)
  dropout_model, dropout_params, ref2, _, _ = runs["sd2"]
  with pytest.raises(ValueError, match="needs a dropout key"):
    dropout_model.apply({"params": dropout_params}, ref2["x"], ref2["t"],
                        ref2["encoder_hidden_states"], train=True)


def test_jit_grad_with_dropout_is_finite(key):
  # One level (no resampling) keeps the backward pass quick to compile.
  cfg = UNet2DConditionConfig(block_out_channels=(8,), layers_per_block=1, norm_num_groups=4,
                              down_block_types=("CrossAttnDownBlock2D",),
                              up_block_types=("CrossAttnUpBlock2D",), cross_attention_dim=6,
                              attention_head_dim=2, dropout=0.5)
  model = UNet2DConditionModel(cfg)
  k_init, k_x, k_c, k_drop = jax.random.split(key, 4)
  params = init_unet_condition(model, k_init)
  x, c = jax.random.normal(k_x, (2, 4, 4, 4)), jax.random.normal(k_c, (2, 3, 6))

  @jax.jit
  def loss_and_grad(p, k):
    def loss(p):
      out = model.apply({"params": p}, x, jnp.array([3, 700]), c, train=True, rngs={"dropout": k})
      return jnp.mean(jnp.square(out)), out
    return jax.value_and_grad(loss, has_aux=True)(p)

  (value, out), grads = loss_and_grad(params, k_drop)
  assert np.isfinite(float(value))
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree_util.tree_leaves(grads))
  flat = traverse_util.flatten_dict(grads)
  to_k = ("down_blocks_0", "attentions_0", "transformer_blocks_0", "attn2", "to_k", "kernel")
  assert float(jnp.abs(flat[to_k]).max()) > 0  # the cross-attention is on the gradient path
  assert float(jnp.abs(flat[("conv_in", "kernel")]).max()) > 0
  (_, out2), _ = loss_and_grad(params, jax.random.fold_in(k_drop, 1))  # no recompile
  assert float(jnp.abs(out - out2).max()) > 1e-3  # dropout was active


def test_bfloat16_forward_is_close(runs):
  model, params, ref, pred, _ = runs["sd1"]
  bf16 = UNet2DConditionModel(model.config, dtype=jnp.bfloat16)
  out = jax.jit(bf16.apply)({"params": params}, ref["x"], ref["t"], ref["encoder_hidden_states"])
  assert out.dtype == jnp.float32
  assert _rel(out, ref["out"]) < 5e-2


def test_init_matches_shapes(runs, key):
  model, _, _, _, _ = runs["sd1"]
  params = init_unet_condition(model, key)
  shapes = unet_condition_param_shapes(model)
  assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(shapes)
  assert all(p.shape == s.shape and p.dtype == jnp.float32 for p, s in
             zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(shapes)))
  ln = params["mid_block"]["attentions_0"]["transformer_blocks_0"]["norm2"]
  assert np.all(np.asarray(ln["scale"]) == 1) and np.all(np.asarray(ln["bias"]) == 0)


def test_attention_core_matches_softmax_formula(key):
  kq, kk, kv = jax.random.split(key, 3)
  q = jax.random.normal(kq, (2, 3, 5, 4)) * 3  # large logits: the max shift matters
  k, v = jax.random.normal(kk, (2, 3, 7, 4)), jax.random.normal(kv, (2, 3, 7, 4))
  logits = np.einsum("bhqd,bhkd->bhqk", np.float64(q), np.float64(k)) / 2.0
  w = np.exp(logits - logits.max(-1, keepdims=True))
  want = np.einsum("bhqk,bhkd->bhqd", w / w.sum(-1, keepdims=True), np.float64(v))
  np.testing.assert_allclose(dot_product_attention(q, k, v), want, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="agree on B, heads and d"):
    dot_product_attention(q, k[..., :3], v[..., :3])


def test_attention_module_and_geglu(key):
  x, ctx = jnp.ones((2, 5, 6)), jnp.ones((2, 3, 10))
  attn = Attention(heads=2, dim_head=4)
  p = attn.init(key, x, ctx)["params"]
  assert set(p) == {"to_q", "to_k", "to_v", "to_out_0"} and "bias" not in p["to_q"]
  assert p["to_k"]["kernel"].shape == (10, 8) and p["to_out_0"]["bias"].shape == (6,)
  assert attn.apply({"params": p}, x, ctx).shape == (2, 5, 6)
  with pytest.raises(ValueError, match=r"context of shape \[B, L, D\] with B = 2"):
    attn.apply({"params": p}, x, ctx[:1])
  g = GEGLU(3)
  gp = g.init(key, x)["params"]
  h = x @ gp["proj"]["kernel"] + gp["proj"]["bias"][None, None]
  np.testing.assert_allclose(g.apply({"params": gp}, x),
                             h[..., :3] * jax.nn.gelu(h[..., 3:], approximate=False), rtol=1e-6)


_LIVE_SCRIPT = textwrap.dedent("""
    import sys, numpy as np, torch
    from diffusers import UNet2DConditionModel
    folder, inp, outp = sys.argv[1:4]
    m = UNet2DConditionModel.from_pretrained(folder).float().eval()
    d = np.load(inp)
    with torch.no_grad():
      out = m(torch.from_numpy(d["x"]).permute(0, 3, 1, 2), torch.from_numpy(d["t"]).long(),
              torch.from_numpy(d["c"])).sample
    np.save(outp, out.permute(0, 2, 3, 1).numpy())
""")


def test_live_diffusers_loads_what_we_save(runs, tmp_path):
  """Optional: diffusers itself loads a jaxgen-saved model and agrees on the output.

  Runs when JAXGEN_REFERENCE_PYTHON names an interpreter with diffusers + torch (e.g.
  /tmp/refvenv/bin/python); skipped otherwise (the test environment has no torch).
  """
  python = os.environ.get("JAXGEN_REFERENCE_PYTHON")
  if not python:
    pytest.skip("needs JAXGEN_REFERENCE_PYTHON with diffusers + torch")
  model, params, ref, _, _ = runs["sd2"]
  params = jax.tree_util.tree_map(lambda p: p * 1.01, params)  # not the fixture's weights
  x, t, c = ref["x"], ref["t"], ref["encoder_hidden_states"]
  pred = jax.jit(lambda p: model.apply({"params": p}, x, t, c))(params)
  save_diffusers_unet2d_condition(tmp_path / "saved", model, params)
  np.savez(tmp_path / "in.npz", x=x, t=t, c=c)
  (tmp_path / "live.py").write_text(_LIVE_SCRIPT)
  subprocess.run([python, str(tmp_path / "live.py"), str(tmp_path / "saved"),
                  str(tmp_path / "in.npz"), str(tmp_path / "out.npy")], check=True, timeout=300,
                 env={k: v for k, v in os.environ.items() if k != "XLA_FLAGS"})
  assert _rel(pred, np.load(tmp_path / "out.npy")) < TOL

