"""GANs: losses vs formulas, R1 vs finite differences, one-compile steps, seeds, latent tools,
the projector, latent directions and clear errors. Tiny models; compiled pieces are shared
through module-scoped fixtures."""
import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxgen import gan
from jaxgen.data import SHAPES_ATTRIBUTES
from jaxgen.nn import (DCGANDiscriminator, DCGANGenerator, DirectionReconstructor,
                       StyleDiscriminator, StyleGANConfig, StyleGenerator)
from jaxgen.nn.stylegan import ModulatedConv, broadcast_ws, expand_ws, mix_styles

SG = StyleGANConfig(image_size=8, channels=3, z_dim=8, w_dim=8, mapping_layers=2,
                    channel_base=64, channel_max=8)


# --- losses ---------------------------------------------------------------------------

def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def test_losses_equal_their_formulas():
  r = np.array([-3.0, -0.5, 0.0, 0.7, 4.0], np.float32)
  f = np.array([2.0, -1.0, 0.3, -4.0, 0.0], np.float32)
  dr, df = _sigmoid(r.astype(np.float64)), _sigmoid(f.astype(np.float64))
  np.testing.assert_allclose(gan.d_loss_logistic(r, f), -np.log(dr) - np.log(1 - df), rtol=1e-5)
  np.testing.assert_allclose(gan.g_loss_minimax(f), np.log(1 - df), rtol=1e-5)
  np.testing.assert_allclose(gan.g_loss_nonsaturating(f), -np.log(df), rtol=1e-5)
  np.testing.assert_allclose(gan.d_loss_hinge(r, f),
                             np.maximum(0, 1 - r) + np.maximum(0, 1 + f), rtol=1e-6)
  np.testing.assert_allclose(gan.g_loss_hinge(f), -f)
  # The saturation the non-saturating loss avoids: d/df log(1 - D) -> 0 as D -> 0.
  assert abs(jax.grad(lambda x: gan.g_loss_minimax(x))(-10.0)) < 1e-4
  assert abs(jax.grad(lambda x: gan.g_loss_nonsaturating(x))(-10.0)) > 0.99
  with pytest.raises(ValueError, match="unknown GAN loss"):
    gan.get_losses("wasserstein")


def test_r1_matches_finite_differences(key):
  k1, k2, k3 = jax.random.split(key, 3)
  w1 = jax.random.normal(k1, (4 * 4 * 2, 6)) * 0.3
  w2 = jax.random.normal(k2, (6,))

  def logit_fn(x):  # a smooth per-example discriminator [B, 4, 4, 2] -> [B]
    return jnp.tanh(x.reshape(x.shape[0], -1) @ w1) @ w2 + 0.1 * jnp.sum(x ** 3, (1, 2, 3))

  x = jax.random.normal(k3, (2, 4, 4, 2))
  r1 = np.asarray(jax.jit(lambda x: gan.r1_penalty(logit_fn, x))(x))
  # Central differences along every pixel, all perturbations in one batched call.
  eps = 1e-2
  basis = np.eye(32).reshape(32, 4, 4, 2) * eps
  shifted = np.concatenate([np.asarray(x)[None] + basis[:, None],
                            np.asarray(x)[None] - basis[:, None]])
  out = np.asarray(jax.jit(jax.vmap(logit_fn))(jnp.asarray(shifted)), np.float64)  # [64, 2]
  fd = np.sum(((out[:32] - out[32:]) / (2 * eps)) ** 2, axis=0)
  np.testing.assert_allclose(r1, fd, rtol=2e-3)


# --- train steps ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def dcgan_state():
  g = DCGANGenerator(image_size=8, channels=1, z_dim=8, features=8, start_size=2)
  d = DCGANDiscriminator(image_size=8, channels=1, features=8)
  tx = optax.adam(2e-4, b1=0.5)
  return g, gan.GANState.create(g, d, jax.random.key(0), g_tx=tx, d_tx=tx)


def test_gan_step_compiles_once_and_updates(dcgan_state):
  _, state = dcgan_state
  traces = []

  def counted(s, b, k):
    traces.append(1)
    return gan.make_gan_step(loss="hinge", ema_decay=0.9)(s, b, k)

  step = jax.jit(counted)
  before = jax.tree.map(np.asarray, state.arrays())
  s = state
  for i in range(3):
    batch = {"image": jax.random.uniform(jax.random.key(10 + i), (8, 8, 8, 1), minval=-1.0,
                                         maxval=1.0)}
    s, metrics = step(s, batch, jax.random.key(i))
  assert len(traces) == 1
  assert int(s.step) == 3
  assert all(np.isfinite(float(v)) for v in metrics.values())
  # Both networks and the batch statistics moved; EMA follows the warm-up decay.
  for name in ("g_params", "d_params", "g_state"):
    moved = jax.tree.map(lambda a, b: np.abs(np.asarray(a) - b).max(),
                         getattr(s, name), before[name])
    assert max(jax.tree.leaves(moved)) > 0, name
  np.testing.assert_allclose(float(metrics["ema_decay"]), min(0.9, 3 / 12), rtol=1e-6)


def test_d_step_loss_is_the_formula_on_its_batch(dcgan_state):
  """The reported D loss is mean(softplus(-D(x)) + softplus(D(G(z)))) of the same arrays."""
  _, state = dcgan_state
  d_step = gan.make_d_step(loss="nonsaturating")
  batch = {"image": jnp.zeros((4, 8, 8, 1))}
  _, m = jax.jit(d_step)(state, batch, jax.random.key(5))

  @jax.jit
  def reference(state, image):
    z = jax.random.normal(jax.random.split(jax.random.key(5))[0], (4, state.z_dim))
    fake, _ = gan.apply_model(state.g_apply, state.g_params, state.g_state, z, train=True)
    r, ds = gan.apply_model(state.d_apply, state.d_params, state.d_state, image, train=True)
    f, _ = gan.apply_model(state.d_apply, state.d_params, ds, fake, train=True)
    return jnp.mean(jax.nn.softplus(-r) + jax.nn.softplus(f))

  np.testing.assert_allclose(float(m["d_loss"]), float(reference(state, batch["image"])),
                             rtol=1e-5)


# --- generators, seeds, truncation ----------------------------------------------------

@pytest.fixture(scope="module")
def style():
  g = StyleGenerator(SG)
  z = jnp.zeros((1, SG.z_dim))
  variables = jax.jit(lambda k: g.init({"params": k}, z))(jax.random.key(1))
  # A non-trivial tracked mean, as after training.
  variables["buffers"]["w_avg"] = jax.random.normal(jax.random.key(2), (SG.w_dim,)) * 0.3
  apply = jax.jit(lambda v, z, psi: g.apply(v, z, psi))
  return g, variables, apply


def test_same_seed_same_image(style, dcgan_state):
  g, variables, apply = style
  z1 = gan.latents_from_seeds([3, 5, 7], SG.z_dim)
  z2 = gan.latents_from_seeds([5], SG.z_dim)
  np.testing.assert_array_equal(z1[1], z2[0])
  a = np.asarray(apply(variables, z1, 1.0))
  b = np.asarray(apply(variables, jnp.concatenate([z2, z2]), 1.0))
  np.testing.assert_allclose(a[1], b[0], atol=1e-6)
  np.testing.assert_array_equal(b[0], np.asarray(apply(variables, jnp.concatenate([z2, z2]),
                                                       1.0))[1])
  # DCGAN with batch norm in eval mode: an image does not depend on its batch.
  dg, st = dcgan_state
  out = [np.asarray(dg.apply(st.generator_variables(), z)) for z in (
      gan.latents_from_seeds([1, 2, 9], 8), gan.latents_from_seeds([9], 8))]
  np.testing.assert_allclose(out[0][2], out[1][0], atol=1e-6)
  assert gan.parse_seeds("0,3,10-12") == [0, 3, 10, 11, 12]


def test_truncation(style):
  g, variables, apply = style
  z = jax.random.normal(jax.random.key(3), (3, SG.z_dim))
  x0 = np.asarray(apply(variables, z, 0.0))
  np.testing.assert_allclose(x0[0], x0[2], atol=1e-5)  # psi = 0: every z gives the mean w
  w = g.apply(variables, z, method="mapping")
  wt = g.apply(variables, z, 0.5, method="mapping")
  w_avg = variables["buffers"]["w_avg"]
  np.testing.assert_allclose(wt, gan.truncate(w, w_avg, 0.5), atol=1e-6)
  np.testing.assert_allclose(wt, w_avg[None] + 0.5 * (w - w_avg[None]), atol=1e-6)
  for psi in (-0.1, 1.5):
    with pytest.raises(ValueError, match=r"truncation_psi must be in \[0, 1\]"):
      gan.truncate(w, w_avg, psi)
    with pytest.raises(ValueError, match=r"truncation_psi must be in \[0, 1\]"):
      g.apply(variables, z, psi)


def test_truncation_cutoff_truncates_the_first_layers_only(style):
  """StyleGAN's truncation_cutoff: w_avg + psi (w - w_avg) on layers < cutoff, w after."""
  g, variables, apply = style
  L = SG.num_ws
  z = jax.random.normal(jax.random.key(5), (2, SG.z_dim))
  w = g.apply(variables, z, method="mapping")
  w_avg = variables["buffers"]["w_avg"]
  ws = gan.truncate(broadcast_ws(w, L), w_avg, 0.5, cutoff=2)
  expect = w_avg[None] + 0.5 * (w - w_avg[None])  # [B, w_dim]
  np.testing.assert_allclose(ws[:, :2], np.repeat(np.asarray(expect)[:, None], 2, 1), atol=1e-6)
  np.testing.assert_array_equal(ws[:, 2:], broadcast_ws(w, L)[:, 2:])
  np.testing.assert_array_equal(gan.truncate(broadcast_ws(w, L), w_avg, 0.5, cutoff=0),
                                broadcast_ws(w, L))
  run = jax.jit(lambda v, z, cutoff: g.apply(v, z, 0.5, truncation_cutoff=cutoff),
                static_argnums=2)
  synth = jax.jit(lambda v, ws: g.apply(v, ws, method="synthesis"))
  np.testing.assert_allclose(run(variables, z, 2), synth(variables, ws), atol=1e-5)
  np.testing.assert_allclose(run(variables, z, L), apply(variables, z, 0.5), atol=1e-5)
  np.testing.assert_allclose(run(variables, z, 0), apply(variables, z, 1.0), atol=1e-5)
  for bad, err in ((L + 1, ValueError), (-1, ValueError), (1.5, TypeError), (True, TypeError)):
    with pytest.raises(err, match="truncation_cutoff"):
      g.apply(variables, z, 0.5, truncation_cutoff=bad)
  with pytest.raises(ValueError, match=r"W\+ latents \[..., num_ws, w_dim\]"):
    gan.truncate(w[0], w_avg, 0.5, cutoff=1)
  with pytest.raises(ValueError, match=r"truncation_psi must be in \[0, 1\]"):
    g.apply(variables, z, 1.5, truncation_cutoff=2)


