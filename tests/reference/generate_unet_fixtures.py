"""Writes the UNet2DModel reference fixtures used by tests/test_interop.py.

Run from the repository root with the reference venv (torch + diffusers):

  /work/refvenv/bin/python tests/reference/generate_unet_fixtures.py

For each small, randomly initialised diffusers `UNet2DModel` below this writes
  tests/reference/unet_<name>/{config.json, diffusion_pytorch_model.safetensors}
    (`save_pretrained`; the "attn" model is stored in float16 to exercise the fp16 import,
     its float32 reference weights being the fp16-rounded values), and
  tests/reference/unet_<name>.npz with the inputs (x NHWC, t, optional y), the output
    (NHWC) and intermediate activations captured with forward hooks (time embedding,
    conv_in, each down block, mid block, each up block; 4-D ones transposed to NHWC).
and tests/reference/unet_ddpm_cifar10_keys.json: state-dict key -> shape of the DDPM
CIFAR-10 UNet2DModel (google/ddpm-cifar10-32's architecture), built without weights.
Everything runs in float32 on CPU with fixed seeds.
"""
import json
import os
import sys

import diffusers
import numpy as np
import torch
from diffusers import UNet2DModel

HERE = os.path.dirname(os.path.abspath(__file__))

CONFIGS = {
    # Attention in the encoder/decoder and the middle, multi-head, diffusers defaults otherwise.
    "attn": dict(
        config=dict(sample_size=16, in_channels=3, out_channels=3, block_out_channels=(16, 32),
                    layers_per_block=1, norm_num_groups=4, attn_norm_num_groups=2,
                    down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                    up_block_types=("AttnUpBlock2D", "UpBlock2D"), attention_head_dim=8),
        batch=3, size=16, t=[0, 500, 999], fp16=True),
    # No attention anywhere, 3 levels, 2 layers per block, DDPM time embedding conventions,
    # asymmetric downsample padding, centered input, custom time embedding width.
    "noattn": dict(
        config=dict(sample_size=8, in_channels=1, out_channels=2, block_out_channels=(8, 16, 16),
                    layers_per_block=2, norm_num_groups=4, down_block_types=("DownBlock2D",) * 3,
                    up_block_types=("UpBlock2D",) * 3, add_attention=False, mid_block_scale_factor=1.5,
                    downsample_padding=0, flip_sin_to_cos=False, freq_shift=1, norm_eps=1e-6,
                    center_input_sample=True, time_embedding_dim=24, attention_head_dim=None),
        batch=2, size=8, t=[999, 0], fp16=False),
    # Class-conditional, one-head attention at the finest level, DDPM conventions.
    "class": dict(
        config=dict(sample_size=16, in_channels=3, out_channels=3, block_out_channels=(8, 16),
                    layers_per_block=1, norm_num_groups=4, num_class_embeds=11,
                    down_block_types=("AttnDownBlock2D", "DownBlock2D"),
                    up_block_types=("UpBlock2D", "AttnUpBlock2D"), attention_head_dim=None,
                    mid_block_scale_factor=1.414, downsample_padding=0, freq_shift=1,
                    flip_sin_to_cos=False, norm_eps=1e-6, dropout=0.1),
        batch=3, size=16, t=[0, 37, 999], y=[0, 10, 3], fp16=False),
}


def perturb_(model: torch.nn.Module, gen: torch.Generator) -> None:
  """Makes GroupNorm affines and biases non-trivial so a mis-mapped parameter shows."""
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=gen)
      if ("norm" in name) and name.endswith("weight"):
        p.copy_(1.0 + 0.2 * noise)
      elif name.endswith("bias"):
        p.copy_(0.2 * noise)
      else:
        p.add_(0.02 * noise)


def nhwc(a: torch.Tensor) -> np.ndarray:
  a = a.detach().float().numpy()
  return np.ascontiguousarray(a.transpose(0, 2, 3, 1)) if a.ndim == 4 else a


def generate(name: str, spec: dict) -> None:
  torch.manual_seed(0)
  gen = torch.Generator().manual_seed(1234)
  model = UNet2DModel(**spec["config"]).float().eval()
  perturb_(model, gen)
  if spec["fp16"]:
    with torch.no_grad():
      for p in model.parameters():
        p.copy_(p.half().float())

  captured = {}

  def hook(key):
    def fn(_module, _inputs, output):
      captured[key] = nhwc(output[0] if isinstance(output, tuple) else output)
    return fn

  model.time_embedding.register_forward_hook(hook("time_embedding"))
  model.conv_in.register_forward_hook(hook("conv_in"))
  if model.class_embedding is not None:
    model.class_embedding.register_forward_hook(hook("class_embedding"))
  for i, block in enumerate(model.down_blocks):
    block.register_forward_hook(hook(f"down_blocks_{i}"))
  model.mid_block.register_forward_hook(hook("mid_block"))
  for i, block in enumerate(model.up_blocks):
    block.register_forward_hook(hook(f"up_blocks_{i}"))

  cfg = spec["config"]
  b, s = spec["batch"], spec["size"]
  x = torch.randn((b, cfg["in_channels"], s, s), generator=gen)
  t = torch.tensor(spec["t"], dtype=torch.long)
  y = torch.tensor(spec["y"], dtype=torch.long) if "y" in spec else None
  with torch.no_grad():
    out = model(x, t, class_labels=y).sample

  arrays = {"x": nhwc(x), "t": t.numpy().astype(np.int32), "out": nhwc(out)}
  if y is not None:
    arrays["y"] = y.numpy().astype(np.int32)
  arrays.update({f"inter_{k}": v.astype(np.float32) for k, v in captured.items()})
  np.savez_compressed(os.path.join(HERE, f"unet_{name}.npz"), **arrays)

  folder = os.path.join(HERE, f"unet_{name}")
  to_save = model.half() if spec["fp16"] else model
  to_save.save_pretrained(folder, safe_serialization=True)
  with open(os.path.join(folder, "config.json")) as f:
    saved = json.load(f)
  n = sum(p.numel() for p in model.parameters())
  print(f"{name}: {n} params, out std {out.std():.4f}, config keys {len(saved)}, "
        f"diffusers {diffusers.__version__}, torch {torch.__version__}", file=sys.stderr)


CIFAR10 = dict(sample_size=32, block_out_channels=(128, 256, 256, 256), layers_per_block=2,
               down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
               up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
               norm_eps=1e-6, freq_shift=1, flip_sin_to_cos=False, downsample_padding=0,
               dropout=0.1, attention_head_dim=None)


def cifar10_keys() -> None:
  model = UNet2DModel(**CIFAR10)
  shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
  with open(os.path.join(HERE, "unet_ddpm_cifar10_keys.json"), "w") as f:
    json.dump({"num_params": sum(p.numel() for p in model.parameters()), "shapes": shapes}, f,
              indent=0, sort_keys=True)


if __name__ == "__main__":
  torch.use_deterministic_algorithms(True)
  torch.set_num_threads(1)
  for fixture_name, fixture_spec in CONFIGS.items():
    generate(fixture_name, fixture_spec)
  cifar10_keys()
