"""Train-step factories of the autoencoder family: `step(state, batch, key) -> (state, metrics)`.

* `make_autoencoder_step`: AE (reconstruction error), VAE / beta-VAE / CVAE (negative ELBO
  with a KL weight that may warm up with the step).
* `make_vq_step`: VQ-VAE with a codebook learned by its loss term or by EMA updates, and
  dead-code restart; the state is a `VQTrainState` (a `TrainState` plus the codebook).
* `make_vqgan_steps`: VQGAN's alternating generator and discriminator steps on two states.

Like `jaxgen.training.make_step_from_loss`, every step folds `state.step` into the key, runs
under `jax.jit` with a batch sharded over devices (reductions over the batch are then
global) or under `jax.pmap` with `axis_name` (gradients, metrics and codebook statistics
are then averaged / summed explicitly), and draws per-example noise from the example's
global index so that both paths see the same noise.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax
from flax import struct

from jaxgen.nn.autoencoder import Autoencoder
from jaxgen.nn.discriminator import PatchDiscriminator
from jaxgen.training.state import TrainState, ema_decay_at, ema_update
from jaxgen.vae import losses as L
from jaxgen.vae import quantizer as Q
from jaxgen.vae.perceptual import PerceptualNet, perceptual_distance

KINDS = ("ae", "vae")
CODEBOOK_UPDATES = ("ema", "loss")


def _apply(state: TrainState, grads, ema_decay: float, ema_warmup: bool):
  updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  decay = ema_decay_at(state.step, ema_decay, ema_warmup)
  new = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                      ema_params=ema_update(state.ema_params, params, decay))
  norms = {"l2_grads": optax.global_norm(grads), "l2_params": optax.global_norm(params),
           "l2_updates": optax.global_norm(updates)}
  return new, norms


def _label(model: Autoencoder, batch: dict):
  if model.config.num_classes is None:
    return None
  if "label" not in batch:
    raise ValueError("the autoencoder is conditional: batches need a 'label' entry [B]")
  return batch["label"]


def _offset(axis_name, batch_size):
  return 0 if axis_name is None else jax.lax.axis_index(axis_name) * batch_size


def autoencoder_loss_fn(model: Autoencoder, *, kind: str = "vae", likelihood: str = "gaussian",
                        log_scale: float = 0.0, beta: float = 1.0, kl_warmup_steps: int = 0
                        ) -> Callable:
  """The AE or VAE loss `(params, batch, key, example_offset, step) -> (loss, metrics)`.

  AE: mean squared error. VAE: mean over the batch of -log p(x|z) + w(step) KL(q(z|x)||p(z))
  with w = `kl_weight(step, beta, kl_warmup_steps)` (beta-VAE, Higgins et al. 2017) and one
  reparameterised sample per example; a conditional model (CVAE) gets the batch's labels.

  Raises:
    ValueError: unknown kind / likelihood, beta < 0, or a VAE whose encoder does not output
      Gaussian moments (double_latent) / an AE whose encoder does.
  """
  if kind not in KINDS:
    raise ValueError(f"unknown autoencoder kind {kind!r}; expected one of {KINDS}")
  L.check_beta(beta)
  if likelihood not in L.LIKELIHOODS:
    raise ValueError(f"unknown likelihood {likelihood!r}; expected one of {L.LIKELIHOODS}")
  if (kind == "vae") != model.config.double_latent:
    raise ValueError(f"kind={kind!r} needs AutoencoderConfig(double_latent={kind == 'vae'})")

  def loss_fn(params, batch, key, offset, step):
    x, label = batch["image"], _label(model, batch)
    out = model.apply({"params": params}, x, label, method=Autoencoder.encode)
    if kind == "ae":
      x_hat = model.apply({"params": params}, out, label, method=Autoencoder.decode)
      mse = jnp.mean(L.reconstruction_error(x, x_hat))
      return mse, {"mse": mse}
    mean, logvar = L.split_moments(out)
    keys = jax.vmap(jax.random.fold_in, (None, 0))(key, offset + jnp.arange(x.shape[0]))
    z = jax.vmap(L.reparameterize)(keys, mean, logvar)
    output = model.apply({"params": params}, z, label, method=Autoencoder.decode)
    w = L.kl_weight(step, beta, kl_warmup_steps)
    terms = L.negative_elbo(x, output, mean, logvar, likelihood=likelihood,
                            log_scale=log_scale, beta=w)
    x_hat = L.likelihood_mean(output, likelihood)
    metrics = {k: jnp.mean(v) for k, v in terms.items() if k != "loss"}
    metrics.update(mse=jnp.mean(L.reconstruction_error(x, x_hat)), kl_weight=w)
    return jnp.mean(terms["loss"]), metrics

  return loss_fn


def make_autoencoder_step(model: Autoencoder, *, ema_decay: float = 0.999,
                          ema_warmup: bool = True, axis_name: str | None = None,
                          **loss_kwargs) -> Callable:
  """AE / VAE / beta-VAE / CVAE train step (`loss_kwargs` go to `autoencoder_loss_fn`).
  Returns `step(state, batch, key) -> (state, metrics)`; jit it with `donate_argnums=0`."""
  loss_fn = autoencoder_loss_fn(model, **loss_kwargs)

  def step(state: TrainState, batch: dict, key: jax.Array):
    key = jax.random.fold_in(key, state.step)
    offset = _offset(axis_name, batch["image"].shape[0])
    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, batch, key, offset, state.step)
    if axis_name is not None:
      grads, loss, aux = jax.lax.pmean((grads, loss, aux), axis_name)
    new, norms = _apply(state, grads, ema_decay, ema_warmup)
    return new, dict(aux, loss=loss, **norms)

  return step


class VQTrainState(TrainState):
  """`TrainState` plus the codebook. `params` is {"model": autoencoder params} and, for a
  codebook learned by its loss term, also {"codebook": [K, D]} (mirrored in `codebook`)."""
  codebook: Q.CodebookState = None

  @classmethod
  def create_vq(cls, *, apply_fn, model_params, codebook: Q.CodebookState,
                tx: optax.GradientTransformation, codebook_update: str = "ema"):
    if codebook_update not in CODEBOOK_UPDATES:
      raise ValueError(f"unknown codebook_update {codebook_update!r}; expected one of "
                       f"{CODEBOOK_UPDATES}")
    params = {"model": model_params}
    if codebook_update == "loss":
      params["codebook"] = codebook.embedding
    base = TrainState.create(apply_fn=apply_fn, params=params, tx=tx)
    return cls(step=base.step, params=base.params, ema_params=base.ema_params,
               opt_state=base.opt_state, apply_fn=apply_fn, tx=tx,
               codebook=jax.tree.map(jnp.copy, codebook))

  def arrays(self) -> dict:
    return dict(super().arrays(), codebook=self.codebook)

  def embedding(self) -> jax.Array:
    return self.params["codebook"] if "codebook" in self.params else self.codebook.embedding


def _vq_encode_quantize(model, params, embedding, x, label):
  z_e = model.apply({"params": params["model"]}, x, label, method=Autoencoder.encode)
  if z_e.shape[-1] != embedding.shape[-1]:
    raise ValueError(f"encoder latent_channels={z_e.shape[-1]} differs from the codebook's "
                     f"code dimension {embedding.shape[-1]}")
  return z_e, Q.quantize(z_e, embedding)


def _update_codebook(state: VQTrainState, params, z_e, indices, key, *, ema: bool,
                     decay: float, eps: float, dead_threshold: float, axis_name):
  """EMA / usage statistics, then dead-code restart; returns (params, codebook, metrics)."""
  k = state.codebook.embedding.shape[0]
  counts = Q.code_counts(indices, k, axis_name)
  if ema:
    cb = Q.ema_update(state.codebook, z_e, indices, decay=decay, eps=eps, axis_name=axis_name)
  else:
    cb = Q.track_usage(state.codebook.replace(embedding=params["codebook"]), counts, decay)
  restarted = jnp.zeros((), jnp.int32)
  if dead_threshold > 0:
    cb, restarted = Q.restart_dead_codes(cb, z_e, key, threshold=dead_threshold,
                                         axis_name=axis_name)
  if not ema:
    params = dict(params, codebook=cb.embedding)
  return params, cb, dict(Q.codebook_metrics(counts), restarted=restarted)


def _make_vq_update(*, ema: bool, codebook_decay: float, codebook_eps: float,
                    dead_threshold: float, ema_decay: float, ema_warmup: bool, axis_name):
  """The shared tail of the VQ-VAE and VQGAN generator steps: average over `axis_name`,
  apply the gradients, then update the codebook (`_update_codebook`).

  Returns `update(state, grads, loss, aux, z_e, indices, key, **extra) -> (state, metrics)`,
  metrics = aux, codebook metrics, loss, `extra`, then the norms of `_apply`.
  """

  def update(state: VQTrainState, grads, loss, aux: dict, z_e, indices, key, **extra):
    if axis_name is not None:
      grads, loss, aux = jax.lax.pmean((grads, loss, aux), axis_name)
    new, norms = _apply(state, grads, ema_decay, ema_warmup)
    params, cb, cbm = _update_codebook(new, new.params, z_e, indices, key, ema=ema,
                                       decay=codebook_decay, eps=codebook_eps,
                                       dead_threshold=dead_threshold, axis_name=axis_name)
    return new.replace(params=params, codebook=cb), dict(aux, **cbm, loss=loss, **extra, **norms)

  return update


def _check_vq(beta, codebook_update, decay):
  L.check_beta(beta)
  if codebook_update not in CODEBOOK_UPDATES:
    raise ValueError(f"unknown codebook_update {codebook_update!r}; expected one of "
                     f"{CODEBOOK_UPDATES}")
  if not 0.0 <= decay < 1.0:
    raise ValueError(f"codebook EMA decay must be in [0, 1), got {decay}")


def make_vq_step(model: Autoencoder, *, beta: float = 0.25, codebook_update: str = "ema",
                 codebook_decay: float = 0.99, codebook_eps: float = 1e-5,
                 dead_threshold: float = 1.0, rec_loss: str = "mse", ema_decay: float = 0.999,
                 ema_warmup: bool = True, axis_name: str | None = None) -> Callable:
  """VQ-VAE train step (van den Oord et al. 2017): loss = rec + ||sg[z_e] - e||^2 +
  beta ||z_e - sg[e]||^2 (codebook term only with `codebook_update="loss"`; with "ema" the
  codebook follows `quantizer.ema_update` instead), then dead-code restart below
  `dead_threshold` (EMA count per step; 0 disables). Metrics add perplexity, codes_used
  and restarted. Returns `step(state: VQTrainState, batch, key) -> (state, metrics)`."""
  _check_vq(beta, codebook_update, codebook_decay)
  ema = codebook_update == "ema"
  update = _make_vq_update(ema=ema, codebook_decay=codebook_decay, codebook_eps=codebook_eps,
                           dead_threshold=dead_threshold, ema_decay=ema_decay,
                           ema_warmup=ema_warmup, axis_name=axis_name)

  def loss_fn(params, embedding, batch):
    x, label = batch["image"], _label(model, batch)
    if not ema:
      embedding = params["codebook"]
    z_e, q = _vq_encode_quantize(model, params, embedding, x, label)
    x_hat = model.apply({"params": params["model"]}, q.z_q, label, method=Autoencoder.decode)
    rec = jnp.mean(L.reconstruction_error(x, x_hat, rec_loss))
    loss = Q.vq_loss(rec, q, beta, codebook_term=not ema)
    metrics = {"rec": rec, "mse": jnp.mean(L.reconstruction_error(x, x_hat)),
               "codebook_loss": q.codebook_loss, "commitment_loss": q.commitment_loss}
    return loss, (metrics, z_e, q.indices)

  def step(state: VQTrainState, batch: dict, key: jax.Array):
    key = jax.random.fold_in(key, state.step)
    embedding = jax.lax.stop_gradient(state.codebook.embedding)
    (loss, (aux, z_e, idx)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, embedding, batch)
    return update(state, grads, loss, aux, z_e, idx, key)

  return step


class VQGANState(struct.PyTreeNode):
  """VQGAN's two states: generator (autoencoder + codebook) and discriminator."""
  g: VQTrainState
  d: TrainState

  @property
  def step(self) -> jax.Array:
    return self.g.step

  def arrays(self) -> dict:
    return {"g": self.g.arrays(), "d": self.d.arrays()}

  def replace_arrays(self, tree: dict) -> "VQGANState":
    return self.replace(g=self.g.replace_arrays(tree["g"]), d=self.d.replace_arrays(tree["d"]))


