"""Writes the diffusers reference fixtures for jaxgen.diffusion.schedulers.

Run from the repository root with the reference environment (torch + diffusers, see the
`[reference]` extra):

  /tmp/refvenv/bin/python tests/reference/generate_scheduler_fixtures.py

Pinned to diffusers 0.42.1 and torch 2.13.0 on CPU, float32. Everything here drives diffusers'
own DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler and PNDMScheduler, in the loop
its Stable Diffusion pipelines run (txt2img from index 0; img2img from an index `start`, with
`add_noise` at `timesteps[start]` and `set_begin_index(start)` where the class has it), with a
fixed analytic stand-in model, so the fixtures say what diffusers computes.

Files written next to this script (arrays NHWC [2, 4, 4, 3]; the schedulers are elementwise):
  schedulers_loops.npz      `x_T`, `x0_img`, `noise_img`; per case `{case}__timesteps` (the full
                            table), `{case}__traj` [L, ...] (x after every step of the run),
                            `{case}__noise` [L, ...] (DDIM eta > 0 and DDPM), `{case}__x_start`
                            (img2img: add_noise at timesteps[start]); `cases_json`
  schedulers_timesteps.npz  `{case}` -> int64 table; `cases_json` (config, n)
  schedulers_with_class.npz `with_class_json`: for each source config and target class,
                            target.from_config(source.config).config and its tables
"""
import json
import math
import os
import sys

import numpy as np
import torch
import diffusers
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, PNDMScheduler

OUT_DIR = os.path.dirname(os.path.abspath(__file__))
SHAPE = (2, 4, 4, 3)
CLASSES = {c.__name__: c for c in (DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler,
                                   PNDMScheduler)}
SD = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
# The published Stable Diffusion scheduler configs (v1-5: PNDM; 2-1: DDIM with v-prediction).
SD15 = dict(SD, _class_name="PNDMScheduler", num_train_timesteps=1000, set_alpha_to_one=False,
            skip_prk_steps=True, steps_offset=1, trained_betas=None, clip_sample=False)
SD21 = dict(SD, _class_name="DDIMScheduler", clip_sample=False, num_train_timesteps=1000,
            prediction_type="v_prediction", set_alpha_to_one=False, skip_prk_steps=True,
            steps_offset=1, trained_betas=None)
DPM = "DPMSolverMultistepScheduler"

