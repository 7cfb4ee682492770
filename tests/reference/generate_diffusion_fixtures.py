"""Writes the diffusers reference fixtures for the diffusion core parity tests.

Run from the repository root with the reference environment (torch + diffusers, see the
`[reference]` extra):

  /work/refvenv/bin/python tests/reference/generate_diffusion_fixtures.py

Pinned to diffusers 0.42.1 and torch 2.13.0 on CPU, float32, seeded torch generators.
Everything here drives diffusers' own `DDPMScheduler` / `DDIMScheduler`; no formula of
ours is involved, so the fixtures say what diffusers computes, including its quirks
(documented in docs/differences_from_diffusers.md).

Files written next to this script (arrays are NHWC; the schedulers are layout-agnostic):
  diffusion_schedules.npz   `{name}__betas`, `{name}__alphas_cumprod`, plus `cases_json`
  diffusion_q_sample.npz    `x0`, `noise` [4, 8, 8, 3], `t` [4], `{schedule}__out`
  diffusion_timesteps.npz   `T{T}_n{n}_{spacing}_off{offset}` -> int64 [n] descending
  diffusion_ddpm_steps.npz  `x_t`, `model_output` [2, 4, 4, 3]; `{case}__noise`,
                            `{case}__out`, `{case}__pred_x0`; `cases_json`
  diffusion_ddim_steps.npz  same layout as the DDPM file
  diffusion_ddim_loops.npz  `x_T` [4, 8, 8, 3]; `{case}__t`, `{case}__prev_t`,
                            `{case}__x_mid` (after 10 steps), `{case}__x0`; `cases_json`

Each `cases_json` entry holds the settings of one case (schedule name, t, prev_t as
diffusers computed it, prediction type, variance type, clip flag, eta).
"""
import json
import math
import os
import sys

import numpy as np
import torch
import diffusers
from diffusers import DDIMScheduler, DDPMScheduler

OUT_DIR = os.path.dirname(os.path.abspath(__file__))
STEP_SHAPE = (2, 4, 4, 3)  # small: one case is 96 floats
BIG_SHAPE = (4, 8, 8, 3)

# name -> scheduler keyword arguments (all T=1000 with diffusers' default betas unless set)
SCHEDULES = {
    "linear": dict(beta_schedule="linear"),
    "scaled_linear": dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
    "cosine": dict(beta_schedule="squaredcos_cap_v2"),
    "linear_zsnr": dict(beta_schedule="linear", rescale_betas_zero_snr=True),
    "scaled_linear_zsnr": dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                               rescale_betas_zero_snr=True),
    "cosine_zsnr": dict(beta_schedule="squaredcos_cap_v2", rescale_betas_zero_snr=True),
    "linear_T50": dict(beta_schedule="linear", num_train_timesteps=50, beta_start=0.001,
                       beta_end=0.05),
}
# scaled_linear with diffusers' default betas too (the entries above use Stable Diffusion's).
SCHEDULES["scaled_linear_default"] = dict(beta_schedule="scaled_linear")
SCHEDULES["scaled_linear_default_zsnr"] = dict(beta_schedule="scaled_linear",
                                               rescale_betas_zero_snr=True)


def _np(x):
  return x.detach().cpu().numpy()


def _randn(shape, seed):
  return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)


def _save(name, arrays, cases=None):
  if cases is not None:
    arrays = dict(arrays, cases_json=np.array(json.dumps(cases)))
  path = os.path.join(OUT_DIR, name)
  np.savez_compressed(path, **arrays)
  print(f"wrote {path}: {len(arrays)} arrays, {os.path.getsize(path)} bytes")


def schedules():
  arrays, cases = {}, []
  for name, kw in SCHEDULES.items():
    s = DDPMScheduler(**kw)
    d = DDIMScheduler(**kw)
    assert torch.equal(s.betas, d.betas) and torch.equal(s.alphas_cumprod, d.alphas_cumprod)
    assert s.betas.dtype == torch.float32 and s.alphas_cumprod.dtype == torch.float32
    arrays[f"{name}__betas"] = _np(s.betas)
    arrays[f"{name}__alphas"] = _np(s.alphas)
    arrays[f"{name}__alphas_cumprod"] = _np(s.alphas_cumprod)
    cases.append(dict(name=name, **kw))
  _save("diffusion_schedules.npz", arrays, cases)


