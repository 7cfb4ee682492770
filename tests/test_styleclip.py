"""StyleCLIP (`jaxgen.gan.styleclip`, `jaxgen.gan.style_space`) and the clip-edit /
clip-generate commands: the style space against the generator's own synthesis, channel
relevance and global directions on a linear toy generator (closed forms), the CLIP loss's
gradient against finite differences, the optimisation scan vmapped, text to image with
restarts, clear errors, and both commands on smoke workdirs."""
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen import gan
from jaxgen.clip import normalize
from jaxgen.data import SHAPES_ATTRIBUTES
from jaxgen.nn import StyleGANConfig, StyleGenerator
from jaxgen.nn.stylegan import broadcast_ws

TINY = StyleGANConfig(image_size=16, z_dim=8, w_dim=8, mapping_layers=2, channel_base=64,
                      channel_max=8)


@pytest.fixture(scope="module")
def tiny():
  g = StyleGenerator(TINY)
  v = jax.jit(g.init)(jax.random.key(0), jnp.zeros((1, TINY.z_dim)))
  w = g.apply(v, jax.random.normal(jax.random.key(1), (3, TINY.z_dim)), method="mapping")
  return g, v, w


# --- style space ---------------------------------------------------------------------------

def test_style_space_round_trip_and_layout(tiny):
  g, v, w = tiny
  s = jax.jit(lambda w: gan.style_codes(g, v, w))(w)
  assert s.shape == (3, gan.style_dim(TINY))
  # every layer's slice is its affine output: A(w) recomputed from the parameters
  params = v["params"]["synthesis_net"]
  for name, offset, width in gan.style_layout(TINY):
    dense = params[name]["affine"]
    fan_in = TINY.w_dim
    expected = w @ (dense["kernel"] / np.sqrt(fan_in)) + dense["bias"][None]
    np.testing.assert_allclose(s[:, offset:offset + width], expected, rtol=1e-5, atol=1e-5)
  direct = g.apply(v, broadcast_ws(w, TINY.num_ws), method="synthesis")
  np.testing.assert_allclose(jax.jit(lambda s: gan.synthesis_from_styles(g, v, s))(s), direct,
                             atol=1e-5)
  # a change of one toRGB channel's style changes the image affinely
  off = dict((n, o) for n, o, _ in gan.style_layout(TINY))["b16_torgb"]
  e = jnp.zeros_like(s).at[:, off].set(1.0)
  x = [gan.synthesis_from_styles(g, v, s + k * e) for k in (0.0, 1.0, 2.0)]
  np.testing.assert_allclose(x[2] - x[1], x[1] - x[0], atol=1e-5)
  with pytest.raises(ValueError, match=r"expected styles \[B, 56\]"):
    gan.synthesis_from_styles(g, v, s[:, :10])


# --- global directions: closed forms on a linear toy generator -----------------------------