def test_w_avg_tracks_the_batch_mean(style):
  g, variables, _ = style
  z = jax.random.normal(jax.random.key(4), (16, SG.z_dim))
  _, upd = jax.jit(lambda v: g.apply(v, z, train=True, rngs={"noise": jax.random.key(0)},
                                     mutable=["buffers"]))(variables)
  w = jax.jit(lambda v: g.apply(v, z, method="mapping"))(variables)
  old = variables["buffers"]["w_avg"]
  np.testing.assert_allclose(upd["buffers"]["w_avg"],
                             jnp.mean(w, 0) + SG.w_avg_beta * (old - jnp.mean(w, 0)), atol=1e-6)


def test_modulated_conv_is_stylegan2_weight_modulation(key):
  """Scaling activations equals modulating and demodulating the weights (StyleGAN2 eq. 1-3)."""
  layer = ModulatedConv(5)
  x = jax.random.normal(key, (2, 4, 4, 3))
  w = jax.random.normal(jax.random.fold_in(key, 1), (2, 6))
  v = jax.jit(lambda k: layer.init(k, x, w, None))(jax.random.key(0))
  out = jax.jit(lambda v: layer.apply(v, x, w, None))(v)
  ref = jax.jit(_modulated_conv_reference)(v["params"], x, w)
  np.testing.assert_allclose(out, ref, atol=1e-5)


def test_instance_norm_option_makes_layers_ignore_input_channel_statistics(key):
  """With `instance_norm` (StyleGAN's AdaIN normalisation), a modulated layer's output does
  not depend on the per-channel mean and scale of its input, so only the style sets them;
  the default (StyleGAN2 demodulation) passes a channel's scale on."""
  x = jax.random.normal(key, (2, 4, 4, 3))
  w = jax.random.normal(jax.random.fold_in(key, 1), (2, 6))
  scale, shift = jnp.asarray([0.3, 2.0, 5.0]), jnp.asarray([1.0, -2.0, 0.5])
  for norm in (True, False):
    layer = ModulatedConv(5, instance_norm=norm)
    v = jax.jit(lambda k, layer=layer: layer.init(k, x, w, None))(jax.random.key(0))
    run = jax.jit(lambda v, x, layer=layer: layer.apply(v, x, w, None))
    a, b = run(v, x), run(v, x * scale[None, None, None] + shift[None, None, None])
    if norm:
      np.testing.assert_allclose(a, b, atol=1e-4)
    else:
      assert float(jnp.max(jnp.abs(a - b))) > 0.1
  for bad in ("yes", (), (4,), (-1,), (True,), (1.0,)):
    with pytest.raises(ValueError, match=r"instance_norm must be True, False or a non-empty "
                       r"tuple of W\+ layer indices in \[0, 4\)"):
      dataclasses.replace(SG, instance_norm=bad)
  # A list (a config saved as JSON) is a tuple; True = every layer, a tuple = those layers.
  assert dataclasses.replace(SG, instance_norm=[3, 2, 3]).instance_norm == (2, 3)
  z = jax.random.normal(key, (2, SG.z_dim))
  variables = StyleGenerator(SG).init({"params": key}, z)
  images = {}
  for norm in (False, True, (0, 1, 2, 3), (3,)):
    cfg = dataclasses.replace(SG, instance_norm=norm)
    assert [cfg.normalizes_layer(i) for i in range(4)] == [
        norm if isinstance(norm, bool) else i in norm for i in range(4)]
    images[str(norm)] = np.asarray(jax.jit(StyleGenerator(cfg).apply)(variables, z))
  assert images["True"].shape == (2, 8, 8, 3)
  np.testing.assert_allclose(images["(0, 1, 2, 3)"], images["True"], atol=1e-6)
  for a, b in (("(3,)", "True"), ("(3,)", "False"), ("True", "False")):
    assert np.max(np.abs(images[a] - images[b])) > 1e-3, (a, b)


def test_fourier_input_is_its_formula_and_translates_with_w(key):
  """`FourierInput` (StyleGAN3's input, translation only): the closed form
  sin(2 pi (f . (p - t) + phi)) @ mix / sqrt(C) at the pixel centres p, with t = A(w); a w
  that translates by one pixel shifts the pattern by one pixel; zero translation at init;
  `synthesis_input='fourier'` replaces the constant and unknown names are refused."""
  from jaxgen.nn.stylegan import FourierInput
  layer = FourierInput(5, size=4, bandwidth=2.0)
  w = jax.random.normal(key, (3, 6))
  v = jax.jit(lambda k: layer.init(k, w))(jax.random.key(0))
  run = jax.jit(layer.apply)
  out0 = np.asarray(run(v, w))
  f = np.asarray(v["buffers"]["input_freqs"])
  phi = np.asarray(v["buffers"]["input_phases"])
  mix = np.asarray(v["params"]["mix"])
  assert f.shape == (5, 2) and np.all(np.linalg.norm(f, axis=-1) <= 2.0)
  assert np.all((phi >= 0) & (phi < 1))
  assert not np.any(np.asarray(v["params"]["translation_kernel"]))  # t = 0 at init
  g = (np.arange(4) + 0.5) / 4 - 0.5
  py, px = np.meshgrid(g, g, indexing="ij")
  ref = np.sin(2 * np.pi * (px[..., None] * f[:, 0] + py[..., None] * f[:, 1] + phi)) @ mix
  np.testing.assert_allclose(out0, np.broadcast_to(ref / np.sqrt(5), out0.shape), atol=1e-5)
  # t = A(w) = w @ kernel / sqrt(6): choose the kernel so that w[0] moves one pixel right
  kernel = np.zeros((6, 2), np.float32)
  kernel[:, 0] = np.asarray(w[0]) * np.sqrt(6) / (4 * float(w[0] @ w[0]))  # t_x = 1/4
  moved = np.asarray(run({**v, "params": {**v["params"], "translation_kernel": kernel}}, w[:1]))
  np.testing.assert_allclose(moved[0, :, 1:], out0[0, :, :-1], atol=1e-5)
  assert np.max(np.abs(moved[0, :, 0] - out0[0, :, 0])) > 1e-3
  cfg = dataclasses.replace(SG, synthesis_input="fourier")
  z = jax.random.normal(key, (2, SG.z_dim))
  gv = jax.jit(lambda k: StyleGenerator(cfg).init({"params": k}, z))(jax.random.key(3))
  assert "const" not in gv["params"]["synthesis_net"]
  assert "input" in gv["params"]["synthesis_net"]
  assert jax.jit(StyleGenerator(cfg).apply)(gv, z).shape == (2, 8, 8, 3)
  with pytest.raises(ValueError, match=r"synthesis_input must be one of \('const', "
                     r"'fourier'\), got 'sine'"):
    dataclasses.replace(SG, synthesis_input="sine")


