"""GAN train state and alternating discriminator / generator steps (pure, jit-able).

A GAN step is ``step(state, batch, key) -> (state, metrics)``: one discriminator update on a
real batch and a fresh generated batch, then one generator update on another fresh batch,
then the EMA of the generator's parameters (Goodfellow et al. 2014, Algorithm 1 with k = 1;
the EMA generator as in Karras et al. 2018). ``fold_in(key, state.step)`` makes a resumed run
see the same randomness as an uninterrupted one. Jit it with ``donate_argnums=0``; with a
batch sharded over a ``data`` mesh axis XLA inserts the gradient all-reduce.

Models follow one interface: ``generator(z, train=...)`` (StyleGAN draws its training noise
from rng 'noise') and ``discriminator(images, train=...) -> logits [B]``; variables other than
'params' (batch statistics, StyleGAN's w_avg and constant noise) are carried in
``g_state`` / ``d_state`` and updated in training mode.
"""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

from jaxgen.gan.losses import get_losses, path_lengths, r1_penalty
from jaxgen.nn.stylegan import broadcast_ws
from jaxgen.training.state import ema_decay_at, ema_update

__all__ = ["GANState", "make_d_step", "make_g_step", "make_gan_step", "make_pl_step",
           "generator_z_dim", "apply_model"]


def generator_z_dim(generator: nn.Module) -> int:
  """The latent size of a jaxgen generator (``z_dim`` or ``config.z_dim``)."""
  for obj in (generator, getattr(generator, "config", None)):
    if obj is not None and isinstance(getattr(obj, "z_dim", None), int):
      return obj.z_dim
  raise TypeError(f"{type(generator).__name__} has no integer z_dim (or config.z_dim).")


def apply_model(apply_fn: Callable, params, state: dict, *args, train: bool,
                rngs=None, **kwargs):
  """Applies a Flax model with its non-parameter collections ``state``.

  Returns:
    (output, new_state); in training mode the collections in ``state`` are mutable.
  """
  variables = {"params": params, **state}
  if train and state:
    out, new = apply_fn(variables, *args, train=True, rngs=rngs, mutable=list(state), **kwargs)
    return out, {k: new[k] for k in state}
  return apply_fn(variables, *args, train=train, rngs=rngs, **kwargs), state


class GANState(struct.PyTreeNode):
  """step, generator (params, EMA params, other collections, optimizer state),
  discriminator (params, other collections, optimizer state) and, when the path-length
  regulariser is on, its running mean length ``pl_mean`` (None otherwise)."""
  step: jax.Array  # [] int32
  g_params: Any
  g_ema: Any
  g_state: dict
  g_opt: optax.OptState
  d_params: Any
  d_state: dict
  d_opt: optax.OptState
  g_apply: Callable = struct.field(pytree_node=False)
  d_apply: Callable = struct.field(pytree_node=False)
  g_tx: optax.GradientTransformation = struct.field(pytree_node=False)
  d_tx: optax.GradientTransformation = struct.field(pytree_node=False)
  z_dim: int = struct.field(pytree_node=False, default=0)
  pl_mean: Any = None  # [] float32 with path-length regularisation, else None

  @classmethod
  def create(cls, generator: nn.Module, discriminator: nn.Module, key: jax.Array, *,
             g_tx: optax.GradientTransformation, d_tx: optax.GradientTransformation,
             path_length: bool = False):
    """Initialises both networks (jitted init) and their optimizers; ``path_length=True``
    adds the running mean ``pl_mean`` (0) that `make_pl_step` needs."""
    z_dim = generator_z_dim(generator)

    def init(key):  # one compiled program (op-by-op init compiles once per leaf shape)
      g_key, noise_key, d_key = jax.random.split(key, 3)
      z = jnp.zeros((2, z_dim), jnp.float32)
      g_params, g_state = _split(generator.init({"params": g_key, "noise": noise_key}, z))
      fake = jax.eval_shape(lambda p, s: generator.apply({"params": p, **s}, z), g_params,
                            g_state)
      d_params, d_state = _split(discriminator.init(d_key, jnp.zeros(fake.shape, fake.dtype)))
      return dict(step=jnp.zeros((), jnp.int32), g_params=g_params,
                  g_ema=jax.tree.map(jnp.copy, g_params), g_state=g_state,
                  g_opt=g_tx.init(g_params), d_params=d_params, d_state=d_state,
                  d_opt=d_tx.init(d_params),
                  pl_mean=jnp.zeros((), jnp.float32) if path_length else None)

    return cls(**jax.jit(init)(key), g_apply=generator.apply, d_apply=discriminator.apply,
               g_tx=g_tx, d_tx=d_tx, z_dim=z_dim)

  def generator_variables(self, ema: bool = True) -> dict:
    """Variables to apply the generator with (EMA or live parameters)."""
    return {"params": self.g_ema if ema else self.g_params, **self.g_state}

  def arrays(self) -> dict:
    """The checkpointed part (for `jaxgen.training.save` / `restore_latest`)."""
    out = {"step": self.step, "g_params": self.g_params, "g_ema": self.g_ema,
           "g_state": self.g_state, "g_opt": self.g_opt, "d_params": self.d_params,
           "d_state": self.d_state, "d_opt": self.d_opt}
    if self.pl_mean is not None:
      out["pl_mean"] = self.pl_mean
    return out

  def replace_arrays(self, tree: dict) -> "GANState":
    return self.replace(**tree)


