"""Which XLA:CPU flags make jaxgen's U-Net fastest on this machine?

Runs the forward pass (and a train step) of a U-Net config under several XLA_FLAGS settings,
each in a fresh subprocess (flags are read at backend start-up), and prints JSON lines with
images/s per setting. Settings alternate over --rounds to spread machine noise.

  python benchmarks/xla_cpu_flags.py [--config small|cifar10] [--rounds 2]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

SETTINGS = {
    "default": "",
    "onednn": "--xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_custom_call=true",
    "xnnpack": "--xla_cpu_use_xnnpack=true",
    "fast_math": "--xla_cpu_enable_fast_math=true",
}


def child(config: str, batch: int, repeats: int, train: bool):
  import jax
  import jax.numpy as jnp
  from benchmarks.compare_diffusers import CONFIGS
  from jaxgen import diffusion as D
  from jaxgen.nn import UNet2D, UNetConfig, init_unet
  from jaxgen.training import TrainState, make_optimizer, make_train_step

  model = UNet2D(UNetConfig(**CONFIGS[config]))
  params = init_unet(model, jax.random.key(0))
  x = jax.random.normal(jax.random.key(1), (batch, 32, 32, 3))
  t = jnp.full((batch,), 500, jnp.int32)
  f = jax.jit(lambda p, x, t: model.apply({"params": p}, x, t))
  ref = f(params, x, t).block_until_ready()
  t0 = time.perf_counter()
  for _ in range(repeats):
    out = f(params, x, t)
  out.block_until_ready()
  res = {"forward_images_per_s": batch * repeats / (time.perf_counter() - t0),
         "forward_checksum": float(jnp.sum(jnp.abs(ref)))}
  if train:
    step = jax.jit(make_train_step(model, D.make_schedule("linear", 1000)), donate_argnums=0)
    state = TrainState.create(apply_fn=model.apply, params=params, tx=make_optimizer(1e-4))
    b = {"image": jnp.clip(x, -1, 1)}
    state, m = step(state, b, jax.random.key(2))
    jax.block_until_ready(m)
    t0 = time.perf_counter()
    for _ in range(max(1, repeats // 2)):
      state, m = step(state, b, jax.random.key(2))
    jax.block_until_ready(m)
    res["train_examples_per_s"] = batch * max(1, repeats // 2) / (time.perf_counter() - t0)
  print(json.dumps(res))


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--config", default="small")
  p.add_argument("--batch", type=int, default=16)
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--rounds", type=int, default=2)
  p.add_argument("--settings", nargs="+", default=list(SETTINGS))
  p.add_argument("--no-train", action="store_true")
  p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.child:
    child(args.config, args.batch, args.repeats, not args.no_train)
    return
  results = {s: [] for s in args.settings}
  for _ in range(args.rounds):
    for s in args.settings:
      env = dict(os.environ, XLA_FLAGS=SETTINGS[s])
      cmd = [sys.executable, "-m", "benchmarks.xla_cpu_flags", "--child", "--config",
             args.config, "--batch", str(args.batch), "--repeats", str(args.repeats)]
      if args.no_train:
        cmd.append("--no-train")
      r = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
      if r.returncode:
        results[s].append({"error": r.stderr.strip().splitlines()[-1:]})
      else:
        results[s].append(json.loads(r.stdout.strip().splitlines()[-1]))
  for s, rs in results.items():
    print(json.dumps({"setting": s, "xla_flags": SETTINGS[s], "config": args.config,
                      "runs": rs}))


if __name__ == "__main__":
  main()