def _modulated_conv_reference(p, x, w):
  styles = w @ (p["affine"]["kernel"] / math.sqrt(6)) + p["affine"]["bias"][None]  # [B, 3]
  weight = p["kernel"] / math.sqrt(27)
  ref = []
  for b in range(2):
    wm = weight * styles[b][None, None, :, None]  # eq. 1
    wd = wm / jnp.sqrt(jnp.sum(wm ** 2, axis=(0, 1, 2), keepdims=True) + 1e-8)  # eq. 3
    y = jax.lax.conv_general_dilated(x[b:b + 1], wd, (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    ref.append(jax.nn.leaky_relu(y + p["bias"][None, None, None], 0.2) * math.sqrt(2))
  return jnp.concatenate(ref)


def test_style_discriminator_and_wplus(style, key):
  g, variables, apply = style
  z = jax.random.normal(key, (4, SG.z_dim))
  def via_wplus(v, z):
    w = g.apply(v, z, method="mapping")
    return g.apply(v, jnp.broadcast_to(w[:, None], (4, SG.num_ws, SG.w_dim)), method="synthesis")

  np.testing.assert_allclose(jax.jit(via_wplus)(variables, z), apply(variables, z, 1.0),
                             atol=1e-5)
  d = StyleDiscriminator(SG)
  dv = jax.eval_shape(d.init, jax.random.key(0), jnp.zeros((4,) + SG.image_shape))
  assert jax.eval_shape(d.apply, dv, jnp.zeros((4,) + SG.image_shape)).shape == (4,)
  with pytest.raises(ValueError, match=r"expects images \[B, 8, 8, 3\]"):
    jax.eval_shape(d.apply, dv, jnp.zeros((4, 16, 16, 3)))
  with pytest.raises(ValueError, match="z \\[B, 8\\]"):
    g.apply(variables, jnp.zeros((2, 5)))


def test_per_layer_styles_separate_the_torgb_styles(style, key):
  g, variables, _ = style
  assert [name for name, _ in SG.style_layers] == [
      "b4_conv1", "b4_torgb", "b8_conv0", "b8_conv1", "b8_torgb"]
  assert [i for _, i in SG.style_layers] == [0, 1, 1, 2, 3]  # b4_torgb shares b8_conv0's w
  assert (SG.num_ws, SG.num_styles, SG.rgb_styles) == (4, 5, (1, 4))
  synth = jax.jit(lambda v, ws: g.apply(v, ws, method="synthesis"))
  ws = jax.random.normal(key, (3, SG.num_ws, SG.w_dim))
  np.testing.assert_array_equal(synth(variables, expand_ws(ws, SG)), synth(variables, ws))
  # Moving only the toRGB styles leaves every feature map as it is, so the image is affine
  # in the edit's magnitude (ToRGB: a 1x1 conv of the features scaled by s = A(w), no
  # demodulation); the same edit on the conv that shares b4_torgb's w in W+ is not.
  n = jax.random.normal(jax.random.fold_in(key, 1), (SG.w_dim,))
  ms = jnp.array([-2.0, -1.0, 0.0, 1.0, 3.0])
  rgb = gan.layer_mask(SG.num_styles, SG.rgb_styles)
  per_layer = gan.edit_latents(expand_ws(ws, SG), n, ms, rgb)  # [M, B, num_styles, D]
  imgs = jnp.stack([synth(variables, x) for x in per_layer])
  step = imgs[3] - imgs[2]
  for k, m in enumerate(ms):
    np.testing.assert_allclose(imgs[k], imgs[2] + m * step, atol=2e-4)
  assert float(jnp.abs(step).max()) > 1e-2
  wplus = gan.edit_latents(ws, n, ms, gan.layer_mask(SG.num_ws, [1, 3]))  # W+ layers 1, 3
  imgs_w = jnp.stack([synth(variables, x) for x in wplus])
  assert float(jnp.abs(imgs_w[4] - imgs_w[2] - 3 * (imgs_w[3] - imgs_w[2])).max()) > 1e-2
  with pytest.raises(ValueError, match=r"\[B, 4, 8\] \(W\+\) or \[B, 5, 8\]"):
    synth(variables, jnp.zeros((3, 6, SG.w_dim)))
  with pytest.raises(ValueError, match=r"expand_ws expects W\+ latents \[..., 4, 8\]"):
    expand_ws(jnp.zeros((3, 5, SG.w_dim)), SG)


# --- latent tools ---------------------------------------------------------------------

def test_slerp_stays_on_the_sphere_and_meets_endpoints(key):
  a, b = jax.random.normal(key, (2, 7, 16))
  a = a / jnp.linalg.norm(a, axis=-1, keepdims=True) * 3.0
  b = b / jnp.linalg.norm(b, axis=-1, keepdims=True) * 3.0
  path = jax.jit(lambda a, b: gan.interpolate(a, b, 11, "slerp"))(a, b)  # [11, 7, 16]
  np.testing.assert_allclose(jnp.linalg.norm(path, axis=-1), 3.0, rtol=1e-5)
  np.testing.assert_allclose(path[0], a, atol=1e-5)
  np.testing.assert_allclose(path[-1], b, atol=1e-5)
  # Constant angular speed: equal angles between consecutive points.
  cos = jnp.sum(path[1:] * path[:-1], -1) / 9.0
  np.testing.assert_allclose(cos, jnp.broadcast_to(cos[:1], cos.shape), atol=1e-4)
  # vmap over t and parallel vectors (falls back to lerp).
  ts = jnp.linspace(0, 1, 5)
  np.testing.assert_allclose(jax.jit(jax.vmap(lambda t: gan.slerp(a[0], 2 * a[0], t)))(ts),
                             jax.vmap(lambda t: gan.lerp(a[0], 2 * a[0], t))(ts), rtol=1e-5)
  np.testing.assert_allclose(gan.interpolate(a, b, 3, "lerp")[1], (a + b) / 2, atol=1e-6)
  with pytest.raises(ValueError, match="'lerp' or 'slerp'"):
    gan.interpolate(a, b, 3, "cubic")


def test_vector_arithmetic_on_group_means():
  z = np.arange(12.0).reshape(6, 2)
  labels = {"color": np.array([0, 0, 2, 2, 0, 2]), "size": np.array([1, 1, 0, 1, 0, 1])}
  large_red = gan.group_mean(z, labels, {"color": 0, "size": 1})
  np.testing.assert_allclose(large_red, z[:2].mean(0))
  red, blue = (gan.group_mean(z, labels, {"color": c}) for c in (0, 2))
  out = gan.latent_arithmetic([large_red, red, blue], [1, -1, 1])
  np.testing.assert_allclose(out, z[:2].mean(0) - z[[0, 1, 4]].mean(0) + z[[2, 3, 5]].mean(0))
  with pytest.raises(ValueError, match="unknown attribute 'colour'"):
    gan.group_mean(z, labels, {"colour": 0})
  with pytest.raises(ValueError, match="only 0 examples match"):
    gan.group_mean(z, labels, {"color": 1})


# --- projector ------------------------------------------------------------------------

def test_projector_schedule_and_noise_regularisation():
  lr = lambda t: float(gan.projector_learning_rate(t, 0.1, 0.05, 0.25))
  assert lr(0.0) == 0.0 and abs(lr(0.025) - 0.05) < 1e-7 and abs(lr(0.5) - 0.1) < 1e-7
  np.testing.assert_allclose(lr(0.875), 0.1 * (0.5 - 0.5 * math.cos(0.5 * math.pi)), atol=1e-7)
  np.testing.assert_allclose(float(gan.projector_w_noise_scale(0.375, 2.0, 0.05, 0.75)),
                             2.0 * 0.05 * 0.25, rtol=1e-6)
  assert float(gan.projector_w_noise_scale(0.9, 2.0)) == 0.0
  # A constant map c: each level and shift contributes (c^2)^2; 16x16 has levels 16 and 8.
  np.testing.assert_allclose(float(gan.noise_regularization([jnp.full((16, 16), 0.5)])),
                             4 * 0.5 ** 4, rtol=1e-6)
  # A checkerboard is anti-correlated at one-pixel shifts: (-1)^2 per shift at 8x8.
  cb = jnp.asarray((-1.0) ** np.add.outer(np.arange(8), np.arange(8)))
  np.testing.assert_allclose(float(gan.noise_regularization([cb])), 2.0, rtol=1e-6)


def test_projector_inverts_a_generated_image_vmapped(style):
  g, variables, apply = style
  targets = apply(variables, gan.latents_from_seeds([11, 12], SG.z_dim), 1.0)
  _, w_std = gan.w_statistics(g, variables, jax.random.key(0), 1000)
  pool = lambda x: x.reshape(x.shape[0], 4, 2, 4, 2, 3).mean(axis=(2, 4)).reshape(x.shape[0], -1)
  project = gan.make_projector(g, num_steps=100, noise_weight=0.0, optimize_noise=False,
                               feature_fn=pool, perceptual_weight=0.1, num_restarts=2)
  run = jax.jit(jax.vmap(project, in_axes=(None, 0, 0, None)))
  res = run(variables, targets, jax.random.split(jax.random.key(1), 2), w_std)
  assert res.trajectory.shape == (2, 100, SG.w_dim) and res.ws.shape == (2, SG.num_ws, SG.w_dim)
  assert res.losses.shape == (2, 100) and res.image.shape == targets.shape
  start = np.asarray(apply(variables, jnp.zeros((1, SG.z_dim)), 0.0))[0]  # the mean-w image
  err0 = np.mean((start[None] - np.asarray(targets)) ** 2, axis=(1, 2, 3))
  err = np.mean((np.asarray(res.image) - np.asarray(targets)) ** 2, axis=(1, 2, 3))
  assert np.all(err < 2e-3 * err0), (err, err0)
  with pytest.raises(ValueError, match="resize or crop the target"):
    project(variables, jnp.zeros((16, 16, 3)), jax.random.key(0), w_std)


# --- directions -----------------------------------------------------------------------

@pytest.mark.parametrize("method", ["svm", "logistic"])
def test_linear_classifier_recovers_a_known_normal(key, method):
  n_true = jnp.asarray(np.eye(6)[0] + np.eye(6)[2])
  n_true = n_true / jnp.linalg.norm(n_true)
  z = jax.random.normal(key, (2000, 6))
  scores = z @ n_true + 0.05 * jax.random.normal(jax.random.fold_in(key, 1), (2000,))
  n, info = gan.supervised_direction(z, scores, fraction=0.2, method=method)
  assert float(n @ n_true) > 0.98 and info["train_accuracy"] == 1.0
  assert info["num_per_side"] == 400


def test_conditional_direction_and_edits(key):
  primary = jnp.array([1.0, 1.0, 0.0, 0.0])
  cond = jnp.array([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]])
  n = gan.conditional_direction(primary, cond)
  np.testing.assert_allclose(n, [0.0, 1.0, 0.0, 0.0], atol=1e-6)
  np.testing.assert_allclose(cond @ gan.conditional_direction(
      jax.random.normal(key, (4,)), cond), 0.0, atol=1e-5)
  with pytest.raises(ValueError, match="span of the conditions"):
    gan.conditional_direction(cond[0], cond)
  z = jnp.ones((3, 4))
  e = gan.edit_latents(z, n, jnp.array([-1.0, 0.0, 2.0]))
  np.testing.assert_allclose(e[:, 0, 1], [0.0, 1.0, 3.0])
  assert gan.monotonic_fraction(np.array([[0, 1], [1, 0], [2, 2]])) == 0.5
  cols = np.array([[0.0, 1.0, 3.0], [1.0, 0.0, 1.5], [2.0, 2.0, 1.0]])
  np.testing.assert_array_equal(gan.monotonic_columns(cols), [True, False, False])
  np.testing.assert_array_equal(gan.monotonic_columns(cols, tol=1.0), [True, True, False])
  np.testing.assert_array_equal(gan.monotonic_columns(cols, increasing=False),
                                [False, False, True])
  # class paths [M=3, B=4]: 0 -> 2 flips; 1 -> 2 starts outside the negatives; 0 -> 1 never
  # reaches the positive; 2 -> 0 goes the other way
  classes = np.array([[0, 1, 0, 2], [1, 1, 2, 1], [2, 2, 1, 0]])
  np.testing.assert_array_equal(gan.class_flips(classes, [2], [0]), [True, False, False, False])
  np.testing.assert_array_equal(gan.class_flips(classes, 2, [0, 1]), [True, True, False, False])
  np.testing.assert_array_equal(gan.class_flips(classes, [0], [2]), [False, False, False, True])
  probs = jnp.array([[0.7, 0.2, 0.1]])
  np.testing.assert_allclose(gan.attribute_score(probs, 0), math.log(0.7 / 0.3), rtol=1e-4)
  np.testing.assert_allclose(gan.attribute_score(probs, 0, 2), math.log(7.0), rtol=1e-4)


def test_layer_restricted_edits_move_only_their_layers():
  mask = gan.layer_mask(4, [2, 3])
  np.testing.assert_array_equal(mask, [0, 0, 1, 1])
  np.testing.assert_array_equal(gan.layer_mask(3, None), [1, 1, 1])
  ws = np.arange(2 * 4 * 3, dtype=np.float32).reshape(2, 4, 3)
  n = np.array([1.0, 0.0, -1.0], np.float32)
  e = np.asarray(gan.edit_latents(ws, n, jnp.array([-2.0, 0.5]), mask))
  assert e.shape == (2, 2, 4, 3)
  np.testing.assert_array_equal(e[:, :, :2], jnp.broadcast_to(ws[:, :2], (2, 2, 2, 3)))
  np.testing.assert_allclose(e[1, :, 2:], ws[:, 2:] + 0.5 * n)
  np.testing.assert_allclose(e[0, :, 3], ws[:, 3] - 2.0 * n)
  # every layer selected = the plain w edit on each layer
  full = np.asarray(gan.edit_latents(ws[:, 0], n, jnp.array([1.5])))
  np.testing.assert_allclose(gan.edit_latents(ws, n, [1.5], gan.layer_mask(4, None))[:, :, 1],
                             full + (ws[:, 1] - ws[:, 0]))
  for bad in ([], [4], [-1], [1, 1]):
    with pytest.raises(ValueError, match=r"distinct indices in \[0, 4\)"):
      gan.layer_mask(4, bad)
  with pytest.raises(ValueError, match="needs W\\+ latents"):
    gan.edit_latents(ws[:, 0], n, [1.0], mask)


def test_layerwise_ws_takes_the_masked_layers_from_w_layers():
  w = np.arange(2 * 3, dtype=np.float32).reshape(2, 3)
  w_layers = -1.0 - w
  ws = np.asarray(gan.layerwise_ws(w, w_layers, gan.layer_mask(4, [1, 3])))
  assert ws.shape == (2, 4, 3)
  for layer, src in ((0, w), (1, w_layers), (2, w), (3, w_layers)):
    np.testing.assert_array_equal(ws[:, layer], src)
  # vmap over a batch of masks: one W+ set per layer choice
  masks = jnp.stack([gan.layer_mask(4, [0]), gan.layer_mask(4, None)])
  both = np.asarray(jax.vmap(gan.layerwise_ws, in_axes=(None, None, 0))(w, w_layers, masks))
  np.testing.assert_array_equal(both[0, :, 0], w_layers)
  np.testing.assert_array_equal(both[0, :, 1:], np.broadcast_to(w[:, None], (2, 3, 3)))
  np.testing.assert_array_equal(both[1], np.broadcast_to(w_layers[:, None], (2, 4, 3)))
  with pytest.raises(ValueError, match=r"both be \[N, D\]"):
    gan.layerwise_ws(w, w_layers[:1], gan.layer_mask(4, [1]))
  with pytest.raises(ValueError, match=r"mask must be \[L\]"):
    gan.layerwise_ws(w, w_layers, np.ones((2, 4)))


def test_monotonic_and_flips_needs_both():
  # columns: rises and flips; rises but stays positive; flips but dips by 0.05; flat at 0
  p = np.array([[0.1, 0.9, 0.1, 0.0], [0.6, 0.95, 0.7, 0.0], [0.7, 0.99, 0.65, 0.0],
                [0.9, 1.0, 0.95, 0.0]])
  cls = (p > 0.5).astype(int)  # class 1 positive, 0 negative
  assert gan.monotonic_and_flips_fraction(p, cls, 1, 0) == 0.25
  assert gan.monotonic_and_flips_fraction(p, cls, 1, 0, tol=0.05) == 0.5
  np.testing.assert_array_equal(gan.rises_and_flips(p, cls, 1, 0, tol=0.05),
                                [True, False, True, False])
  assert gan.monotonic_fraction(p) == 0.75  # monotonic alone counts the unmoved columns


def test_rises_where_unsaturated_judges_only_informative_steps():
  # columns (4 m each): dips only while P < 1e-3, then rises and flips; dips by 1e-6 at
  # P = 0.3; rises but ends on the negative class; dips only while P > 0.999; dips on a step
  # that leaves the saturated range (P 1e-4 -> 0.01)
  lo = np.array([[-9.0, -2.0, -2.0, -5.0, -9.0], [-10.0, -1.0, -1.0, 8.0, -9.0],
                 [-3.0, -1.000001, 0.0, 7.0, -9.5], [4.0, 3.0, 0.5, 9.0, 4.0]])
  p = np.array([[1e-5, 0.1, 0.1, 0.01, 1e-5], [1e-6, 0.3, 0.3, 0.9999, 1e-4],
                [0.05, 0.3, 0.4, 0.9991, 0.01], [0.98, 0.9, 0.45, 0.9999, 0.98]])
  cls = np.where(p > 0.5, 1, 0)
  np.testing.assert_array_equal(gan.rises_where_unsaturated(lo, p, cls, 1, 0),
                                [True, False, False, True, False])
  # the exact log-odds alone counts none of the dipping columns
  assert gan.monotonic_fraction(lo) == 0.2
  # saturation 0 judges every step: only the strictly rising column 2 is left, and it
  # does not flip
  assert not gan.rises_where_unsaturated(lo, p, cls, 1, 0, saturation=0.0).any()
  with pytest.raises(ValueError, match="share one"):
    gan.rises_where_unsaturated(lo, p[:, :2], cls, 1, 0)
  with pytest.raises(ValueError, match=r"saturation must be in \[0, 0.5\)"):
    gan.rises_where_unsaturated(lo, p, cls, 1, 0, saturation=0.5)


def test_attribute_logodds_is_exact_and_does_not_saturate():
  logits = jnp.array([[2.0, 0.0, -1.0], [30.0, 0.0, 0.0]])
  # log(e^2 / (e^0 + e^-1)) and log(e^30 / 2)
  np.testing.assert_allclose(gan.attribute_logodds(logits, 0),
                             [2.0 - math.log(1.0 + math.exp(-1.0)), 30.0 - math.log(2.0)],
                             rtol=1e-6)
  np.testing.assert_allclose(gan.attribute_logodds(logits, [0, 1], 2),
                             [math.log(math.exp(2.0) + 1.0) + 1.0, 30.0], rtol=1e-6)
  # binary: the logit of P(positive); P rounds to 1 in float32 where the probability-based
  # score (with its epsilon) saturates near log(1e6)
  binary = jnp.array([[0.5, -0.25], [25.0, 0.0]])
  np.testing.assert_allclose(gan.attribute_logodds(binary, 0), [0.75, 25.0], rtol=1e-6)
  assert float(gan.attribute_score(jax.nn.softmax(binary[1:]), 0)[0]) < 14.0
  with pytest.raises(ValueError, match="disjoint"):
    gan.attribute_logodds(logits, 0, [0, 1])


def test_projection_std_is_the_spread_along_the_direction():
  x = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 2.0], [0.0, -2.0]])
  assert gan.projection_std(x, np.array([1.0, 0.0])) == pytest.approx(math.sqrt(0.5))
  n = np.array([0.6, 0.8])  # projections 0.6, -0.6, 1.6, -1.6: std sqrt((0.36 + 2.56) / 2)
  assert gan.projection_std(x, n) == pytest.approx(math.sqrt(1.46))
  assert gan.projection_std(3.0 * x + 5.0, n) == pytest.approx(3.0 * math.sqrt(1.46))
  with pytest.raises(ValueError, match="direction"):
    gan.projection_std(x, np.ones(3))


