"""Per-device memory of a train step, replicated vs FSDP, and the step time of both.

Prints one JSON object. For each model, the train step (AdamW + EMA, `make_step_from_loss`)
is lowered with ``jax.ShapeDtypeStruct`` inputs (no real parameters are allocated) and
compiled for 8 devices: with the state replicated over a ``data=8`` mesh, sharded by the
default FSDP rule over a ``fsdp=8`` mesh (`jaxgen.parallel.state_shardings`), FSDP with every
U-Net block rematerialised (``remat_policy="nothing_saveable"``) and FSDP with the batch in 4
accumulated micro-batches (``accum_steps=4``); it reports, per device:

* ``state_bytes``: parameters + EMA + optimiser state, from the shardings' shard shapes;
* ``argument_bytes`` / ``output_bytes`` / ``temp_bytes``: XLA's ``memory_analysis()`` of the
  compiled step (inputs, outputs, temporaries: activations, gathered parameters, gradients).

Then the step time of data parallel vs FSDP for a small U-Net on 4 devices (compile apart).
Fake CPU devices share the host's cores and memory: the byte counts are what XLA plans per
device; the time ratio only shows the cost of the extra collectives on one host.

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python benchmarks/parallel_memory.py \\
      > benchmarks/results/parallel_memory.json
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                             + " --xla_force_host_platform_device_count=8").strip()
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

from jaxgen import parallel  # noqa: E402
from jaxgen.diffusion.schedules import make_schedule  # noqa: E402
from jaxgen.nn import (UNet2D, UNet2DConditionConfig, UNet2DConditionModel,  # noqa: E402
                       UNetConfig)
from jaxgen.nn.unet import param_shapes  # noqa: E402
from jaxgen.nn.unet_condition import unet_condition_param_shapes  # noqa: E402
from jaxgen.training import TrainState, make_optimizer, make_step_from_loss  # noqa: E402

CIFAR10_UNET = dict(  # experiments/configs/ddpm_cifar10.py (Ho et al. 2020), 35.7M parameters
    in_channels=3, out_channels=3, sample_size=32, block_out_channels=(128, 256, 256, 256),
    layers_per_block=2, down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D",
                                          "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=None, norm_num_groups=32, norm_eps=1e-6, dropout=0.1, freq_shift=1,
    flip_sin_to_cos=False, downsample_padding=0)
SMALL_UNET = dict(in_channels=3, out_channels=3, sample_size=16, block_out_channels=(64, 128),
                  layers_per_block=1, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                  up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=16)


def _loss(apply, schedule, cond_key=None):
  """Epsilon-prediction L_simple (Ho et al. 2020) of a U-Net ``apply(params, x, t, cond)``."""

  def loss_fn(params, batch, key, offset):
    del offset
    x0 = batch["image"]
    k1, k2 = jax.random.split(key)
    t = jax.random.randint(k1, (x0.shape[0],), 0, schedule.betas.shape[0])
    noise = jax.random.normal(k2, x0.shape)
    a = schedule.alphas_cumprod[t][:, None, None, None]
    xt = jnp.sqrt(a) * x0 + jnp.sqrt(1 - a) * noise
    eps = apply(params, xt, t, None if cond_key is None else batch[cond_key])
    return jnp.mean((eps - noise) ** 2), {}

  return loss_fn


# variant -> (FSDP over all devices, remat policy of every U-Net block, micro-batches)
VARIANTS = {"replicated": (False, None, 1), "fsdp": (True, None, 1),
            "fsdp_remat": (True, "nothing_saveable", 1), "fsdp_accum4": (True, None, 4)}


def _models(remat: str | None = None):
  schedule = make_schedule("linear", 1000)
  cifar = UNet2D(UNetConfig(**CIFAR10_UNET), remat_policy=remat)
  sd = UNet2DConditionModel(UNet2DConditionConfig(sample_size=64,  # SD 1.5's U-Net, 860M
                                                   cross_attention_dim=768), remat_policy=remat)
  return {
      "cifar10_unet": dict(
          params=param_shapes(cifar), batch={"image": ((128, 32, 32, 3), jnp.float32)},
          loss=_loss(lambda p, x, t, c: cifar.apply({"params": p}, x, t), schedule)),
      "sd15_unet": dict(
          params=unet_condition_param_shapes(sd),
          batch={"image": ((8, 64, 64, 4), jnp.float32),          # 512 x 512 latents
                 "context": ((8, 77, 768), jnp.float32)},         # CLIP ViT-L/14 states
          loss=_loss(lambda p, x, t, c: sd.apply({"params": p}, x, t, c), schedule,
                     cond_key="context")),
  }


def _abstract_state(param_tree):
  tx = make_optimizer(1e-4)
  return jax.eval_shape(lambda p: TrainState.create(apply_fn=None, params=p, tx=tx), param_tree)


def _per_device_bytes(arrays, shardings) -> int:
  return sum(math.prod(s.shard_shape(x.shape)) * x.dtype.itemsize
             for x, s in zip(jax.tree.leaves(arrays), jax.tree.leaves(shardings)))


def _compiled(model, mesh, fsdp: bool, accum_steps: int = 1):
  state = _abstract_state(model["params"])
  arrays = state.arrays()
  if fsdp:
    shardings = parallel.state_shardings(arrays, mesh)
  else:
    shardings = jax.tree.map(lambda _: parallel.replicated(mesh), arrays)
  state_sh = state.replace_arrays(shardings)
  batch_sh = parallel.batch_sharding(mesh)
  batch = {k: jax.ShapeDtypeStruct(s, d, sharding=batch_sh)
           for k, (s, d) in model["batch"].items()}
  step = make_step_from_loss(model["loss"], ema_decay=0.9999, accum_steps=accum_steps)
  key = jax.random.key(0)
  fn = jax.jit(lambda s, b: step(s, b, key), in_shardings=(state_sh, batch_sh),
               out_shardings=(state_sh, parallel.replicated(mesh)), donate_argnums=0)
  return fn, state, arrays, shardings, batch


def memory(name: str, devices, variants) -> dict:
  model = _models()[name]
  out = {"model": name, "params": sum(math.prod(x.shape)
                                      for x in jax.tree.leaves(model["params"])),
         "global_batch": {k: list(s) for k, (s, _) in model["batch"].items()},
         "devices": len(devices)}
  for variant in variants:
    fsdp, remat, accum = VARIANTS[variant]
    model = _models(remat)[name]
    mesh = parallel.make_global_mesh(fsdp=len(devices) if fsdp else 1, devices=devices)
    fn, state, arrays, shardings, batch = _compiled(model, mesh, fsdp, accum)
    t0 = time.perf_counter()
    compiled = fn.lower(state, batch).compile()
    mem = compiled.memory_analysis()
    out[variant] = {
        "mesh": dict(mesh.shape), "remat_policy": remat, "accum_steps": accum,
        "state_bytes": _per_device_bytes(arrays, shardings),
        "argument_bytes": mem.argument_size_in_bytes, "output_bytes": mem.output_size_in_bytes,
        "alias_bytes": mem.alias_size_in_bytes, "temp_bytes": mem.temp_size_in_bytes,
        "compile_s": round(time.perf_counter() - t0, 1)}
    print(json.dumps({name: {variant: out[variant]}}), file=sys.stderr, flush=True)
  return out


def step_time(devices, repeats: int) -> dict:
  """Seconds per train step of a small U-Net (batch 32 at 16x16), data parallel vs FSDP."""
  unet = UNet2D(UNetConfig(**SMALL_UNET))
  model = dict(params=param_shapes(unet), batch={"image": ((32, 16, 16, 3), jnp.float32)},
               loss=_loss(lambda p, x, t, c: unet.apply({"params": p}, x, t),
                          make_schedule("linear", 1000)))
  out = {"model": "small_unet", "devices": len(devices),
         "params": sum(math.prod(x.shape) for x in jax.tree.leaves(model["params"]))}
  for variant, fsdp in (("data_parallel", False), ("fsdp", True)):
    mesh = parallel.make_global_mesh(fsdp=len(devices) if fsdp else 1, devices=devices)
    fn, state, arrays, shardings, batch = _compiled(model, mesh, fsdp)
    real = jax.tree.map(lambda x, s: jax.device_put(jnp.zeros(x.shape, x.dtype) + 0.01, s),
                        arrays, shardings)
    st = state.replace_arrays(real)
    b = {k: jax.device_put(np.random.default_rng(0).normal(size=x.shape).astype(np.float32),
                           x.sharding) for k, x in batch.items()}
    t0 = time.perf_counter()
    st, m = fn(st, b)
    jax.block_until_ready(m)
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(repeats):
      st, m = fn(st, b)
    jax.block_until_ready(m)
    out[variant] = {"first_call_s": round(compile_s, 2),
                    "step_s": (time.perf_counter() - t0) / repeats}
  out["fsdp_over_data_parallel_step_time"] = out["fsdp"]["step_s"] / out["data_parallel"]["step_s"]
  return out


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--models", nargs="+", default=["cifar10_unet", "sd15_unet"])
  p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
  p.add_argument("--repeats", type=int, default=20)
  p.add_argument("--no-step-time", action="store_true", help="memory only")
  args = p.parse_args()
  devices = jax.devices()
  if len(devices) < 8:
    raise SystemExit(f"needs 8 devices (XLA_FLAGS=--xla_force_host_platform_device_count=8), "
                     f"found {len(devices)}")
  result = {"backend": jax.default_backend(), "jax": jax.__version__,
            "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "memory": [memory(n, devices[:8], args.variants) for n in args.models],
            "step_time": None if args.no_step_time else step_time(devices[:4], args.repeats)}
  print(json.dumps(result, indent=1))


if __name__ == "__main__":
  main()
