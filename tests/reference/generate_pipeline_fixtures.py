"""Writes the Stable Diffusion pipeline fixtures used by tests/test_pipelines.py.

Run from the repository root with the reference venv (torch + diffusers + transformers):

  python3 -m venv /tmp/refvenv
  /tmp/refvenv/bin/pip install torch==2.13.0 diffusers==0.42.1 transformers safetensors numpy
  /tmp/refvenv/bin/python tests/reference/generate_pipeline_fixtures.py

It builds a tiny, randomly initialised `StableDiffusionPipeline` (the CLIP tokenizer of
tests/reference/clip/tok_sd1, a 2-layer CLIPTextModel, a 2-level UNet2DConditionModel with
cross-attention, a 2-level AutoencoderKL, SD 1.5's PNDM scheduler config), saves it with
`save_pretrained` (safetensors) to tests/reference/sd_tiny/, and records in
tests/reference/sd_tiny.npz, for several runs (schedulers, negative prompts, img2img):
the prompts, the initial latents (NHWC), the noise diffusers drew (img2img), and
diffusers' `output_type="np"` images (NHWC float32 in [0, 1]). Everything runs in float32 on
CPU with fixed seeds.
"""
import json
import os
import shutil
import sys

import diffusers
import numpy as np
import torch
import transformers
from diffusers import (AutoencoderKL, DDIMScheduler, DPMSolverMultistepScheduler, PNDMScheduler,
                       StableDiffusionImg2ImgPipeline, StableDiffusionPipeline,
                       UNet2DConditionModel)
from diffusers.models.autoencoders import vae as vae_module
from diffusers.pipelines.stable_diffusion import pipeline_stable_diffusion_img2img as img2img_module
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "sd_tiny")

SD15_SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                      num_train_timesteps=1000, set_alpha_to_one=False, skip_prk_steps=True,
                      steps_offset=1)
PROMPTS = ["a small red circle in the top left", "a large blue square in the centre"]
NEGATIVE = ["a red shape", "green"]


def perturb_(model: torch.nn.Module, gen: torch.Generator) -> None:
  """Non-trivial norm affines and biases, so that a mis-mapped parameter shows."""
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=gen)
      if "norm" in name and name.endswith("weight"):
        p.copy_(1.0 + 0.2 * noise)
      elif name.endswith("bias"):
        p.copy_(0.1 * noise)
      else:
        p.add_(0.02 * noise)


def build() -> StableDiffusionPipeline:
  torch.manual_seed(0)
  gen = torch.Generator().manual_seed(2024)
  tokenizer = CLIPTokenizer.from_pretrained(os.path.join(HERE, "clip", "tok_sd1"))
  text_encoder = CLIPTextModel(CLIPTextConfig(
      vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
      num_attention_heads=4, max_position_embeddings=77, hidden_act="quick_gelu",
      bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
      pad_token_id=tokenizer.pad_token_id, projection_dim=32)).eval()
  unet = UNet2DConditionModel(
      sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16),
      layers_per_block=1, norm_num_groups=4, cross_attention_dim=32, attention_head_dim=2,
      down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
      up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")).eval()
  vae = AutoencoderKL(
      in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
      latent_channels=4, norm_num_groups=4, sample_size=16,
      down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2).eval()
  for m in (text_encoder, unet, vae):
    perturb_(m, gen)
  return StableDiffusionPipeline(
      vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
      scheduler=PNDMScheduler(**SD15_SCHEDULER), safety_checker=None, feature_extractor=None,
      requires_safety_checker=False)


def nhwc(a: torch.Tensor) -> np.ndarray:
  return np.ascontiguousarray(a.detach().float().numpy().transpose(0, 2, 3, 1))


class NoiseRecorder:
  """Wraps diffusers' `randn_tensor` in the VAE and img2img modules, keeping each draw."""

  def __init__(self):
    self.draws = {}
    self.originals = {}

  def __enter__(self):
    for tag, module in (("encoder_noise", vae_module), ("noise", img2img_module)):
      original = module.randn_tensor
      self.originals[module] = original

      def wrapped(*args, _tag=tag, _original=original, **kwargs):
        out = _original(*args, **kwargs)
        self.draws[_tag] = nhwc(out)
        return out
      module.randn_tensor = wrapped
    return self

  def __exit__(self, *exc):
    for module, original in self.originals.items():
      module.randn_tensor = original