def test_attribute_names_are_checked():
  assert gan.attribute_index(SHAPES_ATTRIBUTES, "color", "blue") == 2
  assert gan.attribute_index(SHAPES_ATTRIBUTES, "size", 1) == 1
  with pytest.raises(ValueError, match="unknown attribute 'hue'.*'shape', 'color'"):
    gan.attribute_index(SHAPES_ATTRIBUTES, "hue", "red")
  with pytest.raises(ValueError, match="no value 'purple'"):
    gan.attribute_index(SHAPES_ATTRIBUTES, "color", "purple")


def test_voynov_step():
  """A linear 'generator' whose every latent axis paints its own pixel: the reconstructor
  learns to tell the directions apart and the directions stay unit length."""
  dim, k = 4, 4
  pix = jnp.eye(16)[:dim].reshape(dim, 4, 4, 1)

  def generate_fn(_, z):
    return jnp.einsum("bd,dhwc->bhwc", z, pix)

  recon = DirectionReconstructor(num_directions=k, features=8, num_layers=1)
  state = gan.init_voynov(recon, jax.random.key(0), latent_dim=dim, image_shape=(4, 4, 1),
                          tx=optax.adam(1e-2), kind="orthonormal")
  step = jax.jit(gan.make_voynov_step(lambda _, kk, b: jax.random.normal(kk, (b, dim)),
                                      generate_fn, batch_size=32))
  accs = []
  for _ in range(100):
    state, m = step(state, None, jax.random.key(100))
    accs.append(float(m["direction_accuracy"]))
  d = state.directions()
  np.testing.assert_allclose(d @ d.T, np.eye(k), atol=1e-5)
  assert np.mean(accs[-20:]) > 0.8 and np.mean(accs[:5]) < 0.4, (accs[:5], accs[-20:])


# --- runner and tools (stylegan_shapes:smoke) -----------------------------------------

