"""Writes the AutoencoderKL reference fixtures used by tests/test_autoencoder_kl.py.

Run from the repository root with the reference venv (torch + diffusers):

  /tmp/refvenv/bin/python tests/reference/generate_autoencoder_kl_fixtures.py

For each small, randomly initialised diffusers `AutoencoderKL` below this writes
  tests/reference/vae_kl_<name>/{config.json, diffusion_pytorch_model.safetensors}
    (`save_pretrained`; GroupNorm affines and biases perturbed so that a mis-mapped parameter
    shows; the "deep" model is stored in float16 to keep the folder small, its float32
    reference weights being the fp16-rounded values), and
  tests/reference/vae_kl_<name>.npz with, all NHWC: the input images `x`, the posterior
    `mean` / `logvar` of `encode(x)` (diffusers' clamped DiagonalGaussianDistribution), the
    standard normal `noise` and the posterior sample `sample = mean + std * noise`, the
    latents `z` given to `decode` and its output `dec`, and the reconstruction `recon` of
    `forward(x)` (posterior mean),
and tests/reference/sd_vae_param_counts.json: the parameter count and state-dict key ->
shape of the Stable Diffusion 1.5 and 2.1 VAEs, built on the meta device (no weights) from
jaxgen/pipelines/configs/*/vae/config.json. Everything runs in float32 on CPU, fixed seeds.
"""
import json
import os
import sys

import diffusers
import numpy as np
import torch
from diffusers import AutoencoderKL

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
SD_CONFIGS = {"sd15": "stable-diffusion-v1-5", "sd21": "stable-diffusion-2-1"}

CONFIGS = {
    # Two levels, everything else at diffusers' defaults (quant convs, mid attention).
    "tiny": dict(
        config=dict(in_channels=3, out_channels=3, block_out_channels=(8, 16),
                    down_block_types=("DownEncoderBlock2D",) * 2,
                    up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1,
                    latent_channels=4, norm_num_groups=4, sample_size=16),
        batch=2, size=16, fp16=False),
    # Three levels, two layers per block (three per decoder level), no quant convs, other
    # channel counts in and out, a non-square input and non-default scaling / shift.
    "deep": dict(
        config=dict(in_channels=1, out_channels=2, block_out_channels=(8, 16, 16),
                    down_block_types=("DownEncoderBlock2D",) * 3,
                    up_block_types=("UpDecoderBlock2D",) * 3, layers_per_block=2,
                    latent_channels=3, norm_num_groups=4, sample_size=16,
                    use_quant_conv=False, use_post_quant_conv=False, scaling_factor=0.5,
                    shift_factor=0.1, force_upcast=False),
        batch=2, size=(16, 12), fp16=True),
}


def perturb_(model: torch.nn.Module, gen: torch.Generator) -> None:
  """Makes GroupNorm affines and biases non-trivial so a mis-mapped parameter shows."""
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=gen)
      if "norm" in name and name.endswith("weight"):
        p.copy_(1.0 + 0.2 * noise)
      elif name.endswith("bias"):
        p.copy_(0.2 * noise)
      else:
        p.add_(0.02 * noise)


def nhwc(a: torch.Tensor) -> np.ndarray:
  return np.ascontiguousarray(a.detach().float().numpy().transpose(0, 2, 3, 1))


def generate(name: str, spec: dict) -> None:
  torch.manual_seed(0)
  gen = torch.Generator().manual_seed(4321)
  model = AutoencoderKL(**spec["config"]).float().eval()
  perturb_(model, gen)
  if spec["fp16"]:
    with torch.no_grad():
      for p in model.parameters():
        p.copy_(p.half().float())
  cfg = spec["config"]
  size = spec["size"]
  h, w = (size, size) if isinstance(size, int) else size
  f = 2 ** (len(cfg["block_out_channels"]) - 1)
  x = torch.rand((spec["batch"], cfg["in_channels"], h, w), generator=gen) * 2 - 1
  z = torch.randn((spec["batch"], cfg["latent_channels"], h // f, w // f), generator=gen)
  with torch.no_grad():
    posterior = model.encode(x).latent_dist
    noise = torch.randn(posterior.mean.shape, generator=gen)
    sample = posterior.mean + posterior.std * noise
    dec = model.decode(z).sample
    recon = model(x).sample
  arrays = {"x": nhwc(x), "mean": nhwc(posterior.mean), "logvar": nhwc(posterior.logvar),
            "noise": nhwc(noise), "sample": nhwc(sample), "z": nhwc(z), "dec": nhwc(dec),
            "recon": nhwc(recon)}
  np.savez_compressed(os.path.join(HERE, f"vae_kl_{name}.npz"), **arrays)
  folder = os.path.join(HERE, f"vae_kl_{name}")
  (model.half() if spec["fp16"] else model).save_pretrained(folder, safe_serialization=True)
  n = sum(p.numel() for p in model.parameters())
  size_kb = sum(os.path.getsize(os.path.join(folder, e)) for e in os.listdir(folder)) / 1024
  print(f"{name}: {n} params, folder {size_kb:.0f} KB, mean std {posterior.mean.std():.4f}, "
        f"logvar range [{posterior.logvar.min():.3f}, {posterior.logvar.max():.3f}], dec std "
        f"{dec.std():.4f}; diffusers {diffusers.__version__}, torch {torch.__version__}",
        file=sys.stderr)


def sd_param_counts() -> None:
  out = {}
  for key, model_name in SD_CONFIGS.items():
    with open(os.path.join(ROOT, "jaxgen", "pipelines", "configs", model_name, "vae",
                           "config.json")) as f:
      config = {k: v for k, v in json.load(f).items() if not k.startswith("_")}
    with torch.device("meta"):
      model = AutoencoderKL(**config)
    out[key] = {"config": model_name, "num_params": sum(p.numel() for p in model.parameters()),
                "shapes": {k: list(v.shape) for k, v in model.state_dict().items()}}
    print(f"{model_name} vae: {out[key]['num_params']} params", file=sys.stderr)
  with open(os.path.join(HERE, "sd_vae_param_counts.json"), "w") as f:
    json.dump(out, f, indent=0, sort_keys=True)
    f.write("\n")


if __name__ == "__main__":
  torch.use_deterministic_algorithms(True)
  torch.set_num_threads(1)
  for fixture_name, fixture_spec in CONFIGS.items():
    generate(fixture_name, fixture_spec)
  sd_param_counts()
