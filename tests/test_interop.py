"""diffusers UNet2DModel import/export: parity with torch fixtures, round trips, clear errors.

Fixtures come from tests/reference/generate_unet_fixtures.py (diffusers 0.42.1, float32).
"""
import json
import os
import shutil
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from safetensors.numpy import load_file

from jaxgen.interop import (flax_path_to_diffusers_key, load_diffusers_unet2d, params_to_state_dict,
                            save_diffusers_unet2d, state_dict_to_params)
from jaxgen.nn import UNet2D, UNetConfig, UnsupportedOptionError, param_shapes

REF = os.path.join(os.path.dirname(__file__), "reference")
NAMES = ("attn", "noattn", "class")
WEIGHTS = "diffusion_pytorch_model.safetensors"
TOL = 1e-4  # relative L2, the parity target


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.linalg.norm(a - b) / np.linalg.norm(b)


def _folder(name):
  return os.path.join(REF, f"unet_{name}")


def _copy(name, tmp_path):
  dst = tmp_path / f"unet_{name}"
  shutil.copytree(_folder(name), dst)
  return dst


_RECORDED = ("time_embedding", "class_embedding", "conv_in", "mid_block")


def _recorded(module, method):
  name = module.name or ""
  return method == "__call__" and (name in _RECORDED or name.startswith(("down_blocks_", "up_blocks_")))


@pytest.fixture(scope="module")
def runs():
  """Loads every fixture folder and runs it once on the stored inputs (one compile each)."""
  out = {}
  for name in NAMES:
    model, params = load_diffusers_unet2d(_folder(name))
    ref = dict(np.load(os.path.join(REF, f"unet_{name}.npz")))

    @jax.jit
    def run(p, x, t, y, model=model):
      return model.apply({"params": p}, x, t, y, capture_intermediates=_recorded,
                         mutable=["intermediates"])

    y = ref.get("y")
    pred, state = run(params, ref["x"], ref["t"], None if y is None else jnp.asarray(y))
    out[name] = (model, params, ref, pred, state["intermediates"])
  return out


@pytest.mark.parametrize("name", NAMES)
def test_output_matches_diffusers(runs, name):
  _, _, ref, pred, _ = runs[name]
  assert pred.shape == ref["out"].shape
  assert _rel(pred, ref["out"]) < TOL


@pytest.mark.parametrize("name", NAMES)
def test_intermediates_match_diffusers(runs, name):
  _, _, ref, _, inter = runs[name]
  keys = [k[len("inter_"):] for k in ref if k.startswith("inter_")]
  assert {"time_embedding", "conv_in", "mid_block", "down_blocks_0", "up_blocks_0"} <= set(keys)
  for k in keys:
    got = inter[k]["__call__"][0]
    got = got[0] if isinstance(got, tuple) else got  # down blocks return (h, skips)
    assert got.shape == ref[f"inter_{k}"].shape, k
    assert _rel(got, ref[f"inter_{k}"]) < TOL, k


def test_fp16_checkpoint_loads_as_float32(runs):
  stored = load_file(os.path.join(_folder("attn"), WEIGHTS))
  assert {a.dtype for a in stored.values()} == {np.dtype(np.float16)}
  _, params, _, _, _ = runs["attn"]
  assert {p.dtype for p in jax.tree_util.tree_leaves(params)} == {jnp.dtype(jnp.float32)}
  np.testing.assert_array_equal(np.asarray(params["conv_in"]["kernel"]),
                                stored["conv_in.weight"].astype(np.float32).transpose(2, 3, 1, 0))


def test_loaded_config_matches_json(runs):
  model, _, _, _, _ = runs["class"]
  with open(os.path.join(_folder("class"), "config.json")) as f:
    d = json.load(f)
  assert model.config == UNetConfig.from_diffusers_dict(d)
  assert model.config.num_class_embeds == 11 and model.config.mid_block_scale_factor == 1.414
  want = {k: v for k, v in d.items() if not k.startswith("_")}
  assert model.config.to_diffusers_dict() == want


def test_key_mapping_examples():
  assert flax_path_to_diffusers_key(("time_embedding", "linear_1", "kernel")) == "time_embedding.linear_1.weight"
  assert flax_path_to_diffusers_key(("mid_block", "attentions_0", "to_out_0", "bias")) == \
      "mid_block.attentions.0.to_out.0.bias"
  assert flax_path_to_diffusers_key(("up_blocks_2", "upsamplers_0", "conv", "kernel")) == \
      "up_blocks.2.upsamplers.0.conv.weight"
  assert flax_path_to_diffusers_key(("down_blocks_10", "resnets_1", "norm1", "scale")) == \
      "down_blocks.10.resnets.1.norm1.weight"
  assert flax_path_to_diffusers_key(("class_embedding", "embedding")) == "class_embedding.weight"