def test_channel_relevance_and_global_direction_on_a_linear_generator(key):
  """With features F(s) = s A + b, every image's feature change along channel c is
  2 step std_c A[c]: Delta i_c = A[c] / ||A[c]||, R_c = Delta i_c . Delta t."""
  k1, k2, k3, k4 = jax.random.split(key, 4)
  s_dim, e_dim = 12, 5
  a = jax.random.normal(k1, (s_dim, e_dim)).at[3].set(0.0)        # channel 3 does nothing
  b = jax.random.normal(k2, (e_dim,))
  styles = jax.random.normal(k3, (7, s_dim))
  std = jnp.linspace(0.5, 2.0, s_dim)
  dirs = jax.jit(lambda s, sd: gan.channel_image_directions(lambda x: x @ a + b[None], s, sd,
                                                            step=0.7, chunk=5))(styles, std)
  expect = np.asarray(a) / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-30)
  np.testing.assert_allclose(dirs, expect, atol=1e-5)
  t_src, t_tgt = jax.random.normal(k4, (2, e_dim))
  dt = gan.text_direction(t_src, t_tgt)
  d = np.asarray(t_tgt / np.linalg.norm(t_tgt) - t_src / np.linalg.norm(t_src))
  np.testing.assert_allclose(dt, d / np.linalg.norm(d), atol=1e-6)
  rel = np.asarray(gan.channel_relevance(dirs, dt))
  np.testing.assert_allclose(rel, expect @ np.asarray(dt), atol=1e-5)
  beta = float(np.sort(np.abs(rel))[s_dim // 2])
  delta = np.asarray(gan.global_direction(rel, std, beta))
  kept = np.abs(rel) >= beta
  expect_delta = np.where(kept, np.asarray(std) * rel / np.abs(rel[kept]).max(), 0.0)
  np.testing.assert_allclose(delta, expect_delta, atol=1e-6)
  assert delta[3] == 0 and np.sum(delta != 0) == kept.sum()
  np.testing.assert_array_equal(gan.global_direction(rel, std, 2.0), np.zeros(s_dim))
  np.testing.assert_allclose(gan.apply_global_direction(styles, delta, 2.5),
                             styles + 2.5 * delta[None], atol=1e-6)


# --- the CLIP loss and the optimisation ----------------------------------------------------

def _toy_image_fns(key, w_shape, image_shape=(4, 4, 3), e_dim=6):
  """A smooth nonlinear toy generator and image encoder (tanh of linear maps)."""
  k1, k2 = jax.random.split(key)
  g = jax.random.normal(k1, (int(np.prod(w_shape)), int(np.prod(image_shape)))) * 0.5
  e = jax.random.normal(k2, (int(np.prod(image_shape)), e_dim))
  gen = lambda lat: jnp.tanh(lat.reshape(lat.shape[0], -1) @ g).reshape(
      (lat.shape[0],) + image_shape)
  enc = lambda x: jnp.tanh(x.reshape(x.shape[0], -1) @ e)
  return gen, enc


def test_clip_loss_gradient_matches_finite_differences(key):
  """The gradient of eq. 1 (D_CLIP + lambda_L2 ||w - w_s||^2 + the keep term), in float64,
  against central differences along random directions; D_CLIP against 1 - cos."""
  with jax.enable_x64(True):
    k1, k2, k3, k4 = jax.random.split(key, 4)
    gen, enc = _toy_image_fns(k1, (3, 4))
    gen64 = lambda lat: gen(lat.astype(jnp.float64))
    keep = lambda x: x.reshape(x.shape[0], -1)[:, :5]
    src = jax.random.normal(k2, (3, 4), jnp.float64)
    lat = src + 0.3 * jax.random.normal(k3, (3, 4), jnp.float64)
    text = jax.random.normal(k4, (6,), jnp.float64)
    loss = lambda l: gan.clip_edit_loss(l, src, text, gen64, enc, l2_weight=0.05,
                                        keep_fn=keep, keep_weight=0.3)[0]
    f = enc(gen64(lat[None]))[0]
    cos = f @ text / np.linalg.norm(f) / np.linalg.norm(text)
    np.testing.assert_allclose(gan.clip_distance(f, text), 1 - cos, rtol=1e-12)
    grad = jax.grad(loss)(lat)
    for i in range(3):
      u = jax.random.normal(jax.random.fold_in(key, 10 + i), lat.shape, jnp.float64)
      eps = 1e-5
      fd = (loss(lat + eps * u) - loss(lat - eps * u)) / (2 * eps)
      np.testing.assert_allclose(jnp.sum(grad * u), fd, rtol=1e-6)


def test_latent_optimizer_scan_is_vmapped_and_lowers_the_loss(key):
  k1, k2, k3 = jax.random.split(key, 3)
  gen, enc = _toy_image_fns(k1, (2, 4))
  optimize = gan.make_latent_optimizer(gen, enc, num_steps=40, learning_rate=0.1,
                                       l2_weight=0.01)
  sources = jax.random.normal(k2, (3, 2, 4))
  texts = jax.random.normal(k3, (3, 6))
  batched = jax.jit(jax.vmap(optimize))(sources, texts)
  assert batched.latent.shape == (3, 2, 4) and batched.loss.shape == (3, 40)
  one = jax.jit(optimize)(sources[1], texts[1])
  np.testing.assert_allclose(batched.latent[1], one.latent, atol=1e-5)
  # the same steps driven one by one from Python give the same latents
  init, step, finish = gan.make_latent_optimizer_steps(gen, enc, num_steps=40,
                                                       learning_rate=0.1, l2_weight=0.01)
  carry, step = jax.vmap(init)(sources, texts), jax.jit(jax.vmap(step))
  for _ in range(40):
    carry, _ = step(carry)
  np.testing.assert_allclose(jax.vmap(finish)(carry).latent, batched.latent, atol=1e-5)
  start = jax.vmap(lambda s, t: gan.clip_distance(enc(gen(s[None]))[0], t))(sources, texts)
  assert np.all(batched.clip_distance < start)
  assert np.all(batched.loss[:, -1] < batched.loss[:, 0])
  # text to image: every start optimised, the one with the lowest final distance kept
  t2i = jax.jit(gan.make_text_to_image(gen, enc, num_steps=10))(sources, texts[0])
  assert int(t2i.best) == int(np.argmin(t2i.clip_distance))
  np.testing.assert_allclose(t2i.latent, t2i.latents[int(t2i.best)])
  each = jax.vmap(lambda s: gan.make_latent_optimizer(gen, enc, num_steps=10,
                                                      l2_weight=0.0)(s, texts[0]))(sources)
  np.testing.assert_allclose(t2i.clip_distance, each.clip_distance, atol=1e-6)


def test_library_errors():
  with pytest.raises(ValueError, match="strength alpha must be a finite number, got 'x'"):
    gan.apply_global_direction(jnp.zeros(3), jnp.zeros(3), "x")
  with pytest.raises(ValueError, match="strength alpha must be a finite number"):
    gan.check_strength(float("nan"))
  with pytest.raises(ValueError, match="threshold beta must be a number >= 0"):
    gan.global_direction(jnp.zeros(3), jnp.ones(3), -0.1)
  with pytest.raises(ValueError, match="num_steps must be a positive int"):
    gan.make_latent_optimizer(lambda x: x, lambda x: x, num_steps=0)
  with pytest.raises(ValueError, match="l2_weight must be a finite number >= 0"):
    gan.make_latent_optimizer(lambda x: x, lambda x: x, l2_weight=-1.0)
  with pytest.raises(ValueError, match=r"features \[K, E\] with K >= 1"):
    gan.mean_text_features(jnp.zeros((0, 4)))


# --- the commands on smoke workdirs --------------------------------------------------------

def _printed(capsys) -> dict:
  """The JSON a command printed last (indented)."""
  out = capsys.readouterr().out
  return json.loads(out[out.rindex("\n{\n") + 1 if "\n{\n" in out else out.index("{"):])


def _save_untrained(workdir, config, state):
  from experiments import workdir as W
  from jaxgen.training.checkpoint import make_manager, save
  W.save_config(workdir, config)
  manager = make_manager(os.path.join(workdir, "checkpoints"), async_save=False)
  save(manager, state)
  manager.close()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """Workdirs of the smoke StyleGAN and the smoke CLIP holding their initial parameters
  (training them is tested in tests/test_gan.py and tests/test_clip_family.py); the GAN's
  attribute-classifier cache is seeded with an untrained classifier, as tests/test_gan.py
  does."""
  from experiments import workdir as W
  from experiments.config import load_config
  from experiments.families.clip import runner as CR
  from experiments.families.gan import CLASSIFIER_DIR
  from experiments.families.gan import model as B
  from jaxgen import metrics as M
  root = tmp_path_factory.mktemp("styleclip")
  gan_dir, clip_dir = str(root / "gan"), str(root / "clip")
  cfg = M.ClassifierConfig(heads=tuple((k, len(v)) for k, v in SHAPES_ATTRIBUTES.items()),
                           image_shape=(16, 16, 3), features=(8, 8), embed_dim=8)
  params = jax.jit(cfg.module().init)(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
  M.save_classifier(os.path.join(gan_dir, CLASSIFIER_DIR), M.ClassifierBundle(cfg, params))
  config = load_config("experiments/configs/stylegan_shapes.py:smoke")
  g, d = B.build_models(config, W.build_source(config, "train").image_shape)
  _save_untrained(gan_dir, config, B.init_state(config, g, d, jax.random.key(0)))
  config = load_config("experiments/configs/clip_shapes.py:smoke")
  tok, _ = CR.text_setup(config, clip_dir)
  model = CR.build_model(config, (16, 16, 3), tok)
  _save_untrained(clip_dir, config, CR.init_state(config, model, (16, 16, 3),
                                                  jax.random.key(1)))
  return gan_dir, clip_dir


def test_clip_edit_both_methods(runs, capsys):
  from experiments.main import main
  gan_dir, clip_dir = runs
  common = ["clip-edit", "--workdir", gan_dir, "--clip", clip_dir, "--source", "a blue square",
            "--target", "a red square", "--seeds", "0-2"]
  assert main(common + ["--method", "optimise", "--steps", "3"]) == 0
  out = _printed(capsys)
  assert out["output"].endswith("clip_edit_optimise_a-blue-square_to_a-red-square.png")
  assert os.path.isfile(out["output"]) and out["num"] == 3 and out["num_steps"] == 3
  assert len(out["after"]["color"]) == 3 and out["w_distance"] > 0
  assert main(common + ["--method", "global", "--threshold", "0", "--strength", "2",
                        "--num-channel-images", "2", "--ensemble"]) == 0
  out = _printed(capsys)
  assert out["method"] == "global" and out["strength"] == 2.0 and out["channels"] > 0
  assert out["w_distance"] is None and out["s_distance"] > 0 and out["ensemble"]
  cached = [f for f in os.listdir(os.path.join(gan_dir, "edits"))
            if f.startswith("styleclip_channels")]
  assert len(cached) == 1


def test_colour_sweep_bookkeeping(runs, monkeypatch):
  """The sweep on readings made up so that every colour is drawn: 12 pairs, each judged on
  the edited images' readings."""
  from experiments.families.gan import load_trained
  from experiments.families.gan.tools import clip_edit as CE
  gan_dir, clip_dir = runs
  t = load_trained(gan_dir)
  clip = CE.load_clip(clip_dir, t.generator.config.image_shape)

  def fake(t, images):   # colours 0, 1, 2, 3, 0, ... by index; one shape
    n = len(images)
    idx = np.arange(n) % 4
    return {"color": idx, "color_p": np.ones(n), "shape": np.zeros(n, int),
            "shape_p": np.ones(n), "size": np.zeros(n, int), "size_p": np.ones(n),
            "position": np.zeros(n, int), "position_p": np.ones(n)}
  monkeypatch.setattr(CE, "readings", fake)
  # the shapes of test_clip_edit_both_methods' optimisation (3 latents, 3 steps): compiled once
  path = CE.colour_sweep(t, clip, CE.EditSettings(num_steps=3), num_latents=3, show=2)
  rec = json.load(open(path[:-4] + ".json"))
  assert len(rec["pairs"]) == 12 and {p["source"] for p in rec["pairs"]} == set(
      SHAPES_ATTRIBUTES["color"])
  # the fake readings give colours 0, 1, 2 to the three edited images: reached iff target < 3
  for p in rec["pairs"]:
    target = SHAPES_ATTRIBUTES["color"].index(p["target"])
    assert p["target_reached"] == pytest.approx(1 / 3 if target < 3 else 0.0)
    assert p["shape_kept"] == 1.0 and p["num"] == 3
  assert rec["mean"]["target_reached"] == pytest.approx(np.mean(
      [p["target_reached"] for p in rec["pairs"]]))
  # the same-colour control: each source edited towards its own colour, reached iff < 3
  assert rec["control_same_colour"]["target_reached"] == pytest.approx(3 / 4 * 1 / 3)
  assert rec["control_same_colour"]["shape_kept"] == 1.0
  assert rec["shape_confidence_mean"] == 1.0 and rec["shape_confidence_share_confident"] == 1.0
  # a global direction from a text to itself is zero: the global sweep has no control
  path = CE.colour_sweep(t, clip, CE.EditSettings(method="global", threshold=0.0,
                                                  num_channel_images=2), num_latents=3, show=2)
  rec = json.load(open(path[:-4] + ".json"))
  assert len(rec["pairs"]) == 12 and rec["control_same_colour"] is None


def test_clip_generate(runs, capsys):
  from experiments.families.gan.tools.clip_generate import named_attributes
  from experiments.main import main
  gan_dir, clip_dir = runs
  assert main(["clip-generate", "--workdir", gan_dir, "--clip", clip_dir, "--prompt",
               "a red square", "--prompt", "a small blue circle at the top left", "--num", "2",
               "--restarts", "2", "--steps", "2"]) == 0
  out = _printed(capsys)
  assert out["num"] == 2 and len(out["per_prompt"]) == 2 and 0 <= out["as_prompted"] <= 1
  assert out["per_prompt"][1]["named"] == {"shape": "circle", "color": "blue", "size": "small",
                                           "position": "top left"}
  assert all(b in (0, 1) for p in out["per_prompt"] for b in p["best_restart"])
  assert named_attributes("a red triangle on the left", SHAPES_ATTRIBUTES) == {
      "shape": 2, "color": 0, "position": 3}


def test_command_errors(runs, tmp_path):
  from experiments.main import main
  gan_dir, clip_dir = runs
  base = ["clip-edit", "--workdir", gan_dir, "--clip", clip_dir]
  with pytest.raises(ValueError, match="--target must be a non-empty text"):
    main(base + ["--source", "a blue square", "--target", "  "])
  with pytest.raises(ValueError, match="--prompt must be a non-empty text"):
    main(["clip-generate", "--workdir", gan_dir, "--clip", clip_dir, "--prompt", ""])
  with pytest.raises(SystemExit):
    main(base + ["--source", "a", "--target", "b", "--strength", "strong"])
  with pytest.raises(ValueError, match="lower --threshold"):
    main(base + ["--source", "a blue square", "--target", "a red square", "--method",
                 "global", "--threshold", "1.5", "--num-channel-images", "2"])
  with pytest.raises(ValueError, match="no training caption of the CLIP contains every word"):
    main(base + ["--source", "a blue square", "--target", "a purple square", "--ensemble"])
  # a CLIP of another image size: refused before loading, unless resizing is asked for
  other = str(tmp_path / "clip32")
  shutil.copytree(clip_dir, other)
  cfg_path = os.path.join(other, "config.json")
  cfg = json.load(open(cfg_path))
  cfg["data"]["image_size"] = 32
  json.dump(cfg, open(cfg_path, "w"))
  with pytest.raises(ValueError, match=r"sees 32x32 images but the generator draws 16x16: "
                                       r"pass --resize"):
    main(base[:-1] + [other, "--source", "a", "--target", "b"])
  with pytest.raises(ValueError, match="not a trained workdir"):
    main(base[:-1] + [str(tmp_path / "nothing"), "--source", "a", "--target", "b"])
