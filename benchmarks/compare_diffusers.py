"""jaxgen vs diffusers on the same UNet2DModel weights, on this machine, as ratios.

Needs the reference extra (torch==2.13.0, diffusers==0.42.1) beside jaxgen:
  pip install -e ".[reference]"
  python benchmarks/compare_diffusers.py [--configs small cifar10] [--repeats 5]

For each config it builds a random-initialised diffusers UNet2DModel, saves it, imports it
with jaxgen.interop.load_diffusers_unet2d (so both run identical weights; the outputs are
compared too), and times on both sides, steady state after a warm-up / compile:
  * forward pass, batch 16;
  * DDIM sampling with 20 steps, batch 16 (diffusers: DDIMScheduler loop; jaxgen: one scan);
  * one AdamW training step, batch 32 (noise, forward, MSE, backward, clip 1.0, update, EMA).
Ratios are jaxgen speed / diffusers speed (> 1: jaxgen is faster). Achieved GFLOP/s use the
forward FLOP count from XLA's cost analysis for both sides (the same network), and the
machine's float32 peak is measured with large matmuls in both libraries.
Prints one JSON object per config, then a summary line.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

CONFIGS = {
    "small": dict(sample_size=32, in_channels=3, out_channels=3,
                  block_out_channels=(32, 64, 64), layers_per_block=1,
                  down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
                  up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
                  norm_num_groups=8),
    "cifar10": dict(sample_size=32, in_channels=3, out_channels=3,
                    block_out_channels=(128, 256, 256, 256), layers_per_block=2,
                    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D",
                                      "DownBlock2D"),
                    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
                    attention_head_dim=None, norm_eps=1e-6, freq_shift=1,
                    flip_sin_to_cos=False, downsample_padding=0, dropout=0.0),
}


def timeit(fn, repeats: int, sync=lambda x: x) -> float:
  sync(fn())  # warm-up (and compile, for jax)
  t0 = time.perf_counter()
  for _ in range(repeats):
    out = fn()
  sync(out)
  return (time.perf_counter() - t0) / repeats


def matmul_peak_gflops() -> dict:
  import jax
  import jax.numpy as jnp
  import torch
  n = 2048
  a = jnp.ones((n, n), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  tj = timeit(lambda: f(a), 5, jax.block_until_ready)
  ta = torch.ones(n, n)
  tt = timeit(lambda: ta @ ta, 5)
  return {"jax": 2 * n ** 3 / tj / 1e9, "torch": 2 * n ** 3 / tt / 1e9}


def run_config(name: str, repeats: int, parts=("forward", "ddim20", "train")) -> dict:
  import jax
  import jax.numpy as jnp
  import numpy as np
  import torch
  from diffusers import DDIMScheduler, UNet2DModel

  from jaxgen import diffusion as D
  from jaxgen.interop import load_diffusers_unet2d
  from jaxgen.training import TrainState, make_optimizer, make_train_step

  torch.manual_seed(0)
  cfg = CONFIGS[name]
  tmodel = UNet2DModel(**cfg).eval()
  with tempfile.TemporaryDirectory() as d:
    tmodel.save_pretrained(d, safe_serialization=True)
    model, params = load_diffusers_unet2d(d)
  out = {"config": name, "params": int(sum(p.numel() for p in tmodel.parameters())),
         "torch_threads": torch.get_num_threads(), "jax_devices": jax.device_count(),
         "glibc_tunables": os.environ.get("GLIBC_TUNABLES", "")}

  # --- forward, batch 16
  B = 16
  x = np.random.default_rng(0).standard_normal((B, 32, 32, 3)).astype(np.float32)
  t = np.full((B,), 500, np.int64)
  xt, tt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()), torch.from_numpy(t)
  fwd = jax.jit(lambda p, x, t: model.apply({"params": p}, x, t))
  xj, tj = jnp.asarray(x), jnp.asarray(t, jnp.int32)
  with torch.no_grad():
    ref = tmodel(xt, tt).sample.numpy().transpose(0, 2, 3, 1)
    got = np.asarray(fwd(params, xj, tj))
    out["forward_rel_l2"] = float(np.linalg.norm(got - ref) / np.linalg.norm(ref))
    t_torch = timeit(lambda: tmodel(xt, tt).sample, repeats)
  t_jax = timeit(lambda: fwd(params, xj, tj), repeats, jax.block_until_ready)
  flops = fwd.lower(params, xj, tj).compile().cost_analysis()
  flops = (flops[0] if isinstance(flops, list) else flops).get("flops", float("nan"))
  out.update(forward_ms={"jaxgen": 1e3 * t_jax, "diffusers": 1e3 * t_torch},
             forward_ratio=t_torch / t_jax, forward_gflop=flops / 1e9,
             forward_gflops_per_s={"jaxgen": flops / t_jax / 1e9,
                                   "diffusers": flops / t_torch / 1e9})

  if "ddim20" not in parts:
    return _train_part(out, name, tmodel, model, params, repeats, parts)
  # --- DDIM 20 steps, batch 16
  sched = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=False,
                        set_alpha_to_one=True)
  schedule = D.make_schedule("linear", 1000)

  def torch_ddim():
    sched.set_timesteps(20)
    s = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
      for step_t in sched.timesteps:
        s = sched.step(tmodel(s, step_t).sample, step_t, s).prev_sample
    return s

  table = D.pad_table(D.timesteps(1000, 20), 1000)
  prev = D.pad_table(D.previous_timesteps(D.timesteps(1000, 20), 1000, "diffusers"), 1000)
  samp = jax.jit(lambda p, xT: D.sample(lambda a, b: model.apply({"params": p}, a, b),
                                        schedule, jax.random.key(0), xT.shape, table,
                                        prev_table=prev, x_T=xT))
  ref = torch_ddim().numpy().transpose(0, 2, 3, 1)
  got = np.asarray(samp(params, xj))
  out["ddim20_rel_l2"] = float(np.linalg.norm(got - ref) / np.linalg.norm(ref))
  r = max(1, repeats // 3)
  t_torch = timeit(torch_ddim, r)
  t_jax = timeit(lambda: samp(params, xj), r, jax.block_until_ready)
  out.update(ddim20_s={"jaxgen": t_jax, "diffusers": t_torch}, ddim20_ratio=t_torch / t_jax,
             ddim20_images_per_s={"jaxgen": B / t_jax, "diffusers": B / t_torch})
  return _train_part(out, name, tmodel, model, params, repeats, parts)


def _train_part(out, name, tmodel, model, params, repeats, parts):
  """One AdamW training step, batch 32, on both sides."""
  if "train" not in parts:
    return out
  import jax
  import jax.numpy as jnp
  import numpy as np
  import torch

  from jaxgen import diffusion as D
  from jaxgen.training import TrainState, make_optimizer, make_train_step
  schedule = D.make_schedule("linear", 1000)
  r = max(1, repeats // 3)
  B2 = 32
  x2 = np.random.default_rng(1).uniform(-1, 1, (B2, 32, 32, 3)).astype(np.float32)
  tmodel.train()
  opt = torch.optim.AdamW(tmodel.parameters(), lr=2e-4, weight_decay=0.0)
  ema = [p.detach().clone() for p in tmodel.parameters()]
  ac = torch.from_numpy(np.array(schedule.alphas_cumprod))
  x2t = torch.from_numpy(x2.transpose(0, 3, 1, 2).copy())

  def torch_step():
    tt_ = torch.randint(0, 1000, (B2,))
    eps = torch.randn_like(x2t)
    a = ac[tt_].view(-1, 1, 1, 1)
    noisy = a.sqrt() * x2t + (1 - a).sqrt() * eps
    loss = torch.nn.functional.mse_loss(tmodel(noisy, tt_).sample, eps)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(tmodel.parameters(), 1.0)
    opt.step()
    with torch.no_grad():
      torch._foreach_lerp_(ema, list(tmodel.parameters()), 1 - 0.9999)
    return loss

  state = TrainState.create(apply_fn=model.apply, params=params,
                            tx=make_optimizer(2e-4, grad_clip=1.0))
  step = jax.jit(make_train_step(model, schedule, ema_decay=0.9999), donate_argnums=0)
  batch = {"image": jnp.asarray(x2)}
  holder = {"s": state}

  def jax_step():
    holder["s"], m = step(holder["s"], batch, jax.random.key(1))
    return m["loss"]

  t_torch = timeit(torch_step, r)
  t_jax = timeit(jax_step, r, jax.block_until_ready)
  out.update(train_step_s={"jaxgen": t_jax, "diffusers": t_torch},
             train_ratio=t_torch / t_jax,
             train_examples_per_s={"jaxgen": B2 / t_jax, "diffusers": B2 / t_torch})
  return out


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--configs", nargs="+", default=["small", "cifar10"], choices=sorted(CONFIGS))
  p.add_argument("--repeats", type=int, default=6)
  p.add_argument("--parts", nargs="+", default=["forward", "ddim20", "train"],
                 choices=["forward", "ddim20", "train"],
                 help="forward is always measured; on a CPU the CIFAR-10 model's DDIM-20 "
                      "takes diffusers many minutes")
  args = p.parse_args()
  peak = matmul_peak_gflops()
  print(json.dumps({"matmul_peak_gflops": peak}), flush=True)
  results = []
  for name in args.configs:
    res = run_config(name, args.repeats, tuple(args.parts))
    best = max(peak.values())
    res["forward_fraction_of_peak"] = {k: v / best for k, v in res["forward_gflops_per_s"].items()}
    results.append(res)
    print(json.dumps(res), flush=True)
  print(json.dumps({"summary": {r["config"]: {k: round(r[k], 3) for k in
                                              ("forward_ratio", "ddim20_ratio", "train_ratio")
                                              if k in r}
                                for r in results}}))


if __name__ == "__main__":
  main()