def test_cifar10_layout_matches_diffusers_state_dict():
  with open(os.path.join(REF, "unet_ddpm_cifar10_keys.json")) as f:
    ref = json.load(f)
  flat = traverse_util.flatten_dict(param_shapes(UNet2D(UNetConfig.ddpm_cifar10())))
  got = {}
  for path, s in flat.items():
    shape = s.shape
    if path[-1] == "kernel":
      shape = (shape[3], shape[2], shape[0], shape[1]) if len(shape) == 4 else shape[::-1]
    got[flax_path_to_diffusers_key(path)] = list(shape)
  assert got == ref["shapes"]
  assert sum(int(np.prod(s)) for s in got.values()) == ref["num_params"]


def test_round_trip_is_exact(runs, tmp_path):
  model, params, _, _, _ = runs["noattn"]
  save_diffusers_unet2d(tmp_path / "out", model, params)
  model2, params2 = load_diffusers_unet2d(tmp_path / "out")
  assert model2.config == model.config
  for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(params2)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  original = load_file(os.path.join(_folder("noattn"), WEIGHTS))
  written = load_file(str(tmp_path / "out" / WEIGHTS))
  assert set(written) == set(original)
  for k in original:
    np.testing.assert_array_equal(written[k], original[k], err_msg=k)
  with open(tmp_path / "out" / "config.json") as f:
    d = json.load(f)
  assert d["_class_name"] == "UNet2DModel" and d["down_block_types"] == ["DownBlock2D"] * 3


def test_fp16_variant_and_pipeline_folder(runs, tmp_path):
  model, params, _, _, _ = runs["class"]
  unet = tmp_path / "pipe" / "unet"
  save_diffusers_unet2d(unet, model, params, dtype=np.float16)
  os.rename(unet / WEIGHTS, unet / "diffusion_pytorch_model.fp16.safetensors")
  (tmp_path / "pipe" / "model_index.json").write_text('{"_class_name": "DDPMPipeline"}')
  with pytest.raises(FileNotFoundError, match=WEIGHTS):
    load_diffusers_unet2d(tmp_path / "pipe")
  _, p16 = load_diffusers_unet2d(tmp_path / "pipe", variant="fp16")
  for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(p16)):
    assert b.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(b), np.asarray(a).astype(np.float16).astype(np.float32))


def test_legacy_attention_names_and_1x1_linear():
  sd = load_file(os.path.join(_folder("class"), WEIGHTS))
  config = UNetConfig.from_diffusers_dict(json.load(open(os.path.join(_folder("class"), "config.json"))))
  want = state_dict_to_params(sd, config)
  legacy = {}
  for k, v in sd.items():
    k2 = (k.replace(".to_q.", ".query.").replace(".to_k.", ".key.").replace(".to_v.", ".value.")
          .replace(".to_out.0.", ".proj_attn."))
    if k2.endswith("proj_attn.weight"):
      v = v[:, :, None, None]  # some early checkpoints stored these as 1x1 convs
    legacy[k2] = v
  assert any(".query." in k for k in legacy)
  got = state_dict_to_params(legacy, config)
  for a, b in zip(jax.tree_util.tree_leaves(want), jax.tree_util.tree_leaves(got)):
    np.testing.assert_array_equal(a, b)


def test_state_dict_round_trip_and_mismatch_errors():
  sd = load_file(os.path.join(_folder("noattn"), WEIGHTS))
  config = UNetConfig.from_diffusers_dict(json.load(open(os.path.join(_folder("noattn"), "config.json"))))
  back = params_to_state_dict(state_dict_to_params(sd, config))
  assert set(back) == set(sd) and all(np.array_equal(back[k], sd[k]) for k in sd)
  broken = dict(sd)
  del broken["mid_block.resnets.1.conv2.bias"]
  broken["mid_block.attentions.0.to_q.weight"] = np.zeros((16, 16), np.float32)
  with pytest.raises(ValueError, match=r"missing key.*mid_block\.resnets\.1\.conv2\.bias.*"
                                       r"unexpected key.*mid_block\.attentions\.0\.to_q\.weight"):
    state_dict_to_params(broken, config)
  wrong_out = UNetConfig(**{**config.__dict__, "out_channels": 3})
  with pytest.raises(ValueError, match=r"2 shape mismatch.*conv_out\.bias.*conv_out\.weight: stored \(2, 8, 3, 3\) -> \(3, 3, 8, 2\), model expects \(3, 3, 8, 3\)"):
    state_dict_to_params(sd, wrong_out)