def make_vqgan_steps(model: Autoencoder, disc: PatchDiscriminator, *, beta: float = 0.25,
                     codebook_update: str = "ema", codebook_decay: float = 0.99,
                     codebook_eps: float = 1e-5, dead_threshold: float = 1.0,
                     rec_loss: str = "l1", perceptual_weight: float = 1.0,
                     disc_weight: float = 0.8,
                     disc_start: int = 0, adaptive_eps: float = 1e-4,
                     ema_decay: float = 0.999, ema_warmup: bool = True,
                     axis_name: str | None = None) -> tuple[Callable, Callable]:
  """VQGAN (Esser et al. 2021, eq. 5-7): generator loss
  L = |x - x_hat|_1 + w_p LPIPS(x, x_hat) + [codebook term] + beta commitment
      + f(step) disc_weight lambda (-E[D(x_hat)]),
  (`rec_loss="mse"` replaces the L1 pixel term by the squared error),
  lambda the adaptive weight at the decoder's last layer (`losses.adaptive_weight`), f = 0
  before `disc_start`; the discriminator minimises the hinge loss (times f).

  Returns:
    `g_step(g_state, d_params, batch, key, perceptual) -> (g_state, metrics, x_rec)` and
    `d_step(d_state, batch, x_rec) -> (d_state, metrics)`, `perceptual` a `PerceptualNet`
    or None (then w_p is ignored); run them alternately, each jitted (donate arg 0).
  """
  _check_vq(beta, codebook_update, codebook_decay)
  L.check_beta(disc_weight, "disc_weight")
  L.check_beta(perceptual_weight, "perceptual_weight")
  ema = codebook_update == "ema"
  update = _make_vq_update(ema=ema, codebook_decay=codebook_decay, codebook_eps=codebook_eps,
                           dead_threshold=dead_threshold, ema_decay=ema_decay,
                           ema_warmup=ema_warmup, axis_name=axis_name)

  def head(params_model, last, h):
    p = dict(params_model, decoder_out=last)
    return model.apply({"params": p}, h, method=Autoencoder.decode_head)

  def g_loss_fn(params, embedding, d_params, batch, pnet, factor):
    x, label = batch["image"], _label(model, batch)
    if not ema:
      embedding = params["codebook"]
    z_e, q = _vq_encode_quantize(model, params, embedding, x, label)
    h = model.apply({"params": params["model"]}, q.z_q, label, method=Autoencoder.decode_trunk)
    last = params["model"]["decoder_out"]

    def rec_terms(x_hat):
      pixel = jnp.mean(L.reconstruction_error(x, x_hat, rec_loss))
      if pnet is None:
        return pixel, jnp.zeros(())
      p = jnp.mean(perceptual_distance(pnet, x, x_hat))
      return pixel + perceptual_weight * p, p

    def gan_loss(x_hat):
      return L.hinge_g_loss(disc.apply({"params": d_params}, x_hat))

    x_hat = head(params["model"], last, h)
    (rec, perc), adv = rec_terms(x_hat), gan_loss(x_hat)
    sg_h = jax.lax.stop_gradient(h)
    with_kernel = lambda w: dict(last, kernel=w)
    lam = L.adaptive_weight(lambda w: rec_terms(head(params["model"], with_kernel(w), sg_h))[0],
                            lambda w: gan_loss(head(params["model"], with_kernel(w), sg_h)),
                            last["kernel"], eps=adaptive_eps, axis_name=axis_name)
    loss = Q.vq_loss(rec, q, beta, codebook_term=not ema) + factor * disc_weight * lam * adv
    metrics = {"rec": rec, "perceptual": perc, "g_adv": adv, "adaptive_weight": lam,
               "mse": jnp.mean(L.reconstruction_error(x, x_hat)),
               "codebook_loss": q.codebook_loss, "commitment_loss": q.commitment_loss}
    return loss, (metrics, z_e, q.indices, jax.lax.stop_gradient(x_hat))

  def g_step(g: VQTrainState, d_params, batch: dict, key: jax.Array,
             perceptual: PerceptualNet | None):
    key = jax.random.fold_in(key, g.step)
    factor = (g.step >= disc_start).astype(jnp.float32)
    embedding = jax.lax.stop_gradient(g.codebook.embedding)
    (loss, (aux, z_e, idx, x_rec)), grads = jax.value_and_grad(g_loss_fn, has_aux=True)(
        g.params, embedding, d_params, batch, perceptual, factor)
    new, metrics = update(g, grads, loss, aux, z_e, idx, key, disc_factor=factor)
    return new, metrics, x_rec

  def d_loss_fn(d_params, x, x_rec, factor):
    real = disc.apply({"params": d_params}, x)
    fake = disc.apply({"params": d_params}, x_rec)
    loss = factor * L.hinge_d_loss(real, fake)
    return loss, {"logits_real": jnp.mean(real), "logits_fake": jnp.mean(fake)}

  def d_step(d: TrainState, batch: dict, x_rec: jax.Array):
    factor = (d.step >= disc_start).astype(jnp.float32)
    (loss, aux), grads = jax.value_and_grad(d_loss_fn, has_aux=True)(
        d.params, batch["image"], jax.lax.stop_gradient(x_rec), factor)
    if axis_name is not None:
      grads, loss, aux = jax.lax.pmean((grads, loss, aux), axis_name)
    new, norms = _apply(d, grads, ema_decay, ema_warmup)
    return new, dict(aux, d_loss=loss, d_l2_grads=norms["l2_grads"])

  return g_step, d_step
