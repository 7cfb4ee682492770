"""Train-step factories: pure closures ``step(state, batch, key) -> (state, metrics)``.

The step folds ``state.step`` into the key (``fold_in(key, step)``), so a resumed run sees the
very randomness an uninterrupted one would. It runs as is under ``jax.jit`` (data parallel with
a batch sharded over a ``data`` mesh axis: XLA inserts the gradient all-reduce) or under
``jax.pmap(step, axis_name=...)`` when built with that ``axis_name`` (gradients and metrics are
then ``pmean``-ed explicitly, and each shard folds its global example indices into the key, so
both paths draw the same noise for the same example).
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from jaxgen.diffusion.losses import diffusion_loss
from jaxgen.diffusion.schedules import Schedule
from jaxgen.training.state import TrainState, ema_decay_at, ema_update

# loss_fn(params, batch, key, example_offset) -> (scalar loss, dict of scalar metrics)
LossFn = Callable[[Any, dict, jax.Array, jax.Array], tuple[jax.Array, dict]]


def _l2(tree) -> jax.Array:
  return optax.global_norm(tree)


def accumulate_gradients(loss_fn: LossFn, params, batch: dict, key: jax.Array, offset,
                         accum_steps: int):
  """``((loss, aux), grads)`` of ``loss_fn`` over ``batch``, as the mean over ``accum_steps``
  equal contiguous micro-batches computed one after another in a ``lax.scan`` (gradient
  accumulation): the activations of one micro-batch at a time are live, the result is the
  full batch's mean gradient (exactly, up to float summation order, for a loss that is a
  mean over examples). Micro-batch ``i`` gets ``offset + i * micro`` as its example offset,
  so every example draws the noise it would draw in the full batch.

  Raises:
    ValueError: when ``accum_steps`` does not divide the batch.
  """
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if accum_steps == 1:
    return grad_fn(params, batch, key, offset)
  b = jax.tree.leaves(batch)[0].shape[0]
  if b % accum_steps:
    raise ValueError(f"grad accumulation: accum_steps={accum_steps} must divide the batch of "
                     f"{b} examples (each micro-batch has batch / accum_steps)")
  micro = b // accum_steps
  micro_batches = jax.tree.map(lambda x: x.reshape((accum_steps, micro) + x.shape[1:]), batch)
  first = jax.tree.map(lambda x: x[0], micro_batches)
  out_shape = jax.eval_shape(grad_fn, params, first, key, offset)
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), out_shape)

  def body(total, inputs):
    i, mb = inputs
    out = grad_fn(params, mb, key, offset + i * micro)
    return jax.tree.map(jnp.add, total, out), None

  total, _ = jax.lax.scan(body, zeros, (jnp.arange(accum_steps), micro_batches))
  return jax.tree.map(lambda x: x / accum_steps, total)


def make_step_from_loss(loss_fn: LossFn, *, ema_decay: float = 0.9999, ema_warmup: bool = False,
                        axis_name: str | None = None, accum_steps: int = 1) -> Callable:
  """Wraps a loss into a train step with AdamW update, EMA and norms in the metrics.

  Args:
    loss_fn: ``(params, batch, key, example_offset) -> (loss, metrics)``.
    ema_decay: EMA decay of the parameters.
    ema_warmup: use min(decay, (1 + step) / (10 + step)).
    axis_name: the pmap axis to average gradients over, or None under jit/sharding.
    accum_steps: split each batch into this many micro-batches and average their gradients
      (:func:`accumulate_gradients`) before the one optimiser update: the update of the
      whole batch with the activation memory of one micro-batch.
  Returns:
    ``step(state, batch, key) -> (state, metrics)``; metrics hold loss, l2_grads, l2_params,
    l2_updates, ema_decay (scalars).
  """
  if not isinstance(accum_steps, int) or isinstance(accum_steps, bool) or accum_steps < 1:
    raise ValueError(f"accum_steps must be an int >= 1, got {accum_steps!r}")

  def step(state: TrainState, batch: dict, key: jax.Array):
    key = jax.random.fold_in(key, state.step)
    local_b = jax.tree.leaves(batch)[0].shape[0]
    offset = 0 if axis_name is None else jax.lax.axis_index(axis_name) * local_b
    (loss, aux), grads = accumulate_gradients(loss_fn, state.params, batch, key, offset,
                                              accum_steps)
    if axis_name is not None:
      grads, loss, aux = jax.lax.pmean((grads, loss, aux), axis_name)
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    decay = ema_decay_at(state.step, ema_decay, ema_warmup)
    new = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                        ema_params=ema_update(state.ema_params, params, decay))
    metrics = dict(aux, loss=loss, l2_grads=_l2(grads), l2_params=_l2(params),
                   l2_updates=_l2(updates), ema_decay=decay)
    return new, metrics

  return step


def diffusion_loss_fn(model, schedule: Schedule, *, prediction_type: str = "epsilon",
                      cond_drop_prob: float = 0.0, null_label: int | None = None) -> LossFn:
  """The L_simple loss of :func:`jaxgen.diffusion.diffusion_loss` for a U-Net ``model``.

  With ``cond_drop_prob > 0`` each label is replaced by ``null_label`` with that probability
  (classifier-free guidance training, Ho & Salimans 2022), drawn per example.
  """
  if not 0.0 <= cond_drop_prob < 1.0:
    raise ValueError(f"cond_drop_prob must be in [0, 1), got {cond_drop_prob}")
  if cond_drop_prob > 0 and null_label is None:
    raise ValueError("cond_drop_prob > 0 needs the model's null_label")

  conditional = getattr(getattr(model, "config", None), "num_class_embeds", None) is not None

  def loss_fn(params, batch, key, offset):
    x0 = batch["image"]
    label = batch.get("label") if conditional else None
    noise_key, drop_key, dropout_key = jax.random.split(key, 3)
    if label is not None and cond_drop_prob > 0:
      drop = jax.vmap(lambda k: jax.random.bernoulli(k, cond_drop_prob))(
          jax.vmap(jax.random.fold_in, (None, 0))(drop_key, offset + jnp.arange(x0.shape[0])))
      label = jnp.where(drop, null_label, label)
    model_fn = lambda x, t: model.apply({"params": params}, x, t, label, train=True,
                                        rngs={"dropout": jax.random.fold_in(dropout_key, offset)})
    if conditional and label is None:
      raise ValueError("the model is class-conditional: batches need a 'label' entry [B]")
    losses = diffusion_loss(model_fn, schedule, x0, noise_key, prediction_type=prediction_type,
                            example_offset=offset)
    return jnp.mean(losses), {}

  return loss_fn


def make_train_step(model, schedule: Schedule, *, prediction_type: str = "epsilon",
                    ema_decay: float = 0.9999, ema_warmup: bool = False,
                    cond_drop_prob: float = 0.0, null_label: int | None = None,
                    axis_name: str | None = None, accum_steps: int = 1) -> Callable:
  """The diffusion train step ``step(state, batch, key) -> (state, metrics)`` (Ho et al. 2020,
  Algorithm 1, with AdamW, EMA and optional condition dropout). ``batch`` is
  ``{"image": [B, H, W, C] float32 in [-1, 1], "label": [B] int32 (conditional models)}``.
  Jit it with ``donate_argnums=0``; see the module docstring for data parallelism;
  ``accum_steps`` as :func:`make_step_from_loss`."""
  loss_fn = diffusion_loss_fn(model, schedule, prediction_type=prediction_type,
                              cond_drop_prob=cond_drop_prob, null_label=null_label)
  return make_step_from_loss(loss_fn, ema_decay=ema_decay, ema_warmup=ema_warmup,
                             axis_name=axis_name, accum_steps=accum_steps)
