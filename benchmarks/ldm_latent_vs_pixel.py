"""Latent vs pixel-space text-conditional diffusion, the lecture's claim for latent diffusion
(Rombach et al. 2022, sec. 3): the cost of the same cross-attention U-Net on the 8x8x4 latents of
`ldm_shapes` and, with two more levels (32x32, 16x16) in the autoencoder's place, on the 32x32x3
images (`ldm_shapes:pixel`).

Prints one JSON object: per space the U-Net's parameters, the train step's time (batch 64; the
latent step includes drawing from the posterior), the sampling time per image (DDIM with
classifier-free guidance, batch 64, the latent one including the VAE decode) and the
autoencoder's parameters; the ratios pixel / latent; and the machine's float32 matmul GFLOP/s. Models are freshly initialised: cost
does not depend on the weights.

  python benchmarks/ldm_latent_vs_pixel.py [--steps 25] [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.ddpm import _time  # noqa: E402  (first call, then the mean of `repeats`)


def _count(tree) -> int:
  import jax  # pylint: disable=import-outside-toplevel
  return int(sum(x.size for x in jax.tree.leaves(tree)))


def matmul_gflops(n: int = 1024, repeats: int = 20) -> float:
  """The machine's float32 matmul throughput (n x n by n x n, jitted): the yardstick quoted
  beside wall times, since machines here differ up to 3x."""
  import jax
  import jax.numpy as jnp
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  mm = jax.jit(lambda x: x @ a)
  _, seconds = _time(lambda: mm(a), repeats)
  return 2.0 * n ** 3 / seconds / 1e9


def measure(variant: str | None, steps: int, repeats: int, batch: int = 64) -> dict:
  import jax
  import jax.numpy as jnp
  from experiments import config as C
  from experiments.families.ldm import runner as R
  from jaxgen.nn.autoencoder import Autoencoder, AutoencoderConfig
  from jaxgen.nn.autoencoder_kl import AutoencoderKL
  from jaxgen.pipelines import guided_sample
  from jaxgen.training import make_step_from_loss
  config = C.load_config("ldm_shapes" + (f":{variant}" if variant else ""))
  latent = config.ldm.space == "latent"
  width, length = 64, 16  # the clip_shapes text tower
  vae, vae_params = None, None
  if latent:
    ae = C.load_config(config.stages.autoencoder)
    kl = AutoencoderConfig(image_size=(32, 32), in_channels=3, double_latent=True,
                           **ae.model).kl_config
    vae = AutoencoderKL(kl)
    vae_params = jax.jit(vae.init)(jax.random.key(2), jnp.zeros((1, 32, 32, 3)))["params"]
    f = 2 ** (len(kl.block_out_channels) - 1)
    shape = (32 // f, 32 // f, kl.latent_channels)
  else:
    shape = (32, 32, 3)
  model = R.build_model(config, shape, width)
  state = R.init_state(config, model, jax.random.key(0))
  table = jnp.zeros((217, length, width))
  step = jax.jit(make_step_from_loss(R.make_loss_fn(config, model, table,
                                                    0.5 if latent else None)),
                 donate_argnums=0)
  channels = shape[-1] * (2 if latent else 1)
  batch_in = {"image": jnp.zeros((batch,) + shape[:2] + (channels,)),
              "caption": jnp.zeros((batch,), jnp.int32)}
  holder = {"state": state}

  def train_step():
    holder["state"], m = step(holder["state"], batch_in, jax.random.key(1))
    return m["loss"]

  train_first, train_s = _time(train_step, repeats * 3)
  sched = R.scheduler_config(config, "ddim")
  cond = jnp.zeros((batch, length, width))
  params = holder["state"].ema_params

  @jax.jit
  def decode(z):
    return vae.apply({"params": vae_params}, z / 0.5, method="decode")

  def sample():
    x = guided_sample(model, params, sched, cond, cond, jnp.zeros((batch,) + shape),
                      jax.random.key(3), num_inference_steps=steps, guidance_scale=3.0)
    return decode(x) if latent else x

  sample_first, sample_s = _time(sample, repeats)
  return {"space": config.ldm.space, "unet_parameters": _count(state.params),
          "autoencoder_parameters": _count(vae_params) if latent else 0,
          "input_shape": list(shape), "train_batch": batch,
          "train_step_seconds": train_s, "train_first_call_seconds": train_first,
          "sampling_seconds_per_image": sample_s / batch, "sampling_steps": steps,
          "sampling_first_call_seconds": sample_first}


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--steps", type=int, default=25, help="DDIM steps of the sampling time")
  p.add_argument("--repeats", type=int, default=3)
  args = p.parse_args(argv)
  import jax  # pylint: disable=import-outside-toplevel
  latent = measure(None, args.steps, args.repeats)
  pixel = measure("pixel", args.steps, args.repeats)
  print(json.dumps({
      "device": jax.devices()[0].device_kind, "matmul_gflops": matmul_gflops(),
      "latent": latent, "pixel": pixel,
      "pixel_over_latent": {
          "train_step_time": pixel["train_step_seconds"] / latent["train_step_seconds"],
          "sampling_time_per_image": (pixel["sampling_seconds_per_image"]
                                      / latent["sampling_seconds_per_image"]),
          "unet_parameters": pixel["unet_parameters"] / latent["unet_parameters"]}},
      indent=2))


if __name__ == "__main__":
  main()
