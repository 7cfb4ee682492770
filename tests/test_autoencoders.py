"""Autoencoder family: modules, VAE losses against closed forms / Monte Carlo, VQGAN's adaptive
weight against its formula, LPIPS-VGG16 against a numpy reference, latent tools, bad input."""
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from jaxgen import vae as V
from jaxgen.nn import (Autoencoder, AutoencoderConfig, PatchDiscriminator,
                       PatchDiscriminatorConfig, init_autoencoder, init_discriminator)
from jaxgen.training import TrainState, make_optimizer


def test_analytic_kl_matches_monte_carlo(key):
  k1, k2, k3 = jax.random.split(key, 3)
  mean = jax.random.normal(k1, (3, 4))
  logvar = 0.5 * jax.random.normal(k2, (3, 4))
  kl = V.gaussian_kl(mean, logvar)
  n = 200_000
  z = V.reparameterize(k3, jnp.broadcast_to(mean, (n, 3, 4)), jnp.broadcast_to(logvar, (n, 3, 4)))
  # log q(z) - log p(z) summed over the latent dims, for each of the 3 examples.
  log_q = -0.5 * ((z - mean[None]) ** 2 / jnp.exp(logvar)[None] + logvar[None])
  log_p = -0.5 * z ** 2
  diff = np.asarray(jnp.sum(log_q - log_p, axis=-1), np.float64)  # [n, 3]
  mc, se = diff.mean(0), diff.std(0) / math.sqrt(n)
  assert np.all(np.abs(mc - np.asarray(kl)) < 4 * se), (mc, kl, se)
  # Closed form of one dimension: KL(N(1, e^0) || N(0, 1)) = 1/2.
  np.testing.assert_allclose(V.gaussian_kl(jnp.ones((1, 1)), jnp.zeros((1, 1))), [0.5])


def test_likelihoods_and_bits_per_dim():
  x = jnp.array([[[[-1.0], [0.5]]]])  # [1, 1, 2, 1]
  mu = jnp.array([[[[-0.5], [0.0]]]])
  s = math.log(0.5)
  want = sum(0.5 * ((a - b) / 0.5) ** 2 + s + 0.5 * math.log(2 * math.pi)
             for a, b in ((-1.0, -0.5), (0.5, 0.0)))
  np.testing.assert_allclose(V.gaussian_nll(x, mu, s), [want], rtol=1e-6)
  logits = jnp.array([[[[2.0], [-1.0]]]])
  t, p = np.array([0.0, 0.75]), 1 / (1 + np.exp(-np.array([2.0, -1.0])))
  want = -np.sum(t * np.log(p) + (1 - t) * np.log(1 - p))
  np.testing.assert_allclose(V.bernoulli_nll(x, logits), [want], rtol=1e-6)
  np.testing.assert_allclose(V.likelihood_mean(logits, "bernoulli"), 2 * p.reshape(1, 1, 2, 1) - 1,
                             rtol=1e-6)
  # bpd: a uniform density on [-1, 1]^D with 256 bins of width 2/255 (about 8 bits).
  d = 10
  nll = jnp.array([d * math.log(2.0)])
  np.testing.assert_allclose(V.bits_per_dim(nll, d, 2 / 255), math.log2(255), rtol=1e-6)
  np.testing.assert_allclose(V.bits_per_dim(nll, d), 1.0, rtol=1e-6)
  terms = V.negative_elbo(x, mu, jnp.zeros((1, 3)), jnp.zeros((1, 3)), beta=4.0, log_scale=s)
  np.testing.assert_allclose(terms["loss"], terms["nll"] + 4.0 * terms["kl"])
  assert float(terms["kl"][0]) == 0.0


def test_kl_weight_warmup_and_beta_errors():
  np.testing.assert_allclose([V.kl_weight(s, 4.0, 100) for s in (0, 50, 100, 500)],
                             [0.0, 2.0, 4.0, 4.0])
  np.testing.assert_allclose(V.kl_weight(7, 0.5), 0.5)
  for bad in (-0.1, float("nan")):
    with pytest.raises(ValueError, match="beta must be a finite number >= 0"):
      V.kl_weight(0, bad)
  with pytest.raises(ValueError, match="warm-up"):
    V.kl_weight(0, 1.0, -5)