def main() -> None:
  pipe = build()
  if os.path.exists(OUT):
    shutil.rmtree(OUT)
  pipe.save_pretrained(OUT, safe_serialization=True)
  # Every run uses the saved folder, as a user of both libraries would.
  pipe = StableDiffusionPipeline.from_pretrained(OUT, safety_checker=None,
                                                 requires_safety_checker=False)
  gen = torch.Generator().manual_seed(7)
  latents = torch.randn((2, 4, 8, 8), generator=gen)
  data = {"prompts": np.array(PROMPTS), "negative_prompts": np.array(NEGATIVE),
          "latents": nhwc(latents)}
  config = pipe.scheduler.config
  schedulers = {
      "ddim": DDIMScheduler.from_config(config),
      "dpmpp": DPMSolverMultistepScheduler.from_config(config),
      "pndm": PNDMScheduler.from_config(config),
      "ddim_v": DDIMScheduler.from_config(config, prediction_type="v_prediction",
                                          timestep_spacing="trailing"),
  }
  runs = [  # name, scheduler, steps, guidance, negative prompts
      ("ddim", "ddim", 10, 7.5, False),
      ("ddim_neg", "ddim", 10, 7.5, True),
      ("dpmpp", "dpmpp", 12, 5.0, False),
      ("dpmpp_neg", "dpmpp", 20, 7.5, True),
      ("pndm", "pndm", 10, 7.5, False),
      ("ddim_v", "ddim_v", 8, 3.0, False),
  ]
  for name, sched, steps, guidance, negative in runs:
    pipe.scheduler = schedulers[sched]
    with torch.no_grad():
      images = pipe(PROMPTS, num_inference_steps=steps, guidance_scale=guidance,
                    negative_prompt=NEGATIVE if negative else None, latents=latents.clone(),
                    output_type="np").images
    data[f"{name}_images"] = np.asarray(images, np.float32)
    inside = float(np.mean((images > 0.01) & (images < 0.99)))
    print(f"{name}: {sched} {steps} steps, g={guidance}, images {images.shape}, mean "
          f"{images.mean():.4f}, unsaturated share {inside:.3f}", file=sys.stderr)
  with open(os.path.join(OUT, "scheduler_ddim_v.json"), "w") as f:
    json.dump(dict(schedulers["ddim_v"].config), f, indent=2, sort_keys=True)

  # img2img: SDEdit from the decoded ddim images, with the encoder's and the forward noise
  # recorded (they come from torch's generator).
  i2i = StableDiffusionImg2ImgPipeline(**pipe.components)
  i2i.scheduler = schedulers["ddim"]
  init = data["ddim_images"]
  data["img2img_init"] = init
  for name, strength, sched in (("img2img", 0.6, "ddim"), ("img2img_dpmpp", 0.75, "dpmpp")):
    i2i.scheduler = schedulers[sched]
    with NoiseRecorder() as rec, torch.no_grad():
      images = i2i(PROMPTS, image=init, strength=strength, num_inference_steps=10,
                   guidance_scale=7.5, generator=torch.Generator().manual_seed(11),
                   output_type="np").images
    data[f"{name}_images"] = np.asarray(images, np.float32)
    data[f"{name}_encoder_noise"] = rec.draws["encoder_noise"]
    data[f"{name}_noise"] = rec.draws["noise"]
    print(f"{name}: strength {strength}, images {images.shape}, mean {images.mean():.4f}",
          file=sys.stderr)
  np.savez_compressed(os.path.join(HERE, "sd_tiny.npz"), **data)
  print(f"diffusers {diffusers.__version__}, transformers {transformers.__version__}, torch "
        f"{torch.__version__}", file=sys.stderr)


if __name__ == "__main__":
  main()
