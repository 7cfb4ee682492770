"""Vector quantiser: straight-through gradient, where each loss term's gradient goes, the EMA
update's closed form, dead-code restart, metrics, and the codebook under 8 fake devices."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen import parallel
from jaxgen import vae as V
from jaxgen.nn import Autoencoder, AutoencoderConfig, init_autoencoder
from jaxgen.training import make_optimizer

K, D = 6, 3


def test_quantize_picks_nearest_code_and_straight_through_is_identity(key):
  k1, k2, k3 = jax.random.split(key, 3)
  emb = jax.random.normal(k1, (K, D))
  z = jax.random.normal(k2, (2, 4, 4, D))
  q = V.quantize(z, emb)
  dists = jnp.sum((z[..., None, :] - emb[None, None, None]) ** 2, axis=-1)  # [2, 4, 4, K]
  np.testing.assert_array_equal(q.indices, jnp.argmin(dists, axis=-1))
  np.testing.assert_allclose(q.z_q, emb[q.indices], atol=1e-6)
  # d/dz_e of <w, z_q> is w: the straight-through estimator passes the gradient unchanged.
  w = jax.random.normal(k3, z.shape)
  g = jax.grad(lambda z: jnp.sum(w * V.quantize(z, emb).z_q))(z)
  np.testing.assert_array_equal(g, w)
  # The full Jacobian of one vector is the identity.
  jac = jax.jacobian(lambda v: V.quantize(v, emb).z_q)(z[0, 0, 0])
  np.testing.assert_array_equal(jac, np.eye(D))


def test_loss_terms_gradients_closed_form(key):
  k1, k2 = jax.random.split(key)
  emb = jax.random.normal(k1, (K, D))
  z = jax.random.normal(k2, (10, D))
  q = V.quantize(z, emb)
  e = emb[q.indices]
  n = z.size
  gz, ge = jax.grad(lambda z, emb: V.quantize(z, emb).codebook_loss, argnums=(0, 1))(z, emb)
  np.testing.assert_array_equal(gz, 0.0)
  want = np.zeros((K, D), np.float32)
  np.add.at(want, np.asarray(q.indices), 2.0 * np.asarray(e - z) / n)
  np.testing.assert_allclose(ge, want, rtol=1e-5, atol=1e-7)
  gz, ge = jax.grad(lambda z, emb: V.quantize(z, emb).commitment_loss, argnums=(0, 1))(z, emb)
  np.testing.assert_array_equal(ge, 0.0)
  np.testing.assert_allclose(gz, 2.0 * (z - e) / n, rtol=1e-5, atol=1e-7)
  # vq_loss puts beta on the commitment term (van den Oord et al.), not on the codebook term.
  np.testing.assert_allclose(V.vq_loss(1.0, q, 0.25),
                             1.0 + q.codebook_loss + 0.25 * q.commitment_loss, rtol=1e-6)


@pytest.fixture(scope="module")
def mlp_vq():
  cfg = AutoencoderConfig(image_size=4, in_channels=1, latent_channels=D, architecture="mlp",
                          mlp_hidden=(16,))
  model = Autoencoder(cfg)
  return model, init_autoencoder(model, jax.random.key(0))


def test_codebook_term_reaches_only_codebook_and_commitment_only_encoder(mlp_vq, key):
  model, params = mlp_vq
  params = {"model": params, "codebook": jax.random.normal(key, (K, D))}
  x = jax.random.uniform(jax.random.fold_in(key, 1), (8, 4, 4, 1), minval=-1, maxval=1)

  def term(p, name):
    z_e = model.apply({"params": p["model"]}, x, method=Autoencoder.encode)
    return getattr(V.quantize(z_e, p["codebook"]), name)

  def norms(g):
    return {k: float(jax.tree.reduce(lambda a, b: a + jnp.sum(jnp.abs(b)), v, 0.0))
            for k, v in (("codebook", g["codebook"]), ("encoder", g["model"]["encoder"]),
                         ("decoder", g["model"]["decoder"]),
                         ("decoder_out", g["model"]["decoder_out"]))}

  g = norms(jax.grad(term)(params, "codebook_loss"))
  assert g["codebook"] > 0 and g["encoder"] == g["decoder"] == g["decoder_out"] == 0.0
  g = norms(jax.grad(term)(params, "commitment_loss"))
  assert g["encoder"] > 0 and g["codebook"] == g["decoder"] == g["decoder_out"] == 0.0


def test_ema_update_closed_form():
  emb = jnp.array([[0.0, 0.0], [1.0, 1.0]])
  state = V.CodebookState(embedding=emb, cluster_size=jnp.ones(2), embed_sum=emb)
  z = jnp.array([[0.1, 0.0], [0.9, 1.1], [1.0, 0.8]])
  idx = V.nearest_code(z, emb)
  np.testing.assert_array_equal(idx, [0, 1, 1])
  new = V.ema_update(state, z, idx, decay=0.5, eps=0.1)
  # N = 0.5 [1, 1] + 0.5 [1, 2]; m = 0.5 e + 0.5 [[0.1, 0], [1.9, 1.9]]
  np.testing.assert_allclose(new.cluster_size, [1.0, 1.5], rtol=1e-6)
  np.testing.assert_allclose(new.embed_sum, [[0.05, 0.0], [1.45, 1.45]], rtol=1e-6)
  # Laplace smoothing: n = 2.5, N~ = (N + 0.1) / (2.5 + 2 * 0.1) * 2.5
  smoothed = np.array([1.1, 1.6]) / 2.7 * 2.5
  np.testing.assert_allclose(new.embedding, np.array([[0.05, 0.0], [1.45, 1.45]])
                             / smoothed[:, None], rtol=1e-6)
  # An unused code keeps its vector (up to smoothing) instead of collapsing to zero.
  new = V.ema_update(state, z[1:], idx[1:], decay=0.9, eps=0.0)
  np.testing.assert_allclose(new.embedding[0], emb[0])


def test_restart_dead_codes_and_metrics(key):
  emb = jnp.arange(8.0).reshape(4, 2)
  state = V.CodebookState(embedding=emb, cluster_size=jnp.array([5.0, 0.1, 2.0, 0.5]),
                          embed_sum=emb)
  z = 100.0 + jnp.arange(20.0).reshape(10, 2)
  new, n = V.restart_dead_codes(state, z, key, threshold=1.0)
  assert int(n) == 2
  np.testing.assert_array_equal(new.embedding[jnp.array([0, 2])], emb[jnp.array([0, 2])])
  for k in (1, 3):  # restarted codes are encoder outputs of the batch, with count = threshold
    assert any(np.array_equal(new.embedding[k], row) for row in np.asarray(z))
    assert float(new.cluster_size[k]) == 1.0
  np.testing.assert_allclose(new.embed_sum[1], new.embedding[1])
  m = V.codebook_metrics(jnp.array([5.0, 5.0, 0.0, 0.0]))
  np.testing.assert_allclose(m["perplexity"], 2.0, rtol=1e-6)
  assert float(m["codes_used"]) == 0.5
  m = V.codebook_metrics(V.code_counts(jnp.arange(12) % 4, 4))
  np.testing.assert_allclose(m["perplexity"], 4.0, rtol=1e-6)


def _device_copies(x):
  return [np.asarray(s.data) for s in x.addressable_shards]


def test_codebook_update_identical_on_8_devices(key):
  n_dev = jax.device_count()
  assert n_dev == 8
  k1, k2, k3 = jax.random.split(key, 3)
  emb = jax.random.normal(k1, (K, D))
  state = V.CodebookState(embedding=emb, cluster_size=jnp.array([3.0, 0.2, 1.0, 2.0, 0.1, 5.0]),
                          embed_sum=emb * 2.0)
  z = jax.random.normal(k2, (8 * 4, D))

  def update(state, z, axis_name=None):
    new = V.ema_update(state, z, V.nearest_code(z, state.embedding), decay=0.9,
                       axis_name=axis_name)
    return V.restart_dead_codes(new, z, k3, threshold=0.5, axis_name=axis_name)[0]

  ref = jax.jit(update)(state, z)
  # pmap: every statistic is psum-ed / all-gathered over the axis.
  out = jax.pmap(lambda z: update(state, z, "d"), axis_name="d")(z.reshape(8, 4, D))
  for leaf_ref, leaf in zip(jax.tree.leaves(ref), jax.tree.leaves(out)):
    for i in range(1, 8):
      np.testing.assert_array_equal(leaf[i], leaf[0])
    np.testing.assert_allclose(leaf[0], leaf_ref, rtol=1e-5, atol=1e-6)
  # jit with the batch sharded over a mesh: the batch reductions are global already.
  mesh = parallel.make_mesh()
  out = jax.jit(update)(parallel.replicate(state, mesh), parallel.shard_batch(z, mesh))
  for leaf_ref, leaf in zip(jax.tree.leaves(ref), jax.tree.leaves(out)):
    copies = _device_copies(leaf)
    assert len(copies) == 8
    for c in copies:
      np.testing.assert_array_equal(c, copies[0])
    np.testing.assert_allclose(copies[0], leaf_ref, rtol=1e-5, atol=1e-6)


def test_vq_step_data_parallel_matches_single_device(mlp_vq, key):
  model, params = mlp_vq
  mesh = parallel.make_mesh()
  cb = V.init_codebook(jax.random.key(1), K, D, scale=1.0)
  batch = {"image": jax.random.uniform(key, (16, 4, 4, 1), minval=-1, maxval=1)}
  step = V.make_vq_step(model, dead_threshold=1.5, codebook_decay=0.8)

  def fresh():
    return V.VQTrainState.create_vq(apply_fn=model.apply, model_params=params, codebook=cb,
                                    tx=make_optimizer(1e-2, grad_clip=None))

  ref, m_ref = jax.jit(step)(fresh(), batch, jax.random.key(5))
  out, m = jax.jit(step)(parallel.replicate(fresh(), mesh), parallel.shard_batch(batch, mesh),
                         jax.random.key(5))
  for leaf_ref, leaf in zip(jax.tree.leaves(ref.codebook), jax.tree.leaves(out.codebook)):
    copies = _device_copies(leaf)
    for c in copies[1:]:
      np.testing.assert_array_equal(c, copies[0])
    np.testing.assert_allclose(copies[0], leaf_ref, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(m["perplexity"], m_ref["perplexity"], rtol=1e-5)
  assert int(m["restarted"]) == int(m_ref["restarted"])
  # pmap with axis_name: the same codebook and parameters on every device.
  pstep = jax.pmap(V.make_vq_step(model, dead_threshold=1.5, codebook_decay=0.8,
                                  axis_name="d"), axis_name="d", in_axes=(None, 0, None))
  pout, _ = pstep(fresh(), jax.tree.map(lambda x: x.reshape((8, 2) + x.shape[1:]), batch),
                  jax.random.key(5))
  for leaf_ref, leaf in zip(jax.tree.leaves((ref.codebook, ref.params)),
                            jax.tree.leaves((pout.codebook, pout.params))):
    for i in range(1, 8):
      np.testing.assert_array_equal(leaf[i], leaf[0])
    np.testing.assert_allclose(leaf[0], leaf_ref, rtol=1e-4, atol=1e-5)


def test_bad_codebook_sizes(key):
  for k, d in ((0, 4), (4, 0), (-1, 2)):
    with pytest.raises(ValueError, match="positive int"):
      V.init_codebook(key, k, d)
  with pytest.raises(ValueError, match="code dim"):
    V.nearest_code(jnp.zeros((2, 3)), jnp.zeros((4, 5)))
  model = Autoencoder(AutoencoderConfig(image_size=4, in_channels=1, latent_channels=2,
                                        architecture="mlp"))
  for bad in (dict(beta=-0.1), dict(codebook_update="adam"), dict(codebook_decay=1.0)):
    with pytest.raises(ValueError):
      V.make_vq_step(model, **bad)
