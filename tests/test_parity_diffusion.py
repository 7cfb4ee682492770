"""Parity of jaxgen.diffusion with diffusers 0.42.1 (DDPMScheduler / DDIMScheduler).

The reference values come from tests/reference/generate_diffusion_fixtures.py (run once
with torch + diffusers); these tests need neither. Targets:
  * schedules: betas and alphas_cumprod within 1e-6 relative (float32);
  * q_sample and single DDPM / DDIM steps: within 1e-5 absolute;
  * timestep tables: exactly equal;
  * a 20-step DDIM loop with an analytic model: within 1e-3 relative.
Where diffusers departs from the papers (docs/differences_from_diffusers.md), the tests give
jaxgen diffusers' previous timestep explicitly, or check the documented difference itself.
"""
import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen import diffusion

REF_DIR = os.path.join(os.path.dirname(__file__), "reference")
STEP_ATOL = 1e-5
KIND = {"linear": "linear", "scaled_linear": "scaled_linear", "squaredcos_cap_v2": "cosine"}


@functools.lru_cache(maxsize=None)
def _load(name):
  with np.load(os.path.join(REF_DIR, name), allow_pickle=False) as f:
    return {k: f[k] for k in f.files}


def _cases(name):
  return json.loads(str(_load(name)["cases_json"]))


@functools.lru_cache(maxsize=None)
def _schedule(name):
  """The jaxgen schedule for a fixture schedule name, built from the diffusers arguments
  recorded in diffusion_schedules.npz."""
  (c,) = [c for c in _cases("diffusion_schedules.npz") if c["name"] == name]
  kw = {k: c[k] for k in ("beta_start", "beta_end") if k in c}
  return diffusion.make_schedule(
      KIND[c["beta_schedule"]], c.get("num_train_timesteps", 1000),
      rescale_zero_terminal_snr=c.get("rescale_betas_zero_snr", False), **kw)


def _max_abs(a, b):
  return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


# ---------------------------------------------------------------- schedules

@pytest.mark.parametrize("name", [c["name"] for c in _cases("diffusion_schedules.npz")])
def test_schedule_matches_diffusers(name):
  ref = _load("diffusion_schedules.npz")
  s = _schedule(name)
  T = ref[f"{name}__betas"].shape[0]
  for field in ("betas", "alphas", "alphas_cumprod"):
    got = getattr(s, field)
    assert got.dtype == jnp.float32 and got.shape == (T,), (field, got.dtype, got.shape)
  if name.endswith("_zsnr"):
    # Zero terminal SNR (Lin et al. 2023, Alg. 1) subtracts sqrt(alpha_bar_{T-1}) from every
    # sqrt(alpha_bar), so alpha_bar[-1] is exactly 0 and the tail of alpha_bar is float32
    # cancellation; alpha_t = alpha_bar_t / alpha_bar_{t-1} then divides two such numbers.
    # Against a float64 evaluation of the same algorithm the diffusers fixture itself is off by
    # up to 8e-7 on alpha_bar and 7e-6 on alpha_t = 1 - beta_t (torch's float32 sqrt is not
    # even correctly rounded on CPU), so bit parity is out of reach. Hence an absolute floor of
    # 1e-6 on alpha_bar and 1e-5 on alpha_t (not a relative bound on the smallest betas, which
    # one ulp of alpha_t moves by ~1e-3 relative).
    np.testing.assert_allclose(s.alphas_cumprod, ref[f"{name}__alphas_cumprod"], rtol=1e-6,
                               atol=1e-6)
    assert float(s.alphas_cumprod[-1]) == 0.0
    np.testing.assert_allclose(1.0 - np.asarray(s.betas), 1.0 - ref[f"{name}__betas"],
                               rtol=0, atol=1e-5)
  else:
    np.testing.assert_allclose(s.betas, ref[f"{name}__betas"], rtol=1e-6, atol=0)
    np.testing.assert_allclose(s.alphas_cumprod, ref[f"{name}__alphas_cumprod"], rtol=1e-6,
                               atol=0)


# ---------------------------------------------------------------- forward process

@pytest.mark.parametrize("name", ["linear", "scaled_linear", "cosine", "scaled_linear_zsnr",
                                  "linear_T50"])