@pytest.fixture(scope="module")
def style_run(tmp_path_factory):
  """The smoke config through the command line. The attribute classifier cache is seeded with
  an untrained classifier (training one is tested in test_metrics) to keep the test short."""
  import os
  from experiments.families.gan import CLASSIFIER_DIR
  from experiments.main import main
  from jaxgen import metrics as M
  workdir = str(tmp_path_factory.mktemp("stylegan_smoke"))
  cfg = M.ClassifierConfig(heads=tuple((k, len(v)) for k, v in SHAPES_ATTRIBUTES.items()),
                           image_shape=(16, 16, 3), features=(8, 8), embed_dim=8)
  params = jax.jit(cfg.module().init)(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
  M.save_classifier(os.path.join(workdir, CLASSIFIER_DIR), M.ClassifierBundle(cfg, params))
  assert main(["train", "--config", "experiments/configs/stylegan_shapes.py:smoke",
               "--workdir", workdir]) == 0
  return workdir


def test_runner_trains_samples_by_seed_and_evaluates(style_run):
  import json
  import os
  from experiments.families import gan as G
  assert os.listdir(os.path.join(style_run, "checkpoints")) == ["4"]
  lines = [json.loads(l) for l in open(os.path.join(style_run, "metrics.jsonl"))]
  assert [l["step"] for l in lines if "fid" in l] == [2, 4]
  assert all(np.isfinite(l["d_loss"]) for l in lines if "d_loss" in l)
  # The config's path-length regulariser ran (every step) and its running mean is saved.
  assert all(np.isfinite(l["pl_penalty"]) and l["pl_mean"] > 0 for l in lines if "d_loss" in l)
  a = np.load(G.sample(style_run, num=3, seed=5)[:-4] + ".npz")
  b = np.load(G.sample(style_run, num=1, seed=6)[:-4] + ".npz")
  assert a["images"].shape == (3, 16, 16, 3) and list(a["seeds"]) == [5, 6, 7]
  np.testing.assert_allclose(a["images"][1], b["images"][0], atol=1e-6)
  with pytest.raises(ValueError, match=r"truncation_psi must be in \[0, 1\]"):
    G.sample(style_run, num=2, truncation_psi=1.5)
  result = G.evaluate(style_run, num_samples=16)
  for k in ("fid_samples_vs_test", "fid_floor_train_vs_test", "fid_untrained_vs_test"):
    assert np.isfinite(result[k]), k
  assert set(result["classifier_test_accuracy"]) == {"shape", "color", "size", "position"}


def test_gan_resume_after_sigterm_is_exact(sigterm_resume):
  """The shared loop (`jaxgen.training.train_loop`) on the GAN family: SIGTERM saves at the
  step boundary and resuming gives bit-identical G, D, EMA, optimiser and path-length state."""
  from experiments.families import gan as G
  from experiments.config import apply_override, load_config
  config = load_config("experiments/configs/stylegan_shapes.py:smoke")
  for o in ("train.checkpoint_every=100", "sample.num=0", "gan.fid_every=0"):
    apply_override(config, o)
  full, _ = sigterm_resume(G.train, config, num_steps=4)
  assert "pl_mean" in full["state"].arrays()


def test_nonfinite_parameters_are_never_saved(style_run, tmp_path):
  """A diverging run (learning rate 1e30) is stopped at the first checkpoint after the
  weights went NaN/inf, before any loss is logged, and the last good checkpoint stays."""
  import shutil
  from experiments.families import gan as G
  from experiments.config import load_config
  workdir = str(tmp_path / "diverged")
  shutil.copytree(style_run, workdir)
  config = load_config("experiments/configs/stylegan_shapes.py:smoke", [
      "train.num_steps=10", "train.log_every=100", "train.checkpoint_every=2",
      "gan.g_learning_rate=1e30", "gan.d_learning_rate=1e30",
      "gan.fid_every=0", "sample.num=0"])
  with pytest.raises(G.NonFiniteLossError, match=r"parameters are not finite at step 6"):
    G.train(config, workdir)
  assert G.load_trained(workdir).step == 4


def test_tools_interpolate_invert_edit_and_errors(style_run):
  import json
  import os
  from experiments.families.gan import load_trained
  from experiments.families.gan.tools import arithmetic, interpolate, invert, measure
  from experiments.families.gan.tools.edit import EditOptions, edit
  t = load_trained(style_run)
  path = interpolate.interpolate(t, [0, 1, 2], num=4, space="w")
  assert json.load(open(path[:-4] + ".json"))["space"] == "w"
  path = invert.invert(t, test_images=[0, 1], num_steps=3, perceptual_weight=0.0)
  rec = json.load(open(path[:-4] + ".json"))
  assert rec["num"] == 2 and len(rec["psnr"]) == 2 and np.all(np.isfinite(rec["psnr"]))
  # another random seed writes its own files beside seed 0's (shared by every seeded command)
  assert invert.invert(t, test_images=[0, 1], num_steps=3, perceptual_weight=0.0,
                   seed=2) == path[:-4] + "_seed2.png"
  assert os.path.isfile(path) and os.path.isfile(path[:-4] + "_seed2.npz")
  with pytest.raises(ValueError, match="resize them to 16x16"):
    invert.invert_images(t, np.zeros((1, 32, 32, 3)), jax.random.key(0), num_steps=2)
  path = edit(t, EditOptions("size", "large", conditions=("color",), num_latents=64, num_eval=4,
                 seeds=[0, 1], num_m=3))
  rec = json.load(open(path[:-4] + ".json"))
  assert 0 <= rec["conditioned"]["changes_and_color_stays_fraction"] <= 1
  assert rec["m_units"] == "std" and rec["direction"]["sigma"] > 0
  assert 0 <= rec["unconditioned"]["monotonic_logodds"] <= 1
  with pytest.raises(ValueError, match="m_units"):
    edit(t, EditOptions("size", "large", m_units="sigma"))
  with pytest.raises(ValueError, match="unknown attribute 'brightness'"):
    edit(t, EditOptions("brightness", "high"))
  with pytest.raises(ValueError, match="no value 'huge'"):
    edit(t, EditOptions("size", "huge"))
  with pytest.raises(ValueError, match="unknown attribute value 'purple'"):
    arithmetic.parse_expression("large purple circle", t.attributes)
  # Layer-restricted edit: the other layers keep w, so editing no visible layer's w leaves
  # images as they are, and editing every layer equals the plain W edit.
  num_ws = t.generator.config.num_ws
  path = edit(t, EditOptions("color", "blue", space="w", num_latents=64, num_eval=4, seeds=[0, 1],
                 num_m=3, layers=[num_ws - 2, num_ws - 1]))
  rec = json.load(open(path[:-4] + ".json"))
  assert rec["layers"] == [num_ws - 2, num_ws - 1] and path.endswith(
      f"_layers{num_ws - 2}-{num_ws - 1}.png")
  w = np.asarray(t.latents(gan.latents_from_seeds([0, 1], t.z_dim), "w"))
  n = np.eye(w.shape[-1], dtype=np.float32)[0]
  every = np.asarray(measure.edited_latents(t, w, n, [-1.0, 2.0], "w", list(range(num_ws))))
  np.testing.assert_allclose(t.images(every.reshape((-1,) + every.shape[2:]), "w"),
                             t.images(np.asarray(gan.edit_latents(w, n, [-1.0, 2.0])).reshape(
                                 -1, w.shape[-1]), "w"), atol=1e-5)
  fine = np.asarray(measure.edited_latents(t, w, n, [3.0], "w", [num_ws - 1]))[0]
  assert np.array_equal(fine[:, :-1], np.broadcast_to(w[:, None], fine[:, :-1].shape))
  with pytest.raises(ValueError, match="W space of a style-based generator"):
    edit(t, EditOptions("size", "large", space="z", layers=[0]))
  with pytest.raises(ValueError, match=rf"distinct indices in \[0, {num_ws}\)"):
    edit(t, EditOptions("size", "large", space="w", layers=[num_ws]))
  with pytest.raises(ValueError, match="bad layer list 'fine'"):
    measure.parse_layers("fine")
  assert measure.parse_layers("all") is None and measure.parse_layers("4-5") == [4, 5]
  assert measure.parse_layers("auto") == "auto"
  with pytest.raises(ValueError, match="None or 'auto', got 'fine'"):
    edit(t, EditOptions("size", "large", space="w", layers="fine"))
  with pytest.raises(ValueError, match="num_select >= 1"):
    edit(t, EditOptions("size", "large", space="w", layers="auto", num_select=0))


def test_measure_edits_counts_each_outcome_per_latent(style_run, monkeypatch):
  """The fractions `measure_edits` reports, on classifier outputs set by hand: four latents,
  three m. Colour class 2 is the positive one, position the condition."""
  from experiments.families.gan import load_trained
  from experiments.families.gan.tools import measure
  t = load_trained(style_run)
  colour_path = [[0, 1, 2],   # rises and flips, position stays
                 [0, 1, 2],   # rises and flips, position moves at the last m
                 [0, 1, 1],   # changes but never reaches class 2, position stays
                 [0, 2, 0]]   # up and back down, position stays
  position_path = [[4, 4, 4], [4, 4, 7], [4, 4, 4], [4, 4, 4]]

  position_scale = 10.0  # logit of the position class: 10 is confident, 1 is not

  def one_hot_logits(paths, k, scale=10.0):  # [latent][m] classes -> [M * B, k], M-major
    paths = np.asarray(paths)
    scale = np.tile(np.broadcast_to(np.float32(scale), paths.shape[:1]), paths.shape[1])
    return scale[:, None] * np.eye(k, dtype=np.float32)[paths.T.reshape(-1)]

  monkeypatch.setattr(t, "classifier_logits", lambda images: {
      "color": one_hot_logits(colour_path, 4),
      "position": one_hot_logits(position_path, 9, position_scale)})
  w = np.asarray(t.latents(gan.latents_from_seeds(range(4), t.z_dim), "w"))
  n = np.eye(w.shape[-1], dtype=np.float32)[0]
  r, _ = measure.measure_edits(t, n, w, np.array([-1.0, 0.0, 1.0]), "color", [2], space="w",
                          conditions=("position",))
  assert r["monotonic_and_flips_tol_0.001"] == 0.5  # latents 0, 1
  assert r["target_changes_fraction"] == 0.75  # latents 0, 1, 2
  assert r["position_stays_fraction"] == 0.75  # latents 0, 2, 3
  assert r["changes_and_position_stays_fraction"] == 0.5  # latents 0, 2
  assert r["rises_flips_and_position_stays_fraction"] == 0.25  # latent 0 only
  # latent 3's fall from P ~ 1 to P ~ 0 is judged: it counts as a decrease
  assert r["logodds_rises_unsaturated_and_flips"] == 0.5  # latents 0, 1
  # strict reading: exact log-odds never falls and the class changes; latent 2's log-odds of
  # class 2 is flat (classes 0 and 1 give it the same logits) while its class changes 0 -> 1
  assert r["logodds_rises_and_changes"] == 0.75  # latents 0, 1, 2
  # every position is definite (probability 0.9996), so judging only those changes nothing
  assert r["position_confident_fraction"] == 1.0
  assert r["position_stays_given_confident_fraction"] == r["position_stays_fraction"]
  assert r["changes_and_position_stays_given_confident_fraction"] == 0.5
  # an unsure position (probability e / (e + 8) = 0.25) has no class to keep: latent 1, the
  # one whose position moves, is not judged; latents 0 and 2 of the other three change
  position_scale = [10.0, 1.0, 10.0, 10.0]
  r, _ = measure.measure_edits(t, n, w, np.array([-1.0, 0.0, 1.0]), "color", [2], space="w",
                          conditions=("position",))
  assert r["position_confident_fraction"] == 0.75
  assert r["position_stays_given_confident_fraction"] == 1.0
  assert r["changes_and_position_stays_given_confident_fraction"] == 2 / 3
  assert r["position_stays_fraction"] == 0.75  # the all-latent reading is unchanged
  position_scale = 1.0  # none definite: nothing to judge
  r, _ = measure.measure_edits(t, n, w, np.array([-1.0, 0.0, 1.0]), "color", [2], space="w",
                          conditions=("position",))
  assert r["position_confident_fraction"] == 0.0
  assert r["position_stays_given_confident_fraction"] is None
  position_scale = 10.0
  # a latent whose class never changes is monotonic but does not count
  colour_path, position_path = [[2, 2, 2], [0, 1, 2]], [[4, 4, 4], [4, 4, 4]]
  r, _ = measure.measure_edits(t, n, w[:2], np.array([-1.0, 0.0, 1.0]), "color", [2], space="w",
                          conditions=("position",))
  assert r["monotonic_logodds"] == 1.0 and r["logodds_rises_and_changes"] == 0.5


def test_layerwise_fit_labels_mixed_images_and_edits_inside_its_layers(style_run):
  """`edit_labels(fit_layers=)` labels images whose fit layers take an independent w and
  returns that w; `edit(fit_layers=)` edits those layers (or a range inside them)."""
  import json
  from experiments.families.gan import load_trained
  from experiments.families.gan.tools import fit
  from experiments.families.gan.tools.edit import EditOptions, edit
  t = load_trained(style_run)
  num_ws = t.generator.config.num_ws
  base, _ = fit.edit_labels(t, 16, space="w")
  w_layers, logits = fit.edit_labels(t, 16, space="w", fit_layers=[1])
  assert w_layers.shape == base.shape and not np.allclose(w_layers, base)
  expect = t.classifier_logits(t.images(
      gan.layerwise_ws(base, w_layers, gan.layer_mask(num_ws, [1])), "w"))
  for k in expect:
    np.testing.assert_allclose(logits[k], expect[k], atol=1e-5)
  # every layer mixed: the labels are those of the w_layers' own images
  w_all, logits_all = fit.edit_labels(t, 16, space="w", fit_layers=list(range(num_ws)))
  np.testing.assert_array_equal(w_all, w_layers)
  np.testing.assert_allclose(logits_all["color"], t.classifier_logits(
      t.images(w_layers, "w"))["color"], atol=1e-4)
  fine = [num_ws - 2, num_ws - 1]
  path = edit(t, EditOptions("color", "blue", space="w", num_latents=64, num_eval=4, seeds=[0],
                 num_m=3, fit_layers=fine))
  rec = json.load(open(path[:-4] + ".json"))
  assert rec["layers"] == fine and rec["fit_layers"] == fine
  assert path.endswith(f"_layers{fine[0]}-{fine[1]}_fit{fine[0]}-{fine[1]}.png")
  path = edit(t, EditOptions("color", "blue", conditions=("position",), space="w", num_latents=64,
                 num_eval=4, seeds=[0], num_m=3, layers="auto", num_select=4,
                 fit_layers=[1, 2]))
  rec = json.load(open(path[:-4] + ".json"))
  assert [row["layers"] for row in rec["layer_selection"]] == [[1], [2], [1, 2]]
  assert rec["layers"] in ([1], [2], [1, 2]) and rec["fit_layers"] == [1, 2]
  with pytest.raises(ValueError, match=r"must lie inside fit_layers \[1, 2\]"):
    edit(t, EditOptions("color", "blue", space="w", layers=[0, 1], fit_layers=[1, 2]))
  with pytest.raises(ValueError, match="W space of a style-based generator"):
    edit(t, EditOptions("color", "blue", space="z", fit_layers=[1]))
  with pytest.raises(ValueError, match="fit_layers must be a list"):
    edit(t, EditOptions("color", "blue", space="w", fit_layers="auto"))


def test_select_layers_scores_every_contiguous_range(style_run):
  """`select_layers` measures the edit on each of the L (L + 1) / 2 contiguous W+ ranges and
  returns the best-scoring one (shortest, then earliest, on ties); `edit(layers='auto')`
  records the choice and the table."""
  import json
  from experiments.families.gan import load_trained
  from experiments.families.gan.tools import measure
  from experiments.families.gan.tools.edit import EditOptions, edit
  t = load_trained(style_run)
  num_ws = t.generator.config.num_ws
  assert measure.layer_ranges(3) == [[0], [1], [2], [0, 1], [1, 2], [0, 1, 2]]
  assert len(measure.layer_ranges(num_ws)) == num_ws * (num_ws + 1) // 2
  w = np.asarray(t.latents(gan.latents_from_seeds(range(6), t.z_dim), "w"))
  n = np.eye(w.shape[-1], dtype=np.float32)[1]
  ms = np.linspace(-3, 3, 13)
  best, table = measure.select_layers(t, n, w, ms, "color", [2], conditions=("position",))
  assert [row["layers"] for row in table] == measure.layer_ranges(num_ws)
  for row in table:
    assert row["score"] == row["rises_flips_and_position_stays_fraction"]
    assert row["score"] <= min(row["monotonic_and_flips_tol_0.001"],
                               row["changes_and_position_stays_fraction"])
  top = max(row["score"] for row in table)
  first = next(row for row in table if row["score"] == top)  # table is shortest-first
  assert best == first["layers"]
  # Without conditions the score is "P rises & flips" (tolerance 0.001).
  _, table = measure.select_layers(t, n, w, ms, "color", [2])
  assert all(row["score"] == row["monotonic_and_flips_tol_0.001"] for row in table)
  path = edit(t, EditOptions("color", "blue", conditions=("position",), space="w", num_latents=64,
                 num_eval=4, seeds=[0], num_m=3, layers="auto", num_select=4))
  rec = json.load(open(path[:-4] + ".json"))
  assert rec["layers_selected"] == "auto" and rec["num_select"] == 4
  assert rec["layers"] in measure.layer_ranges(num_ws) and len(rec["layer_selection"]) == len(
      measure.layer_ranges(num_ws)) and path.endswith("_auto.png")


def test_grid_axes_and_axis_conditioned_edit(style_run):
  """`grid_axes` reads the 3x3 position grid's column and row sides from the value names;
  `edit(condition_mode='axes')` projects exactly those two SVM directions out."""
  import json
  from experiments.families.gan import load_trained
  from experiments.families.gan.tools import fit
  from experiments.families.gan.tools.edit import EditOptions, edit
  t = load_trained(style_run)
  names = t.attributes["position"]
  axes = fit.grid_axes(names)
  assert [a[0] for a in axes] == ["column", "row"]
  (_, right, left), (_, bottom, top) = axes
  assert [names[i] for i in right] == ["top right", "right", "bottom right"]
  assert [names[i] for i in left] == ["top left", "left", "bottom left"]
  assert [names[i] for i in bottom] == ["bottom left", "bottom", "bottom right"]
  assert [names[i] for i in top] == ["top left", "top", "top right"]
  with pytest.raises(ValueError, match="do not name the cells of a grid"):
    fit.grid_axes(t.attributes["color"])
  with pytest.raises(ValueError, match="do not name the cells of a grid"):
    fit.grid_axes(["left", "right"])  # no row axis
  labelled = fit.edit_labels(t, 64, space="w")
  path = edit(t, EditOptions("color", "red", "blue", conditions=("position",), space="w",
                 num_latents=64, num_eval=4, seeds=[0], num_m=3,
                 condition_mode="axes"), labelled=labelled)
  rec = json.load(open(path[:-4] + ".json"))
  assert rec["condition_mode"] == "axes" and path.endswith("_cond-position-axes.png")
  n = np.load(path[:-4] + "_direction.npy")
  primary, _ = fit.fit_direction(t, "color", "red", "blue", space="w", labelled=labelled)
  dirs = [fit.fit_direction(t, "position", p, q, space="w", labelled=labelled)[0]
          for _, p, q in axes]
  np.testing.assert_allclose(np.linalg.norm(n), 1.0, atol=1e-5)
  np.testing.assert_allclose([float(np.dot(n, d)) for d in dirs], 0.0, atol=1e-5)
  # and it is the primary with the span of the two axes removed (InterFaceGAN eq. 4)
  c = np.stack(dirs)
  expect = np.asarray(primary) - c.T @ np.linalg.lstsq(c @ c.T, c @ np.asarray(primary),
                                                      rcond=None)[0]
  np.testing.assert_allclose(n, expect / np.linalg.norm(expect), atol=1e-4)
  with pytest.raises(ValueError, match="condition_mode must be"):
    edit(t, EditOptions("color", "red", conditions=("position",), condition_mode="cells"))
  with pytest.raises(ValueError, match="do not name the cells of a grid"):
    edit(t, EditOptions("size", "large", conditions=("color",), condition_mode="axes"))


def test_edit_of_another_labelled_seed_keeps_seed_zero_files(style_run):
  """An edit fitted on another labelled set (seed 1) writes its own files instead of
  overwriting seed 0's grid, record and direction."""
  import json
  import os
  from experiments.families.gan import load_trained
  from experiments.families.gan.tools.edit import EditOptions, edit
  t = load_trained(style_run)
  kw = dict(space="w", num_latents=32, num_eval=2, seeds=[0], num_m=3)
  p0 = edit(t, EditOptions("size", "large", **kw))
  n0 = np.load(p0[:-4] + "_direction.npy")
  p1 = edit(t, EditOptions("size", "large", seed=1, **kw))
  assert p1 == p0[:-4] + "_seed1.png" and os.path.isfile(p1) and os.path.isfile(p0)
  # seed 0's direction file is untouched, and the two labelled sets give two directions
  np.testing.assert_array_equal(np.load(p0[:-4] + "_direction.npy"), n0)
  assert not np.allclose(np.load(p1[:-4] + "_direction.npy"), n0)
  assert json.load(open(p1[:-4] + ".json"))["num_latents"] == 32


def test_truncated_edit_protocol_samples_every_latent_truncated(style_run):
  """`truncation_psi` < 1 (InterFaceGAN samples StyleGAN with psi = 0.7): the labelled
  latents (plain and layer-wise) are w_avg + psi (w - w_avg) of the untruncated ones, an edit
  of m sigma on them equals truncating the untruncated edit, and the outputs carry the psi."""
  import json
  import os
  from experiments.families.gan import load_trained
  from experiments.families.gan.tools import directions, fit
  from experiments.families.gan.tools.edit import EditOptions, edit
  t = load_trained(style_run)
  w_avg = np.asarray(t.latents(np.zeros((1, t.z_dim), np.float32), "w", 0.0))[0]
  lat, _ = fit.edit_labels(t, 16, space="w")
  lat_t, logits_t = fit.edit_labels(t, 16, space="w", psi=0.5)
  np.testing.assert_allclose(lat_t, w_avg + 0.5 * (lat - w_avg), rtol=1e-5, atol=1e-5)
  # the plain set's labels are those of the truncated latents' own images
  np.testing.assert_allclose(logits_t["color"], t.classifier_logits(
      t.images(lat_t, "w"))["color"], atol=1e-4)
  w_layers, _ = fit.edit_labels(t, 16, space="w", fit_layers=[1])
  w_layers_t, _ = fit.edit_labels(t, 16, space="w", fit_layers=[1], psi=0.5)
  np.testing.assert_allclose(w_layers_t, w_avg + 0.5 * (w_layers - w_avg), rtol=1e-5, atol=1e-5)
  # m in std units of the sampled latents: the same edit as InterFaceGAN's order (edit the
  # untruncated w by m sigma_untruncated, then truncate), since truncation is affine
  n = np.random.default_rng(0).normal(size=lat.shape[1]).astype(np.float32)
  n /= np.linalg.norm(n)
  ms = np.linspace(-3, 3, 5)
  sigma, sigma_t = gan.projection_std(lat, n), gan.projection_std(lat_t, n)
  np.testing.assert_allclose(sigma_t, 0.5 * sigma, rtol=1e-4)
  np.testing.assert_allclose(
      gan.edit_latents(lat_t, n, ms * sigma_t),
      gan.truncate(gan.edit_latents(lat, n, ms * sigma), w_avg, 0.5), rtol=1e-4, atol=1e-5)
  path = edit(t, EditOptions("size", "large", space="w", num_latents=32, num_eval=2, seeds=[0],
                 num_m=3, truncation_psi=0.5))
  assert path.endswith("_psi0.5.png") and os.path.isfile(path)
  assert json.load(open(path[:-4] + ".json"))["truncation_psi"] == 0.5
  rows = directions.measure_directions(style_run, num_latents=64, num_eval=4, num_select=4,
                            match="[axes]", truncation_psi=0.5)
  saved = json.load(open(os.path.join(style_run, "edits", "directions-axes-psi0.5.json")))
  assert saved["truncation_psi"] == 0.5 and len(rows) == 2
  assert all("_psi0.5" in r["grid"] for r in rows)
  with pytest.raises(ValueError, match=r"truncation_psi must be in \[0, 1\]"):
    edit(t, EditOptions("size", "large", space="w", truncation_psi=1.5))
  with pytest.raises(ValueError, match="truncation_psi=0.7 needs the W space"):
    edit(t, EditOptions("size", "large", space="z", truncation_psi=0.7))
  with pytest.raises(ValueError, match=r"truncation_psi must be in \[0, 1\]"):
    directions.measure_directions(style_run, truncation_psi=-0.1)


def test_directions_table_writes_every_row(style_run):
  import json
  import os
  from experiments.families.gan import load_trained
  from experiments.families.gan.tools import directions, fit, measure
  from experiments.families.gan.tools.edit import EditOptions, edit
  rows = directions.measure_directions(style_run, num_latents=64, num_eval=4, num_select=4)
  assert len(rows) == 2 * len(directions.DIRECTIONS)
  for r in rows:
    for k in ("monotonic_logodds", "changes", "stays", "both", "monotonic_and_flips_tol_0"):
      assert 0 <= r[k] <= 1, (r, k)
    assert r["logodds_rises_and_changes"] <= min(r["monotonic_logodds"], r["changes"])
    assert r["both"] <= min(r["changes"], r["stays"])
    # per latent: rises & flips and stays (so between the two bounds of an intersection)
    rf = r["monotonic_and_flips_tol_0.001"]
    assert rf + r["stays"] - 1 <= r["rises_flips_and_stays"] <= min(rf, r["stays"])
    # judged only where the condition is definite: a subset, or nothing when none is
    assert 0 <= r["condition_confident"] <= 1
    if r["condition_confident"] == 0:
      assert r["both_given_confident"] is None and r["stays_given_confident"] is None
    else:
      assert 0 <= r["both_given_confident"] <= r["stays_given_confident"] <= 1
    # a stricter tolerance can only count fewer latents
    assert (r["monotonic_and_flips_tol_0"] <= r["monotonic_and_flips_tol_0.001"]
            <= r["monotonic_and_flips_tol_0.01"])
  num_ws = load_trained(style_run).generator.config.num_ws
  assert {tuple(r["layer_indices"] or ()) for r in rows if r["layers"] != "auto"} == {
      (), (num_ws - 2, num_ws - 1), (0, 1)}
  for r in rows:
    if r["layers"] == "auto":  # a contiguous range, the same for both variants of a direction
      assert r["layer_indices"] in measure.layer_ranges(num_ws)
  auto = [r for r in rows if r["layers"] == "auto"]
  assert len(auto) == 12 and all(a["layer_indices"] == b["layer_indices"]
                                 for a, b in zip(auto[::2], auto[1::2]))
  # the layer-wise rows: fitted on the layers after the coarse pair, edited inside them
  fitted = [r for r in rows if r["fit_layers"] is not None]
  assert len(fitted) == 6 and all(r["fit_layers"] == "not-coarse" and r["layers"] == "auto"
                                  and set(r["layer_indices"]) <= set(range(2, num_ws))
                                  for r in fitted)
  assert "[fit not-coarse]" in directions.table(rows)
  # one conditioned row projects out position's two grid axes instead of its nine cells
  axes = [r for r in rows if r["condition_mode"] == "axes"]
  assert len(axes) == 1 and axes[0]["condition"] == "position" and axes[0]["fit_layers"]
  assert directions.table(rows).count("[axes]") == 1
  assert {r["condition_mode"] for r in rows if r["condition"]} == {"one-vs-rest", "axes"}
  saved = json.load(open(os.path.join(style_run, "edits", "directions.json")))
  assert saved["rows"] == json.loads(json.dumps(rows)) and saved["checkpoint_step"] == 4
  assert directions.table(rows).count("\n") == len(rows) + 1
  # one unconditioned layer-wise blue row and one position-conditioned red-vs-blue row
  blue = [r for r in rows if r["direction"] == "colour blue vs rest" and r["condition"] is None
          and r["fit_layers"] == "not-coarse"]
  red = [r for r in rows if r["direction"] == "colour red vs blue" and r["condition"] == "position"
         and r["fit_layers"] == "not-coarse" and r["condition_mode"] == "one-vs-rest"]
  assert len(blue) == len(red) == 1
  # --match runs a subset, into a file of its own (the whole table's stays as it was)
  part = directions.measure_directions(style_run, num_latents=64, num_eval=4, num_select=4,
                            match="[axes]")
  def untimed(rs):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rs]
  assert untimed(part) == untimed(rows[-2:]) and part[1]["condition_mode"] == "axes"
  sub = json.load(open(os.path.join(style_run, "edits", "directions-axes.json")))
  assert sub["match"] == "[axes]" and sub["rows"] == json.loads(json.dumps(part))
  assert json.load(open(os.path.join(style_run, "edits", "directions.json"))) == saved
  part = directions.measure_directions(style_run, num_latents=64, num_eval=4, num_select=4,
                            match="[axes]", seed=1)
  assert os.path.exists(os.path.join(style_run, "edits", "directions-axes-seed1.json"))
  assert json.load(open(os.path.join(style_run, "edits", "directions-axes.json")))["seed"] == 0
  with pytest.raises(ValueError,
                     match=r"(?s)no direction matches 'hue'.*\[fit not-coarse\] \[axes\]"):
    directions.measure_directions(style_run, match="hue")
  # The shared labelled set is the one a standalone edit draws for the same seed.
  _, attribute, positive, negative, condition, _ = directions.DIRECTIONS[0]
  path = edit(load_trained(style_run), EditOptions(attribute, positive, negative,
                        conditions=(condition,), space="w", num_latents=64, num_eval=4))
  alone = json.load(open(path[:-4] + ".json"))["conditioned"]
  assert alone["monotonic_logodds"] == rows[1]["monotonic_logodds"]
  assert alone[f"changes_and_{condition}_stays_fraction"] == rows[1]["both"]
  t = load_trained(style_run)
  with pytest.raises(ValueError, match="labelled latents must be"):
    edit(t, EditOptions("size", "large", space="w", num_latents=64),
         labelled=fit.edit_labels(t, 32, space="w"))


