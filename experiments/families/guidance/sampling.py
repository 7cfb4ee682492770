"""Guided sampling of a trained workdir: one sampler vmapped over the guidance scales, every
guidance a transform of the denoiser (`jaxgen.diffusion.cfg`, `cfg_negative`,
`cfg_negative_replace`, `classifier_guidance`, `classifier_mean_shift`)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from experiments import workdir as W
from experiments.families.ddpm import model as B
from experiments.families.ddpm.runner import load_trained
from experiments.families.guidance import conditions
from experiments.families.guidance.config import GuidanceConfig
from experiments.families.guidance.noisy_classifier import load_noisy_classifier
from jaxgen import diffusion as D
from jaxgen.batching import map_batched


def make_guided_sampler(model, schedule: D.Schedule, config: GuidanceConfig, *, guidance: str,
                        method: str, classifier=None):
  """jit ``run(params, cparams, key, labels [B], neg_labels [B], scales [S], g_pos, table, eta,
  shape) -> [S, B, H, W, C]``: one sampler vmapped over the scales, all with the same noise.

  guidance: ``cfg`` (scale = g), ``negative`` (the lecture's form; scale = g_neg, positive
  scale g_pos), ``negative_replace`` (scale = g) or ``classifier`` (scale = classifier g; the
  model is evaluated at the null class when it has one: DDPM uses Algorithm 1's mean shift,
  DDIM the score shift).
  """
  dc = config.diffusion
  null = B.null_label(model)

  @jax.jit
  def run(params, cparams, key, labels, neg_labels, scales, g_pos, table, eta, shape_ref):
    shape = shape_ref.shape

    def model_fn(x, t, y):
      return model.apply({"params": params}, x, t, y)

    def one(scale):
      grad_fn = None
      if guidance == "cfg":
        den = D.cfg(model_fn, labels, null, scale)
      elif guidance == "negative":
        den = D.cfg_negative(model_fn, labels, neg_labels, null, g_pos, scale)
      elif guidance == "negative_replace":
        den = D.cfg_negative_replace(model_fn, labels, neg_labels, scale)
      else:
        if null is None:
          base = lambda x, t: model.apply({"params": params}, x, t)
        else:
          base = lambda x, t: model_fn(x, t, jnp.full((x.shape[0],), null, jnp.int32))
        log_prob = D.log_prob_from_logits(
            lambda x, t: classifier.apply({"params": cparams}, x, t), labels)
        if method == "ddpm":
          den, grad_fn = base, D.classifier_mean_shift(log_prob, scale)
        else:
          den = D.classifier_guidance(base, log_prob, scale, schedule,
                                      prediction_type=dc.prediction_type)
      x = D.sample(den, schedule, key, shape, table, method=method, eta=eta,
                   prediction_type=dc.prediction_type, variance_type=dc.variance_type,
                   clip_sample=dc.clip_sample, guidance_grad_fn=grad_fn)
      return jnp.clip(x, -1.0, 1.0)

    return jax.vmap(one)(scales)

  return run


class GuidedRun:
  """A trained workdir ready for guided sampling (model, classifier, compiled sampler)."""

  def __init__(self, workdir, guidance, sampler=None, steps=None, eta=None):
    config = W.load_config(workdir)
    self.kind = getattr(getattr(config, "guidance", None), "condition", "label")
    if guidance in ("cfg", "negative") and config.train.cond_drop_prob <= 0:
      raise ValueError(
          f"{guidance!r} guidance needs a model trained with condition dropout (a learned null "
          f"class); {workdir} was trained with train.cond_drop_prob="
          f"{config.train.cond_drop_prob}. Train a cfg config (e.g. cfg_digits) or use "
          "--guidance classifier")
    t = load_trained(workdir, sources=conditions.sources)
    config, source, model, schedule, self.step = t.config, t.source, t.model, t.schedule, t.step
    self.config, self.source, self.model, self.params = config, source, model, t.state.ema_params
    self.num_classes = source.num_classes
    self.null = B.null_label(model)
    self.cparams, classifier = None, None
    if guidance == "classifier" and self.null is not None and config.train.cond_drop_prob <= 0:
      raise ValueError(f"{workdir} holds a class-conditional model without a learned null class "
                       "(train.cond_drop_prob=0): classifier guidance needs an unconditional model "
                       "or one trained with condition dropout")
    if guidance == "classifier":
      if self.kind != "label":
        raise ValueError("classifier guidance needs guidance.condition='label'")
      classifier, self.cparams = load_noisy_classifier(workdir, config)
    self.method = sampler or config.sample.sampler
    if self.method not in D.METHODS:
      raise ValueError(f"unknown sampler {self.method!r}; expected one of {D.METHODS}")
    self.steps = steps or config.sample.steps
    self.table = B.sampling_table(config, self.steps)  # checks steps <= T before compiling
    self.eta = config.sample.eta if eta is None else eta
    self.samplers = {g: make_guided_sampler(model, schedule, config, guidance=g,
                                            method=self.method, classifier=classifier)
                     for g in ((guidance,) if guidance != "negative"
                               else ("negative", "negative_replace"))}
    self.guidance = guidance

  def draw(self, scales, labels, neg_labels, seed, *, g_pos=1.0, form=None,
           null_ok=False) -> np.ndarray:
    """[S, N, H, W, C] samples, in chunks of sample.batch_size (chunk i: fold_in(key, i)).
    ``null_ok``: the positive labels may be the null class (only for negative prompting)."""
    labels = np.asarray(D.check_labels(labels, self.num_classes + int(null_ok)))
    neg_labels = np.asarray(D.check_labels(neg_labels, self.num_classes, name="neg_labels"))
    run = self.samplers[form or self.guidance]
    scales = jnp.asarray(scales, jnp.float32)

    def chunk(k, y, yn):  # [B, S, H, W, C]: map_batched concatenates the batch axis
      x = run(self.params, self.cparams, k, y, yn, scales, jnp.float32(g_pos), self.table,
              jnp.float32(self.eta),
              jax.ShapeDtypeStruct((len(y),) + tuple(self.source.image_shape), jnp.float32))
      return jnp.swapaxes(x, 0, 1)

    out = map_batched(chunk, labels, neg_labels, batch_size=self.config.sample.batch_size,
                      key=jax.random.key(seed), pad=False)
    return np.swapaxes(out, 0, 1)