def test_q_sample_matches_add_noise(name):
  ref = _load("diffusion_q_sample.npz")
  x0, noise, t = ref["x0"], ref["noise"], ref[f"{name}__t"]
  s = _schedule(name)
  got = jax.jit(diffusion.q_sample)(s, x0, jnp.asarray(t, jnp.int32), noise)  # [B] t
  assert got.shape == x0.shape and got.dtype == jnp.float32
  np.testing.assert_allclose(got, ref[f"{name}__out"], rtol=0, atol=STEP_ATOL)
  # A scalar t broadcasts over the batch.
  for b in range(len(t)):
    one = diffusion.q_sample(s, x0[b:b + 1], int(t[b]), noise[b:b + 1])
    np.testing.assert_allclose(one, ref[f"{name}__out"][b:b + 1], rtol=0, atol=STEP_ATOL)


# ---------------------------------------------------------------- timestep tables

@pytest.mark.parametrize("key", sorted(_load("diffusion_timesteps.npz")))
def test_timesteps_match_diffusers(key):
  ref = _load("diffusion_timesteps.npz")[key]
  T, n, spacing, off = key.split("_")
  T, n, off = int(T[1:]), int(n[1:]), int(off[3:])
  if ref.max() >= T:
    # diffusers' leading spacing with steps_offset=1 and n=T gives a table that starts at T,
    # an index its own step() cannot use; jaxgen refuses it (documented difference).
    with pytest.raises(ValueError, match="steps_offset"):
      diffusion.timesteps(T, n, spacing=spacing, steps_offset=off)
    return
  got = np.asarray(diffusion.timesteps(T, n, spacing=spacing, steps_offset=off))
  assert got.shape == ref.shape and np.issubdtype(got.dtype, np.integer)
  np.testing.assert_array_equal(got, ref)


# ---------------------------------------------------------------- DDPM step

@functools.partial(jax.jit, static_argnames=("prediction_type", "variance_type", "clip_sample",
                                             "default_prev"))
def _ddpm(schedule, x_t, t, prev_t, model_output, noise, *, prediction_type, variance_type,
          clip_sample, default_prev):
  return diffusion.ddpm_step(schedule, x_t, t, model_output, noise,
                             prev_t=None if default_prev else prev_t,
                             prediction_type=prediction_type, variance_type=variance_type,
                             clip_sample=clip_sample)


def _ddpm_case(c, ref):
  strided = c["num_inference_steps"] is not None
  return _ddpm(_schedule(c["schedule"]), ref["x_t"], jnp.int32(c["t"]), jnp.int32(c["prev_t"]),
               ref["model_output"], ref[c["name"] + "__noise"],
               prediction_type=c["prediction_type"], variance_type=c["variance_type"],
               clip_sample=c["clip_sample"], default_prev=not strided)


def _diffusers_adds_final_noise(c):
  """diffusers adds noise whenever t > 0, also on a last step with prev_t < 0."""
  return c["t"] > 0 and c["prev_t"] < 0


def test_ddpm_step_matches_diffusers():
  ref = _load("diffusion_ddpm_steps.npz")
  cases = [c for c in _cases("diffusion_ddpm_steps.npz") if not _diffusers_adds_final_noise(c)]
  assert len(cases) == 69
  errors = {c["name"]: _max_abs(_ddpm_case(c, ref), ref[c["name"] + "__out"]) for c in cases}
  bad = {k: v for k, v in errors.items() if not v <= STEP_ATOL}
  assert not bad, f"{len(bad)}/{len(errors)} DDPM cases off by more than {STEP_ATOL}: {bad}"