# name -> (config, num_inference_steps, start, eta)
LOOPS = {
    "pndm_sd15_n10": (SD15, 10, 0, 0.0),
    "pndm_sd15_n20": (SD15, 20, 0, 0.0),
    "pndm_sd15_n10_start3": (SD15, 10, 3, 0.0),
    "pndm_sd15_n10_start4": (SD15, 10, 4, 0.0),
    "pndm_linspace_v_n7": (dict(_class_name="PNDMScheduler", timestep_spacing="linspace",
                                prediction_type="v_prediction", set_alpha_to_one=True,
                                skip_prk_steps=True), 7, 0, 0.0),
    "pndm_trailing_n10": (dict(SD, _class_name="PNDMScheduler", timestep_spacing="trailing",
                               skip_prk_steps=True), 10, 0, 0.0),
    "ddim_sd21_n10": (SD21, 10, 0, 0.0),
    "ddim_sd21_n20_start6": (SD21, 20, 6, 0.0),
    "ddim_trailing_zsnr_v_n10": (dict(SD, _class_name="DDIMScheduler", rescale_betas_zero_snr=True,
                                      timestep_spacing="trailing", prediction_type="v_prediction",
                                      clip_sample=False), 10, 0, 0.0),
    "ddim_linspace_eta1_n10": (dict(_class_name="DDIMScheduler", timestep_spacing="linspace"),
                               10, 0, 1.0),
    "ddim_leading_clip2_eta05_n7": (dict(_class_name="DDIMScheduler", steps_offset=1,
                                         set_alpha_to_one=False, clip_sample_range=2.0,
                                         prediction_type="sample"), 7, 0, 0.5),
    "dpm_default_n10": (dict(SD, _class_name=DPM), 10, 0, 0.0),
    "dpm_default_n20": (dict(SD, _class_name=DPM), 20, 0, 0.0),
    "dpm_default_n10_start4": (dict(SD, _class_name=DPM), 10, 4, 0.0),
    "dpm_default_n20_start5": (dict(SD, _class_name=DPM), 20, 5, 0.0),
    "dpm_leading_n10": (dict(SD, _class_name=DPM, timestep_spacing="leading", steps_offset=1),
                        10, 0, 0.0),
    "dpm_leading_n20": (dict(SD, _class_name=DPM, timestep_spacing="leading", steps_offset=1),
                        20, 0, 0.0),
    "dpm_sigma_min_n10": (dict(SD, _class_name=DPM, final_sigmas_type="sigma_min"), 10, 0, 0.0),
    "dpm_sigma_min_n20": (dict(SD, _class_name=DPM, final_sigmas_type="sigma_min"), 20, 0, 0.0),
    "dpm_sigma_min_nolof_n10": (dict(SD, _class_name=DPM, final_sigmas_type="sigma_min",
                                     lower_order_final=False), 10, 0, 0.0),
    "dpm_sigma_min_euler_final_n20": (dict(SD, _class_name=DPM, final_sigmas_type="sigma_min",
                                           euler_at_final=True), 20, 0, 0.0),
    "dpm_heun_v_zsnr_trailing_n10": (dict(SD, _class_name=DPM, solver_type="heun",
                                          prediction_type="v_prediction",
                                          rescale_betas_zero_snr=True,
                                          timestep_spacing="trailing"), 10, 0, 0.0),
    "dpm_order1_n10": (dict(SD, _class_name=DPM, solver_order=1), 10, 0, 0.0),
    "dpm_sample_pred_n10": (dict(_class_name=DPM, prediction_type="sample"), 10, 0, 0.0),
    "dpm_cosine_lambda_clip_n10": (dict(_class_name=DPM, beta_schedule="squaredcos_cap_v2",
                                        lambda_min_clipped=-5.1), 10, 0, 0.0),
    "ddpm_leading_n10": (dict(_class_name="DDPMScheduler"), 10, 0, 0.0),
    "ddpm_trailing_fixed_large_n7": (dict(_class_name="DDPMScheduler", timestep_spacing="trailing",
                                          variance_type="fixed_large", clip_sample=False),
                                     7, 0, 0.0),
    "ddpm_sd_v_n10_start3": (dict(SD, _class_name="DDPMScheduler", prediction_type="v_prediction",
                                  clip_sample=False, steps_offset=1), 10, 3, 0.0),
    "ddpm_linspace_small_log_n10": (dict(_class_name="DDPMScheduler", timestep_spacing="linspace",
                                         variance_type="fixed_small_log",
                                         clip_sample_range=1.5), 10, 0, 0.0),
}


def analytic_model(x, t):
  """The stand-in model (same as generate_diffusion_fixtures.py): 0.1 x + 0.05 sin(t / 100)."""
  return 0.1 * x + 0.05 * math.sin(float(t) / 100.0)


def _np(x):
  return x.detach().cpu().numpy()


def _randn(shape, seed):
  return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)


def _make(config):
  """The scheduler as diffusers loads a scheduler_config.json holding `config`."""
  return CLASSES[config["_class_name"]].from_config(config)


def _save(name, arrays, cases=None):
  if cases is not None:
    arrays = dict(arrays, cases_json=np.array(json.dumps(cases)))
  path = os.path.join(OUT_DIR, name)
  np.savez_compressed(path, **arrays)
  print(f"wrote {path}: {len(arrays)} arrays, {os.path.getsize(path)} bytes")


