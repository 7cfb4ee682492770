"""Diffusion core against closed forms computed independently in float64 numpy."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen import diffusion as D

T = 200


@pytest.fixture(scope="module")
def sched():
  return D.make_schedule("linear", T, beta_start=1e-4, beta_end=0.04)


def f64_alpha_bar(kind="linear", beta_start=1e-4, beta_end=0.04, n=T):
  betas = np.linspace(beta_start, beta_end, n, dtype=np.float64)
  return betas, np.cumprod(1.0 - betas)


def test_schedule_kinds_closed_forms():
  betas, ab = f64_alpha_bar()
  s = D.make_schedule("linear", T, beta_start=1e-4, beta_end=0.04)
  np.testing.assert_allclose(s.betas, betas, rtol=1e-6)
  np.testing.assert_allclose(s.alphas_cumprod, ab, rtol=2e-5)
  s = D.make_schedule("scaled_linear", T, beta_start=1e-4, beta_end=0.04)
  np.testing.assert_allclose(s.betas, np.linspace(1e-2, 0.2, T) ** 2, rtol=1e-6)
  s = D.make_schedule("cosine", T)
  f = lambda u: np.cos((u / T + 0.008) / 1.008 * np.pi / 2) ** 2
  # alpha_bar of the cosine schedule is f(t)/f(0) wherever the 0.999 cap is not active.
  np.testing.assert_allclose(s.alphas_cumprod[:-5], (f(np.arange(1, T + 1)) / f(0))[:-5],
                             rtol=1e-4)
  assert float(s.betas.max()) <= 0.999 + 1e-7


def test_zero_terminal_snr():
  s0 = D.make_schedule("linear", 1000)
  s = D.make_schedule("linear", 1000, rescale_zero_terminal_snr=True)
  assert float(s.alphas_cumprod[-1]) == 0.0
  np.testing.assert_allclose(s.alphas_cumprod[0], s0.alphas_cumprod[0], rtol=1e-6)
  # sqrt(alpha_bar) is an affine map of the original one (Lin et al. 2023, Alg. 1).
  a, b = np.sqrt(np.asarray(s0.alphas_cumprod, np.float64)), np.sqrt(s.alphas_cumprod)
  scale = a[0] / (a[0] - a[-1])
  np.testing.assert_allclose(b, (a - a[-1]) * scale, atol=2e-6)


def test_bad_schedule_args():
  with pytest.raises(ValueError, match="unknown schedule kind"):
    D.make_schedule("quadratic")
  with pytest.raises(ValueError, match="beta_start"):
    D.make_schedule("linear", beta_start=0.1, beta_end=0.01)


def test_q_sample_closed_form_and_moments(sched, key):
  _, ab = f64_alpha_bar()
  x0 = jax.random.uniform(key, (4, 3, 3, 2), minval=-1, maxval=1)
  t = jnp.array([0, 17, 100, T - 1])
  noise = jax.random.normal(jax.random.fold_in(key, 1), x0.shape)
  got = jax.jit(D.q_sample)(sched, x0, t, noise)
  a = ab[np.asarray(t)][:, None, None, None]
  want = np.sqrt(a) * np.asarray(x0, np.float64) + np.sqrt(1 - a) * np.asarray(noise)
  np.testing.assert_allclose(got, want, atol=1e-5)
  # Moments over many draws: mean sqrt(ab) x0, variance 1 - ab (Ho et al. eq. 4).
  n = 20000
  x0s = jnp.full((n, 1), 0.7)
  tt = jnp.full((n,), 60)
  xs = D.q_sample(sched, x0s, tt, jax.random.normal(jax.random.fold_in(key, 2), (n, 1)))
  assert abs(float(xs.mean()) - np.sqrt(ab[60]) * 0.7) < 4 * np.sqrt((1 - ab[60]) / n)
  assert abs(float(xs.var()) - (1 - ab[60])) < 0.03 * (1 - ab[60])


def test_prediction_conversions_roundtrip(sched, key):
  x0 = jax.random.normal(key, (3, 4, 4, 1))
  eps = jax.random.normal(jax.random.fold_in(key, 1), x0.shape)
  t = jnp.array([3, 50, 150])
  x_t = D.q_sample(sched, x0, t, eps)
  v = D.v_from_x0_eps(sched, x0, t, eps)
  for kind, out in (("epsilon", eps), ("sample", x0), ("v_prediction", v)):
    for to, want in (("epsilon", eps), ("sample", x0), ("v_prediction", v)):
      got = D.convert_output(sched, x_t, t, out, kind, to)
      np.testing.assert_allclose(got, want, atol=2e-3 if kind == "epsilon" and to != "epsilon"
                                 else 2e-4)


def _ddpm_reference(betas, x_t, t, eps, z, variance):
  """Ho et al. eq. 11 (and eq. 6-7 variances) in float64."""
  alphas = 1 - betas
  ab = np.cumprod(alphas)
  ab_prev = np.append(1.0, ab[:-1])
  mean = (x_t - betas[t] / np.sqrt(1 - ab[t]) * eps) / np.sqrt(alphas[t])
  var = betas[t] if variance == "fixed_large" else (1 - ab_prev[t]) / (1 - ab[t]) * betas[t]
  return mean + (np.sqrt(var) * z if t > 0 else 0.0)


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
@pytest.mark.parametrize("t", [0, 1, 57, T - 1])
def test_ddpm_step_matches_eq11(sched, key, variance, t):
  betas, _ = f64_alpha_bar()
  x_t, eps, z = (np.asarray(jax.random.normal(jax.random.fold_in(key, i), (2, 3, 3, 1)))
                 for i in range(3))
  got = D.ddpm_step(sched, jnp.asarray(x_t), t, jnp.asarray(eps), jnp.asarray(z),
                    variance_type=variance)
  want = _ddpm_reference(betas, x_t.astype(np.float64), t, eps, z, variance)
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


def test_ddpm_step_equals_posterior_mean_eq7(sched, key):
  """With the true x0 as the prediction, the step's mean is q(x_{t-1} | x_t, x_0)'s."""
  betas, ab = f64_alpha_bar()
  x0 = np.asarray(jax.random.uniform(key, (2, 2, 2, 1), minval=-1, maxval=1), np.float64)
  x_t = np.asarray(jax.random.normal(jax.random.fold_in(key, 1), x0.shape), np.float64)
  t = 80
  got = D.ddpm_step(sched, jnp.asarray(x_t, jnp.float32), t, jnp.asarray(x0, jnp.float32),
                    jnp.zeros(x0.shape), prediction_type="sample")
  want = (np.sqrt(ab[t - 1]) * betas[t] / (1 - ab[t]) * x0
          + np.sqrt(1 - betas[t]) * (1 - ab[t - 1]) / (1 - ab[t]) * x_t)
  np.testing.assert_allclose(got, want, atol=1e-5)


def test_respaced_ddpm_equals_respaced_schedule(sched, key):
  table = D.timesteps(T, 10, "trailing")
  sub = D.respace_schedule(sched, table)
  x_t, eps, z = (jax.random.normal(jax.random.fold_in(key, i), (2, 3, 3, 1)) for i in range(3))
  # Entry i of the table is index (n - 1 - i) of the respaced schedule.
  for i in (0, 4, 9):
    prev = table[i + 1] if i + 1 < table.size else -1
    a = D.ddpm_step(sched, x_t, int(table[i]), eps, z, prev_t=int(prev))
    b = D.ddpm_step(sub, x_t, table.size - 1 - i, eps, z)
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_ddim_step_formula_and_eta(sched, key):
  _, ab = f64_alpha_bar()
  x_t, eps, z = (np.asarray(jax.random.normal(jax.random.fold_in(key, i), (2, 3, 3, 1)),
                            np.float64) for i in range(3))
  t, p = 120, 80
  x0 = (x_t - np.sqrt(1 - ab[t]) * eps) / np.sqrt(ab[t])
  for eta in (0.0, 0.5, 1.0):
    sigma = eta * np.sqrt((1 - ab[p]) / (1 - ab[t]) * (1 - ab[t] / ab[p]))
    want = np.sqrt(ab[p]) * x0 + np.sqrt(1 - ab[p] - sigma ** 2) * eps + sigma * z
    got = D.ddim_step(sched, jnp.asarray(x_t, jnp.float32), t, p, jnp.asarray(eps, jnp.float32),
                      jnp.asarray(z, jnp.float32), eta=eta)
    np.testing.assert_allclose(got, want, atol=1e-4)
  # eta = 1 has the DDPM fixed_small variance.
  var = (1 - ab[p]) / (1 - ab[t]) * (1 - ab[t] / ab[p])
  post = (1 - ab[p]) / (1 - ab[t]) * (1 - ab[t] / ab[p])
  assert np.isclose(var, post)


def _gaussian_eps(sched, s2=0.25):
  """The exact eps-predictor for data ~ N(0, s2 I): E[eps | x_t] = sqrt(1-ab) x_t / (ab s2 + 1 - ab)."""
  def fn(x, t):
    ab = D.process.extract(sched.alphas_cumprod, t, x)
    return jnp.sqrt(1 - ab) * x / (ab * s2 + 1 - ab)
  return fn


def test_ddim_eta0_deterministic_and_inversion(sched, key):
  fn = _gaussian_eps(sched)
  table = D.timesteps(T, 100, "leading")
  shape = (4, 2, 2, 1)
  x_T = jax.random.normal(key, shape)
  run = jax.jit(lambda k, xt: D.sample(fn, sched, k, shape, table, method="ddim", x_T=xt))
  a = run(jax.random.fold_in(key, 1), x_T)
  b = run(jax.random.fold_in(key, 2), x_T)
  np.testing.assert_array_equal(a, b)  # eta = 0 ignores the step noise entirely
  # Inversion recovers x_T up to the discretization error, which shrinks with the step count.
  errs = []
  for n in (20, 100, T):
    tab = D.timesteps(T, n, "leading")
    x0 = D.sample(fn, sched, key, shape, tab, x_T=x_T)
    errs.append(float(jnp.max(jnp.abs(D.ddim_invert(fn, sched, x0, tab) - x_T))))
  # First-order convergence: error ~ 1/steps (5x and 2x more steps).
  assert errs[1] < 0.3 * errs[0] and errs[2] < 0.6 * errs[1], errs
  assert errs[2] < 0.02 * float(jnp.max(jnp.abs(x_T))), errs
  # With a model that ignores x, the inversion is exact step by step.
  const = lambda x, t: jnp.full_like(x, 0.3)
  x0 = D.sample(const, sched, key, shape, table, x_T=x_T)
  np.testing.assert_allclose(D.ddim_invert(const, sched, x0, table), x_T, atol=1e-4)


def test_sampler_compiles_once_for_any_step_count(sched, key):
  fn = _gaussian_eps(sched)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def run(k, table, eta):
    return D.sample(fn, sched, k, (2, 2, 2, 1), table, method="ddim", eta=eta)

  outs = [run(key, D.pad_table(D.timesteps(T, n, sp), T), eta)
          for n, sp, eta in ((5, "leading", 0.0), (50, "trailing", 1.0), (T, "linspace", 0.5))]
  assert all(o.shape == (2, 2, 2, 1) for o in outs)
  # Padding does not change the result.
  tab = D.timesteps(T, 7)
  np.testing.assert_allclose(run(key, D.pad_table(tab, T), 0.0),
                             D.sample(fn, sched, key, (2, 2, 2, 1), tab), atol=1e-6)


def test_sampler_ddpm_full_chain_matches_python_loop(sched, key):
  fn = _gaussian_eps(sched)
  shape = (2, 2, 2, 1)
  table = D.timesteps(T, T)
  noise = jax.random.normal(key, (T,) + shape)
  x_T = jax.random.normal(jax.random.fold_in(key, 9), shape)
  got, traj = D.sample(fn, sched, key, shape, table, method="ddpm", x_T=x_T, noise=noise,
                       return_trajectory=True)
  assert traj.shape == (T,) + shape
  x = x_T
  for i, t in enumerate(table):
    x = D.ddpm_step(sched, x, int(t), fn(x, jnp.full((2,), t)), noise[i])
  np.testing.assert_allclose(got, x, atol=1e-5)
  # Samples of the exact model for N(0, 0.25) data have about that variance.
  many = jax.jit(lambda k: D.sample(fn, sched, k, (4000, 1, 1, 1), table, method="ddpm"))(key)
  assert abs(float(many.var()) - 0.25) < 0.03


def test_sampler_vmaps_over_keys(sched, key):
  fn = _gaussian_eps(sched)
  table = D.timesteps(T, 10)
  keys = jax.random.split(key, 3)
  out = jax.vmap(lambda k: D.sample(fn, sched, k, (2, 2, 2, 1), table, eta=1.0))(keys)
  assert out.shape == (3, 2, 2, 2, 1)
  assert not np.allclose(out[0], out[1])


def test_timesteps_and_errors():
  np.testing.assert_array_equal(D.timesteps(1000, 5, "leading"), [800, 600, 400, 200, 0])
  np.testing.assert_array_equal(D.timesteps(1000, 5, "trailing"), [999, 799, 599, 399, 199])
  np.testing.assert_array_equal(D.timesteps(1000, 5, "linspace"), [999, 749, 500, 250, 0])
  np.testing.assert_array_equal(D.previous_timesteps([999, 799, 599], 1000, "diffusers"),
                                [666, 466, 266])
  with pytest.raises(ValueError, match="more than the 1000 timesteps"):
    D.timesteps(1000, 1001)
  with pytest.raises(ValueError, match="spacing"):
    D.timesteps(1000, 10, "uniform")
  with pytest.raises(ValueError, match="only 200 timesteps"):
    D.sample(lambda x, t: x, D.make_schedule("linear", 200), jax.random.key(0), (1, 2, 2, 1),
             np.array([500, 0]))


def test_diffusion_loss_closed_form(sched, key):
  x0 = jax.random.uniform(key, (5, 4, 4, 1), minval=-1, maxval=1)
  model = lambda x, t: 0.5 * x
  for kind in D.PREDICTION_TYPES:
    got = D.diffusion_loss(model, sched, x0, key, prediction_type=kind)
    t, eps = D.sample_t_and_noise(key, x0.shape, T)
    t, eps = np.asarray(t), np.asarray(eps, np.float64)
    assert t.min() >= 0 and t.max() < T and len(set(t.tolist())) > 1
    _, ab = f64_alpha_bar()
    a = ab[np.asarray(t)][:, None, None, None]
    xt = np.sqrt(a) * x0 + np.sqrt(1 - a) * eps
    target = {"epsilon": eps, "sample": x0,
              "v_prediction": np.sqrt(a) * eps - np.sqrt(1 - a) * x0}[kind]
    want = np.mean((0.5 * xt - target) ** 2, axis=(1, 2, 3))
    np.testing.assert_allclose(got, want, rtol=1e-4)
  # A shard with offset k draws what examples k.. of the whole batch draw.
  _, full = D.sample_t_and_noise(key, (6, 2), T)
  _, part = D.sample_t_and_noise(key, (3, 2), T, offset=3)
  np.testing.assert_array_equal(full[3:], part)


def test_normal_kl_matches_monte_carlo(key):
  m1, lv1, m2, lv2 = 0.3, np.log(0.5), -0.2, np.log(1.7)
  x = m1 + np.sqrt(0.5) * np.asarray(jax.random.normal(key, (400000,)), np.float64)
  logp = -0.5 * ((x - m1) ** 2 / 0.5 + lv1 + np.log(2 * np.pi))
  logq = -0.5 * ((x - m2) ** 2 / 1.7 + lv2 + np.log(2 * np.pi))
  assert abs(float(D.normal_kl(m1, lv1, m2, lv2)) - np.mean(logp - logq)) < 5e-3


def test_vb_term_zero_for_exact_x0_prediction(sched, key):
  x0 = jax.random.uniform(key, (3, 2, 2, 1), minval=-1, maxval=1)
  t = jnp.array([5, 50, 150])
  x_t = D.q_sample(sched, x0, t, jax.random.normal(key, x0.shape))
  kl = D.vb_terms_bpd(sched, x0, x_t, t, x0, prediction_type="sample")
  np.testing.assert_allclose(kl, 0.0, atol=1e-5)
  # Decoder term: exact mean on a bin centre with tiny variance gives ~0 bits.
  lp = D.discretized_gaussian_log_likelihood(jnp.array([0.0, 1.0, -1.0]), jnp.array(
      [0.0, 1.0, -1.0]), jnp.log(1e-4))
  np.testing.assert_allclose(lp, 0.0, atol=1e-4)


def test_step_input_errors(sched):
  x = jnp.zeros((2, 2, 2, 1))
  with pytest.raises(ValueError, match="model_output shape"):
    D.ddpm_step(sched, x, 3, jnp.zeros((2, 2, 2, 3)), x)
  with pytest.raises(ValueError, match="prediction_type"):
    D.ddim_step(sched, x, 3, 1, x, x, prediction_type="score")
  with pytest.raises(TypeError, match="integer timestep"):
    D.ddpm_step(sched, x, 3.5, x, x)
  with pytest.raises(ValueError, match="variance_type"):
    D.ddpm_step(sched, x, 3, x, x, variance_type="learned")
  with pytest.raises(ValueError, match=r"must lie in \[0, 199\]"):
    D.q_sample(sched, x, jnp.array([0, 200]), x)
  with pytest.raises(ValueError, match=r"must lie in \[-1, 199\]"):
    D.ddim_step(sched, x, 250, 100, x, x)
