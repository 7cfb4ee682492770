"""Tests for jaxgen.metrics: Fréchet distance (closed forms, pytorch-fid fixtures), image
metrics and grids, and the classifier feature network."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jaxgen.metrics import (
    Classifier,
    classifier_accuracy,
    classifier_features,
    classifier_fid,
    classifier_predict,
    feature_statistics,
    frechet_distance,
    frechet_distance_jax,
    load_classifier,
    make_grid,
    mse,
    psnr,
    save_classifier,
    save_image_grid,
    to_uint8,
    train_classifier,
)

FIXTURES = os.path.join(os.path.dirname(__file__), "reference", "frechet.npz")


def _load_fixtures():
  with np.load(FIXTURES, allow_pickle=False) as z:
    return {k: z[k] for k in z.files}


_FIX = _load_fixtures()
_CASES = [str(c) for c in _FIX["cases"]]


def _args(case):
  return [_FIX[f"{case}/{k}"] for k in ("mu1", "sigma1", "mu2", "sigma2")]


def _random_stats(rng, n, d):
  return feature_statistics(rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) + rng.normal(size=d))


# ----------------------------------------------------------------------------- Fréchet


def test_frechet_diagonal_closed_form():
  rng = np.random.default_rng(0)
  mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
  s1, s2 = rng.uniform(0.1, 3.0, size=6), rng.uniform(0.1, 3.0, size=6)
  expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
  got = frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2))
  assert isinstance(got, float)
  np.testing.assert_allclose(got, expected, rtol=1e-12)
  got32 = frechet_distance_jax(*[jnp.asarray(a, jnp.float32) for a in (mu1, np.diag(s1), mu2, np.diag(s2))])
  assert got32.dtype == jnp.float32 and got32.shape == ()
  np.testing.assert_allclose(float(got32), expected, rtol=1e-5)


def test_frechet_rank_deficient_diagonal_closed_form():
  # Zero variances: the square-root trace only counts the shared support.
  s1, s2 = np.array([0.0, 2.0, 1.0, 0.0]), np.array([3.0, 0.5, 0.0, 0.0])
  mu = np.zeros(4)
  expected = np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
  np.testing.assert_allclose(frechet_distance(mu, np.diag(s1), mu, np.diag(s2)), expected, rtol=1e-12)


@pytest.mark.parametrize("case", _CASES)
def test_frechet_matches_pytorch_fid(case):
  args = _args(case)
  ref, exact = float(_FIX[f"{case}/pytorch_fid"]), float(_FIX[f"{case}/exact"])
  got = frechet_distance(*args)
  scale = np.trace(args[1]) + np.trace(args[3])
  if case.startswith("identical"):
    assert abs(got) < 1e-9 * scale and abs(ref) < 1e-9 * scale
  else:
    np.testing.assert_allclose(got, ref, rtol=1e-4)
    np.testing.assert_allclose(got, exact, rtol=1e-7)  # tighter than pytorch-fid itself


@pytest.mark.parametrize("n", [200, 10])  # full rank and rank deficient (D=16)
def test_frechet_symmetric(n):
  rng = np.random.default_rng(n)
  a, b = _random_stats(rng, n, 16), _random_stats(rng, n + 3, 16)
  np.testing.assert_allclose(frechet_distance(*a, *b), frechet_distance(*b, *a), rtol=1e-9)


def test_frechet_zero_for_identical_and_shift():
  rng = np.random.default_rng(1)
  mu, sigma = _random_stats(rng, 50, 12)
  assert 0.0 <= frechet_distance(mu, sigma, mu, sigma) < 1e-9 * np.trace(sigma)
  # A pure mean shift adds ||delta||^2.
  delta = rng.normal(size=12)
  np.testing.assert_allclose(frechet_distance(mu, sigma, mu + delta, sigma), delta @ delta,
                             rtol=1e-8)


def test_frechet_distance_jax_under_jit():
  args = [jnp.asarray(a) for a in _args("full_d8")]
  got = jax.jit(frechet_distance_jax)(*args)
  np.testing.assert_allclose(float(got), float(_FIX["full_d8/exact"]), rtol=1e-4)


def test_feature_statistics_matches_numpy():
  x = np.random.default_rng(2).normal(size=(30, 5)).astype(np.float32)
  mu, sigma = feature_statistics(x)
  np.testing.assert_allclose(mu, x.astype(np.float64).mean(0), rtol=1e-12)
  np.testing.assert_allclose(sigma, np.cov(x.astype(np.float64), rowvar=False), rtol=1e-12)
  with pytest.raises(ValueError, match="at least 2"):
    feature_statistics(x[:1])
  with pytest.raises(ValueError, match=r"\[N, D\]"):
    feature_statistics(x[0])


@pytest.mark.parametrize("shapes", [
    ((4,), (4, 4), (5,), (5, 5)),   # different D
    ((4,), (4, 5), (4,), (4, 4)),   # non-square
    ((4, 1), (4, 4), (4,), (4, 4)),  # mu not a vector
    ((4,), (4, 4), (4,), (3, 3)),   # sigma D mismatch
])
def test_frechet_bad_shapes(shapes):
  args = [np.eye(*s) if len(s) == 2 else np.zeros(s) for s in shapes]
  with pytest.raises(ValueError, match="mu|sigma"):
    frechet_distance(*args)
  with pytest.raises(ValueError, match="mu|sigma"):
    frechet_distance_jax(*args)


def test_frechet_nan_stats():
  sigma = np.eye(3)
  with pytest.raises(ValueError, match="NaN"):
    frechet_distance(np.array([0.0, np.nan, 0.0]), sigma, np.zeros(3), sigma)


# ----------------------------------------------------------------------------- images


def test_mse_psnr_closed_form():
  x = jnp.zeros((3, 4, 4, 1))
  c = jnp.array([0.1, 0.5, 1.0])
  y = jnp.broadcast_to(c[:, None, None, None], x.shape)
  np.testing.assert_allclose(mse(x, y, reduction="none"), c ** 2, rtol=1e-6)
  np.testing.assert_allclose(mse(x, y), np.mean(np.asarray(c) ** 2), rtol=1e-6)
  per = 10 * np.log10(4.0 / np.asarray(c) ** 2)
  np.testing.assert_allclose(psnr(x, y, reduction="none"), per, rtol=1e-5)
  np.testing.assert_allclose(psnr(x, y), per.mean(), rtol=1e-5)
  np.testing.assert_allclose(psnr(x, y, data_range=1.0, reduction="none"),
                             10 * np.log10(1.0 / np.asarray(c) ** 2), rtol=1e-5)
  assert np.isinf(float(psnr(x, x)))
  np.testing.assert_allclose(jax.jit(psnr)(x, y), per.mean(), rtol=1e-5)
  with pytest.raises(ValueError, match="same shape"):
    mse(x, y[:2])
  with pytest.raises(ValueError, match="reduction"):
    psnr(x, y, reduction="sum")


def test_to_uint8_rounding_and_clipping():
  x = np.array([-2.0, -1.0, 0.0, 1.0, 3.0, -1 + 2 * 0.4 / 255, -1 + 2 * 0.6 / 255], np.float32)
  np.testing.assert_array_equal(to_uint8(x), [0, 0, 128, 255, 255, 0, 1])
  levels = np.arange(256)
  np.testing.assert_array_equal(to_uint8((levels / 127.5 - 1).astype(np.float32)), levels)
  assert to_uint8(jnp.zeros((2, 2))).dtype == np.uint8
  u = np.array([3, 200], np.uint8)
  assert to_uint8(u) is u
  with pytest.raises(ValueError, match="NaN"):
    to_uint8(np.array([np.nan]))
  with pytest.raises(TypeError, match="float"):
    to_uint8(np.array([1, 2]))


def test_make_grid_layout():
  n, h, w = 5, 2, 3
  images = np.stack([np.full((h, w, 1), 10 * (i + 1), np.uint8) for i in range(n)])
  grid = make_grid(images, nrow=2, padding=1, pad_value=255)
  assert grid.shape == (3 * (h + 1) + 1, 2 * (w + 1) + 1, 1) and grid.dtype == np.uint8
  for i in range(n):
    top, left = 1 + (i // 2) * (h + 1), 1 + (i % 2) * (w + 1)
    np.testing.assert_array_equal(grid[top:top + h, left:left + w, 0], 10 * (i + 1))
  assert np.all(grid[0] == 255) and np.all(grid[:, 0] == 255)  # border
  assert np.all(grid[:, 1 + w] == 255)  # gap between columns
  assert np.all(grid[7:9, 5:8] == 255)  # empty last cell (row 2, col 1)
  no_pad = make_grid(np.linspace(-1, 1, 4 * 4).reshape(4, 2, 2, 1), nrow=4, padding=0)
  assert no_pad.shape == (2, 8, 1) and no_pad[0, 0, 0] == 0 and no_pad[1, 7, 0] == 255
  with pytest.raises(ValueError, match="nrow"):
    make_grid(images, nrow=0)


def test_save_image_grid(tmp_path):
  gray = np.linspace(-1, 1, 4 * 8 * 8).reshape(4, 8, 8, 1).astype(np.float32)
  path = save_image_grid(tmp_path / "sub" / "digits.png", gray, nrow=2)
  with Image.open(path) as im:
    assert im.mode == "L" and im.size == (2 * 68 + 4, 2 * 68 + 4)  # 8x8 upscaled x8, 4 px gaps
    pixels = np.asarray(im)
  expected = np.repeat(np.repeat(to_uint8(gray), 8, axis=1), 8, axis=2)
  np.testing.assert_array_equal(pixels[4:68, 72:136], expected[1, ..., 0])
  assert pixels[0, 0] == 128 and pixels[68:72, :].max() == 128  # the gray gaps
  rgb = np.zeros((3, 32, 32, 3), np.float32)
  with Image.open(save_image_grid(tmp_path / "rgb.png", rgb, nrow=3)) as im:
    assert im.mode == "RGB" and im.size == (3 * 68 + 4, 68 + 4)  # 32x32 upscaled x2


# ----------------------------------------------------------------------------- classifier


def _toy_data(n=96, size=8, seed=0):
  """Separable by position: class 0 bright on the left half, class 1 on the right."""
  rng = np.random.default_rng(seed)
  y = rng.integers(0, 2, n).astype(np.int32)
  x = np.full((n, size, size, 1), -1.0, np.float32)
  half = size // 2
  for i in range(n):
    sl = slice(0, half) if y[i] == 0 else slice(half, size)
    x[i, :, sl] = 0.8
  x += 0.3 * rng.normal(size=x.shape).astype(np.float32)
  return x, y


@pytest.fixture(scope="module")
def toy_bundle():
  x, y = _toy_data()
  bundle = train_classifier(x, {"side": y}, key=jax.random.key(0), num_steps=50,
                            batch_size=32, learning_rate=1e-2, features=(8,), embed_dim=16)
  return bundle, x, y


def test_classifier_training_reduces_loss(toy_bundle):
  bundle, x, y = toy_bundle
  losses = bundle.info["losses"]
  assert len(losses) == 2 and losses[-1] < 0.5 * losses[0]
  assert losses[-1] < 0.2  # log(2) ~ 0.69 at chance
  x_test, y_test = _toy_data(seed=1)
  assert classifier_accuracy(bundle, x_test, {"side": y_test})["side"] >= 0.95


def test_classifier_outputs(toy_bundle):
  bundle, x, _ = toy_bundle
  probs = classifier_predict(bundle, x[:7], batch_size=4)  # padded last batch
  assert set(probs) == {"side"} and probs["side"].shape == (7, 2)
  np.testing.assert_allclose(probs["side"].sum(-1), 1.0, rtol=1e-5)
  feats = classifier_features(bundle, x[:7], batch_size=4)
  assert feats.shape == (7, 16) and feats.dtype == np.float32
  np.testing.assert_allclose(feats, classifier_features(bundle, x[:7]), rtol=1e-5, atol=1e-6)
  fa, fb = classifier_features(bundle, x[:48]), classifier_features(bundle, x[48:])
  fid_aa = classifier_fid(bundle, x[:48], x[:48])
  assert 0.0 <= fid_aa < 1e-9 * np.trace(feature_statistics(fa)[1])
  np.testing.assert_allclose(classifier_fid(bundle, x[:48], x[48:]),
                             frechet_distance(*feature_statistics(fa), *feature_statistics(fb)),
                             rtol=1e-9)
  with pytest.raises(ValueError, match="trained on images of shape"):
    classifier_features(bundle, np.zeros((2, 16, 16, 1), np.float32))


def test_classifier_batches_through_map_batched(toy_bundle):
  """Chunked evaluation: every batch size (padded last chunk, or one chunk of N) gives the
  per-example outputs of one big batch; empty input and batch_size < 1 are refused."""
  bundle, x, _ = toy_bundle
  full = classifier_features(bundle, x[:11], batch_size=11)
  for bs in (1, 4, 11, 500):
    np.testing.assert_allclose(classifier_features(bundle, x[:11], batch_size=bs), full,
                               rtol=1e-5, atol=1e-6)
  probs = classifier_predict(bundle, x[:11].astype(np.float64), batch_size=4)
  assert probs["side"].dtype == np.float32 and probs["side"].shape == (11, 2)
  with pytest.raises(ValueError, match="batch_size must be >= 1"):
    classifier_features(bundle, x[:3], batch_size=0)
  with pytest.raises(ValueError, match="got no images"):
    classifier_predict(bundle, x[:0])


def test_classifier_save_load_round_trip(toy_bundle, tmp_path):
  bundle, x, _ = toy_bundle
  save_classifier(tmp_path / "clf", bundle)
  assert sorted(os.listdir(tmp_path / "clf")) == ["config.json", "params.safetensors"]
  loaded = load_classifier(tmp_path / "clf")
  assert loaded.config == bundle.config and loaded.info == bundle.info
  np.testing.assert_array_equal(classifier_features(loaded, x), classifier_features(bundle, x))
  # A config that does not match the stored parameters is refused.
  meta = json.loads((tmp_path / "clf" / "config.json").read_text())
  meta["config"]["embed_dim"] = 32
  (tmp_path / "clf" / "config.json").write_text(json.dumps(meta))
  with pytest.raises(ValueError, match="does not match"):
    load_classifier(tmp_path / "clf")
  with pytest.raises(FileNotFoundError):
    load_classifier(tmp_path / "missing")


@pytest.mark.parametrize("size,channels", [(8, 1), (16, 1), (32, 3), (64, 3)])
def test_classifier_shapes(size, channels):
  model = Classifier(heads={"shape": 3, "color": 4}, features=(8, 16), embed_dim=12)
  x = jax.ShapeDtypeStruct((2, size, size, channels), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.key(0), x)
  logits, emb = jax.eval_shape(model.apply, variables, x)
  assert {k: v.shape for k, v in logits.items()} == {"shape": (2, 3), "color": (2, 4)}
  assert emb.shape == (2, 12)


def test_train_classifier_bad_input(key):
  x, y = _toy_data(n=8)
  with pytest.raises(ValueError, match="shape"):
    train_classifier(x[:, :, :, 0], {"side": y}, key=key)
  with pytest.raises(ValueError, match="int array"):
    train_classifier(x, {"side": y[:4]}, key=key)
  with pytest.raises(ValueError, match="only 2 classes"):
    train_classifier(x, {"side": y + 1}, key=key, heads={"side": 2})
  with pytest.raises(TypeError, match="float"):
    train_classifier(x.astype(np.uint8), {"side": y}, key=key)
  with pytest.raises(ValueError, match=r"\[-1, 1\]"):
    train_classifier(x * 127.5 + 127.5, {"side": y}, key=key)