def test_hinge_losses():
  real, fake = jnp.array([2.0, 0.5]), jnp.array([-2.0, 0.0])
  np.testing.assert_allclose(V.hinge_d_loss(real, fake), 0.5 * ((0 + 0.5) / 2 + (0 + 1) / 2))
  np.testing.assert_allclose(V.hinge_g_loss(fake), 1.0)


def test_conv_and_mlp_shapes_and_conditioning(key):
  cfg = AutoencoderConfig(image_size=8, in_channels=1, latent_channels=3,
                          block_out_channels=(8, 8), mid_attention=True, double_latent=True,
                          num_classes=10)
  assert cfg.latent_shape == (4, 4, 3) and cfg.downsample_factor == 2
  model = Autoencoder(cfg)
  params = jax.eval_shape(lambda: init_autoencoder(model, key))
  x = jax.ShapeDtypeStruct((2, 8, 8, 1), jnp.float32)
  y = jax.ShapeDtypeStruct((2,), jnp.int32)
  enc = jax.eval_shape(lambda p, x, y: model.apply({"params": p}, x, y, method=Autoencoder.encode),
                       params, x, y)
  assert enc.shape == (2, 4, 4, 6)
  assert jax.eval_shape(lambda p, x, y: model.apply({"params": p}, x, y), params, x, y).shape \
      == (2, 8, 8, 1)
  with pytest.raises(ValueError, match="pass label"):
    jax.eval_shape(lambda p, x: model.apply({"params": p}, x), params, x)
  mlp = Autoencoder(AutoencoderConfig(image_size=8, in_channels=1, latent_channels=5,
                                      architecture="mlp", mlp_hidden=(32, 16)))
  p = init_autoencoder(mlp, key)
  assert p["decoder_out"]["kernel"].shape == (32, 64)
  z = V.encode(mlp, p, jnp.zeros((3, 8, 8, 1)))
  assert z.shape == (3, 5) and V.decode(mlp, p, z).shape == (3, 8, 8, 1)
  with pytest.raises(ValueError, match=r"expects images \[B, 8, 8, 1\]"):
    V.encode(mlp, p, jnp.zeros((3, 8, 8, 3)))
  disc = PatchDiscriminator(PatchDiscriminatorConfig(base_channels=4, num_layers=2))
  dp = jax.eval_shape(lambda: init_discriminator(disc, key, (16, 16, 3)))
  out = jax.eval_shape(lambda p, x: disc.apply({"params": p}, x), dp,
                       jax.ShapeDtypeStruct((2, 16, 16, 3), jnp.float32))
  assert out.shape == (2, 2, 2, 1)
  with pytest.raises(ValueError, match="sides >= 16"):
    jax.eval_shape(lambda p, x: disc.apply({"params": p}, x), dp,
                   jax.ShapeDtypeStruct((2, 8, 8, 3), jnp.float32))


def test_residual_blocks_and_init(key):
  """The conv autoencoder's residual blocks are ResnetBlock2D without time embedding (diffusers'
  AutoencoderKL names), and init_autoencoder is the generic LeCun-normal init drawn from key."""
  from jaxgen.nn import init_from_shapes, module_param_shapes
  from jaxgen.nn.autoencoder import init_from_shapes as reexported
  assert reexported is init_from_shapes
  cfg = AutoencoderConfig(image_size=8, in_channels=1, latent_channels=2,
                          block_out_channels=(8, 16), norm_num_groups=4)
  model = Autoencoder(cfg)
  params = init_autoencoder(model, key)
  shapes = module_param_shapes(model, jax.ShapeDtypeStruct((1, 8, 8, 1), jnp.float32), None)
  direct = init_from_shapes(shapes, key, kernel="lecun_normal")
  leaves = jax.tree_util.tree_leaves
  assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(direct)
  assert all(np.array_equal(a, b) for a, b in zip(leaves(params), leaves(direct)))
  enc = params["encoder"]
  assert set(enc["down_0_res_0"]) == {"norm1", "conv1", "norm2", "conv2"}
  assert set(enc["down_1_res_0"]) == {"norm1", "conv1", "norm2", "conv2", "conv_shortcut"}
  assert enc["down_1_res_0"]["conv_shortcut"]["kernel"].shape == (1, 1, 8, 16)
  flat = {"/".join(k): v for k, v in traverse_util.flatten_dict(params).items()}
  assert not any("time_emb_proj" in k for k in flat)
  w = np.asarray(params["decoder"]["mid_res_0"]["conv2"]["kernel"])  # fan_in 3*3*16
  assert abs(w.var() * 144 - 1) < 0.1


