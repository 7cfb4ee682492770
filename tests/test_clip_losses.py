"""CLIP's InfoNCE and SigLIP's sigmoid loss against closed forms in numpy, and the global-batch
negatives: on 8 devices with all-gathered features the loss equals the one-device loss."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from jaxgen import clip as C
from jaxgen import parallel


def _np_normalize(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _np_log_softmax(z):
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


@pytest.fixture
def features(key):
  k1, k2 = jax.random.split(key)
  img = np.asarray(jax.random.normal(k1, (16, 6)), np.float64)
  txt = img + 0.7 * np.asarray(jax.random.normal(k2, (16, 6)), np.float64)
  return img.astype(np.float32), txt.astype(np.float32)


def test_clip_loss_is_symmetric_cross_entropy(features):
  img, txt = features
  log_scale = np.log(10.0)
  logits = 10.0 * _np_normalize(img.astype(np.float64)) @ _np_normalize(txt.astype(np.float64)).T
  want = -0.5 * (np.mean(np.diag(_np_log_softmax(logits))) +
                 np.mean(np.diag(_np_log_softmax(logits.T))))
  got = float(jax.jit(C.clip_loss)(img, txt, log_scale))
  np.testing.assert_allclose(got, want, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(C.clip_logits(img, txt, log_scale)), logits, rtol=1e-5,
                             atol=1e-6)
  # The temperature is clipped at 100 (exp(log_scale) larger than 100 gives scale 100).
  np.testing.assert_allclose(np.asarray(C.clip_logits(img, txt, 10.0)),
                             np.asarray(C.clip_logits(img, txt, np.log(100.0))), rtol=1e-6)


def test_siglip_loss_is_pairwise_sigmoid(features):
  img, txt = features
  t, b = 5.0, -2.0
  logits = t * _np_normalize(img.astype(np.float64)) @ _np_normalize(txt.astype(np.float64)).T + b
  z = 2 * np.eye(16) - 1
  want = -np.sum(np.log(1 / (1 + np.exp(-z * logits)))) / 16
  np.testing.assert_allclose(float(C.siglip_loss(img, txt, np.log(t), b)), want, rtol=1e-5)


@pytest.mark.parametrize("loss", ["clip", "siglip"])
def test_global_batch_negatives_on_8_devices_equal_one_device(features, loss):
  img, txt = features
  mesh = parallel.make_mesh()
  n = mesh.devices.size
  assert n == 8 and img.shape[0] % n == 0
  fn = (functools.partial(C.clip_loss, log_scale=np.log(7.0)) if loss == "clip"
        else functools.partial(C.siglip_loss, log_scale=np.log(7.0), bias=-1.0))

  @jax.jit
  @functools.partial(jax.shard_map, mesh=mesh, in_specs=(P("data"), P("data")), out_specs=P())
  def sharded(i, t):
    return fn(i, t, axis_name="data")

  one = float(fn(img, txt))
  np.testing.assert_allclose(float(sharded(img, txt)), one, rtol=1e-5)
  # Without the gather each device would only see its own 2 pairs: a different (easier) loss.
  local = np.mean([float(fn(img[s:s + 2], txt[s:s + 2])) for s in range(0, 16, 2)])
  assert abs(local - one) > 1e-3


def test_bad_feature_shapes_raise(features):
  img, txt = features
  with pytest.raises(ValueError, match="one shape"):
    C.clip_loss(img, txt[:8], 0.0)
  with pytest.raises(ValueError, match="one shape"):
    C.siglip_loss(img[:, :3], txt, 0.0, 0.0)
