"""``train`` of the clip family and its trained-workdir loader.

The batch holds images and the index of each image's caption; the step looks the caption's
token ids up in the tokenised caption table, so the loader stays a plain image source. The
loss takes its negatives from the global batch (under `jax.jit` over the data-sharded batch XLA
gathers the features: `jaxgen.clip.clip_loss`)."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from experiments import workdir as W
from experiments.families.clip import data as CD
from experiments.families.clip.config import CLIPExperiment
from jaxgen import clip as C
from jaxgen import data as jdata
from jaxgen.training import TrainState, make_optimizer, make_step_from_loss, train_loop


def build_model(config: CLIPExperiment, image_shape, tok):
  """The `jaxgen.nn.CLIPModel` of ``config.model`` for images of ``image_shape`` and the
  tokenizer `tok` (its vocabulary and special ids)."""
  from jaxgen.nn.clip import (CLIPConfig, CLIPModel, CLIPTextConfig,  # pylint: disable=C0415
                              CLIPVisionConfig)
  m = config.model
  h, _, c = image_shape
  if h % m.patch_size:
    raise ValueError(f"images of side {h} do not split into patches of model.patch_size="
                     f"{m.patch_size}")
  tower = dict(hidden_size=m.width, intermediate_size=m.width * m.mlp_ratio,
               num_hidden_layers=m.layers, num_attention_heads=m.heads,
               hidden_act=m.hidden_act, projection_dim=m.projection_dim)
  text = CLIPTextConfig(vocab_size=tok.vocab_size, max_position_embeddings=m.max_length,
                        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                        pad_token_id=tok.pad_token_id, **tower)
  vision = CLIPVisionConfig(image_size=h, patch_size=m.patch_size, num_channels=c, **tower)
  return CLIPModel(CLIPConfig(text_config=text, vision_config=vision,
                              projection_dim=m.projection_dim,
                              logit_scale_init_value=m.logit_scale_init))


def text_setup(config: CLIPExperiment, workdir: str):
  """(tokenizer, int32 [216, max_length] token ids of every caption); the tokenizer is trained
  on the captions once and kept in ``workdir/tokenizer``."""
  texts, _ = CD.caption_table()
  tok = CD.tokenizer(workdir, config.model.vocab_size, texts)
  return tok, np.asarray(tok(texts, max_length=config.model.max_length), np.int32)


def init_state(config: CLIPExperiment, model, image_shape, key) -> TrainState:
  tc, m = config.train, config.model
  images = jnp.zeros((1,) + tuple(image_shape), jnp.float32)
  ids = jnp.zeros((1, m.max_length), jnp.int32)
  params = jax.jit(model.init)(key, images, ids)["params"]
  tx = make_optimizer(tc.learning_rate, warmup_steps=tc.warmup_steps, total_steps=tc.num_steps,
                      decay=tc.lr_decay, weight_decay=tc.weight_decay, grad_clip=tc.grad_clip)
  return TrainState.create(apply_fn=model.apply, params=params, tx=tx)


def make_loss_fn(model, table, loss: str):
  """``loss_fn(params, batch, key, offset) -> (loss, metrics)`` over the global batch."""
  table = jnp.asarray(table)

  def loss_fn(params, batch, key, offset):
    del key, offset
    v = {"params": params}
    img = model.apply(v, batch["image"], method="encode_image")
    txt = model.apply(v, table[batch["caption"]], method="encode_text")
    scale = params["logit_scale"]
    if loss == "siglip":
      value = C.siglip_loss(img, txt, scale, params.get("logit_bias", -10.0))
    else:
      value = C.clip_loss(img, txt, scale)
    logits = C.clip_logits(img, txt, scale)
    accuracy = jnp.mean((jnp.argmax(logits, -1) == jnp.arange(img.shape[0])).astype(jnp.float32))
    return value, {"batch_i2t_accuracy": accuracy, "temperature": jnp.exp(scale)}

  return loss_fn


def train(config: CLIPExperiment, workdir: str) -> dict:
  """Trains (or resumes) the two towers in ``workdir``."""
  config.validate()
  src = CD.source("train", config.data.image_size, config.data.held_out)
  W.save_config(workdir, config)
  tok, table = text_setup(config, workdir)
  model = build_model(config, src.image_shape, tok)
  tc, root = config.train, jax.random.key(config.seed)
  init_key, train_key = jax.random.fold_in(root, 0), jax.random.fold_in(root, 1)
  step_fn = jax.jit(make_step_from_loss(make_loss_fn(model, table, tc.loss),
                                        ema_decay=tc.ema_decay, ema_warmup=tc.ema_warmup),
                    donate_argnums=0)
  out = train_loop(
      lambda: init_state(config, model, src.image_shape, init_key),
      lambda state, batch: step_fn(state, batch, train_key),
      num_steps=tc.num_steps, workdir=workdir,
      loader=jdata.Loader(src, config.data.batch_size, seed=config.seed),
      batch_keys=("image", "caption"), image_shape=src.image_shape, log_every=tc.log_every,
      checkpoint_every=tc.checkpoint_every, max_to_keep=tc.max_to_keep,
      run_record=W.run_record(config, "train"), desc="train clip",
      hint="Lower train.learning_rate before resuming.")
  return out.summary("loss")


@dataclasses.dataclass
class Trained:
  config: CLIPExperiment
  model: object
  params: dict                     # EMA parameters
  ids: np.ndarray                  # [216, L] token ids of the caption table
  step: int


def load_trained(workdir: str) -> Trained:
  config = W.load_config(workdir)
  shape = CD.source("test", config.data.image_size).image_shape
  tok, table = text_setup(config, workdir)
  model = build_model(config, shape, tok)
  state, step = W.restore(workdir, lambda: init_state(config, model, shape, jax.random.key(0)))
  return Trained(config, model, state.ema_params, table, step)


def encoders(t: Trained):
  """(images [N,H,W,C] -> normalised features [N, D], ids [N, L] -> normalised [N, D])."""
  from jaxgen.batching import map_batched  # pylint: disable=import-outside-toplevel
  enc_i = jax.jit(lambda p, x: C.normalize(t.model.apply({"params": p}, x,
                                                          method="encode_image")))
  enc_t = jax.jit(lambda p, ids: C.normalize(t.model.apply({"params": p}, ids,
                                                            method="encode_text")))
  return (lambda x: map_batched(lambda c: enc_i(t.params, c), x, batch_size=500),
          lambda ids: map_batched(lambda c: enc_t(t.params, c), ids, batch_size=500))
