"""Guidance transforms against their formulas, the classifier gradient against finite
differences, the DDPM mean-shift hook, compile-once sampling across scales, condition dropout,
the noisy-classifier step, clear errors, and the runner's sweep on smoke configs."""
import json
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxgen import diffusion as D
from jaxgen.nn import UNet2D, UNetConfig, init_unet
from jaxgen.nn.noisy_classifier import (NoisyClassifier, NoisyClassifierConfig,
                                        init_noisy_classifier)
from jaxgen.training import diffusion_loss_fn, noisy_classifier_loss_fn

T = 100
K = 3  # real classes; label K is the null class
B = 4


@pytest.fixture(scope="module")
def sched():
  return D.make_schedule("linear", T, beta_start=1e-4, beta_end=0.05)


def toy_model_fn(w, bias):
  """A deterministic, nonlinear stand-in for a conditional network: out depends on x, t and
  the label through a per-label weight."""
  def model_fn(x, t, y):
    return jnp.tanh(x * w[y][:, None, None, None] + bias[y][:, None, None, None]
                    + 0.01 * t[:, None, None, None].astype(jnp.float32))
  return model_fn


@pytest.fixture(scope="module")
def toy():
  k = jax.random.key(7)
  w = jax.random.normal(jax.random.fold_in(k, 0), (K + 1,))
  bias = jax.random.normal(jax.random.fold_in(k, 1), (K + 1,))
  x = jax.random.normal(jax.random.fold_in(k, 2), (B, 4, 4, 2))
  t = jnp.array([0, 5, 50, 99], jnp.int32)
  return toy_model_fn(w, bias), x, t