def test_bad_configs():
  with pytest.raises(ValueError, match="multiple of the downsampling factor 4"):
    AutoencoderConfig(image_size=10, block_out_channels=(8, 8, 8))
  with pytest.raises(ValueError, match="latent_channels must be a positive int"):
    AutoencoderConfig(latent_channels=0)
  with pytest.raises(ValueError, match="norm_num_groups"):
    AutoencoderConfig(block_out_channels=(12,), norm_num_groups=8)
  with pytest.raises(ValueError, match="architecture"):
    AutoencoderConfig(architecture="transformer")
  with pytest.raises(ValueError, match="num_layers"):
    PatchDiscriminatorConfig(num_layers=0)
  model = Autoencoder(AutoencoderConfig(image_size=4, in_channels=1, architecture="mlp"))
  with pytest.raises(ValueError, match="beta must be"):
    V.make_autoencoder_step(model, kind="ae", beta=-1.0)
  with pytest.raises(ValueError, match="double_latent=True"):
    V.make_autoencoder_step(model, kind="vae")


def test_vae_step_runs_and_follows_warmup(key):
  cfg = AutoencoderConfig(image_size=4, in_channels=1, latent_channels=2, architecture="mlp",
                          mlp_hidden=(16,), double_latent=True, num_classes=3)
  model = Autoencoder(cfg)
  state = TrainState.create(apply_fn=model.apply, params=init_autoencoder(model, key),
                            tx=make_optimizer(1e-3))
  step = jax.jit(V.make_autoencoder_step(model, kind="vae", beta=2.0, kl_warmup_steps=4,
                                         likelihood="bernoulli"), donate_argnums=0)
  batch = {"image": jnp.zeros((4, 4, 4, 1)), "label": jnp.arange(4) % 3}
  ws = []
  for _ in range(3):
    state, m = step(state, batch, key)
    ws.append(float(m["kl_weight"]))
    np.testing.assert_allclose(m["loss"], m["nll"] + m["kl_weight"] * m["kl"], rtol=1e-5)
  assert ws == [0.0, 0.5, 1.0] and step._cache_size() == 1


def test_adaptive_weight_equals_formula(key):
  cfg = AutoencoderConfig(image_size=8, in_channels=1, latent_channels=2, architecture="mlp",
                          mlp_hidden=(16,))
  model = Autoencoder(cfg)
  disc = PatchDiscriminator(PatchDiscriminatorConfig(base_channels=4, num_layers=1))
  k1, k2, k3, k4 = jax.random.split(key, 4)
  params = init_autoencoder(model, k1)
  cb = V.init_codebook(k2, 4, 2, scale=0.5)
  g = V.VQTrainState.create_vq(apply_fn=model.apply, model_params=params, codebook=cb,
                               tx=make_optimizer(1e-3))
  d_params = init_discriminator(disc, k3, (8, 8, 1))
  x = jax.random.uniform(k4, (4, 8, 8, 1), minval=-1, maxval=1)
  g_step, _ = V.make_vqgan_steps(model, disc, dead_threshold=0.0, disc_weight=0.8)
  _, m, _ = jax.jit(g_step)(g, d_params, {"image": x}, key, None)

  # Independently: gradients of the two losses with respect to all parameters, then the
  # norms of the decoder's last-layer kernel block.
  def recon(p):
    z_q = V.quantize(model.apply({"params": p}, x, method=Autoencoder.encode), cb.embedding).z_q
    return model.apply({"params": p}, z_q, method=Autoencoder.decode)

  g_rec = jax.grad(lambda p: jnp.mean(jnp.abs(recon(p) - x)))(params)
  g_gan = jax.grad(lambda p: -jnp.mean(disc.apply({"params": d_params}, recon(p))))(params)
  want = (jnp.linalg.norm(g_rec["decoder_out"]["kernel"])
          / (jnp.linalg.norm(g_gan["decoder_out"]["kernel"]) + 1e-4))
  np.testing.assert_allclose(m["adaptive_weight"], want, rtol=1e-4)
  np.testing.assert_allclose(m["loss"], m["rec"] + 0.25 * m["commitment_loss"]
                             + 0.8 * want * m["g_adv"], rtol=1e-4)
  # The function itself on a toy problem: ||2w|| / (||3|| + eps).
  w = jnp.array([3.0, 4.0])
  np.testing.assert_allclose(V.adaptive_weight(lambda w: jnp.sum(w ** 2), lambda w: 3.0 * w[0], w),
                             10.0 / (3.0 + 1e-4), rtol=1e-6)