def q_sample():
  x0 = _randn(BIG_SHAPE, 1).clamp(-1, 1)
  noise = _randn(BIG_SHAPE, 2)
  t = torch.tensor([0, 1, 500, 999], dtype=torch.int64)
  arrays = dict(x0=_np(x0), noise=_np(noise), t=_np(t))
  for name in ("linear", "scaled_linear", "cosine", "scaled_linear_zsnr", "linear_T50"):
    s = DDPMScheduler(**SCHEDULES[name])
    tt = t if name != "linear_T50" else torch.tensor([0, 1, 25, 49])
    arrays[f"{name}__out"] = _np(s.add_noise(x0, noise, tt))
    arrays[f"{name}__t"] = _np(tt)
    # DDIM's add_noise is the same code; check it stays so.
    assert torch.equal(DDIMScheduler(**SCHEDULES[name]).add_noise(x0, noise, tt),
                       s.add_noise(x0, noise, tt))
  _save("diffusion_q_sample.npz", arrays)


def timestep_tables():
  arrays = {}
  for T, steps in ((1000, (1, 3, 7, 10, 13, 20, 50, 1000)), (50, (1, 7, 10, 50))):
    for n in steps:
      for spacing in ("leading", "trailing", "linspace"):
        for offset in (0, 1):
          kw = dict(num_train_timesteps=T, timestep_spacing=spacing, steps_offset=offset)
          a, b = DDPMScheduler(**kw), DDIMScheduler(**kw)
          a.set_timesteps(n)
          b.set_timesteps(n)
          assert torch.equal(a.timesteps, b.timesteps)
          arrays[f"T{T}_n{n}_{spacing}_off{offset}"] = _np(a.timesteps).astype(np.int64)
  _save("diffusion_timesteps.npz", arrays)


def ddpm_steps():
  x_t = _randn(STEP_SHAPE, 10) * 1.5  # large enough that clipping x0 to [-1, 1] bites
  model_output = _randn(STEP_SHAPE, 11)
  arrays = dict(x_t=_np(x_t), model_output=_np(model_output))
  cases = []
  seed = [1000]

  def run(name, sched_name, t, pred, var, clip, steps=None, spacing="leading", offset=0):
    kw = dict(SCHEDULES[sched_name], prediction_type=pred, variance_type=var, clip_sample=clip,
              timestep_spacing=spacing, steps_offset=offset)
    s = DDPMScheduler(**kw)
    if steps is not None:
      s.set_timesteps(steps)
    prev_t = int(s.previous_timestep(t))
    seed[0] += 1
    out = s.step(model_output, t, x_t, generator=torch.Generator().manual_seed(seed[0]))
    # diffusers draws randn_tensor(model_output.shape, generator) only when t > 0; the same
    # draw from a fresh generator with the same seed is the noise it added.  For t == 0 the
    # recorded array is still a fresh draw: the JAX side gets it and must ignore it.
    noise = _randn(STEP_SHAPE, seed[0])
    if t > 0:  # check the reproduction with diffusers' own variance
      out2 = s.step(model_output, t, x_t, generator=torch.Generator().manual_seed(seed[0] + 10**6))
      std = s._get_variance(t) ** 0.5
      np.testing.assert_allclose(
          _np(out.prev_sample - out2.prev_sample),
          _np(std * (noise - _randn(STEP_SHAPE, seed[0] + 10**6))), atol=1e-5)
    arrays[f"{name}__noise"] = _np(noise)
    arrays[f"{name}__out"] = _np(out.prev_sample)
    arrays[f"{name}__pred_x0"] = _np(out.pred_original_sample)
    cases.append(dict(name=name, schedule=sched_name, t=t, prev_t=prev_t, prediction_type=pred,
                      variance_type=var, clip_sample=clip, num_inference_steps=steps,
                      timestep_spacing=spacing, steps_offset=offset))

  for pred in ("epsilon", "v_prediction", "sample"):
    for var in ("fixed_small", "fixed_large"):
      for clip in (False, True):
        for t in (0, 1, 500, 999):
          run(f"linear_{pred}_{var}_clip{int(clip)}_t{t}", "linear", t, pred, var, clip)
  for sched_name in ("cosine", "scaled_linear", "linear_T50"):
    for t in (0, 7, 49):
      run(f"{sched_name}_epsilon_fixed_small_t{t}", sched_name, t, "epsilon", "fixed_small", False)
  # num_inference_steps < T: diffusers 0.42.1 takes prev_t from the timestep table
  # (DDPMScheduler.previous_timestep), recorded per case.
  for var in ("fixed_small", "fixed_large"):
    for t in (900, 500, 0):
      run(f"strided_leading10_{var}_t{t}", "linear", t, "epsilon", var, False, steps=10)
    # steps_offset=1: the last entry is t=1 with prev_t=-1, and t > 0 so diffusers adds noise.
    for t in (901, 1):
      run(f"strided_leading10_off1_{var}_t{t}", "linear", t, "epsilon", var, False, steps=10,
          offset=1)
    # trailing, 7 steps: uneven table [999, 856, ..., 142]; the last step has t=142, prev_t=-1.
    for t in (999, 856, 142):
      run(f"strided_trailing7_{var}_t{t}", "linear", t, "epsilon", var, False, steps=7,
          spacing="trailing")

  # Per-example timesteps: diffusers' step takes one scalar t, so step each example alone
  # (each with its own generator) and stack; the JAX side passes t as a [B] array.
  s = DDPMScheduler(**SCHEDULES["linear"], clip_sample=False)
  tb = [0, 640]
  outs, noises = [], []
  for b, t in enumerate(tb):
    outs.append(s.step(model_output[b:b + 1], t, x_t[b:b + 1],
                       generator=torch.Generator().manual_seed(5000 + b)).prev_sample)
    noises.append(_randn((1,) + STEP_SHAPE[1:], 5000 + b))
  arrays["batched_t__out"] = _np(torch.cat(outs))
  arrays["batched_t__noise"] = _np(torch.cat(noises))
  arrays["batched_t__t"] = np.array(tb, np.int64)
  _save("diffusion_ddpm_steps.npz", arrays, cases)