def test_cfg_equals_formula_and_endpoints(toy):
  f, x, t = toy
  y = jnp.array([0, 1, 2, 1])
  c, u = f(x, t, y), f(x, t, jnp.full((B,), K))
  for g in (0.0, 1.0, 2.5, -1.0):
    out = D.cfg(f, y, K, jnp.float32(g))(x, t)
    np.testing.assert_allclose(out, u + g * (c - u), rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(D.cfg(f, y, K, 0.0)(x, t), u)          # scale 0: unconditional
  np.testing.assert_allclose(D.cfg(f, y, K, 1.0)(x, t), c, atol=1e-6)  # scale 1: conditional
  gs = jnp.array([0.0, 1.0, 3.0, 5.0])  # per-example scales
  np.testing.assert_allclose(D.cfg(f, y, K, gs)(x, t),
                             u + gs[:, None, None, None] * (c - u), rtol=1e-6, atol=1e-6)


def test_negative_forms_and_rescale_equal_formulas(toy):
  f, x, t = toy
  y, yn = jnp.array([0, 1, 2, 0]), jnp.array([1, 2, 0, 2])
  c, n, u = f(x, t, y), f(x, t, yn), f(x, t, jnp.full((B,), K))
  g, gn = 3.0, 1.5
  np.testing.assert_allclose(D.cfg_negative(f, y, yn, K, g, gn)(x, t),
                             u + g * (c - u) - gn * (n - u), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(D.cfg_negative(f, y, yn, K, g, 0.0)(x, t),
                             D.cfg(f, y, K, g)(x, t), atol=1e-6)
  np.testing.assert_allclose(D.cfg_negative_replace(f, y, yn, g)(x, t), n + g * (c - n),
                             rtol=1e-5, atol=1e-6)
  # Guidance rescale (Lin et al. 2023, sec. 3.4), computed in float64 numpy.
  phi = 0.7
  guided = np.asarray(u + g * (c - u), np.float64)
  cn = np.asarray(c, np.float64)
  sd = lambda a: a.reshape(B, -1).std(axis=1)[:, None, None, None]
  expected = phi * guided * sd(cn) / sd(guided) + (1 - phi) * guided
  out = D.cfg(f, y, K, g, rescale=phi)(x, t)
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
  full = np.asarray(D.cfg(f, y, K, g, rescale=1.0)(x, t))
  np.testing.assert_allclose(sd(full), sd(cn), rtol=1e-5)  # phi = 1 restores the cond std
  np.testing.assert_allclose(D.cfg(f, y, K, g, rescale=0.0)(x, t), guided, rtol=1e-6, atol=1e-6)


def test_text_like_conditions_and_one_batched_call():
  calls = []

  def model_fn(x, t, cond):  # a "text embedding" condition [N, L, D]
    calls.append(x.shape[0])
    return x * jnp.mean(cond["emb"], axis=(1, 2))[:, None, None, None]

  x = jnp.ones((2, 2, 2, 1))
  emb = jnp.arange(2 * 3 * 4, dtype=jnp.float32).reshape(2, 3, 4)
  null = jnp.zeros((3, 4))  # per-example null embedding, broadcast over the batch
  out = D.cfg(model_fn, {"emb": emb}, {"emb": null}, 2.0)(x, jnp.array([1, 1]))
  np.testing.assert_allclose(out[:, 0, 0, 0], 2.0 * emb.mean(axis=(1, 2)))
  assert calls == [4]  # cond and null in one call on the doubled batch


def test_bad_conditions_raise(toy):
  f, x, t = toy
  with pytest.raises(ValueError, match=r"must lie in \[0, 3\)"):
    D.check_labels(jnp.array([0, 3]), K)
  with pytest.raises(ValueError, match=r"must lie in \[0, 3\)"):
    D.check_labels(jnp.array([-1, 0]), K)
  with pytest.raises(TypeError, match="integer"):
    D.check_labels(jnp.array([0.0, 1.0]), K)
  with pytest.raises(ValueError, match="1-D"):
    D.check_labels(jnp.zeros((2, 2), jnp.int32), K)
  with pytest.raises(ValueError, match="null_cond must have shape"):
    D.cfg(f, jnp.array([0, 1, 2, 0]), jnp.array([K, K]), 1.0)
  with pytest.raises(ValueError, match="batch size 2 but x_t has 4"):
    D.cfg(f, jnp.array([0, 1]), K, 1.0)(x, t)
  with pytest.raises(TypeError, match="dtype"):
    D.cfg(f, jnp.array([0, 1, 2, 0]), 0.5, 1.0)
  with pytest.raises(ValueError, match="scale must be a scalar"):
    D.cfg(f, jnp.array([0, 1, 2, 0]), K, jnp.ones(3))(x, t)


@pytest.fixture(scope="module")
def clf():
  model = NoisyClassifier(NoisyClassifierConfig(num_classes=K, in_channels=1,
                                                block_out_channels=(8, 8),
                                                down_block_types=("DownBlock2D", "DownBlock2D"),
                                                mid_block=False, norm_num_groups=4))
  return model, init_noisy_classifier(model, jax.random.key(3))


def test_classifier_grad_matches_finite_differences(clf, key):
  model, params = clf
  y = jnp.array([0, 2])
  log_prob = jax.jit(D.log_prob_from_logits(
      lambda x, t: model.apply({"params": params}, x, t), y))
  x = jax.random.normal(key, (2, 4, 4, 1))
  t = jnp.array([10, 60])
  grad = jax.jit(D.classifier_grad, static_argnums=0)(log_prob, x, t)
  logits = model.apply({"params": params}, x, t)
  np.testing.assert_allclose(log_prob(x, t), jax.nn.log_softmax(logits)[jnp.arange(2), y],
                             rtol=1e-6)
  h = 1e-2
  for i in range(3):
    v = jax.random.normal(jax.random.fold_in(key, i + 1), x.shape)
    fd = (log_prob(x + h * v, t) - log_prob(x - h * v, t)) / (2 * h)  # per example [B]
    np.testing.assert_allclose(jnp.sum(grad * v, axis=(1, 2, 3)), fd, rtol=2e-2, atol=2e-3)


def test_classifier_guidance_score_shift_and_ddpm_mean_shift(sched, key):
  x = jax.random.normal(key, (2, 3, 3, 1))
  t = jnp.array([40, 70])
  w = jax.random.normal(jax.random.fold_in(key, 1), x.shape)
  log_prob = lambda z, t: jnp.sum(jnp.sin(z * w), axis=(1, 2, 3)) * (1.0 + t / 100.0)
  grad = jnp.cos(x * w) * w * (1.0 + t / 100.0)[:, None, None, None]  # closed form
  np.testing.assert_allclose(D.classifier_grad(log_prob, x, t), grad, rtol=1e-5, atol=1e-6)
  eps = jax.random.normal(jax.random.fold_in(key, 2), x.shape)
  base = lambda z, t: eps
  ab = sched.alphas_cumprod[t][:, None, None, None]
  g = 2.0
  out = D.classifier_guidance(base, log_prob, g, sched)(x, t)
  np.testing.assert_allclose(out, eps - jnp.sqrt(1 - ab) * g * grad, rtol=1e-5, atol=1e-6)
  # For a v-prediction model the shift is applied to the implied eps.
  v = D.convert_output(sched, x, t, eps, "epsilon", "v_prediction")
  out_v = D.classifier_guidance(lambda z, t: v, log_prob, g, sched,
                                prediction_type="v_prediction")(x, t)
  np.testing.assert_allclose(D.convert_output(sched, x, t, out_v, "v_prediction", "epsilon"),
                             eps - jnp.sqrt(1 - ab) * g * grad, rtol=1e-4, atol=1e-5)
  # DDPM Algorithm 1: the mean moves by Sigma g grad (here one step t -> t-1).
  z = jax.random.normal(jax.random.fold_in(key, 3), x.shape)
  for vt in ("fixed_small", "fixed_large"):
    plain = D.ddpm_step(sched, x, t, eps, z, variance_type=vt)
    shifted = D.ddpm_step(sched, x, t, eps, z, variance_type=vt, guidance_grad=g * grad)
    beta = sched.betas[t][:, None, None, None]
    var = beta if vt == "fixed_large" else \
        beta * (1 - sched.alphas_cumprod[t - 1]) [:, None, None, None] / (1 - ab)
    np.testing.assert_allclose(shifted - plain, var * g * grad, rtol=1e-4, atol=1e-6)
  # Relation of the two forms (module docstring): with fixed_large and no clipping, the eps
  # shift equals Algorithm 1 with the gradient divided by sqrt(alpha_t).
  alpha = sched.alphas[t][:, None, None, None]
  np.testing.assert_allclose(
      D.ddpm_step(sched, x, t, out, z, variance_type="fixed_large"),
      D.ddpm_step(sched, x, t, eps, z, variance_type="fixed_large",
                  guidance_grad=g * grad / jnp.sqrt(alpha)), rtol=1e-4, atol=1e-5)
  with pytest.raises(ValueError, match="DDPM mean-shift"):
    D.sample(base, sched, key, x.shape, D.timesteps(T, 5), method="ddim",
             guidance_grad_fn=D.classifier_mean_shift(log_prob, g))


@pytest.fixture(scope="module")
def unet():
  model = UNet2D(UNetConfig(sample_size=4, in_channels=1, out_channels=1,
                            block_out_channels=(8, 8), layers_per_block=1,
                            down_block_types=("DownBlock2D", "DownBlock2D"),
                            up_block_types=("UpBlock2D", "UpBlock2D"), mid_block_type=None,
                            attention_head_dim=None, norm_num_groups=4, num_class_embeds=K + 1))
  return model, init_unet(model, jax.random.key(5))


def test_guided_sampler_compiles_once_across_scales(unet, clf, sched):
  model, params = unet
  cmodel, cparams = clf
  table = D.pad_table(D.timesteps(T, 6), 8)
  labels = jnp.array([0, 1, 2, 0])

  @jax.jit
  @chex.assert_max_traces(n=1)
  def sample_cfg(params, key, labels, scales):
    f = lambda x, t, y: model.apply({"params": params}, x, t, y)
    return jax.vmap(lambda g: D.sample(D.cfg(f, labels, K, g), sched, key, (4, 4, 4, 1), table,
                                       method="ddim"))(scales)

  k = jax.random.key(0)
  a = sample_cfg(params, k, labels, jnp.array([0.0, 1.0, 3.0]))
  b = sample_cfg(params, k, labels, jnp.array([5.0, 1.0, 0.5]))  # new scales: no retrace
  np.testing.assert_allclose(a[1], b[1], atol=1e-6)
  # Scale 0 samples the unconditional model, scale 1 the conditional one (same noise).
  f = lambda x, t, y: model.apply({"params": params}, x, t, y)
  ref = jax.jit(jax.vmap(lambda y: D.sample(lambda x, t: f(x, t, y), sched, k, (4, 4, 4, 1),
                                            table)))(jnp.stack([jnp.full((4,), K), labels]))
  np.testing.assert_allclose(a[0], ref[0], atol=1e-5)
  np.testing.assert_allclose(a[1], ref[1], atol=1e-5)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def sample_classifier(params, cparams, key, scale):
    base = lambda x, t: model.apply({"params": params}, x, t, jnp.full((4,), K))
    lp = D.log_prob_from_logits(lambda x, t: cmodel.apply({"params": cparams}, x, t), labels)
    return D.sample(base, sched, key, (4, 4, 4, 1), table, method="ddpm",
                    guidance_grad_fn=D.classifier_mean_shift(lp, scale))

  s0 = sample_classifier(params, cparams, k, jnp.float32(0.0))
  s4 = sample_classifier(params, cparams, k, jnp.float32(4.0))
  assert float(jnp.max(jnp.abs(s4 - s0))) > 1e-4  # the classifier term acts


class _RecordingModel:
  """Stands in for the U-Net in diffusion_loss_fn (run eagerly): records the labels it sees."""

  def __init__(self, num_class_embeds):
    self.config = type("C", (), {"num_class_embeds": num_class_embeds})()
    self.seen = []

  def apply(self, variables, x, t, y, train=False, rngs=None):
    self.seen.append(np.asarray(y))
    return jnp.zeros_like(x)


def test_condition_dropout_rate_and_null_label(sched):
  n, p = 2000, 0.1
  labels = np.arange(n) % K
  batch = {"image": jnp.zeros((n, 1, 1, 1)), "label": jnp.asarray(labels, jnp.int32)}
  model = _RecordingModel(K + 1)
  diffusion_loss_fn(model, sched, cond_drop_prob=p, null_label=K)({}, batch, jax.random.key(1), 0)
  seen = model.seen[-1]
  dropped = seen == K
  assert abs(dropped.mean() - p) < 4 * np.sqrt(p * (1 - p) / n)  # 4 sigma
  np.testing.assert_array_equal(seen[~dropped], labels[~dropped])  # others untouched
  # Drops depend on the example's global index: a shard at offset 1000 sees the same drops.
  diffusion_loss_fn(model, sched, cond_drop_prob=p, null_label=K)(
      {}, {k: v[1000:1100] for k, v in batch.items()}, jax.random.key(1), 1000)
  np.testing.assert_array_equal(model.seen[-1] == K, dropped[1000:1100])
  diffusion_loss_fn(model, sched)({}, batch, jax.random.key(1), 0)
  np.testing.assert_array_equal(model.seen[-1], labels)  # no dropout without cond_drop_prob
  with pytest.raises(ValueError, match="null_label"):
    diffusion_loss_fn(model, sched, cond_drop_prob=0.1)


def test_noisy_classifier_loss_equals_cross_entropy(clf, sched, key):
  model, params = clf
  x0 = jax.random.uniform(key, (6, 4, 4, 1), minval=-1, maxval=1)
  y = jnp.array([0, 1, 2, 0, 1, 2])
  loss, metrics = noisy_classifier_loss_fn(model, sched)(params, {"image": x0, "label": y},
                                                         jax.random.key(9), 0)
  noise_key, _ = jax.random.split(jax.random.key(9))
  t, noise = D.sample_t_and_noise(noise_key, x0.shape, T, 0)
  logits = model.apply({"params": params}, D.q_sample(sched, x0, t, noise), t)
  np.testing.assert_allclose(loss, optax.softmax_cross_entropy_with_integer_labels(
      logits, y).mean(), rtol=1e-5)
  np.testing.assert_allclose(metrics["accuracy"], np.mean(np.argmax(logits, -1) == y))
  with pytest.raises(ValueError, match="'label' entry"):
    noisy_classifier_loss_fn(model, sched)(params, {"image": x0}, key, 0)


def test_noisy_classifier_config_errors():
  with pytest.raises(ValueError, match="num_classes"):
    NoisyClassifierConfig(num_classes=1)
  with pytest.raises(ValueError, match="unknown block type"):
    NoisyClassifierConfig(num_classes=3, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"))


# ----------------------------------------------------------------------------- runner

@pytest.fixture(scope="module")
def cfg_workdir(tmp_path_factory):
  from experiments.main import main
  workdir = str(tmp_path_factory.mktemp("cfg"))
  assert main(["train", "--config", "experiments/configs/cfg_digits.py:smoke",
               "--workdir", workdir]) == 0
  return workdir


def test_runner_sweep_cfg_and_classifier(cfg_workdir):
  from experiments.families.guidance import sweep
  res = sweep(cfg_workdir, scales="0,1,3", guidance="cfg")
  assert [r["scale"] for r in res["per_scale"]] == [0.0, 1.0, 3.0]
  assert all(0 <= r["accuracy"] <= 1 and np.isfinite(r["fid"]) for r in res["per_scale"])
  out = os.path.join(cfg_workdir, "sweep")
  assert {"cfg.json", "cfg_plot.png", "cfg_grid.png"} <= set(os.listdir(out))
  assert json.load(open(os.path.join(out, "cfg.json")))["per_scale"] == res["per_scale"]
  # Classifier guidance on the same model (null class): trains the smoke noisy classifier.
  res = sweep(cfg_workdir, scales=[0.0, 2.0], guidance="classifier", sampler="ddpm")
  assert len(res["per_scale"]) == 2 and os.path.isfile(
      os.path.join(cfg_workdir, "noisy_classifier", "config.json"))


def test_runner_errors(cfg_workdir, tmp_path):
  from experiments import workdir as W
  from experiments.config import load_config
  from experiments.families import guidance as G
  with pytest.raises(ValueError, match="comma-separated"):
    G.parse_scales("0,x")
  with pytest.raises(ValueError, match="unknown guidance"):
    G.sweep(cfg_workdir, scales="1", guidance="magic")
  run = G.GuidedRun(cfg_workdir, "cfg")
  # cond_drop_prob > 0 gives the U-Net one more class embedding: the null class, label 10.
  assert run.model.config.num_class_embeds == 11 and run.null == 10
  with pytest.raises(ValueError, match=r"must lie in \[0, 10\)"):
    run.draw([1.0], np.array([3, 10]), np.array([0, 0]), 0)
  # A model trained without condition dropout: a clear error before any sampling.
  with pytest.raises(ValueError, match="cond_drop_prob > 0"):
    load_config("experiments/configs/cfg_digits.py:smoke", ["train.cond_drop_prob=0.0"])
  config = load_config("experiments/configs/ddpm_digits.py:smoke")
  workdir = str(tmp_path / "uncond")
  W.save_config(workdir, config)
  with pytest.raises(ValueError, match="trained with condition dropout"):
    G.GuidedRun(workdir, "cfg")
  # A misspelt key of a guidance section fails when the config is loaded, naming it.
  with pytest.raises(ValueError, match=r"sample_scal\b.*'sample_scale'"):
    load_config("experiments/configs/cfg_digits.py:smoke", ["guidance.sample_scal=2"])
  with pytest.raises(ValueError, match=r"noisy_classifier\.num_steps='many': expected an int"):
    load_config("experiments/configs/cfg_digits.py:smoke", ["noisy_classifier.num_steps=many"])


def test_shapes_words_condition_and_hits():
  from experiments.families.guidance import conditions as G
  src = G.shapes_words_source("test", 16)
  batch = src[np.arange(200)]
  word = batch["label"]
  np.testing.assert_array_equal(word[word < 3], batch["shape"][word < 3])
  np.testing.assert_array_equal(word[word >= 3] - 3, batch["color"][word >= 3])
  assert src.num_classes == 7 and 0.35 < np.mean(word < 3) < 0.65
  probs = {"shape": np.eye(3)[[0, 1, 2, 0]], "color": np.eye(4)[[3, 0, 1, 2]]}
  # words: circle (hit), square (hit), yellow (colour 3 vs predicted 2: miss), red (miss)
  np.testing.assert_array_equal(G.hits("shapes_words", probs, np.array([0, 1, 6, 3])),
                                [True, True, False, False])


def test_runner_negative_sweep(cfg_workdir):
  from experiments.families.guidance import sweep
  res = sweep(cfg_workdir, scales=[0.0, 2.0], guidance="negative")
  assert [r["neg_scale"] for r in res["lecture"]] == [0.0, 2.0]
  assert all(0 <= r["negative_rate"] <= 1 for r in res["lecture"])
  assert 0 <= res["replace"]["negative_rate"] <= 1
  assert os.path.isfile(os.path.join(cfg_workdir, "sweep", "negative_grid.png"))


def test_classifier_guidance_family_end_to_end(tmp_path, capsys):
  """The classifier_guidance family through the runner: train (the diffusion model, then the
  noise-aware classifier), evaluate (the classifier-guided sweep over guidance.scales) and
  sample, all by the command line."""
  from experiments.main import main
  workdir = str(tmp_path / "cg")
  assert main(["train", "--config", "experiments/configs/classifier_guidance_digits.py:smoke",
               "--workdir", workdir]) == 0
  summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert summary["step"] == 4 and not summary["terminated"]
  assert summary["noisy_classifier"]["step"] == 4
  assert set(summary["noisy_classifier"]["test_accuracy_at_t"]) == {"0", "12", "25", "37", "49"}
  assert main(["evaluate", "--workdir", workdir, "--num", "10"]) == 0
  sweep = json.load(open(os.path.join(workdir, "sweep", "classifier.json")))
  assert [r["scale"] for r in sweep["per_scale"]] == [0.0, 3.0]
  with pytest.raises(ValueError, match="--truncation-psi does not apply"):
    main(["sample", "--workdir", workdir, "--truncation-psi", "0.5"])