# --- LPIPS-VGG16 against a numpy reference on a tiny random VGG16 written to safetensors ---

def _np_conv3x3(x, w, b):  # x [H, W, I], w [O, I, 3, 3] (PyTorch layout)
  h, wd, _ = x.shape
  p = np.pad(x, ((1, 1), (1, 1), (0, 0)))
  out = np.zeros((h, wd, w.shape[0]))
  for dy in range(3):
    for dx in range(3):
      out += p[dy:dy + h, dx:dx + wd] @ w[:, :, dy, dx].T
  return out + b


def _np_lpips(tensors, a, b, lin):
  blocks = ((0, 2), (5, 7), (10, 12, 14), (17, 19, 21), (24, 26, 28))
  shift, scale = np.array([-.030, -.088, -.188]), np.array([.458, .448, .450])

  def feats(x):
    h, outs = (x - shift) / scale, []
    for bi, blk in enumerate(blocks):
      if bi:
        hh, ww, c = h.shape
        h = h.reshape(hh // 2, 2, ww // 2, 2, c).max(axis=(1, 3))
      for i in blk:
        h = np.maximum(_np_conv3x3(h, tensors[f"features.{i}.weight"],
                                   tensors[f"features.{i}.bias"]), 0)
      outs.append(h)
    return outs

  total = 0.0
  for l, (fa, fb) in enumerate(zip(feats(a), feats(b))):
    na = fa / (np.sqrt((fa ** 2).sum(-1, keepdims=True)) + 1e-10)
    nb = fb / (np.sqrt((fb ** 2).sum(-1, keepdims=True)) + 1e-10)
    d = (na - nb) ** 2
    if lin:
      d = d * tensors[f"lin{l}.model.1.weight"].reshape(-1)
    total += d.sum(-1).mean()
  return total


@pytest.mark.parametrize("lin", [True, False])
def test_lpips_vgg16_from_safetensors_matches_numpy(tmp_path, lin):
  from safetensors.numpy import save_file
  rng = np.random.default_rng(0)
  widths, prev, tensors = (2, 3, 4, 4, 5), 3, {}
  for blk, width in zip(((0, 2), (5, 7), (10, 12, 14), (17, 19, 21), (24, 26, 28)), widths):
    for i in blk:
      tensors[f"features.{i}.weight"] = rng.normal(0, 0.5, (width, prev, 3, 3)).astype(np.float32)
      tensors[f"features.{i}.bias"] = rng.normal(0, 0.1, (width,)).astype(np.float32)
      prev = width
    if lin:
      tensors[f"lin{len([k for k in tensors if k.startswith('lin')])}.model.1.weight"] = \
          rng.uniform(0, 1, (1, width, 1, 1)).astype(np.float32)
  tensors["classifier.0.weight"] = np.zeros((2, 2), np.float32)  # ignored
  path = str(tmp_path / "vgg16.safetensors")
  save_file(tensors, path)
  net = V.load_vgg16_lpips(path)
  assert (net.lin is not None) == lin
  x = rng.uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)
  y = rng.uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)
  got = jax.jit(V.perceptual_distance)(net, x, y)
  want = [_np_lpips(tensors, x[i].astype(np.float64), y[i].astype(np.float64), lin)
          for i in range(2)]
  np.testing.assert_allclose(got, want, rtol=2e-4)
  np.testing.assert_allclose(V.perceptual_distance(net, x, x), [0.0, 0.0], atol=1e-6)
  del tensors["features.7.bias"]
  save_file(tensors, path)
  with pytest.raises(ValueError, match="features.7.bias"):
    V.load_vgg16_lpips(path)
  with pytest.raises(FileNotFoundError, match="not found"):
    V.load_vgg16_lpips(os.path.join(str(tmp_path), "missing.safetensors"))


