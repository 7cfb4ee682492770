"""AutoencoderKL (diffusers layout): parity with torch fixtures, SD 1.5 / 2.1 layouts and
parameter counts, import/export round trips, clear errors.

Fixtures come from tests/reference/generate_autoencoder_kl_fixtures.py (diffusers 0.42.1,
float32 forward; the "deep" weights are stored in float16).
"""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from safetensors.numpy import load_file, save_file

from jaxgen.interop.diffusers_autoencoder_kl import (autoencoder_kl_params_to_state_dict,
                                                     autoencoder_kl_state_dict_to_params,
                                                     load_diffusers_autoencoder_kl,
                                                     save_diffusers_autoencoder_kl)
from jaxgen.interop.diffusers_unet2d import flax_path_to_diffusers_key
from jaxgen.nn.autoencoder_kl import (AutoencoderKL, AutoencoderKLConfig,
                                      autoencoder_kl_param_shapes, init_autoencoder_kl,
                                      posterior_sample, scale_latents, unscale_latents)
from jaxgen.nn.unet import UnsupportedOptionError, count_params

REF = os.path.join(os.path.dirname(__file__), "reference")
CONFIGS = os.path.join(os.path.dirname(__file__), os.pardir, "jaxgen", "pipelines", "configs")
SD = {"sd15": "stable-diffusion-v1-5", "sd21": "stable-diffusion-2-1"}
NAMES = ("tiny", "deep")
WEIGHTS = "diffusion_pytorch_model.safetensors"
TOL = 1e-4  # max|a - b| / max|b|, the parity target


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.abs(a - b).max() / np.abs(b).max()


def _folder(name):
  return os.path.join(REF, f"vae_kl_{name}")


@pytest.fixture(scope="module")
def runs():
  """Loads both fixture folders and runs encode / decode / forward once on the stored inputs."""
  out = {}
  for name in NAMES:
    model, params = load_diffusers_autoencoder_kl(_folder(name))
    ref = dict(np.load(os.path.join(REF, f"vae_kl_{name}.npz")))

    @jax.jit
    def run(p, x, z, model=model):
      v = {"params": p}
      mean, logvar = model.apply(v, x, method=AutoencoderKL.encode)
      dec = model.apply(v, z, method=AutoencoderKL.decode)
      recon, _, _ = model.apply(v, x)
      return mean, logvar, dec, recon

    out[name] = (model, params, ref, run(params, ref["x"], ref["z"]))
  return out


@pytest.mark.parametrize("name", NAMES)
def test_encode_decode_forward_match_diffusers(runs, name):
  _, _, ref, (mean, logvar, dec, recon) = runs[name]
  for got, want in ((mean, "mean"), (logvar, "logvar"), (dec, "dec"), (recon, "recon")):
    assert got.dtype == jnp.float32 and got.shape == ref[want].shape, want
    assert _rel(got, ref[want]) < TOL, (want, _rel(got, ref[want]))
  # The posterior sample for diffusers' own noise draw.
  sample = posterior_sample(mean, logvar, jnp.asarray(ref["noise"]))
  assert _rel(sample, ref["sample"]) < TOL


def test_fp16_checkpoint_loads_as_float32(runs):
  stored = load_file(os.path.join(_folder("deep"), WEIGHTS))
  assert {a.dtype for a in stored.values()} == {np.dtype(np.float16)}
  _, params, _, _ = runs["deep"]
  assert {p.dtype for p in jax.tree_util.tree_leaves(params)} == {jnp.dtype(jnp.float32)}
  np.testing.assert_array_equal(
      np.asarray(params["decoder"]["up_blocks_1"]["resnets_2"]["conv1"]["kernel"]),
      stored["decoder.up_blocks.1.resnets.2.conv1.weight"].astype(np.float32)
      .transpose(2, 3, 1, 0))


@pytest.mark.parametrize("name", NAMES)
def test_loaded_config_matches_json(runs, name):
  model, _, _, _ = runs[name]
  with open(os.path.join(_folder(name), "config.json")) as f:
    d = json.load(f)
  assert model.config == AutoencoderKLConfig.from_diffusers_dict(d)
  assert model.config.to_diffusers_dict() == {k: v for k, v in d.items() if not k.startswith("_")}


