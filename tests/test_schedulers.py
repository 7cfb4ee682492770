"""jaxgen.diffusion.schedulers, DPM-Solver++(2M) and PLMS against diffusers 0.42.1 fixtures and
closed forms.

The fixtures come from tests/reference/generate_scheduler_fixtures.py (torch + diffusers, run
once); these tests need neither. Targets: timestep tables exactly equal; sampling loops (every
step of the run, txt2img and img2img) within 1e-5 relative (measured: at most 3.7e-7, PNDM
1.4e-7..3.7e-7, DDIM 1.2e-7..2.2e-7, DPM-Solver++ 1.8e-7..3.5e-7, DDPM 1.1e-7..2.9e-7);
``add_noise`` within 1e-6 absolute.
"""
import functools
import json
import math
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen import diffusion as D
from jaxgen.diffusion.schedulers import (SUPPORTED_SCHEDULERS, SchedulerConfig,
                                         load_scheduler_config, scheduler_sample)

REF_DIR = os.path.join(os.path.dirname(__file__), "reference")
PIPE_DIR = os.path.join(os.path.dirname(__file__), os.pardir, "jaxgen", "pipelines", "configs")
LOOP_RTOL = 1e-5


@functools.lru_cache(maxsize=None)
def _load(name):
  with np.load(os.path.join(REF_DIR, name), allow_pickle=False) as f:
    return {k: f[k] for k in f.files}


def _cases(name, key="cases_json"):
  return json.loads(str(_load(name)[key]))


def analytic_model(x, t):
  """The fixture generator's stand-in model: 0.1 x + 0.05 sin(t / 100)."""
  return 0.1 * x + 0.05 * jnp.sin(t.astype(jnp.float32) / 100.0)[:, None, None, None]


def _rel(got, want):
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  return float(np.linalg.norm(got - want) / np.linalg.norm(want))


# ---------------------------------------------------------------- parity with diffusers

def test_timesteps_match_diffusers():
  ref = _load("schedulers_timesteps.npz")
  cases = _cases("schedulers_timesteps.npz")
  assert len(cases) == 329
  for c in cases:
    want, cfg = ref[c["key"]], SchedulerConfig.from_diffusers_dict(c["config"])
    if want.max() >= cfg.num_train_timesteps:
      # leading + steps_offset=1 with n close to T: diffusers' table reaches T, an index its
      # own step() cannot use; jaxgen refuses it (docs/differences_from_diffusers.md, item 7).
      with pytest.raises(ValueError, match="steps_offset"):
        cfg.timesteps(c["num_inference_steps"])
      continue
    got = cfg.timesteps(c["num_inference_steps"])
    assert got.dtype == np.int32, c
    np.testing.assert_array_equal(got, want, err_msg=str(c))


@functools.partial(jax.jit, static_argnames=("config", "eta", "n", "start"))
def _run(config, x, noise, *, eta, n, start):
  return scheduler_sample(config, analytic_model, x, None, n, start=start, eta=eta, noise=noise,
                          return_trajectory=True)[1]


@pytest.mark.parametrize("case", _cases("schedulers_loops.npz"), ids=lambda c: c["name"])
def test_sample_loop_matches_diffusers(case):
  ref, name = _load("schedulers_loops.npz"), case["name"]
  cfg = SchedulerConfig.from_diffusers_dict(case["config"])
  n, start = case["num_inference_steps"], case["start"]
  table = cfg.timesteps(n)
  np.testing.assert_array_equal(table, ref[name + "__timesteps"])
  x = ref["x_T"]
  if start:  # img2img: the start latent is add_noise at the run's first timestep
    x = cfg.add_noise(ref["x0_img"], ref["noise_img"], int(table[start]))
    np.testing.assert_allclose(x, ref[name + "__x_start"], rtol=0, atol=1e-6)
  traj = _run(cfg, x, ref.get(name + "__noise"), eta=case["eta"], n=n, start=start)
  want = ref[name + "__traj"]
  assert traj.shape == want.shape == (table.size - start,) + x.shape
  errors = [_rel(g, w) for g, w in zip(traj, want)]
  assert max(errors) <= LOOP_RTOL, f"{name}: relative errors per step {errors}"