def test_classifier_perceptual_net(key):
  from jaxgen.metrics import ClassifierBundle, ClassifierConfig
  from jaxgen.nn.autoencoder import init_from_shapes
  x = jax.random.uniform(key, (16, 8, 8, 1), minval=-1, maxval=1)
  config = ClassifierConfig(heads=(("label", 2),), image_shape=(8, 8, 1), features=(4, 8),
                            embed_dim=8)
  shapes = jax.eval_shape(config.module().init, key, x[:1])
  bundle = ClassifierBundle(config=config,
                            params={"params": init_from_shapes(shapes["params"], key)})
  net = V.classifier_feature_net(bundle)
  feats = net.apply_fn(net.params, x)
  assert [f.shape for f in feats] == [(16, 8, 8, 4), (16, 4, 4, 8)]
  d = V.perceptual_distance(net, x, x[::-1])
  assert d.shape == (16,) and bool(jnp.all(d > 0))
  np.testing.assert_allclose(V.perceptual_distance(net, x, x), 0.0, atol=1e-6)


def test_latent_tools(key):
  a, b = jax.random.normal(key, (2, 3, 4))
  t = jnp.array([0.0, 0.3, 1.0])
  np.testing.assert_allclose(V.lerp(a, b, t)[1], 0.7 * a + 0.3 * b, rtol=1e-6)
  s = V.slerp(a, b, t)
  np.testing.assert_allclose(s[0], a, atol=1e-5)
  np.testing.assert_allclose(s[2], b, atol=1e-5)
  # Orthogonal unit vectors: the slerp midpoint is on the unit circle at 45 degrees.
  e1, e2 = jnp.array([1.0, 0.0]), jnp.array([0.0, 1.0])
  np.testing.assert_allclose(V.slerp(e1, e2, jnp.array([0.5]))[0], [math.sqrt(.5)] * 2, rtol=1e-6)
  np.testing.assert_allclose(V.slerp(e1, e1, jnp.array([0.5]))[0], e1, atol=1e-6)  # lerp
  z = 3.0 * jax.random.normal(key, (1000, 4))
  assert abs(V.latent_scaling_factor(z) - 1 / 3.0) < 0.02
  with pytest.raises(ValueError, match="constant"):
    V.latent_scaling_factor(np.ones((4, 2)))
  assert V.sample_prior(key, 5, (2, 2, 3)).shape == (5, 2, 2, 3)
  codes = V.sample_codes_uniform(key, 5, (2, 2), 7)
  assert codes.shape == (5, 2, 2) and int(codes.max()) < 7


# --- the runner, end to end on smoke configs ---

def _seed_fid_classifier(workdir, image_shape, heads):
  """A tiny random feature classifier in the evaluation cache: skips its training compile."""
  from jaxgen.metrics import ClassifierBundle, ClassifierConfig, save_classifier
  from jaxgen.nn.autoencoder import init_from_shapes
  config = ClassifierConfig(heads=tuple(heads.items()), image_shape=image_shape,
                            features=(4, 8), embed_dim=8)
  x = jnp.zeros((1,) + image_shape)
  shapes = jax.eval_shape(config.module().init, jax.random.key(0), x)
  params = {"params": init_from_shapes(shapes["params"], jax.random.key(1))}
  save_classifier(os.path.join(workdir, "classifier_fid"),
                  ClassifierBundle(config=config, params=jax.device_get(params)))