def test_configs_build():
  import dataclasses
  from experiments.config import ConfigError, load_config
  from experiments.families import gan as G
  from experiments.families.gan.model import build_models
  for name, shape in (("dcgan_digits", (8, 8, 1)), ("stylegan_shapes", (16, 16, 3))):
    config = load_config(f"experiments/configs/{name}.py")
    assert config.family == "gan" and isinstance(config, G.GANConfig)
    g, d = build_models(config, shape)
    z = jnp.zeros((2, gan.generator_z_dim(g)))
    variables = jax.eval_shape(lambda k: g.init({"params": k}, z), jax.random.key(0))
    assert jax.eval_shape(lambda v: g.apply(v, z), variables).shape == (2,) + shape
    with pytest.raises(ValueError, match="unknown variant"):
      load_config(f"experiments/configs/{name}.py:tiny")
    # run.json and config.json record only the GAN family's sections
    assert set(config.to_dict()) == {"name", "family", "seed", "data", "model", "gan", "train",
                                     "sample", "eval"}
  # the named recipe is exactly the documented overrides of `regularized`
  late = load_config("experiments/configs/stylegan_shapes.py:late_norm")
  overridden = load_config("experiments/configs/stylegan_shapes.py:regularized",
                           ["gan.r1_gamma=1.0", "model.instance_norm=(4, 5)"])
  assert late.to_dict() == overridden.to_dict()
  assert (late.model["style_mixing_prob"], late.gan.pl_weight, late.train.num_steps,
          late.model["instance_norm"], late.gan.r1_gamma) == (0.9, 2.0, 30_000, (4, 5), 1.0)
  regularized = load_config("experiments/configs/stylegan_shapes.py:regularized")
  assert late.to_dict() != regularized.to_dict()
  fourier = load_config("experiments/configs/stylegan_shapes.py:late_norm_fourier")
  assert fourier.to_dict() == load_config("experiments/configs/stylegan_shapes.py:late_norm",
                                          ["model.synthesis_input='fourier'"]).to_dict()
  # a loss outside the choices fails when the config is read, naming them; a config changed
  # by hand afterwards still fails before anything is built
  with pytest.raises(ConfigError, match=r"gan.loss='wgan': expected one of \['minimax', "
                                        r"'nonsaturating', 'hinge'\]"):
    load_config("experiments/configs/dcgan_digits.py:smoke", ["gan.loss='wgan'"])
  config = load_config("experiments/configs/dcgan_digits.py:smoke")
  config.gan.loss = "wgan"
  with pytest.raises(ValueError, match="unknown GAN loss 'wgan'"):
    G.train(config, "/tmp/never-created-gan-workdir")
  with pytest.raises(ValueError, match="needs model.arch='stylegan'"):
    load_config("experiments/configs/dcgan_digits.py:smoke", ["gan.pl_weight=2.0"])
  config = load_config("experiments/configs/dcgan_digits.py:smoke")
  config.gan = dataclasses.replace(config.gan, pl_weight=2.0)
  with pytest.raises(ValueError, match="needs model.arch='stylegan'"):
    G.train(config, "/tmp/never-created-gan-workdir")