def loops():
  x_T, x0_img, noise_img = _randn(SHAPE, 40), _randn(SHAPE, 41).clamp(-1, 1), _randn(SHAPE, 42)
  arrays = dict(x_T=_np(x_T), x0_img=_np(x0_img), noise_img=_np(noise_img))
  cases = []
  for seed, (name, (config, n, start, eta)) in enumerate(LOOPS.items()):
    s = _make(config)
    s.set_timesteps(n)
    full = s.timesteps.clone()
    table = full[start * s.order:]
    x = x_T.clone()
    if start:
      if hasattr(s, "set_begin_index"):
        s.set_begin_index(start * s.order)
      x = s.add_noise(x0_img, noise_img, table[:1])
      arrays[f"{name}__x_start"] = _np(x)
    x = x * s.init_noise_sigma
    gen = torch.Generator().manual_seed(1000 + seed)
    traj, noises = [], []
    for t in table:
      out = analytic_model(x, int(t))
      if isinstance(s, DDIMScheduler) and eta > 0:
        z = torch.randn(SHAPE, generator=gen)
        noises.append(_np(z))
        x = s.step(out, t, x, eta=eta, variance_noise=z).prev_sample
      elif isinstance(s, DDPMScheduler):
        state = gen.get_state()  # record the draw that step() is about to make
        noises.append(_np(torch.randn(SHAPE, generator=gen)))
        gen.set_state(state)
        x = s.step(out, t, x, generator=gen).prev_sample
      else:
        x = s.step(out, t, x).prev_sample
      traj.append(_np(x))
    arrays[f"{name}__timesteps"] = _np(full).astype(np.int64)
    arrays[f"{name}__traj"] = np.stack(traj)
    if noises:
      arrays[f"{name}__noise"] = np.stack(noises)
    assert np.all(np.isfinite(arrays[f"{name}__traj"])), name
    cases.append(dict(name=name, config=config, num_inference_steps=n, start=start, eta=eta))
  _save("schedulers_loops.npz", arrays, cases)


def timestep_tables():
  arrays, cases = {}, []
  steps = (1, 2, 3, 5, 7, 10, 14, 15, 20, 25, 50, 100, 999)
  configs = []
  for cls in CLASSES:
    for spacing in ("leading", "trailing", "linspace"):
      for offset in (0, 1):
        c = dict(_class_name=cls, timestep_spacing=spacing, steps_offset=offset)
        if cls == "PNDMScheduler":
          c["skip_prk_steps"] = True
        configs.append((c, steps))
  configs.append((dict(_class_name="DDIMScheduler", num_train_timesteps=50), (1, 7, 10, 50)))
  configs.append((dict(_class_name=DPM, num_train_timesteps=50), (1, 7, 10, 49)))
  for spacing in ("leading", "trailing", "linspace"):
    configs.append((dict(_class_name=DPM, beta_schedule="squaredcos_cap_v2",
                         lambda_min_clipped=-5.1, timestep_spacing=spacing), (5, 10, 25)))
  for c, ns in configs:
    for n in ns:
      s = _make(c)
      s.set_timesteps(n)
      key = f"case{len(cases)}"
      arrays[key] = _np(s.timesteps).astype(np.int64)
      cases.append(dict(key=key, config=c, num_inference_steps=n))
  _save("schedulers_timesteps.npz", arrays, cases)


def with_class():
  cifar = dict(_class_name="DDPMScheduler", beta_end=0.02, beta_schedule="linear",
               beta_start=0.0001, clip_sample=True, num_train_timesteps=1000, trained_betas=None,
               variance_type="fixed_large")
  dpm = dict(SD, _class_name=DPM, timestep_spacing="leading", steps_offset=1,
             use_karras_sigmas=False, lower_order_final=True, variance_type=None)
  out = []
  for src_name, src in (("sd15", SD15), ("sd21", SD21), ("ddpm_cifar10", cifar), ("dpm", dpm)):
    s = _make(src)
    for target, cls in CLASSES.items():
      c = cls.from_config(s.config)
      tables = {}
      for n in (10, 20):
        c.set_timesteps(n)
        tables[str(n)] = _np(c.timesteps).astype(np.int64).tolist()
      config = {k: v for k, v in dict(c.config).items() if not k.startswith("_")}
      out.append(dict(source=src_name, source_config=src, target=target, config=config,
                      use_default_values=sorted(c.config.get("_use_default_values", [])),
                      timesteps=tables))
  _save("schedulers_with_class.npz", {"with_class_json": np.array(json.dumps(out))})


if __name__ == "__main__":
  if diffusers.__version__ != "0.42.1":
    sys.exit(f"expected diffusers 0.42.1, found {diffusers.__version__}")
  torch.set_num_threads(1)
  loops()
  timestep_tables()
  with_class()