@pytest.fixture(scope="module")
def cvae_run(tmp_path_factory):
  from experiments.main import main
  workdir = str(tmp_path_factory.mktemp("cvae"))
  assert main(["train", "--config", "experiments/configs/cvae_digits.py:smoke",
               "--workdir", workdir]) == 0
  _seed_fid_classifier(workdir, (8, 8, 1), {"label": 10})
  return workdir


def test_runner_cvae_train_sample_evaluate(cvae_run):
  import json
  from experiments.families.autoencoder import evaluate, sample
  from experiments.main import main
  assert sorted(os.listdir(os.path.join(cvae_run, "checkpoints"))) == ["2", "4"]
  lines = [json.loads(l) for l in open(os.path.join(cvae_run, "metrics.jsonl"))]
  assert [l["step"] for l in lines] == [2, 4] and all(np.isfinite(l["loss"]) for l in lines)
  assert lines[0]["kl_weight"] == 0.5 and lines[1]["kl_weight"] == 1.0  # warm-up over 2 steps
  assert {"recon_step0000004.png", "prior_step0000004.png", "run.json"} <= set(
      os.listdir(os.path.join(cvae_run, "samples")))
  path = sample(cvae_run, num=10, seed=3)
  data = np.load(path[:-4] + ".npz")
  assert data["images"].shape == (10, 8, 8, 1) and list(data["labels"]) == list(range(10))
  r = evaluate(cvae_run, num_samples=40)
  for k in ("test_mse", "test_psnr", "elbo_bpd", "kl_per_latent_dim", "fid_recon_vs_test",
            "fid_samples_vs_test", "fid_floor_train_vs_test", "conditional_accuracy"):
    assert np.isfinite(r[k]), k
  assert 0 <= r["conditional_accuracy"] <= 1 and r["latent_dims"] == 4
  # Mean per-image PSNR >= the PSNR of the mean squared error (Jensen: -log is convex).
  assert r["test_psnr"] >= 10 * np.log10(4 / r["test_mse"]) - 1e-4
  # The same through the command line: sample and evaluate find the family from config.json.
  assert main(["sample", "--workdir", cvae_run, "--num", "10", "--seed", "3"]) == 0
  np.testing.assert_array_equal(np.load(path[:-4] + ".npz")["images"], data["images"])
  assert main(["evaluate", "--workdir", cvae_run, "--num", "40"]) == 0
  again = json.load(open(os.path.join(cvae_run, "eval", "eval_step4.json")))
  assert again == json.loads(json.dumps(r))
  with pytest.raises(ValueError, match="--steps does not apply to the 'autoencoder' family"):
    main(["sample", "--workdir", cvae_run, "--steps", "3"])


def test_runner_vqgan_smoke_and_composite_checkpoint(tmp_path):
  from experiments.config import load_config
  from experiments.families import autoencoder as A
  from jaxgen.training import make_manager, restore_latest, save
  config = load_config("experiments/configs/vqgan_shapes.py:smoke")
  config.autoencoder.perceptual = "none"  # the classifier path costs a classifier compile
  out = A.train(config, str(tmp_path))
  assert out["step"] == 4 and np.isfinite(out["loss"])
  assert int(out["state"].d.step) == 4
  lines = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  assert [l["disc_factor"] for l in lines] == [0.0, 1.0]  # discriminator starts at step 2
  assert all(np.isfinite(l["adaptive_weight"]) and l["perplexity"] >= 1 for l in lines)
  assert all(l["restarted_total"] >= l["restarted"] for l in lines)
  _seed_fid_classifier(str(tmp_path), (16, 16, 3),
                       {"shape": 3, "color": 4, "size": 2, "position": 9, "label": 3})
  r = A.evaluate(str(tmp_path), num_samples=32)
  assert r["codebook_size"] == 8 and 1 <= r["codebook_perplexity"] <= 8
  assert np.isfinite(r["fid_recon_vs_test"]) and r["test_mse"] > 0
  # The two-state checkpoint restores both states and the codebook.
  state = out["state"]
  manager = make_manager(str(tmp_path / "ckpt"), async_save=False)
  save(manager, state)
  zeros = jax.tree.map(jnp.zeros_like, state)
  restored, _, step = restore_latest(manager, zeros, with_data=False)
  manager.close()
  assert step == 4
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored)):
    np.testing.assert_array_equal(a, b)


