"""GAN inversion: find the latent w (or W+) and noise maps that reproduce a target image.

Follows the StyleGAN2-ADA projector (Karras et al. 2020, "Training Generative Adversarial
Networks with Limited Data", code `projector.py`; the method of Karras et al. 2020,
"Analyzing and Improving the Image Quality of StyleGAN", sec. 5 / appendix D):
  * start from the mean w; Adam (0.9, 0.999) on w and on the per-layer noise maps;
  * learning rate lr(t) = lr0 * min(1, t / rampup) * (1/2 - 1/2 cos(pi min(1, (1 - t) / rampdown)))
    with t = step / num_steps (a quick ramp-up and a cosine ramp-down);
  * Gaussian noise of std w_std * noise_factor * max(0, 1 - t / noise_ramp)^2 added to w, so
    early steps explore (w_std: RMS distance of mapped samples from their mean);
  * loss = pixel_weight * MSE + perceptual_weight * mean (f(x) - f(target))^2 with a pluggable
    differentiable feature network f (VGG/LPIPS in StyleGAN; here by default the embedding of
    jaxgen's attribute classifier) + noise_weight * noise regularisation (the squared
    autocorrelation of each noise map at shifts of one pixel, over a pyramid down to 8x8);
  * the noise maps are renormalised to zero mean and unit variance after each step.

The whole optimisation is one `lax.scan`: ``make_projector(...)`` returns a pure function
``project(variables, target, key, w_std) -> ProjectionResult`` to jit and vmap over targets.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax
from flax import struct

from jaxgen.nn.stylegan import StyleGenerator, broadcast_ws

__all__ = ["ProjectionResult", "make_projector", "projector_learning_rate",
           "projector_w_noise_scale", "noise_regularization", "w_statistics",
           "classifier_feature_fn"]


@struct.dataclass
class ProjectionResult:
  w: jax.Array           # [w_dim] (W) or [num_ws, w_dim] (W+): the optimised latent
  ws: jax.Array          # [num_ws, w_dim] what the synthesis consumes
  noise: tuple           # per-layer noise maps, each [H_l, W_l]
  image: jax.Array       # [H, W, C] the synthesised projection
  trajectory: jax.Array  # [num_steps, *w.shape] w after each step
  losses: jax.Array      # [num_steps] total loss at each step


def projector_learning_rate(t, initial_learning_rate: float = 0.1, rampup: float = 0.05,
                            rampdown: float = 0.25):
  """lr at progress t = step / num_steps in [0, 1] (StyleGAN2-ADA projector schedule)."""
  ramp = jnp.minimum(1.0, (1.0 - t) / rampdown)
  ramp = 0.5 - 0.5 * jnp.cos(ramp * jnp.pi)
  ramp = ramp * jnp.minimum(1.0, t / rampup)
  return initial_learning_rate * ramp


def projector_w_noise_scale(t, w_std, initial_noise_factor: float = 0.05,
                            noise_ramp: float = 0.75):
  """Std of the noise added to w at progress t: w_std * factor * max(0, 1 - t / ramp)^2."""
  return w_std * initial_noise_factor * jnp.square(jnp.maximum(0.0, 1.0 - t / noise_ramp))


def noise_regularization(noise_maps) -> jax.Array:
  """sum over maps and pyramid levels (down to 8x8, 2x2 average pooling) of
  mean(n * roll(n, 1, x))^2 + mean(n * roll(n, 1, y))^2 (StyleGAN2 appendix D).

  Args:
    noise_maps: sequence of [H, W] maps.
  """
  total = jnp.float32(0.0)
  for n in noise_maps:
    n = jnp.asarray(n)
    while True:
      total = total + jnp.square(jnp.mean(n * jnp.roll(n, 1, axis=1)))
      total = total + jnp.square(jnp.mean(n * jnp.roll(n, 1, axis=0)))
      if n.shape[0] <= 8:
        break
      n = n.reshape(n.shape[0] // 2, 2, n.shape[1] // 2, 2).mean(axis=(1, 3))
  return total


def w_statistics(generator: StyleGenerator, variables, key, num_samples: int = 10_000):
  """(mean w [w_dim], w_std scalar) of `num_samples` mapped standard-normal z;
  w_std = sqrt(E ||w - mean||^2) as in the StyleGAN2-ADA projector."""
  z = jax.random.normal(key, (num_samples, generator.config.z_dim))
  w = generator.apply(variables, z, method="mapping")
  mean = jnp.mean(w, axis=0)
  return mean, jnp.sqrt(jnp.sum(jnp.square(w - mean[None])) / num_samples)


def classifier_feature_fn(bundle) -> Callable:
  """A differentiable feature network from a `jaxgen.metrics` classifier bundle:
  images [B, H, W, C] in [-1, 1] -> embedding [B, embed_dim]."""
  module, params = bundle.config.module(), bundle.params

  def features(images):
    return module.apply(params, images, train=False)[1]

  return features


def make_projector(generator: StyleGenerator, *, num_steps: int = 1000, w_plus: bool = False,
                   feature_fn: Callable | None = None, pixel_weight: float = 1.0,
                   perceptual_weight: float = 1.0, noise_weight: float = 1e5,
                   initial_learning_rate: float = 0.1, initial_noise_factor: float = 0.05,
                   lr_rampup: float = 0.05, lr_rampdown: float = 0.25,
                   noise_ramp: float = 0.75, optimize_noise: bool = True,
                   num_restarts: int = 1) -> Callable:
  """Builds ``project(variables, target, key, w_std) -> ProjectionResult``.

  Args:
    generator: a `StyleGenerator`.
    num_steps: optimisation steps (the scan length).
    w_plus: optimise one w per layer (W+, [num_ws, w_dim]) instead of one w.
    feature_fn: differentiable images [B, H, W, C] -> features [B, F] for the perceptual
      term (e.g. `classifier_feature_fn(bundle)`); None disables the term.
    pixel_weight, perceptual_weight, noise_weight: loss weights.
    initial_learning_rate, lr_rampup, lr_rampdown: see `projector_learning_rate`.
    initial_noise_factor, noise_ramp: see `projector_w_noise_scale`.
    optimize_noise: also optimise the noise maps (else the generator's constant noise).
    num_restarts: > 1 also starts from (num_restarts - 1) mapped random z (vmapped) and keeps
      the run with the lowest final loss -- an extension against local minima; 1 is the
      StyleGAN2-ADA projector (start at the mean w only).

  Returns:
    ``project(variables, target [H, W, C], key, w_std) -> ProjectionResult``, pure: jit it,
    vmap it over targets and keys (``in_axes=(None, 0, 0, None)``).
  """
  if not isinstance(generator, StyleGenerator):
    raise TypeError(f"make_projector needs a StyleGenerator, got {type(generator).__name__}.")
  if num_steps < 1 or num_restarts < 1:
    raise ValueError(f"num_steps and num_restarts must be >= 1, got {num_steps}, "
                     f"{num_restarts}.")
  for name, v in (("pixel_weight", pixel_weight), ("perceptual_weight", perceptual_weight),
                  ("noise_weight", noise_weight)):
    if v < 0:
      raise ValueError(f"{name} must be >= 0, got {v}.")
  cfg = generator.config
  adam = optax.scale_by_adam(b1=0.9, b2=0.999, eps=1e-8)

  def synthesize(variables, w, noise):
    ws = w if w_plus else broadcast_ws(w, cfg.num_ws)
    maps = [n[None, :, :, None] for n in noise] if optimize_noise else None
    img = generator.apply(variables, ws[None], maps, method="synthesis")
    return ws, img[0]

  def project(variables, target, key, w_std) -> ProjectionResult:
    if tuple(target.shape) != cfg.image_shape:
      raise ValueError(f"the target image has shape {tuple(target.shape)} but the generator "
                       f"makes images of shape {cfg.image_shape} (H, W, C); resize or crop the "
                       "target to the generator's size.")
    z_key, run_key = jax.random.split(key)
    starts = variables["buffers"]["w_avg"][None]  # [1, w_dim]
    if num_restarts > 1:  # extra starts: mapped random z
      z = jax.random.normal(z_key, (num_restarts - 1, cfg.z_dim))
      starts = jnp.concatenate([starts, generator.apply(variables, z, method="mapping")])
    if w_plus:
      starts = broadcast_ws(starts, cfg.num_ws)
    target_feats = None if feature_fn is None else feature_fn(target[None])
    keys = jax.random.split(run_key, num_restarts)
    p, traj, losses = jax.vmap(lambda w0, k: optimize(variables, target, target_feats, w0, k,
                                                      w_std))(starts, keys)
    best = jnp.argmin(losses[:, -1])
    p, traj, losses = jax.tree.map(lambda x: x[best], (p, traj, losses))
    ws, img = synthesize(variables, p["w"], p["noise"])
    noise = p["noise"] if optimize_noise else tuple(
        variables["buffers"]["synthesis_net"][f"noise_const{i}"][..., 0]
        for i in range(len(cfg.noise_shapes)))
    return ProjectionResult(w=p["w"], ws=ws, noise=noise, image=img, trajectory=traj,
                            losses=losses)

  def optimize(variables, target, target_feats, w0, key, w_std):
    """One projection from w0: (final params, w trajectory, losses)."""
    init_key, step_key = jax.random.split(key)
    noise0 = tuple(jax.random.normal(jax.random.fold_in(init_key, i), hw)
                   for i, hw in enumerate(cfg.noise_shapes))
    params = {"w": w0, "noise": noise0 if optimize_noise else ()}

    def loss_fn(p, w_noise):
      _, img = synthesize(variables, p["w"] + w_noise, p["noise"])
      loss = pixel_weight * jnp.mean(jnp.square(img - target))
      if feature_fn is not None:
        loss = loss + perceptual_weight * jnp.mean(jnp.square(feature_fn(img[None])
                                                              - target_feats))
      if optimize_noise:
        loss = loss + noise_weight * noise_regularization(p["noise"])
      return loss

    def body(carry, step):
      p, opt_state = carry
      t = step.astype(jnp.float32) / num_steps
      scale = projector_w_noise_scale(t, w_std, initial_noise_factor, noise_ramp)
      w_noise = scale * jax.random.normal(jax.random.fold_in(step_key, step), p["w"].shape)
      loss, grads = jax.value_and_grad(loss_fn)(p, w_noise)
      updates, opt_state = adam.update(grads, opt_state, p)
      lr = projector_learning_rate(t, initial_learning_rate, lr_rampup, lr_rampdown)
      p = jax.tree.map(lambda x, u: x - lr * u, p, updates)
      p = {"w": p["w"], "noise": tuple((n - jnp.mean(n)) / jnp.std(n) for n in p["noise"])}
      return (p, opt_state), (p["w"], loss)

    (p, _), (traj, losses) = jax.lax.scan(body, (params, adam.init(params)),
                                          jnp.arange(num_steps))
    return p, traj, losses

  return project