@pytest.mark.parametrize("option, value, error", [
    ("time_embedding_type", "fourier", UnsupportedOptionError),
    ("resnet_time_scale_shift", "scale_shift", UnsupportedOptionError),
    ("class_embed_type", "identity", UnsupportedOptionError),
    ("some_new_option", 3, ValueError),
])
def test_unsupported_config_option_is_named(tmp_path, option, value, error):
  folder = _copy("noattn", tmp_path)
  d = json.loads((folder / "config.json").read_text())
  d[option] = value
  (folder / "config.json").write_text(json.dumps(d))
  with pytest.raises(error, match=option):
    load_diffusers_unet2d(folder)


def test_missing_files_are_explained(tmp_path):
  with pytest.raises(FileNotFoundError, match="config.json"):
    load_diffusers_unet2d(tmp_path / "nowhere")
  folder = _copy("noattn", tmp_path)
  os.remove(folder / WEIGHTS)
  with pytest.raises(FileNotFoundError, match=f"must contain config.json and {WEIGHTS}"):
    load_diffusers_unet2d(folder)
  (folder / "diffusion_pytorch_model.bin").write_bytes(b"\x80")
  with pytest.raises(FileNotFoundError, match="pickle"):
    load_diffusers_unet2d(folder)
  os.remove(folder / "config.json")
  with pytest.raises(FileNotFoundError, match="no config.json"):
    load_diffusers_unet2d(folder)


def test_corrupt_files_are_explained(tmp_path):
  folder = _copy("noattn", tmp_path)
  data = (folder / WEIGHTS).read_bytes()
  (folder / WEIGHTS).write_bytes(data[: len(data) // 2])
  with pytest.raises(ValueError, match="corrupt or truncated"):
    load_diffusers_unet2d(folder)
  (folder / WEIGHTS).write_bytes(b"not a safetensors file at all")
  with pytest.raises(ValueError, match="corrupt or truncated"):
    load_diffusers_unet2d(folder)
  (folder / "config.json").write_text("{ nope")
  with pytest.raises(ValueError, match="JSON"):
    load_diffusers_unet2d(folder)


def test_save_rejects_params_of_another_config(runs, tmp_path):
  _, params, _, _, _ = runs["noattn"]
  model, _, _, _, _ = runs["class"]
  with pytest.raises(ValueError, match="missing.*class_embedding.weight"):
    save_diffusers_unet2d(tmp_path / "x", model, params)


_LIVE_SCRIPT = textwrap.dedent("""
    import sys, numpy as np, torch
    from diffusers import UNet2DModel
    folder, inp, outp = sys.argv[1:4]
    m = UNet2DModel.from_pretrained(folder).float().eval()
    d = np.load(inp)
    y = torch.from_numpy(d["y"]).long() if "y" in d else None
    with torch.no_grad():
      out = m(torch.from_numpy(d["x"]).permute(0, 3, 1, 2), torch.from_numpy(d["t"]).long(),
              class_labels=y).sample
    np.save(outp, out.permute(0, 2, 3, 1).numpy())
""")


def _reference_python():
  try:
    import diffusers  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    import torch  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    return sys.executable
  except ImportError:
    return os.environ.get("JAXGEN_REFERENCE_PYTHON")


def test_live_diffusers_loads_what_we_save(runs, tmp_path):
  """Optional: diffusers itself loads a jaxgen-saved model and agrees on the output.

  Runs when diffusers + torch import here, or JAXGEN_REFERENCE_PYTHON names an interpreter
  that has them (e.g. a reference venv); skipped otherwise (CI has no torch).
  """
  python = _reference_python()
  if not python:
    pytest.skip("needs diffusers + torch here or JAXGEN_REFERENCE_PYTHON")
  model, params, ref, pred, _ = runs["class"]
  # Change the weights so that diffusers cannot be reading the original fixture.
  params = jax.tree_util.tree_map(lambda p: p * 1.01, params)
  pred = jax.jit(lambda p: model.apply({"params": p}, ref["x"], ref["t"], ref["y"]))(params)
  save_diffusers_unet2d(tmp_path / "saved", model, params)
  np.savez(tmp_path / "in.npz", x=ref["x"], t=ref["t"], y=ref["y"])
  (tmp_path / "live.py").write_text(_LIVE_SCRIPT)
  subprocess.run([python, str(tmp_path / "live.py"), str(tmp_path / "saved"), str(tmp_path / "in.npz"),
                  str(tmp_path / "out.npy")], check=True, timeout=300)
  assert _rel(pred, np.load(tmp_path / "out.npy")) < TOL