def ddim_steps():
  x_t = _randn(STEP_SHAPE, 20) * 1.5
  model_output = _randn(STEP_SHAPE, 21)
  arrays = dict(x_t=_np(x_t), model_output=_np(model_output))
  cases = []
  seed = [2000]

  def run(name, sched_name, steps, spacing, idx, pred, eta, clip):
    s = DDIMScheduler(**SCHEDULES[sched_name], prediction_type=pred, clip_sample=clip,
                      timestep_spacing=spacing, set_alpha_to_one=True)
    s.set_timesteps(steps)
    t = int(s.timesteps[idx])
    prev_t = t - s.config.num_train_timesteps // s.num_inference_steps  # as step() computes it
    pos = idx % steps
    table_next = int(s.timesteps[pos + 1]) if pos + 1 < steps else -1  # what the paper would use
    seed[0] += 1
    out = s.step(model_output, t, x_t, eta=eta, generator=torch.Generator().manual_seed(seed[0]))
    noise = _randn(STEP_SHAPE, seed[0])  # the draw diffusers makes when eta > 0
    again = s.step(model_output, t, x_t, eta=eta, variance_noise=noise)
    assert torch.equal(out.prev_sample, again.prev_sample), name
    arrays[f"{name}__noise"] = _np(noise)
    arrays[f"{name}__out"] = _np(out.prev_sample)
    arrays[f"{name}__pred_x0"] = _np(out.pred_original_sample)
    cases.append(dict(name=name, schedule=sched_name, t=t, prev_t=prev_t, prediction_type=pred,
                      eta=eta, clip_sample=clip, num_inference_steps=steps,
                      timestep_spacing=spacing, table_next=table_next))

  for spacing in ("leading", "trailing", "linspace"):
    for idx in (0, 10, -1):  # first, middle, last step (prev_t < 0 there)
      for pred in ("epsilon", "v_prediction", "sample"):
        for eta in (0.0, 1.0):
          for clip in (False, True):
            run(f"{spacing}20_i{idx}_{pred}_eta{int(eta)}_clip{int(clip)}", "linear", 20, spacing,
                idx, pred, eta, clip)
  # Uneven trailing table (7 steps): diffusers' prev_t = t - 142 is not the next table entry.
  for idx in (0, 3, -1):
    run(f"trailing7_i{idx}_epsilon_eta1_clip0", "linear", 7, "trailing", idx, "epsilon", 1.0, False)
  for sched_name in ("cosine", "scaled_linear"):
    for idx in (0, -1):
      run(f"{sched_name}_leading20_i{idx}_epsilon_eta1_clip0", sched_name, 20, "leading", idx,
          "epsilon", 1.0, False)
  # Zero terminal SNR with v-prediction and trailing spacing (the setting it is made for):
  # alphas_cumprod[999] == 0, so the first step maps x_t to x0 = -v.
  for idx in (0, 10):
    for eta in (0.0, 1.0):
      run(f"zsnr_trailing20_i{idx}_v_prediction_eta{int(eta)}_clip0", "scaled_linear_zsnr", 20,
          "trailing", idx, "v_prediction", eta, False)

  # Per-example (t, prev_t) pairs, stepped one example at a time and stacked.
  s = DDIMScheduler(**SCHEDULES["linear"], clip_sample=False)
  pairs = [(980, 940), (30, -20)]
  outs, noises = [], []
  for b, (t, prev_t) in enumerate(pairs):
    s.set_timesteps(1000 // (t - prev_t))  # makes step() use this prev_t
    noise = _randn((1,) + STEP_SHAPE[1:], 6000 + b)
    outs.append(s.step(model_output[b:b + 1], t, x_t[b:b + 1], eta=1.0,
                       variance_noise=noise).prev_sample)
    noises.append(noise)
  arrays["batched_t__out"] = _np(torch.cat(outs))
  arrays["batched_t__noise"] = _np(torch.cat(noises))
  arrays["batched_t__t"] = np.array([p[0] for p in pairs], np.int64)
  arrays["batched_t__prev_t"] = np.array([p[1] for p in pairs], np.int64)
  _save("diffusion_ddim_steps.npz", arrays, cases)


def analytic_model(x, t):
  """The stand-in denoiser of the loop fixtures: 0.1 * x_t + 0.05 * sin(t / 100)."""
  return 0.1 * x + 0.05 * math.sin(t / 100)


def ddim_loops():
  x_T = _randn(BIG_SHAPE, 30)
  arrays = dict(x_T=_np(x_T))
  cases = []
  settings = [
      ("leading", "linear", "epsilon"),
      ("trailing", "linear", "epsilon"),
      ("linspace", "linear", "epsilon"),
      ("trailing", "scaled_linear_zsnr", "v_prediction"),
  ]
  for spacing, sched_name, pred in settings:
    name = f"{spacing}_{sched_name}_{pred}"
    s = DDIMScheduler(**SCHEDULES[sched_name], prediction_type=pred, clip_sample=False,
                      timestep_spacing=spacing, set_alpha_to_one=True)
    s.set_timesteps(20)
    x = x_T.clone()
    ts, prevs = [], []
    for i, t in enumerate(s.timesteps):
      t = int(t)
      ts.append(t)
      prevs.append(t - s.config.num_train_timesteps // s.num_inference_steps)
      x = s.step(analytic_model(x, t), t, x, eta=0.0).prev_sample
      if i == 9:
        arrays[f"{name}__x_mid"] = _np(x)
    arrays[f"{name}__t"] = np.array(ts, np.int64)
    arrays[f"{name}__prev_t"] = np.array(prevs, np.int64)
    arrays[f"{name}__x0"] = _np(x)
    cases.append(dict(name=name, schedule=sched_name, prediction_type=pred,
                      timestep_spacing=spacing, num_inference_steps=20, eta=0.0,
                      clip_sample=False))
  _save("diffusion_ddim_loops.npz", arrays, cases)


if __name__ == "__main__":
  if diffusers.__version__ != "0.42.1":
    sys.exit(f"expected diffusers 0.42.1, found {diffusers.__version__}")
  torch.set_num_threads(1)
  schedules()
  q_sample()
  timestep_tables()
  ddpm_steps()
  ddim_steps()
  ddim_loops()