@pytest.mark.parametrize("key", sorted(SD))
def test_sd_layout_and_param_count_match_diffusers(key):
  with open(os.path.join(REF, "sd_vae_param_counts.json")) as f:
    ref = json.load(f)[key]
  with open(os.path.join(CONFIGS, SD[key], "vae", "config.json")) as f:
    config = AutoencoderKLConfig.from_diffusers_dict(json.load(f))
  shapes = autoencoder_kl_param_shapes(AutoencoderKL(config))
  assert count_params(shapes) == ref["num_params"] == 83_653_863
  flat = traverse_util.flatten_dict(shapes)
  got = {flax_path_to_diffusers_key(p): int(np.prod(s.shape)) for p, s in flat.items()}
  assert got == {k: int(np.prod(v)) for k, v in ref["shapes"].items()}
  assert config.latent_shape == (config.sample_size // 8, config.sample_size // 8, 4)


def test_round_trip_is_exact(runs, tmp_path):
  model, params, _, _ = runs["deep"]
  save_diffusers_autoencoder_kl(tmp_path / "vae", model, params)
  model2, params2 = load_diffusers_autoencoder_kl(tmp_path / "vae")
  assert model2.config == model.config
  jax.tree_util.tree_map(np.testing.assert_array_equal, params2, params)
  # The exported state dict equals the one diffusers wrote (float16 values, float32 storage).
  stored = load_file(os.path.join(_folder("deep"), WEIGHTS))
  exported = autoencoder_kl_params_to_state_dict(params)
  assert set(exported) == set(stored)
  for k, v in stored.items():
    assert exported[k].shape == v.shape, k
    np.testing.assert_array_equal(exported[k], v.astype(np.float32))
  # A pipeline folder resolves to its vae/ subfolder.
  model3, _ = load_diffusers_autoencoder_kl(tmp_path)
  assert model3.config == model.config


def test_legacy_attention_names_are_accepted(runs):
  model, params, _, _ = runs["tiny"]
  state = autoencoder_kl_params_to_state_dict(params)
  legacy = {}
  for k, v in state.items():
    for new, old in (("to_q", "query"), ("to_k", "key"), ("to_v", "value"),
                     ("to_out.0", "proj_attn")):
      if ".attentions.0." in k and f".{new}." in k:
        k = k.replace(f".{new}.", f".{old}.")
        if v.ndim == 2:
          v = v[:, :, None, None]  # the oldest checkpoints stored them as 1x1 convs
    legacy[k] = v
  assert any(".query." in k for k in legacy)
  converted = autoencoder_kl_state_dict_to_params(legacy, model.config)
  jax.tree_util.tree_map(np.testing.assert_array_equal, converted,
                         jax.tree_util.tree_map(np.asarray, params))


def test_mismatch_errors_name_the_keys(runs):
  model, params, _, _ = runs["tiny"]
  state = autoencoder_kl_params_to_state_dict(params)
  missing = dict(state)
  del missing["encoder.conv_in.weight"]
  with pytest.raises(ValueError, match=r"1 missing key\(s\) \['encoder.conv_in.weight'\]"):
    autoencoder_kl_state_dict_to_params(missing, model.config)
  extra = dict(state, **{"encoder.extra.weight": np.zeros(3, np.float32)})
  with pytest.raises(ValueError, match="unexpected key.*encoder.extra.weight"):
    autoencoder_kl_state_dict_to_params(extra, model.config)
  wide = dict(state)
  wide["quant_conv.bias"] = np.zeros(9, np.float32)
  with pytest.raises(ValueError, match="quant_conv.bias"):
    autoencoder_kl_state_dict_to_params(wide, model.config)
  other = AutoencoderKLConfig(**{**model.config.to_dict(), "block_out_channels": (8, 32)})
  with pytest.raises(ValueError, match="shape mismatch"):
    autoencoder_kl_state_dict_to_params(state, other)
  with pytest.raises(ValueError, match="do not match the config"):
    save_diffusers_autoencoder_kl("/nonexistent-never-written", other, params)


@pytest.mark.parametrize("option,value,error", [
    ("down_block_types", ["AttnDownEncoderBlock2D", "DownEncoderBlock2D"], UnsupportedOptionError),
    ("act_fn", "mish", UnsupportedOptionError),
    ("act_fn", "sigmoidd", ValueError),
    ("norm_num_groups", 3, ValueError),
    ("blok_out_channels", [8, 16], ValueError),
])
def test_bad_config_option_is_named(tmp_path, option, value, error):
  with open(os.path.join(_folder("tiny"), "config.json")) as f:
    d = json.load(f)
  d[option] = value
  (tmp_path / "config.json").write_text(json.dumps(d))
  save_file(load_file(os.path.join(_folder("tiny"), WEIGHTS)), str(tmp_path / WEIGHTS))
  with pytest.raises(error, match=option):
    load_diffusers_autoencoder_kl(tmp_path)


def test_missing_and_pickle_files_are_explained(tmp_path):
  with pytest.raises(FileNotFoundError, match="is not a directory"):
    load_diffusers_autoencoder_kl(tmp_path / "absent")
  with pytest.raises(FileNotFoundError, match="no config.json"):
    load_diffusers_autoencoder_kl(tmp_path)
  with open(os.path.join(_folder("tiny"), "config.json")) as f:
    (tmp_path / "config.json").write_text(f.read())
  (tmp_path / "diffusion_pytorch_model.bin").write_bytes(b"\x80\x02not a pickle to open")
  with pytest.raises(FileNotFoundError, match=r"safetensors.*pickle \.bin.*never loads"):
    load_diffusers_autoencoder_kl(tmp_path)
  (tmp_path / "config.json").write_text("{not json")
  with pytest.raises(ValueError, match="could not parse"):
    load_diffusers_autoencoder_kl(tmp_path)


def test_input_errors_are_explained(runs):
  model, params, ref, _ = runs["tiny"]
  v = {"params": params}
  nchw = np.transpose(ref["x"], (0, 3, 1, 2))
  with pytest.raises(ValueError, match="looks NCHW"):
    model.apply(v, nchw, method=AutoencoderKL.encode)
  with pytest.raises(ValueError, match="multiples of 2\\*\\*\\(levels-1\\) = 2"):
    model.apply(v, ref["x"][:, :15, :15], method=AutoencoderKL.encode)
  with pytest.raises(TypeError, match="floating point"):
    model.apply(v, ref["x"].astype(np.int32), method=AutoencoderKL.encode)
  with pytest.raises(ValueError, match=r"latents must be \[B, H, W, 4\]"):
    model.apply(v, ref["z"][..., :3], method=AutoencoderKL.decode)
  with pytest.raises(ValueError, match="needs a PRNG key"):
    model.apply(v, ref["x"], sample_posterior=True)
  with pytest.raises(ValueError, match="one shape"):
    posterior_sample(ref["mean"], ref["logvar"], ref["noise"][:1])


def test_posterior_sampling_and_latent_scaling(runs):
  model, params, ref, (mean, logvar, _, _) = runs["deep"]
  cfg = model.config
  z = jnp.asarray(ref["z"])
  np.testing.assert_allclose(unscale_latents(cfg, scale_latents(cfg, z)), z, rtol=1e-6,
                             atol=1e-6)
  np.testing.assert_allclose(scale_latents(cfg, z), (z - 0.1) * 0.5, rtol=1e-6)
  # A forward with a sampled posterior decodes mean + std * noise for the key's noise.
  key = jax.random.key(3)

  @jax.jit
  def both(p, x, mean, logvar):
    out = model.apply({"params": p}, x, key, sample_posterior=True)
    noise = jax.random.normal(key, mean.shape, jnp.float32)
    want = model.apply({"params": p}, posterior_sample(mean, logvar, noise),
                       method=AutoencoderKL.decode)
    return out, want

  (recon, m2, lv2), want = both(params, ref["x"], mean, logvar)
  np.testing.assert_allclose(m2, mean, atol=1e-6)
  np.testing.assert_allclose(lv2, logvar, atol=1e-6)
  np.testing.assert_allclose(recon, want, atol=1e-5)
  assert float(jnp.abs(recon - runs["deep"][3][3]).max()) > 1e-4  # the sample is not the mean


def test_init_matches_shapes():
  cfg = AutoencoderKLConfig(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                            up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=4,
                            sample_size=8)
  model = AutoencoderKL(cfg)
  params = init_autoencoder_kl(model, jax.random.key(0))
  shapes = autoencoder_kl_param_shapes(model)
  assert jax.tree_util.tree_map(lambda a: (a.shape, a.dtype), params) == \
      jax.tree_util.tree_map(lambda s: (s.shape, s.dtype), shapes)


def test_autoencoder_family_trains_the_kl_architecture_and_exports_it(tmp_path):
  """architecture="kl" of the autoencoder family: a VAE run, its parameters saved as a
  diffusers folder, and that folder reloaded reconstructs as the family's own code does."""
  from experiments import workdir as W
  from experiments.config import ConfigError, apply_overrides, load_config
  from experiments.families import autoencoder as A
  from experiments.families.autoencoder.inference import reconstruct
  from experiments.families.autoencoder.runner import load_trained
  from jaxgen import data as jdata
  from jaxgen.interop import load_diffusers_autoencoder_kl, save_diffusers_autoencoder_kl
  from jaxgen.nn import Autoencoder
  config = load_config("experiments/configs/vae_kl_shapes.py:smoke")
  config.train.num_steps, config.sample.num = 2, 0
  out = A.train(config, str(tmp_path / "w"))
  assert out["step"] == 2 and np.isfinite(out["loss"])
  lines = [json.loads(l) for l in open(tmp_path / "w" / "metrics.jsonl")]
  assert lines[-1]["l2_grads"] > 0 and np.isfinite(lines[-1]["l2_grads"])
  t = load_trained(str(tmp_path / "w"))
  assert list(t.state.params) == ["kl"]
  kl_config = t.model.config.kl_config
  assert kl_config.latent_shape == t.model.config.latent_shape == (16, 16, 4)
  save_diffusers_autoencoder_kl(tmp_path / "vae", kl_config, t.state.ema_params["kl"])
  vae, params = load_diffusers_autoencoder_kl(tmp_path / "vae")
  x = jdata.load_all(W.build_source(config, "test"))["image"][:4]
  mine = reconstruct(config, t.model, t.state, x)
  theirs, _, _ = vae.apply({"params": params}, jnp.asarray(x))
  np.testing.assert_allclose(mine, np.clip(np.asarray(theirs), -1, 1), atol=1e-5)  # in range
  with pytest.raises(ValueError, match="no separate last layer"):
    t.model.apply({"params": t.state.params}, jnp.zeros((1, 16, 16, 128)),
                  method=Autoencoder.decode_head)
  for item, match in (("autoencoder.kind='vqvae'", "architecture='kl'"),
                      ("autoencoder.conditional=True", "conditional")):
    with pytest.raises(ConfigError, match=match):
      apply_overrides(load_config("experiments/configs/vae_kl_shapes.py:smoke"), [item])