def test_loop_fixtures_exercise_the_final_step_rules():
  """The lower_order_final cases differ from each other, so the parity above pins the rule:
  with final_sigmas_type="sigma_min", the last step is first order below 15 steps, second
  order from 15 on unless euler_at_final."""
  ref = _load("schedulers_loops.npz")
  last = lambda name: ref[name + "__traj"][-1]
  assert _rel(last("dpm_sigma_min_n10"), last("dpm_sigma_min_nolof_n10")) > 1e-3
  assert _rel(last("dpm_sigma_min_n20"), last("dpm_sigma_min_euler_final_n20")) > 1e-4
  assert _rel(last("dpm_sigma_min_n20"), last("dpm_default_n20")) > 1e-4


def test_with_class_matches_diffusers_from_config():
  entries = _cases("schedulers_with_class.npz", "with_class_json")
  assert len(entries) == 16
  for e in entries:
    src = SchedulerConfig.from_diffusers_dict(e["source_config"])
    if e["target"] == "PNDMScheduler" and not e["config"]["skip_prk_steps"]:
      with pytest.raises(ValueError, match="skip_prk_steps"):
        src.with_class(e["target"])
      continue
    cfg = src.with_class(e["target"])
    assert cfg.class_name == e["target"]
    want = {k: v for k, v in e["config"].items() if k in D.schedulers.DEFAULTS[e["target"]]}
    assert dict(cfg.params) == want, (e["source"], e["target"])
    d = cfg.to_diffusers_dict()
    assert {k: v for k, v in d.items() if not k.startswith("_")} == e["config"]
    assert d["_use_default_values"] == e["use_default_values"]
    assert SchedulerConfig.from_diffusers_dict(d) == cfg
    for n, table in e["timesteps"].items():
      np.testing.assert_array_equal(cfg.timesteps(int(n)), table)


# ---------------------------------------------------------------- configs, loading, errors

def test_load_published_configs():
  sd15 = load_scheduler_config(os.path.join(PIPE_DIR, "stable-diffusion-v1-5"))
  assert sd15.class_name == "PNDMScheduler" and sd15.method == "plms"
  assert sd15.params["steps_offset"] == 1 and sd15.prediction_type == "epsilon"
  ac = np.asarray(sd15.schedule().alphas_cumprod)
  assert sd15.final_alpha_bar == pytest.approx(float(ac[0])) and sd15.init_noise_sigma == 1.0
  np.testing.assert_array_equal(sd15.timesteps(5), [801, 601, 601, 401, 201, 1])
  sd21 = load_scheduler_config(os.path.join(PIPE_DIR, "stable-diffusion-2-1", "scheduler"))
  assert (sd21.class_name, sd21.prediction_type) == ("DDIMScheduler", "v_prediction")
  assert sd21 == load_scheduler_config(
      os.path.join(PIPE_DIR, "stable-diffusion-2-1", "scheduler", "scheduler_config.json"))
  dpm = sd15.with_class("DPMSolverMultistepScheduler")
  assert dpm.params["timestep_spacing"] == "linspace" and dpm.final_alpha_bar == 1.0
  assert hash(dpm) == hash(sd15.with_class("DPMSolverMultistepScheduler"))
  trailing = sd21.with_options(timestep_spacing="trailing")
  np.testing.assert_array_equal(trailing.timesteps(4), [999, 749, 499, 249])
  with pytest.raises(FileNotFoundError, match="scheduler/scheduler_config.json"):
    load_scheduler_config(PIPE_DIR)