def _split(variables) -> tuple[Any, dict]:
  variables = dict(variables)
  params = variables.pop("params")
  return params, variables


def make_d_step(*, loss: str = "nonsaturating", r1_gamma: float = 0.0) -> Callable:
  """Discriminator update ``d_step(state, batch, key) -> (state, metrics)``.

  Loss: mean d_loss(D(x), D(G(z))) + r1_gamma / 2 * mean ||grad_x D(x)||^2 (R1 on reals).
  The fake batch (same size as the real one) is drawn from ``key``; the generator's
  collections are not updated here.
  """
  d_loss_fn, _ = get_losses(loss)
  if r1_gamma < 0:
    raise ValueError(f"r1_gamma must be >= 0, got {r1_gamma}.")

  def d_step(state: GANState, batch: dict, key: jax.Array):
    real = batch["image"]
    z_key, noise_key = jax.random.split(key)
    z = jax.random.normal(z_key, (real.shape[0], state.z_dim), real.dtype)
    fake, _ = apply_model(state.g_apply, state.g_params, state.g_state, z, train=True,
                          rngs={"noise": noise_key})
    fake = jax.lax.stop_gradient(fake)

    def loss_fn(d_params):
      real_logits, d_state = apply_model(state.d_apply, d_params, state.d_state, real,
                                         train=True)
      fake_logits, d_state = apply_model(state.d_apply, d_params, d_state, fake, train=True)
      loss_value = jnp.mean(d_loss_fn(real_logits, fake_logits))
      metrics = {"d_loss": loss_value, "real_logit": jnp.mean(real_logits),
                 "fake_logit": jnp.mean(fake_logits),
                 "d_accuracy": 0.5 * (jnp.mean(real_logits > 0) + jnp.mean(fake_logits < 0))}
      if r1_gamma > 0:
        r1 = jnp.mean(r1_penalty(
            lambda x: apply_model(state.d_apply, d_params, state.d_state, x, train=True)[0],
            real))
        loss_value = loss_value + 0.5 * r1_gamma * r1
        metrics["r1"] = r1
      return loss_value, (d_state, metrics)

    (_, (d_state, metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.d_params)
    updates, d_opt = state.d_tx.update(grads, state.d_opt, state.d_params)
    d_params = optax.apply_updates(state.d_params, updates)
    metrics["d_l2_grads"] = optax.global_norm(grads)
    return state.replace(d_params=d_params, d_state=d_state, d_opt=d_opt), metrics

  return d_step


def make_g_step(*, loss: str = "nonsaturating") -> Callable:
  """Generator update ``g_step(state, batch, key) -> (state, metrics)``: mean g_loss(D(G(z)))
  on a batch as large as ``batch['image']``; updates the generator's collections."""
  _, g_loss_fn = get_losses(loss)

  def g_step(state: GANState, batch: dict, key: jax.Array):
    real = batch["image"]
    z_key, noise_key = jax.random.split(key)
    z = jax.random.normal(z_key, (real.shape[0], state.z_dim), real.dtype)

    def loss_fn(g_params):
      fake, g_state = apply_model(state.g_apply, g_params, state.g_state, z, train=True,
                                  rngs={"noise": noise_key})
      logits, _ = apply_model(state.d_apply, state.d_params, state.d_state, fake, train=True)
      return jnp.mean(g_loss_fn(logits)), g_state

    (loss_value, g_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.g_params)
    updates, g_opt = state.g_tx.update(grads, state.g_opt, state.g_params)
    g_params = optax.apply_updates(state.g_params, updates)
    metrics = {"g_loss": loss_value, "g_l2_grads": optax.global_norm(grads)}
    return state.replace(g_params=g_params, g_state=g_state, g_opt=g_opt), metrics


  return g_step


def _style_config(state: GANState):
  config = getattr(getattr(state.g_apply, "__self__", None), "config", None)
  if not hasattr(config, "num_ws"):
    raise ValueError("path-length regularisation needs a style-based generator (mapping / "
                     "synthesis with config.num_ws); this state's generator has none.")
  return config


def make_pl_step(*, pl_weight: float = 2.0, pl_decay: float = 0.01, batch_shrink: int = 2,
                 gain: float = 1.0) -> Callable:
  """Generator path-length regularisation update ``pl_step(state, batch, key)``
  (Karras et al. 2020, sec. 3.2, eq. 4): minimises
  ``gain * pl_weight * mean_b (||J_w^T y||_b - a)^2`` over a batch of
  ``batch_size // batch_shrink`` fresh latents, where a (``state.pl_mean``) moves towards the
  batch's mean length by ``pl_decay`` first. ``gain`` is the lazy-regularisation interval
  (the term is applied every `gain` steps with `gain` times the weight, sec. 3.1).

  Needs a style-based generator (``mapping`` / ``synthesis`` methods) and a state created
  with ``path_length=True``. Metrics: pl_penalty (the mean squared deviation), pl_mean.
  """
  if pl_weight < 0 or not 0 < pl_decay <= 1 or batch_shrink < 1:
    raise ValueError(f"path-length settings must have pl_weight >= 0, 0 < pl_decay <= 1 and "
                     f"batch_shrink >= 1; got {pl_weight}, {pl_decay}, {batch_shrink}.")

  def pl_step(state: GANState, batch: dict, key: jax.Array):
    if state.pl_mean is None:
      raise ValueError("path-length regularisation needs GANState.create(..., "
                       "path_length=True) (state.pl_mean is None).")
    num_ws = _style_config(state).num_ws
    size = max(1, batch["image"].shape[0] // batch_shrink)
    z_key, noise_key, y_key = jax.random.split(key, 3)
    z = jax.random.normal(z_key, (size, state.z_dim), jnp.float32)

    def loss_fn(g_params):
      variables = {"params": g_params, **state.g_state}
      w = state.g_apply(variables, z, method="mapping")
      ws = broadcast_ws(w, num_ws)
      lengths = path_lengths(
          lambda v: state.g_apply(variables, v, None, "random", method="synthesis",
                                  rngs={"noise": noise_key}), ws, y_key)
      pl_mean = state.pl_mean + pl_decay * (jnp.mean(jax.lax.stop_gradient(lengths))
                                            - state.pl_mean)
      penalty = jnp.mean(jnp.square(lengths - pl_mean))
      return gain * pl_weight * penalty, (penalty, pl_mean)

    (_, (penalty, pl_mean)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.g_params)
    updates, g_opt = state.g_tx.update(grads, state.g_opt, state.g_params)
    g_params = optax.apply_updates(state.g_params, updates)
    return (state.replace(g_params=g_params, g_opt=g_opt, pl_mean=pl_mean),
            {"pl_penalty": penalty, "pl_mean": pl_mean})

  return pl_step


def make_gan_step(*, loss: str = "nonsaturating", r1_gamma: float = 0.0,
                  ema_decay: float = 0.999, ema_warmup: bool = True, pl_weight: float = 0.0,
                  pl_interval: int = 1) -> Callable:
  """One alternating GAN step: D update, G update, EMA of G, step + 1.

  Args:
    loss: 'minimax', 'nonsaturating' or 'hinge' (see `jaxgen.gan.losses`).
    r1_gamma: weight gamma of the R1 penalty (0: off).
    ema_decay: decay of the generator EMA.
    ema_warmup: use min(decay, (1 + step) / (10 + step)).
    pl_weight: weight of the path-length regulariser (0: off; StyleGAN2 uses 2), applied
      after the G update of every step whose count ``step + 1`` is a multiple of
      `pl_interval`, with the interval as gain (`make_pl_step`; StyleGAN2's lazy
      regularisation uses 4). On XLA:CPU the `lax.cond` that skips it costs more than the
      regulariser itself (measured: a 16x16 step 52 ms without, 135 ms with interval 4,
      65 ms with interval 1), hence the default 1. Needs a style-based generator and
      ``GANState.create(..., path_length=True)``. pl_penalty is NaN on skipped steps.

  Returns:
    ``step(state, batch, key) -> (state, metrics)``; ``batch = {'image': [B, H, W, C]}``;
    metrics: d_loss, g_loss, real_logit, fake_logit, d_accuracy, (r1), grad norms,
    g_l2_params, ema_decay, (pl_penalty of the last regularised step, pl_mean).
  """
  d_step = make_d_step(loss=loss, r1_gamma=r1_gamma)
  g_step = make_g_step(loss=loss)
  if pl_interval < 1:
    raise ValueError(f"pl_interval must be >= 1, got {pl_interval}.")
  pl_step = make_pl_step(pl_weight=pl_weight, gain=pl_interval) if pl_weight > 0 else None

  def step(state: GANState, batch: dict, key: jax.Array):
    d_key, g_key = jax.random.split(jax.random.fold_in(key, state.step))
    state, d_metrics = d_step(state, batch, d_key)
    state, g_metrics = g_step(state, batch, g_key)
    if pl_step is not None and pl_interval == 1:
      state, pl_metrics = pl_step(state, batch, jax.random.fold_in(g_key, 1))
      g_metrics = {**g_metrics, **pl_metrics}
    elif pl_step is not None:
      state, pl_metrics = jax.lax.cond(
          (state.step + 1) % pl_interval == 0,
          lambda s: pl_step(s, batch, jax.random.fold_in(g_key, 1)),
          lambda s: (s, {"pl_penalty": jnp.full((), jnp.nan), "pl_mean": s.pl_mean}), state)
      g_metrics = {**g_metrics, **pl_metrics}
    decay = ema_decay_at(state.step, ema_decay, ema_warmup)
    state = state.replace(step=state.step + 1,
                          g_ema=ema_update(state.g_ema, state.g_params, decay))
    metrics = {**d_metrics, **g_metrics, "g_l2_params": optax.global_norm(state.g_params),
               "ema_decay": decay}
    return state, metrics

  return step