def test_vqgan_resume_after_sigterm_is_exact(sigterm_resume):
  """The shared loop on the autoencoder family's most composite state (G with codebook, D,
  their optimisers), resumed across the discriminator's start step."""
  from experiments.config import load_config
  from experiments.families import autoencoder as A
  config = load_config("experiments/configs/vqgan_shapes.py:smoke")
  config.autoencoder.perceptual = "none"
  config.train.checkpoint_every, config.sample.num = 100, 0
  sigterm_resume(A.train, config, num_steps=4)


def test_runner_rejects_bad_options(tmp_path):
  from experiments.config import ConfigError, apply_overrides, load_config
  from experiments.families.autoencoder import train
  for item, match in (("autoencoder.num_codes=0", "codebook size"),
                      ("autoencoder.beta=-1.0", "autoencoder.beta must be"),
                      ("autoencoder.kind='gan'", "autoencoder.kind"),
                      ("autoencoder.conditional=True", "conditional is supported for kind='vae'"),
                      ("autoencoder.perceptual='vgg'", "'classifier', 'none' or 'vgg16:PATH'"),
                      ("autoencoder.disc={'base_channel': 4}", "autoencoder.disc.base_channel"),
                      ("model.latent_channels=0", "latent_channels must be a positive int"),
                      ("autoencoder.perceptual='vgg16:/nonexistent.safetensors'", "not found"),
                      ("model.in_channels=1", "dataset 'shapes' has")):
    config = load_config("experiments/configs/vqgan_shapes.py:smoke")
    with pytest.raises((ValueError, FileNotFoundError), match=match):
      apply_overrides(config, [item])  # the config's own checks, before any data or compile
      train(config, str(tmp_path / "bad"))
  config = load_config("experiments/configs/vqvae_shapes.py:smoke")
  config.model["block_out_channels"] = (8,) * 6  # downsampling factor 32 does not divide 16
  with pytest.raises(ValueError, match="multiple of the downsampling factor 32"):
    train(config, str(tmp_path / "bad2"))
  # Checks across fields also run when a config is loaded from a file or a workdir.
  with pytest.raises(ConfigError, match="autoencoder.betas"):
    load_config("experiments/configs/vqvae_shapes.py:smoke", ["autoencoder.betas=(1.0, 2.0)"])
  assert not os.path.exists(tmp_path / "bad" / "checkpoints")


def test_misspelt_autoencoder_key_names_it_and_lists_the_keys(tmp_path):
  from experiments.config import ConfigError
  from experiments.main import main
  with pytest.raises(ConfigError, match="kindd") as e:
    main(["train", "--config", "experiments/configs/vae_digits.py:smoke", "--workdir",
          str(tmp_path), "--set", "autoencoder.kindd=vae"])
  assert "'kind'" in str(e.value) and not os.listdir(tmp_path)


def test_beta_sweep_runs_and_workdir_config_round_trip(tmp_path):
  """A sweep's runs are the config with one beta each; config.json reads back typed."""
  from experiments import workdir as W
  from experiments.config import load_config
  from experiments.families.autoencoder import sweep_dir
  from experiments.families.autoencoder.runner import sweep_run
  config = load_config("experiments/configs/beta_vae_shapes.py:smoke")
  assert config.autoencoder.betas == (0.5, 2.0)
  run = sweep_run(config, 2.0)
  assert run.autoencoder.beta == 2.0 and run.autoencoder.betas is None
  assert config.autoencoder.betas == (0.5, 2.0)  # the sweep's own config is unchanged
  assert sweep_dir("w", 0.5) == os.path.join("w", "beta_0.5")
  W.save_config(str(tmp_path), config)
  assert W.load_config(str(tmp_path)) == config