def test_a_misspelt_or_misplaced_key_fails_naming_it():
  """Every section is typed: a misspelt key names itself and lists the allowed ones, before
  anything is built; the model section takes only its architecture's keys."""
  from experiments.config import ConfigError, load_config
  from experiments.main import main
  with pytest.raises(ConfigError, match=r"unknown field gan.r1_gama.*'r1_gamma'"):
    main(["train", "--config", "experiments/configs/stylegan_shapes.py:smoke",
          "--workdir", "/tmp/never-created-gan-workdir", "--set", "gan.r1_gama=1"])
  with pytest.raises(ConfigError, match=r"gan.fid_every='often': expected an int"):
    load_config("experiments/configs/stylegan_shapes.py:smoke", ["gan.fid_every=often"])
  with pytest.raises(ConfigError, match=r"unknown field model.w_dimm.*'w_dim'"):
    load_config("experiments/configs/stylegan_shapes.py:smoke", ["model.w_dimm=8"])
  with pytest.raises(ConfigError, match=r"model.w_dim does not apply to model.arch='dcgan'"):
    load_config("experiments/configs/dcgan_digits.py:smoke", ["model.w_dim=8"])
  with pytest.raises(ConfigError, match=r"unknown field model.generator.featurs.*'features'"):
    load_config("experiments/configs/dcgan_digits.py:smoke",
                ["model.generator={'featurs': 8}"])
  with pytest.raises(ConfigError, match=r"model.generator.norm='layer': expected one of"):
    load_config("experiments/configs/dcgan_digits.py:smoke",
                ["model.generator={'norm': 'layer'}"])
  with pytest.raises(ConfigError, match=r"unknown field train.learning_rate"):
    load_config("experiments/configs/dcgan_digits.py:smoke", ["train.learning_rate=1e-3"])