def test_ddpm_last_step_noise_differs_as_documented():
  """On a last step with t > 0 and prev_t < 0 (strided tables, steps_offset=1 or trailing),
  diffusers still adds sqrt(var) * z; jaxgen adds none, as Ho et al.'s Algorithm 2 sets z = 0
  on the last step. jaxgen must equal diffusers' output minus that noise term."""
  ref = _load("diffusion_ddpm_steps.npz")
  cases = [c for c in _cases("diffusion_ddpm_steps.npz") if _diffusers_adds_final_noise(c)]
  assert len(cases) == 4
  for c in cases:
    ab_t = np.float64(_load("diffusion_schedules.npz")["linear__alphas_cumprod"][c["t"]])
    # diffusers' variance with alpha_bar_prev = 1: fixed_small -> 0 clamped to 1e-20,
    # fixed_large -> current beta = 1 - alpha_bar_t / 1.
    var = 1e-20 if c["variance_type"] == "fixed_small" else 1.0 - ab_t
    expected = ref[c["name"] + "__out"] - np.sqrt(var) * ref[c["name"] + "__noise"]
    got = _ddpm_case(c, ref)
    assert _max_abs(got, expected) <= STEP_ATOL, c["name"]
    if c["variance_type"] == "fixed_large":
      assert _max_abs(got, ref[c["name"] + "__out"]) > 1e-3  # the difference is real


def test_ddpm_step_per_example_t():
  ref = _load("diffusion_ddpm_steps.npz")
  t = jnp.asarray(ref["batched_t__t"], jnp.int32)  # [B]: one example at t=0, one at t>0
  got = jax.jit(diffusion.ddpm_step, static_argnames=("prediction_type", "variance_type",
                                                      "clip_sample"))(
      _schedule("linear"), ref["x_t"], t, ref["model_output"], ref["batched_t__noise"])
  np.testing.assert_allclose(got, ref["batched_t__out"], rtol=0, atol=STEP_ATOL)


# ---------------------------------------------------------------- DDIM step

_TRACES = {"ddim": 0}


@functools.partial(jax.jit, static_argnames=("prediction_type", "clip_sample"))
def _ddim(schedule, x_t, t, prev_t, model_output, noise, eta, *, prediction_type, clip_sample):
  _TRACES["ddim"] += 1
  return diffusion.ddim_step(schedule, x_t, t, prev_t, model_output, noise, eta=eta,
                             prediction_type=prediction_type, clip_sample=clip_sample)


# At t = T-1 of a zero-SNR schedule with eta = 1, sigma^2 = 1 - alpha_bar_prev exactly, so the
# direction coefficient sqrt(1 - alpha_bar_prev - sigma^2) is exactly 0; in float32 diffusers
# gets sqrt(+6e-8) = 2.4e-4 from rounding (numpy's correctly rounded float32 gets -6e-8, a
# NaN in diffusers' formula). This case is checked against the closed form instead.
_DDIM_ROUNDING_CASES = ("zsnr_trailing20_i0_v_prediction_eta1_clip0",)


def _ddim_case(c, ref):
  return _ddim(_schedule(c["schedule"]), ref["x_t"], jnp.int32(c["t"]), jnp.int32(c["prev_t"]),
               ref["model_output"], ref[c["name"] + "__noise"], jnp.float32(c["eta"]),
               prediction_type=c["prediction_type"], clip_sample=c["clip_sample"])


def test_ddim_step_matches_diffusers():
  ref = _load("diffusion_ddim_steps.npz")
  cases = [c for c in _cases("diffusion_ddim_steps.npz") if c["name"] not in _DDIM_ROUNDING_CASES]
  assert len(cases) == 118
  traces0 = _TRACES["ddim"]
  errors = {c["name"]: _max_abs(_ddim_case(c, ref), ref[c["name"] + "__out"]) for c in cases}
  bad = {k: v for k, v in errors.items() if not v <= STEP_ATOL}
  assert not bad, f"{len(bad)}/{len(errors)} DDIM cases off by more than {STEP_ATOL}: {bad}"
  # t, prev_t, eta and the schedule are traced: one compile per (prediction type, clip flag).
  assert _TRACES["ddim"] - traces0 <= 6


def test_ddim_zero_snr_first_step_matches_closed_form():
  """alpha_bar_t = 0, eta = 1: x0 = -v, and x_prev = sqrt(ab_prev) x0 + sqrt(1 - ab_prev) z."""
  ref = _load("diffusion_ddim_steps.npz")
  (c,) = [c for c in _cases("diffusion_ddim_steps.npz") if c["name"] in _DDIM_ROUNDING_CASES]
  ab_prev = np.float64(_load("diffusion_schedules.npz")[c["schedule"] + "__alphas_cumprod"][
      c["prev_t"]])
  expected = (np.sqrt(ab_prev) * -ref["model_output"].astype(np.float64)
              + np.sqrt(1.0 - ab_prev) * ref[c["name"] + "__noise"])
  got = _ddim_case(c, ref)
  assert _max_abs(got, expected) <= STEP_ATOL
  # diffusers' float32 rounding puts it within 1e-3 of the same value.
  assert _max_abs(ref[c["name"] + "__out"], expected) <= 1e-3