@pytest.mark.parametrize("config, match", [
    ({"_class_name": "EulerDiscreteScheduler"}, "unsupported scheduler class.*DDIMScheduler"),
    ({"beta_start": 0.1}, "no _class_name"),
    ({"_class_name": "DDIMScheduler", "beta_scedule": "linear"}, r"unknown .*\['beta_scedule'\]"),
    ({"_class_name": "DDIMScheduler", "thresholding": True}, "thresholding=True"),
    ({"_class_name": "DDIMScheduler", "clip_sample": "no"}, "true or false"),
    ({"_class_name": "DDIMScheduler", "beta_schedule": "sigmoid"}, "squaredcos_cap_v2"),
    ({"_class_name": "DDIMScheduler", "timestep_spacing": "uniform"}, "leading"),
    ({"_class_name": "DDPMScheduler", "variance_type": "learned_range"}, "fixed_large"),
    ({"_class_name": "DDPMScheduler", "trained_betas": [0.1, 0.2]}, "trained_betas"),
    ({"_class_name": "DDPMScheduler", "beta_start": 0.1}, "beta_start <= beta_end"),
    ({"_class_name": "PNDMScheduler"}, "skip_prk_steps=False.*Runge-Kutta"),
    ({"_class_name": "PNDMScheduler", "skip_prk_steps": True, "prediction_type": "sample"},
     "'epsilon', 'v_prediction'"),
    ({"_class_name": "DPMSolverMultistepScheduler", "use_karras_sigmas": True},
     "use_karras_sigmas=True"),
    ({"_class_name": "DPMSolverMultistepScheduler", "algorithm_type": "sde-dpmsolver++"},
     r"expected one of \('dpmsolver\+\+',\)"),
    ({"_class_name": "DPMSolverMultistepScheduler", "solver_order": 3}, r"\(1, 2\)"),
    ({"_class_name": "DPMSolverMultistepScheduler", "solver_type": "bh2"}, "heun"),
    ({"_class_name": "DPMSolverMultistepScheduler", "variance_type": "learned"}, "learned"),
])
def test_config_errors(config, match):
  with pytest.raises(ValueError, match=match):
    SchedulerConfig.from_diffusers_dict(config)


def test_keys_without_effect_are_kept():
  """Keys of other diffusers schedulers and of the other three classes are kept (they
  come back in to_diffusers_dict and count after with_class), and change nothing here."""
  d = {"_class_name": "DDIMScheduler", "_diffusers_version": "0.30.0", "interpolation_type":
       "linear", "solver_order": 2, "skip_prk_steps": True, "_use_default_values": ["eta"]}
  cfg = SchedulerConfig.from_diffusers_dict(d)
  assert cfg.params == SchedulerConfig("DDIMScheduler").params
  out = cfg.to_diffusers_dict()
  assert out["interpolation_type"] == "linear" and "_diffusers_version" not in out
  assert cfg.with_class("PNDMScheduler").params["skip_prk_steps"] is True
  with pytest.raises(ValueError, match="solver_order=3"):
    cfg.with_options(solver_order=3).with_class("DPMSolverMultistepScheduler")


def test_scheduler_sample_argument_errors():
  cfg = SchedulerConfig("DDPMScheduler")
  x = jnp.zeros((1, 2, 2, 1))
  with pytest.raises(ValueError, match="needs a PRNG key"):
    scheduler_sample(cfg, analytic_model, x, None, 5)
  with pytest.raises(ValueError, match=r"start=7 must lie in \[0, 5\]"):
    scheduler_sample(cfg, analytic_model, x, jax.random.key(0), 5, start=7)
  with pytest.raises(ValueError, match="no noise"):
    scheduler_sample(cfg.with_class("DPMSolverMultistepScheduler"), analytic_model, x, None, 5,
                     noise=jnp.zeros((5,) + x.shape))
  with pytest.raises(TypeError, match="SchedulerConfig"):
    scheduler_sample({"_class_name": "DDIMScheduler"}, analytic_model, x, None, 5)


# ---------------------------------------------------------------- behaviour

def test_jit_compiles_once_for_any_eta(key):
  cfg = load_scheduler_config(os.path.join(PIPE_DIR, "stable-diffusion-2-1"))

  @functools.partial(jax.jit, static_argnames=("n",))
  @chex.assert_max_traces(n=1)
  def run(x, k, eta, *, n):
    return scheduler_sample(cfg, analytic_model, x, k, n, eta=eta)

  x = jax.random.normal(key, (2, 4, 4, 1))
  outs = [run(x, jax.random.fold_in(key, 1), jnp.float32(e), n=6) for e in (0.0, 0.5, 1.0)]
  assert not np.allclose(outs[0], outs[2])
  # eta = 0 draws nothing: the key does not matter; the same eta with another key differs.
  np.testing.assert_array_equal(outs[0], run(x, jax.random.fold_in(key, 2), jnp.float32(0.0), n=6))
  assert not np.allclose(outs[1], run(x, jax.random.fold_in(key, 2), jnp.float32(0.5), n=6))


