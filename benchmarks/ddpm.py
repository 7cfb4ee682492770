"""Throughput of the DDPM spine: U-Net forward, DDIM sampling (20 and 50 steps), train steps.

Prints one JSON object per config (first call = compile + one run, apart from steady-state
time; peak host memory of the process as ru_maxrss):

  python benchmarks/ddpm.py                      # demo (ddpm_digits) and ddpm_cifar10
  python benchmarks/ddpm.py --configs ddpm_digits --repeats 5

Each config runs in its own subprocess so peak memory is per config.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# Per config: (forward/sampling batch, train batch). The CIFAR-10 model on a CPU is slow, so
# its train batch is small here; on an accelerator pass --train-batch 128.
BATCHES = {"ddpm_digits": (500, 64), "ddpm_shapes": (64, 32), "ddpm_cifar10": (16, 8)}


def _time(fn, repeats: int):
  import jax
  t0 = time.perf_counter()
  jax.block_until_ready(fn())
  compile_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  for _ in range(repeats):
    out = fn()
  jax.block_until_ready(out)
  return compile_s, (time.perf_counter() - t0) / repeats


def run_one(name: str, repeats: int, batch: int | None, train_batch: int | None) -> dict:
  import jax
  import jax.numpy as jnp
  from experiments.config import load_config
  from experiments.families.ddpm import model as common
  from jaxgen import diffusion as D
  from jaxgen.nn import count_params, init_unet
  from jaxgen.training import TrainState, make_optimizer, make_train_step

  config = load_config(name)
  source_shape = {"ddpm_digits": (8, 8, 1), "ddpm_shapes": (32, 32, 3),
                  "ddpm_cifar10": (32, 32, 3)}[name]
  model = common.build_model(config, source_shape, 10)
  schedule = common.build_schedule(config)
  fb, tb = BATCHES[name]
  fb, tb = batch or fb, train_batch or tb
  params = init_unet(model, jax.random.key(0))
  x = jax.random.normal(jax.random.key(1), (fb,) + source_shape)
  t = jnp.full((fb,), 500, jnp.int32)
  fwd = jax.jit(lambda p, x, t: model.apply({"params": p}, x, t))
  out = {"config": name, "params": count_params(params), "backend": jax.default_backend(),
         "devices": jax.device_count(), "forward_batch": fb, "train_batch": tb}
  c, s = _time(lambda: fwd(params, x, t), repeats)
  out.update(forward_first_call_s=c, forward_images_per_s=fb / s)
  sample = jax.jit(lambda p, k, table: D.sample(
      lambda xx, tt: model.apply({"params": p}, xx, tt), schedule, k, x.shape, table))
  T = config.diffusion.num_timesteps
  for n in (20, 50):
    table = D.pad_table(D.timesteps(T, n), T)
    c, s = _time(lambda: sample(params, jax.random.key(2), table), max(1, repeats // 5))
    out[f"ddim{n}_first_call_s"] = c  # 50 reuses the compiled 20-step sampler (padded table)
    out[f"ddim{n}_images_per_s"] = fb / s
  tc = config.train
  state = TrainState.create(apply_fn=model.apply, params=params,
                            tx=make_optimizer(tc.learning_rate, grad_clip=tc.grad_clip))
  step = jax.jit(make_train_step(model, schedule, ema_decay=tc.ema_decay), donate_argnums=0)
  batch_ = {"image": jax.random.uniform(jax.random.key(3), (tb,) + source_shape, minval=-1,
                                        maxval=1)}
  holder = {"state": state}

  def one_step():
    holder["state"], m = step(holder["state"], batch_, jax.random.key(4))
    return m["loss"]

  c, s = _time(one_step, repeats)
  out.update(train_first_call_s=c, train_steps_per_s=1 / s, train_examples_per_s=tb / s)
  out["peak_host_memory_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  return out


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--configs", nargs="+", default=["ddpm_digits", "ddpm_cifar10"])
  p.add_argument("--repeats", type=int, default=10)
  p.add_argument("--batch", type=int, default=None)
  p.add_argument("--train-batch", type=int, default=None)
  p.add_argument("--one", default=None, help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.one:
    print(json.dumps(run_one(args.one, args.repeats, args.batch, args.train_batch)))
    return
  for name in args.configs:
    cmd = [sys.executable, __file__, "--one", name, "--repeats", str(args.repeats)]
    if args.batch:
      cmd += ["--batch", str(args.batch)]
    if args.train_batch:
      cmd += ["--train-batch", str(args.train_batch)]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if res.returncode:
      print(json.dumps({"config": name, "error": res.stderr[-2000:]}))
    else:
      print(res.stdout.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
  main()
