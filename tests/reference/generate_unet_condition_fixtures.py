"""Writes the UNet2DConditionModel reference fixtures used by tests/test_unet_condition.py.

Run from the repository root with the reference venv (torch + diffusers):

  /tmp/refvenv/bin/python tests/reference/generate_unet_condition_fixtures.py

For each small, randomly initialised diffusers `UNet2DConditionModel` below this writes
  tests/reference/unet_cond_<name>/{config.json, diffusion_pytorch_model.safetensors}
    (`save_pretrained`; the "sd2" model is stored in float16 to keep the folder small, its
    float32 reference weights being the fp16-rounded values), and
  tests/reference/unet_cond_<name>.npz with the inputs (latents NHWC, t,
    encoder_hidden_states), the output (NHWC) and intermediate activations captured with
    forward hooks (time embedding, conv_in, each down block, mid block, each up block;
    4-D ones transposed to NHWC),
and tests/reference/sd_param_counts.json: the parameter count and state-dict key -> shape
of the Stable Diffusion 1.5 and 2.1 U-Nets, built on the meta device (no weights) from
jaxgen/pipelines/configs/*/unet/config.json. Everything runs in float32 on CPU, fixed seeds.
"""
import json
import os
import sys

import diffusers
import numpy as np
import torch
from diffusers import UNet2DConditionModel

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
SD_CONFIGS = {"sd15": "stable-diffusion-v1-5", "sd21": "stable-diffusion-2-1"}

CONFIGS = {
    # SD 1.x layout: 1x1-conv projections, one head count everywhere, cross-attention at the
    # two finer levels and in the middle, a plain DownBlock2D / UpBlock2D at the coarsest.
    "sd1": dict(
        config=dict(sample_size=16, in_channels=4, out_channels=4, block_out_channels=(8, 12, 12),
                    layers_per_block=1, norm_num_groups=4, cross_attention_dim=32,
                    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                    attention_head_dim=2),
        batch=2, size=16, tokens=7, t=[0, 999], fp16=False),
    # SD 2.x layout: linear projections, heads per level, upcast attention, plus per-level
    # layers / transformer depths (2 transformer layers at the finest level, read in reverse
    # by the up path), cross-only attention at one level, a 1x1 conv_out, cross-attention at
    # the coarsest level, DDPM time-embedding conventions and a mid-block scale factor.
    "sd2": dict(
        config=dict(sample_size=16, in_channels=4, out_channels=3, block_out_channels=(8, 12, 16),
                    layers_per_block=[1, 2, 1], norm_num_groups=4, cross_attention_dim=20,
                    down_block_types=("CrossAttnDownBlock2D",) * 3,
                    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "CrossAttnUpBlock2D"),
                    attention_head_dim=[1, 2, 4], use_linear_projection=True, upcast_attention=True,
                    transformer_layers_per_block=[2, 1, 1], only_cross_attention=[False, True, False],
                    conv_out_kernel=1, dropout=0.1, mid_block_scale_factor=1.25,
                    flip_sin_to_cos=False, freq_shift=1),
        batch=3, size=8, tokens=5, t=[999, 1, 421], fp16=True),
}


def perturb_(model: torch.nn.Module, gen: torch.Generator) -> None:
  """Makes GroupNorm / LayerNorm affines and biases non-trivial so a mis-mapped parameter shows."""
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
  a = a.detach().float().numpy()
  return np.ascontiguousarray(a.transpose(0, 2, 3, 1)) if a.ndim == 4 else a


def generate(name: str, spec: dict) -> None:
  torch.manual_seed(0)
  gen = torch.Generator().manual_seed(4321)
  model = UNet2DConditionModel(**spec["config"]).float().eval()
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
  for i, block in enumerate(model.down_blocks):
    block.register_forward_hook(hook(f"down_blocks_{i}"))
  model.mid_block.register_forward_hook(hook("mid_block"))
  for i, block in enumerate(model.up_blocks):
    block.register_forward_hook(hook(f"up_blocks_{i}"))

  cfg = spec["config"]
  b, s = spec["batch"], spec["size"]
  x = torch.randn((b, cfg["in_channels"], s, s), generator=gen)
  t = torch.tensor(spec["t"], dtype=torch.long)
  ctx = torch.randn((b, spec["tokens"], cfg["cross_attention_dim"]), generator=gen)
  with torch.no_grad():
    out = model(x, t, ctx).sample

  arrays = {"x": nhwc(x), "t": t.numpy().astype(np.int32),
            "encoder_hidden_states": ctx.numpy(), "out": nhwc(out)}
  arrays.update({f"inter_{k}": v.astype(np.float32) for k, v in captured.items()})
  np.savez_compressed(os.path.join(HERE, f"unet_cond_{name}.npz"), **arrays)

  folder = os.path.join(HERE, f"unet_cond_{name}")
  to_save = model.half() if spec["fp16"] else model
  to_save.save_pretrained(folder, safe_serialization=True)
  n = sum(p.numel() for p in model.parameters())
  print(f"{name}: {n} params, out std {out.std():.4f}, diffusers {diffusers.__version__}, "
        f"torch {torch.__version__}", file=sys.stderr)


def sd_param_counts() -> None:
  result = {}
  for key, folder in SD_CONFIGS.items():
    with open(os.path.join(ROOT, "jaxgen", "pipelines", "configs", folder, "unet", "config.json")) as f:
      config = json.load(f)
    with torch.device("meta"):
      model = UNet2DConditionModel.from_config(config)
    result[key] = {"config": folder, "num_params": sum(p.numel() for p in model.parameters()),
                   "shapes": {k: list(v.shape) for k, v in model.state_dict().items()}}
    print(f"{folder}: {result[key]['num_params']} params", file=sys.stderr)
  with open(os.path.join(HERE, "sd_param_counts.json"), "w") as f:
    json.dump(result, f, indent=0, sort_keys=True)
    f.write("\n")


if __name__ == "__main__":
  torch.use_deterministic_algorithms(True)
  torch.set_num_threads(1)
  for fixture_name, fixture_spec in CONFIGS.items():
    generate(fixture_name, fixture_spec)
  sd_param_counts()
