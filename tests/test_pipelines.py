"""Stable Diffusion pipelines against diffusers 0.42.1 on a tiny random pipeline folder
(tests/reference/sd_tiny, written by tests/reference/generate_pipeline_fixtures.py)."""
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen.diffusion.schedulers import load_scheduler_config
from jaxgen.pipelines import img2img, load_stable_diffusion, txt2img

HERE = os.path.dirname(os.path.abspath(__file__))
FOLDER = os.path.join(HERE, "reference", "sd_tiny")
TOL = 2e-3  # absolute, images in [0, 1]


@pytest.fixture(scope="module")
def ref():
  return np.load(os.path.join(HERE, "reference", "sd_tiny.npz"))


@pytest.fixture(scope="module")
def pipe():
  return load_stable_diffusion(FOLDER)


def _prompts(ref, key="prompts"):
  return [str(p) for p in ref[key]]


@pytest.mark.parametrize("name,scheduler,steps,guidance,negative", [
    ("pndm", None, 10, 7.5, False),
    ("ddim", "DDIMScheduler", 10, 7.5, False),
    ("ddim_neg", "DDIMScheduler", 10, 7.5, True),
    ("ddim_v", "scheduler_ddim_v.json", 8, 3.0, False),
    ("dpmpp", "DPMSolverMultistepScheduler", 12, 5.0, False),
    ("dpmpp_neg", "DPMSolverMultistepScheduler", 20, 7.5, True),
])
def test_txt2img_matches_diffusers(pipe, ref, name, scheduler, steps, guidance, negative):
  if scheduler and scheduler.endswith(".json"):
    scheduler = load_scheduler_config(os.path.join(FOLDER, scheduler))
  out = txt2img(pipe.with_scheduler(scheduler), _prompts(ref), jax.random.key(0),
                num_inference_steps=steps, guidance_scale=guidance,
                negative_prompts=_prompts(ref, "negative_prompts") if negative else None,
                latents=ref["latents"])
  assert out.shape == ref[f"{name}_images"].shape and out.dtype == jnp.float32
  err = float(jnp.max(jnp.abs(out - ref[f"{name}_images"])))
  assert err < TOL, (name, err)


@pytest.mark.parametrize("name,scheduler,strength", [
    ("img2img", "DDIMScheduler", 0.6), ("img2img_dpmpp", "DPMSolverMultistepScheduler", 0.75)])
def test_img2img_matches_diffusers(pipe, ref, name, scheduler, strength):
  out = img2img(pipe.with_scheduler(scheduler), ref["img2img_init"], _prompts(ref),
                jax.random.key(1), strength=strength, num_inference_steps=10, guidance_scale=7.5,
                noise=ref[f"{name}_noise"], encoder_noise=ref[f"{name}_encoder_noise"])
  assert float(jnp.max(jnp.abs(out - ref[f"{name}_images"]))) < TOL


def test_negative_prompts_change_the_images(pipe, ref):
  assert float(np.max(np.abs(ref["ddim_images"] - ref["ddim_neg_images"]))) > 10 * TOL


def test_bad_input_is_refused(pipe, ref, tmp_path):
  prompts = _prompts(ref)
  with pytest.raises(TypeError, match="guidance_scale must be a number"):
    txt2img(pipe, prompts, jax.random.key(0), guidance_scale="7.5")
  with pytest.raises(ValueError, match="latents must have shape"):
    txt2img(pipe, prompts, jax.random.key(0), latents=np.zeros((2, 4, 4, 4), np.float32))
  with pytest.raises(ValueError, match="non-empty list"):
    txt2img(pipe, [], jax.random.key(0))
  with pytest.raises(ValueError, match="unsupported scheduler"):
    pipe.with_scheduler("EulerDiscreteScheduler")
  with pytest.raises(ValueError, match="strength"):
    img2img(pipe, ref["img2img_init"], prompts, jax.random.key(0), strength=1.5)
  # A component stored only as a pickle is refused, naming it and safetensors.
  bad = tmp_path / "sd"
  shutil.copytree(FOLDER, bad)
  os.remove(bad / "unet" / "diffusion_pytorch_model.safetensors")
  (bad / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"not read")
  with pytest.raises(FileNotFoundError, match=r"unet.*safetensors.*never unpickles"):
    load_stable_diffusion(bad)
  shutil.rmtree(bad / "vae")
  with pytest.raises(FileNotFoundError, match="no vae/ folder"):
    load_stable_diffusion(bad)
  shutil.copytree(os.path.join(FOLDER, "vae"), bad / "vae")
  index = json.loads((bad / "model_index.json").read_text())
  index["scheduler"] = ["diffusers", "EulerDiscreteScheduler"]
  (bad / "model_index.json").write_text(json.dumps(index))
  with pytest.raises(ValueError, match="supported"):
    load_stable_diffusion(bad)


def test_long_prompts_are_truncated_with_a_warning(pipe):
  long = " ".join(["a large yellow triangle in the bottom right"] * 12)
  with pytest.warns(UserWarning, match="truncated"):
    ids = __import__("jaxgen.pipelines", fromlist=["tokenize"]).tokenize(pipe, [long])
  assert ids.shape == (1, 77) and ids[0, -1] == pipe.tokenizer.eos_token_id


def test_sd15_vae_shapes_build_with_eval_shape():
  from jaxgen.nn.autoencoder_kl import (AutoencoderKL, AutoencoderKLConfig,
                                        autoencoder_kl_param_shapes)
  from jaxgen.nn.unet import count_params
  config = AutoencoderKLConfig(
      block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
      down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
  assert count_params(autoencoder_kl_param_shapes(AutoencoderKL(config))) == 83_653_863


@pytest.mark.parametrize("model", ["stable-diffusion-v1-5", "stable-diffusion-2-1"])
def test_committed_vae_configs_build(model):
  from jaxgen.interop.diffusers_unet2d import CONFIG_NAME
  from jaxgen.nn.autoencoder_kl import (AutoencoderKL, AutoencoderKLConfig,
                                        autoencoder_kl_param_shapes)
  from jaxgen.nn.unet import count_params
  folder = os.path.join(os.path.dirname(HERE), "jaxgen", "pipelines", "configs", model, "vae")
  with open(os.path.join(folder, CONFIG_NAME)) as f:
    config = AutoencoderKLConfig.from_diffusers_dict(json.load(f))
  assert count_params(autoencoder_kl_param_shapes(AutoencoderKL(config))) == 83_653_863