def test_dpmpp_with_cfg_wrapped_denoiser(key):
  """DPM-Solver++ takes any denoiser: a cfg-guided one gives what the hand-combined model
  gives, through scheduler_sample and through sample(method="dpmpp_2m")."""
  cfg = load_scheduler_config(os.path.join(PIPE_DIR, "stable-diffusion-v1-5")).with_class(
      "DPMSolverMultistepScheduler")
  labels, null, scale = jnp.array([0, 1, 2]), 3, 4.0

  def model_fn(x, t, y):
    return 0.1 * x + 0.05 * jnp.sin(t / 100.0 + y)[:, None, None, None]

  def by_hand(x, t):
    u = model_fn(x, t, jnp.full_like(labels, null))
    return u + scale * (model_fn(x, t, labels) - u)

  guided = D.cfg(model_fn, labels, null, scale)
  x = jax.random.normal(key, (3, 4, 4, 2))
  a = jax.jit(lambda x: scheduler_sample(cfg, guided, x, None, 8))(x)
  np.testing.assert_allclose(a, scheduler_sample(cfg, by_hand, x, None, 8), atol=1e-5)
  table = cfg.timesteps(8)
  b = D.sample(guided, cfg.schedule(), None, x.shape, D.pad_table(table, 12), method="dpmpp_2m",
               x_T=x)
  np.testing.assert_allclose(b, a, atol=1e-5)  # diffusers' rule = the paper's for 8 steps


def test_negative_prev_t_means_past_the_last_step(key):
  s = D.make_schedule("scaled_linear", 1000, beta_start=0.00085, beta_end=0.012)
  x, out, z = (jax.random.normal(jax.random.fold_in(key, i), (2, 3, 3, 1)) for i in range(3))
  a = D.ddim_step(s, x, 1, -20, out, z, eta=0.5)
  np.testing.assert_array_equal(a, D.ddim_step(s, x, 1, -1, out, z, eta=0.5))
  ac0 = s.alphas_cumprod[0]
  b = D.ddim_step(s, x, 1, -19, out, z, final_alpha_bar=ac0)
  np.testing.assert_allclose(b, D.ddim_step(s, x, 1, 0, out, z), atol=1e-6)
  fab = jnp.array([1.0, ac0])  # per example
  c = D.ddim_step(s, x, jnp.array([1, 1]), jnp.array([-5, -19]), out, z, final_alpha_bar=fab)
  np.testing.assert_allclose(c[:1], D.ddim_step(s, x, 1, -1, out, z)[:1], atol=1e-6)
  np.testing.assert_allclose(c[1:], b[1:], atol=1e-6)
  np.testing.assert_array_equal(D.ddpm_step(s, x, 1, out, z, prev_t=-20),
                                D.ddpm_step(s, x, 1, out, z, prev_t=-1))
  with pytest.raises(ValueError, match=r"must lie in \[-1, 999\].*any negative"):
    D.ddim_step(s, x, 1000, -3, out, z)


def test_dpmpp_first_order_step_is_ddim(key):
  s = D.make_schedule("linear", 1000)
  x, out = (jax.random.normal(jax.random.fold_in(key, i), (2, 3, 3, 1)) for i in range(2))
  for t, prev, pred in ((999, 899, "epsilon"), (500, 0, "v_prediction"), (40, -1, "sample")):
    got = D.dpmpp_2m_step(s, x, t, prev, out, prediction_type=pred)
    want = D.ddim_step(s, x, t, prev, out, None, prediction_type=pred)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def _gaussian_eps(schedule, s2):
  """The exact eps-predictor for data ~ N(0, s2 I): sqrt(1 - ab) x / (ab s2 + 1 - ab)."""
  def fn(x, t):
    ab = schedule.alphas_cumprod[t][:, None, None, None]
    return jnp.sqrt(1.0 - ab) * x / (ab * s2 + 1.0 - ab)
  return fn