def test_ddim_step_per_example_t():
  ref = _load("diffusion_ddim_steps.npz")
  got = _ddim(_schedule("linear"), ref["x_t"], jnp.asarray(ref["batched_t__t"], jnp.int32),
              jnp.asarray(ref["batched_t__prev_t"], jnp.int32), ref["model_output"],
              ref["batched_t__noise"], jnp.float32(1.0), prediction_type="epsilon",
              clip_sample=False)
  np.testing.assert_allclose(got, ref["batched_t__out"], rtol=0, atol=STEP_ATOL)


def test_diffusers_ddim_prev_t_is_not_the_next_table_entry():
  """Pins the diffusers behaviour the fixtures encode (huggingface/diffusers#12633 and #9261): DDIM's step()
  uses prev_t = t - T // n, which is the next table entry only when the table is evenly
  spaced by T // n. If a diffusers upgrade changes this, the fixtures must be regenerated and
  docs/differences_from_diffusers.md updated."""
  cases = {c["name"]: c for c in _cases("diffusion_ddim_steps.npz")}
  for name, c in cases.items():
    assert c["prev_t"] == c["t"] - 1000 // c["num_inference_steps"], name
  table = np.asarray(diffusion.timesteps(1000, 20, spacing="linspace"))
  c = cases["linspace20_i0_epsilon_eta0_clip0"]
  assert (c["t"], c["prev_t"], c["table_next"]) == (999, 949, int(table[1])) and table[1] == 946
  c = cases["trailing7_i0_epsilon_eta1_clip0"]
  assert (c["t"], c["prev_t"], c["table_next"]) == (999, 857, 856)
  c = cases["leading20_i0_epsilon_eta0_clip0"]
  assert c["prev_t"] == c["table_next"]  # leading: the two rules agree


# ---------------------------------------------------------------- 20-step DDIM loop

def _analytic_model(x, t):
  """The same stand-in denoiser as the fixture generator: 0.1 x_t + 0.05 sin(t / 100)."""
  return 0.1 * x + 0.05 * jnp.sin(t.astype(jnp.float32) / 100.0)


@functools.partial(jax.jit, static_argnames=("prediction_type",))
def _ddim_loop(schedule, x_T, ts, prev_ts, *, prediction_type):
  def body(x, tp):
    t, prev_t = tp
    x = diffusion.ddim_step(schedule, x, t, prev_t, _analytic_model(x, t), jnp.zeros_like(x),
                            eta=0.0, prediction_type=prediction_type, clip_sample=False)
    return x, x
  _, xs = jax.lax.scan(body, x_T, (ts, prev_ts))
  return xs  # [steps, B, H, W, C]


@pytest.mark.parametrize("case", _cases("diffusion_ddim_loops.npz"), ids=lambda c: c["name"])
def test_ddim_20_step_loop_matches_diffusers(case):
  ref = _load("diffusion_ddim_loops.npz")
  name = case["name"]
  ts = jnp.asarray(ref[name + "__t"], jnp.int32)
  np.testing.assert_array_equal(
      ts, diffusion.timesteps(1000, 20, spacing=case["timestep_spacing"]))
  xs = _ddim_loop(_schedule(case["schedule"]), ref["x_T"], ts,
                  jnp.asarray(ref[name + "__prev_t"], jnp.int32),
                  prediction_type=case["prediction_type"])
  for got, want in ((xs[9], ref[name + "__x_mid"]), (xs[-1], ref[name + "__x0"])):
    rel = np.linalg.norm(np.asarray(got, np.float64) - want) / np.linalg.norm(want)
    assert rel <= 1e-3, f"{name}: relative error {rel:.2e}"
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3 * np.abs(want).max())