def test_tool_commands_run_through_the_runner(style_run, capsys):
  """The tools are commands of `experiments.main` with their flags; each prints its output's
  path and record (the directions table: markdown)."""
  import json
  import os
  from experiments.main import main
  assert main(["edit", "--workdir", style_run, "--attribute", "color", "--positive", "blue",
               "--space", "w", "--num-latents", "32", "--num-eval", "2", "--seeds", "0",
               "--layers", "4-5"]) == 0
  out = json.loads(capsys.readouterr().out)
  assert out["output"].endswith("edit_color_blue_w_layers4-5.png") and out["layers"] == [4, 5]
  assert os.path.isfile(out["output"][:-4] + ".run.json")
  assert main(["interpolate", "--workdir", style_run, "--seeds", "0-1", "--num", "3"]) == 0
  assert json.loads(capsys.readouterr().out)["num"] == 3
  assert main(["directions", "--workdir", style_run, "--num-latents", "64", "--num-eval", "2",
               "--num-select", "2", "--match", "[coarse]"]) == 0
  table = capsys.readouterr().out
  assert table.startswith("| direction") and table.count("[coarse [0, 1]]") == 2
  assert os.path.isfile(os.path.join(style_run, "edits", "directions-coarse.json"))
  with pytest.raises(SystemExit):
    main(["edit", "--workdir", style_run])  # --attribute and --positive are required


# --- path-length regularisation and style mixing ----------------------------------------

SG_REG = StyleGANConfig(image_size=8, channels=3, z_dim=8, w_dim=8, mapping_layers=2,
                        channel_base=64, channel_max=8, style_mixing_prob=1.0)


def test_path_lengths_equal_the_jacobian_formula(key):
  """||J^T y|| from the vjp equals the explicit Jacobian contracted with the same y."""
  g = StyleGenerator(SG)
  variables = g.init({"params": key, "noise": key}, jnp.zeros((2, SG.z_dim)))
  ws = jax.random.normal(jax.random.key(3), (2, SG.num_ws, SG.w_dim))
  synth = lambda v: g.apply(variables, v, method="synthesis")  # const noise: deterministic
  y_key = jax.random.key(4)
  lengths = np.asarray(jax.jit(lambda v: gan.path_lengths(synth, v, y_key))(ws))
  img_shape = (2, 8, 8, 3)
  y = np.asarray(jax.random.normal(y_key, img_shape), np.float64) / 8.0
  jac = np.asarray(jax.jit(jax.jacrev(synth))(ws), np.float64)  # [2, 8, 8, 3, 2, L, D]
  for b in range(2):  # examples do not interact: only the diagonal blocks are non-zero
    jt_y = np.einsum("hwc,hwcld->ld", y[b], jac[b, :, :, :, b])
    expected = np.sqrt(np.mean(np.sum(jt_y ** 2, -1)))
    np.testing.assert_allclose(lengths[b], expected, rtol=1e-4)
  assert np.abs(jac[0, :, :, :, 1]).max() == 0


def test_broadcast_ws_repeats_w_per_layer():
  w = np.arange(6, dtype=np.float32).reshape(2, 3)
  ws = broadcast_ws(w, 4)
  assert ws.shape == (2, 4, 3)
  for layer in range(4):
    np.testing.assert_array_equal(ws[:, layer], w)
  assert broadcast_ws(w[0], 5).shape == (5, 3)


def test_mix_styles_takes_w2_from_the_cutoff_on():
  b, num_ws = 256, 6
  w1 = jnp.broadcast_to(jnp.arange(b, dtype=jnp.float32)[:, None], (b, 4))
  w2 = -1.0 - w1
  for prob, expect_mixed in ((0.0, 0.0), (1.0, 1.0), (0.5, 0.5)):
    ws = np.asarray(mix_styles(w1, w2, jax.random.key(1), num_ws, prob))
    from_w2 = ws[..., 0] < 0  # [B, L]
    assert not from_w2[:, 0].any()  # layer 0 always keeps w1 (cutoff >= 1)
    # Once a layer takes w2, every later layer does (one cutoff per sample).
    assert (np.diff(from_w2.astype(int), axis=1) >= 0).all()
    mixed = from_w2.any(1).mean()
    assert abs(mixed - expect_mixed) < 0.1, (prob, mixed)
  cutoffs = num_ws - from_w2.sum(1)[from_w2.any(1)]
  assert set(cutoffs.tolist()) == set(range(1, num_ws))  # every cutoff in [1, L) occurs
  with pytest.raises(ValueError, match="at least 2 layers"):
    mix_styles(w1, w2, jax.random.key(1), 1, 0.5)


@pytest.fixture(scope="module")
def style_pl_state():
  g, d = StyleGenerator(SG_REG), StyleDiscriminator(SG_REG)
  tx = optax.adam(1e-3, b1=0.0, b2=0.99)
  return gan.GANState.create(g, d, jax.random.key(0), g_tx=tx, d_tx=tx, path_length=True)


def test_pl_step_penalty_and_running_mean(style_pl_state):
  """pl_mean moves by pl_decay towards the batch's mean length; the penalty is the mean
  squared deviation from the updated mean, recomputed here from the same draws."""
  state = style_pl_state
  step = jax.jit(gan.make_pl_step(pl_weight=2.0, pl_decay=0.25, batch_shrink=2))
  batch = {"image": jnp.zeros((4, 8, 8, 3))}
  key = jax.random.key(7)
  new, m = step(state, batch, key)

  @jax.jit
  def reference(state):
    z_key, noise_key, y_key = jax.random.split(key, 3)
    z = jax.random.normal(z_key, (2, SG_REG.z_dim))
    variables = state.generator_variables(ema=False)
    w = state.g_apply(variables, z, method="mapping")
    ws = jnp.broadcast_to(w[:, None], (2, SG_REG.num_ws, SG_REG.w_dim))
    return gan.path_lengths(lambda v: state.g_apply(variables, v, None, "random",
                                                     method="synthesis",
                                                     rngs={"noise": noise_key}), ws, y_key)

  lengths = np.asarray(reference(state), np.float64)
  mean = 0.0 + 0.25 * (lengths.mean() - 0.0)
  np.testing.assert_allclose(float(m["pl_mean"]), mean, rtol=1e-5)
  np.testing.assert_allclose(float(m["pl_penalty"]), np.mean((lengths - mean) ** 2), rtol=1e-4)
  moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), new.g_params, state.g_params)
  assert max(jax.tree.leaves(moved)) > 0
  assert "pl_mean" in new.arrays()


def test_gan_step_with_pl_and_mixing_compiles_once(style_pl_state):
  traces = []

  def counted(s, b, k):
    traces.append(1)
    return gan.make_gan_step(r1_gamma=0.1, pl_weight=2.0)(s, b, k)

  step = jax.jit(counted)
  s = style_pl_state
  for i in range(2):
    batch = {"image": jax.random.uniform(jax.random.key(20 + i), (4, 8, 8, 3), minval=-1.0,
                                         maxval=1.0)}
    s, metrics = step(s, batch, jax.random.key(i))
  assert len(traces) == 1 and int(s.step) == 2
  assert all(np.isfinite(float(v)) for v in metrics.values())
  assert float(s.pl_mean) > 0


def test_pl_needs_a_style_generator_and_its_state(dcgan_state, style_pl_state):
  _, state = dcgan_state
  batch = {"image": jnp.zeros((4, 8, 8, 1))}
  with pytest.raises(ValueError, match="path_length=True"):
    gan.make_pl_step()(state, batch, jax.random.key(0))
  with pytest.raises(ValueError, match="style-based generator"):
    gan.make_pl_step()(state.replace(pl_mean=jnp.zeros(())), batch, jax.random.key(0))
  with pytest.raises(ValueError, match="pl_interval"):
    gan.make_gan_step(pl_weight=1.0, pl_interval=0)
  with pytest.raises(ValueError, match="style_mixing_prob"):
    StyleGANConfig(style_mixing_prob=1.5)


def test_count_objects_on_real_shapes_and_drawn_blobs():
  """Every real `shapes` image holds one object; two separate squares count two, touching
  diagonally they are one region (8-connectivity), a black image none."""
  from experiments.families.gan.tools import objects
  from jaxgen.data.shapes import make_shapes
  real = make_shapes(400, 16, 3)["image"].astype(np.float32) / 127.5 - 1.0
  assert (objects.count_objects(real) == 1).all()
  img = -np.ones((3, 16, 16, 3), np.float32)
  img[0, 2:5, 2:5, 0] = img[0, 10:13, 9:12, 2] = 1.0  # a red and a blue square, apart
  img[1, 2:5, 2:5, 1] = img[1, 5:8, 5:8, 1] = 1.0  # two squares touching at a corner
  np.testing.assert_array_equal(objects.count_objects(img), [2, 1, 0])
  # a faint region below the threshold is not an object
  img[2, 4:8, 4:8] = -0.6  # brightness 0.2
  assert objects.count_objects(img[2:])[0] == 0
  assert objects.count_objects(img[2:], threshold=0.15)[0] == 1
  with pytest.raises(ValueError, match=r"images must be \[N, H, W, C\]"):
    objects.count_objects(img[0])
  with pytest.raises(ValueError, match=r"threshold must be in \(0, 1\)"):
    objects.count_objects(img, threshold=1.5)


def test_objects_command_counts_the_edit_evaluation_latents(style_run):
  import json
  import os
  from experiments.families.gan import load_trained
  from experiments.families.gan.tools import objects
  t = load_trained(style_run)
  path = objects.objects(t, num=8, seed=2, truncation_psi=0.7)
  assert path.endswith("objects_psi0.7_seed2.png") and os.path.isfile(path)
  rec = json.load(open(path[:-4] + ".json"))
  # the same 8 latents `edit` evaluates on for seed 2 at psi 0.7, counted by count_objects
  z = jax.random.normal(jax.random.fold_in(jax.random.key(2), 1), (8, t.z_dim))
  counts = objects.count_objects(t.images(t.latents(z, "w", 0.7), "w"))
  assert rec["histogram"] == {str(k): int(v) for k, v in enumerate(np.bincount(counts)) if v}
  assert rec["two_or_more"] == int((counts >= 2).sum()) and rec["truncation_psi"] == 0.7
  with pytest.raises(ValueError, match=r"truncation_psi must be in \[0, 1\]"):
    objects.objects(t, truncation_psi=2.0)
  with pytest.raises(ValueError, match="num must be >= 1"):
    objects.objects(t, num=0)