def test_samplers_converge_to_the_gaussian_flow(key):
  """For N(0, s^2) data the probability-flow ODE is linear: from timestep t to t' the exact
  solution scales x by sqrt(var_t' / var_t), var_t = ab_t s^2 + 1 - ab_t. Over tables uniform
  in lambda = log(alpha / sigma) (the spacing Lu et al. 2022 analyse), DDIM's error halves with
  twice the steps (first order), DPM-Solver++(2M)'s falls about 4x (second order), and both
  multistep methods are far more accurate than DDIM."""
  s2, T = 0.25, 1000
  sched = D.make_schedule("scaled_linear", T, beta_start=0.00085, beta_end=0.012)
  ac = np.asarray(sched.alphas_cumprod, np.float64)
  gain = math.sqrt((ac[0] * s2 + 1 - ac[0]) / (ac[-1] * s2 + 1 - ac[-1]))  # t = 999 -> 0
  lam = 0.5 * np.log(ac / (1 - ac))
  fn = _gaussian_eps(sched, s2)
  x_T = jax.random.normal(key, (4, 1, 1, 1))
  err = {}
  for n in (10, 20):
    t = np.array([np.argmin(np.abs(lam - p)) for p in np.linspace(lam[-1], lam[0], n + 1)])
    table, prev = (D.pad_table(a, 20) for a in (t[:-1], t[1:]))  # the last step ends at t = 0
    assert len(set(t)) == n + 1
    for method in ("ddim", "plms"):
      x = D.sample(fn, sched, None, x_T.shape, table, method=method, prev_table=prev, x_T=x_T)
      err[method, n] = float(jnp.max(jnp.abs(x / x_T - gain)))
    x = D.dpmpp_2m_sample(fn, sched, x_T, table, prev_table=prev, lower_order_final=False)
    err["dpmpp_2m", n] = float(jnp.max(jnp.abs(x / x_T - gain)))
  assert 1.6 < err["ddim", 10] / err["ddim", 20] < 2.4, err
  assert 2.8 < err["dpmpp_2m", 10] / err["dpmpp_2m", 20] < 5.0, err
  for m in ("dpmpp_2m", "plms"):
    assert err[m, 10] < 0.2 * err["ddim", 10] and err[m, 20] < 0.1 * err["ddim", 20], err


def test_plms_generic_sampler_equals_the_pndm_scheduler(key):
  """sample(method="plms") with diffusers' previous-timestep rule is the PNDM loop; padding
  changes nothing."""
  cfg = load_scheduler_config(os.path.join(PIPE_DIR, "stable-diffusion-v1-5"))
  x = jax.random.normal(key, (2, 4, 4, 1))
  want = scheduler_sample(cfg, analytic_model, x, None, 12)
  table = D.timesteps(1000, 12, "leading", steps_offset=1)
  prev = D.previous_timesteps(table, 1000, "diffusers")
  got = D.sample(analytic_model, cfg.schedule(), None, x.shape, D.pad_table(table, 20),
                 method="plms", prev_table=np.pad(prev, (0, 8), constant_values=-1), x_T=x,
                 final_alpha_bar=cfg.final_alpha_bar)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(D.plms_table(np.array([9, 5, 1])), [9, 5, 5, 1])
  np.testing.assert_array_equal(D.plms_table(np.array([9])), [9])


def test_ddpm_scheduler_draws_fresh_noise_per_key(key):
  cfg = SchedulerConfig("DDPMScheduler", {"clip_sample": False})
  x = jax.random.normal(key, (2, 4, 4, 1))
  a, b = (scheduler_sample(cfg, analytic_model, x, jax.random.fold_in(key, i), 5)
          for i in (1, 2))
  assert not np.allclose(a, b)
  assert SUPPORTED_SCHEDULERS == ("DDIMScheduler", "DDPMScheduler",
                                  "DPMSolverMultistepScheduler", "PNDMScheduler")
