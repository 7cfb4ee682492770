"""CLIP: a causal text Transformer and a ViT image tower in one embedding space.

Radford et al. (2021), "Learning Transferable Visual Models From Natural Language Supervision"
(CLIP): both towers are pre-LayerNorm Transformers; the text tower reads `[bos] tokens [eos]`
under a causal mask and its feature is the final-LayerNorm state at the eos token; the image
tower is a ViT (Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words": a patch embedding,
a class token, learnt position embeddings) with an extra LayerNorm before the blocks; linear
projections without bias map both into `projection_dim`, and the logits are
`exp(logit_scale) * cos(image, text)`.

The modules mirror transformers' `CLIPModel` / `CLIPTextModel` (v5) module by module and use
its names (including its `pre_layrnorm` spelling), so that a state dict maps onto the Flax
tree by renaming alone: `encoder.layers.3.self_attn.q_proj.weight` is the flax path
`("encoder", "layers_3", "self_attn", "q_proj", "kernel")` (see `jaxgen.interop.clip`).
Images are NHWC, already normalised (`clip_preprocess`).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["CLIPTextConfig", "CLIPVisionConfig", "CLIPConfig", "CLIPTextTransformer",
           "CLIPTextModel", "CLIPVisionTransformer", "CLIPModel", "clip_preprocess",
           "pool_text_features", "CLIP_MEAN", "CLIP_STD"]

Dtype = Any
ACTIVATIONS = ("quick_gelu", "gelu")
# CLIPImageProcessor's OPENAI_CLIP_MEAN / OPENAI_CLIP_STD (RGB, for pixels in [0, 1]).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _check_tower(config, kind: str) -> None:
  for name in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
               "projection_dim"):
    value = getattr(config, name)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
      raise ValueError(f"{kind}: {name} must be a positive int, got {value!r}")
  if config.hidden_size % config.num_attention_heads:
    raise ValueError(f"{kind}: hidden_size={config.hidden_size} is not divisible by "
                     f"num_attention_heads={config.num_attention_heads}")
  if config.hidden_act not in ACTIVATIONS:
    raise ValueError(f"{kind}: hidden_act must be one of {ACTIVATIONS}, got {config.hidden_act!r}")


@dataclasses.dataclass(frozen=True)
class CLIPTextConfig:
  """The text tower (fields and defaults of transformers' `CLIPTextConfig`, ViT-B/32's text).

  `eos_token_id == 2` selects the legacy pooling (at the arg-max id, the eos being the largest
  id of CLIP's vocabulary), as old configs ask; any other id pools at its first occurrence.
  """
  vocab_size: int = 49408
  hidden_size: int = 512
  intermediate_size: int = 2048
  num_hidden_layers: int = 12
  num_attention_heads: int = 8
  max_position_embeddings: int = 77
  hidden_act: str = "quick_gelu"
  layer_norm_eps: float = 1e-5
  projection_dim: int = 512
  bos_token_id: int = 49406
  eos_token_id: int = 49407
  pad_token_id: int = 1

  def __post_init__(self):
    _check_tower(self, "CLIPTextConfig")
    for name in ("vocab_size", "max_position_embeddings"):
      if getattr(self, name) < 1:
        raise ValueError(f"CLIPTextConfig: {name} must be >= 1, got {getattr(self, name)}")


@dataclasses.dataclass(frozen=True)
class CLIPVisionConfig:
  """The image tower (fields and defaults of transformers' `CLIPVisionConfig`, ViT-B/32)."""
  hidden_size: int = 768
  intermediate_size: int = 3072
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  image_size: int = 224
  patch_size: int = 32
  num_channels: int = 3
  hidden_act: str = "quick_gelu"
  layer_norm_eps: float = 1e-5
  projection_dim: int = 512

  def __post_init__(self):
    _check_tower(self, "CLIPVisionConfig")
    if self.patch_size < 1 or self.image_size % self.patch_size:
      raise ValueError(f"CLIPVisionConfig: image_size={self.image_size} must be a multiple of "
                       f"patch_size={self.patch_size}")

  @property
  def num_positions(self) -> int:
    """Patches plus the class token."""
    return (self.image_size // self.patch_size) ** 2 + 1


@dataclasses.dataclass(frozen=True)
class CLIPConfig:
  """Both towers, the shared embedding width and the initial `logit_scale` (log of 1/0.07)."""
  text_config: CLIPTextConfig = CLIPTextConfig()
  vision_config: CLIPVisionConfig = CLIPVisionConfig()
  projection_dim: int = 512
  logit_scale_init_value: float = 2.6592

  def __post_init__(self):
    if not isinstance(self.text_config, CLIPTextConfig) or \
        not isinstance(self.vision_config, CLIPVisionConfig):
      raise TypeError("CLIPConfig expects a CLIPTextConfig and a CLIPVisionConfig, got "
                      f"{type(self.text_config).__name__}, {type(self.vision_config).__name__}")
    if not isinstance(self.projection_dim, int) or self.projection_dim < 1:
      raise ValueError(f"CLIPConfig: projection_dim must be a positive int, got "
                       f"{self.projection_dim!r}")


def _activation(name: str):
  if name == "quick_gelu":  # CLIP's sigmoid approximation x * sigmoid(1.702 x)
    return lambda x: x * jax.nn.sigmoid(1.702 * x)
  return lambda x: jax.nn.gelu(x, approximate=False)  # torch's default (erf) GELU


def _dense(features: int, name: str | None, dtype: Dtype, *, use_bias: bool = True) -> nn.Dense:
  return nn.Dense(features, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32,
                  kernel_init=nn.initializers.normal(0.02), name=name)


def _layer_norm(eps: float, name: str, dtype: Dtype) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=eps, dtype=dtype, param_dtype=jnp.float32, name=name)


class CLIPAttention(nn.Module):
  """Multi-head self-attention (q/k/v/out projections with bias), `jax.nn.dot_product_attention`.

  Attributes:
    hidden_size: model width D.
    num_heads: heads; each has width D / num_heads, scaled by its inverse square root.
    dtype: computation dtype.
  """
  hidden_size: int
  num_heads: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Args: x [B, T, D]; mask: bool, True where query t may attend to key s, [B, 1, T, T] or
    None. Returns [B, T, D]."""
    b, t, _ = x.shape
    head_dim = self.hidden_size // self.num_heads

    def heads(name):  # [B, T, D] -> [B, T, heads, head_dim]
      return _dense(self.hidden_size, name, self.dtype)(x).reshape(b, t, self.num_heads, head_dim)

    q, k, v = heads("q_proj"), heads("k_proj"), heads("v_proj")
    o = jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="xla")  # [B, T, h, d]
    return _dense(self.hidden_size, "out_proj", self.dtype)(o.reshape(b, t, self.hidden_size))


class CLIPEncoderLayer(nn.Module):
  """Pre-LayerNorm block: `x + attn(ln1(x))`, then `x + fc2(act(fc1(ln2(x))))`.

  Attributes:
    config: a CLIPTextConfig or CLIPVisionConfig.
    dtype: computation dtype.
  """
  config: Any
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Args: x [B, T, D]; mask as in CLIPAttention. Returns [B, T, D]."""
    c = self.config
    h = _layer_norm(c.layer_norm_eps, "layer_norm1", self.dtype)(x)
    x = x + CLIPAttention(c.hidden_size, c.num_attention_heads, self.dtype, name="self_attn")(
        h, mask)
    h = _layer_norm(c.layer_norm_eps, "layer_norm2", self.dtype)(x)
    mlp = _MLP(c.intermediate_size, c.hidden_size, c.hidden_act, self.dtype, name="mlp")
    return x + mlp(h)  # [B, T, D]


class _MLP(nn.Module):
  intermediate_size: int
  hidden_size: int
  hidden_act: str
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    h = _activation(self.hidden_act)(_dense(self.intermediate_size, "fc1", self.dtype)(x))
    return _dense(self.hidden_size, "fc2", self.dtype)(h)


class _Encoder(nn.Module):
  config: Any
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, mask=None):
    for i in range(self.config.num_hidden_layers):
      x = CLIPEncoderLayer(self.config, self.dtype, name=f"layers_{i}")(x, mask)
    return x


class _TextEmbeddings(nn.Module):
  config: CLIPTextConfig
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, ids):
    c = self.config
    init = nn.initializers.normal(0.02)
    tokens = self.param("token_embedding", init, (c.vocab_size, c.hidden_size), jnp.float32)
    positions = self.param("position_embedding", init, (c.max_position_embeddings,
                                                        c.hidden_size), jnp.float32)
    h = jnp.take(tokens, ids, axis=0) + positions[None, :ids.shape[1]]
    return h.astype(self.dtype)  # [B, L, D]


def pool_text_features(hidden: jax.Array, ids: jax.Array, eos_token_id: int) -> jax.Array:
  """The hidden state at each row's eos token (transformers' `pooler_output`).

  Args:
    hidden: final-LayerNorm states.  # [B, L, D]
    ids: token ids.  # [B, L]
    eos_token_id: pool at the first position holding this id; 2 selects the legacy rule of
      old configs (the position of the largest id, which is eos in CLIP's vocabulary). A row
      without eos pools at position 0, as transformers does.

  Returns:
    The pooled states.  # [B, D]
  """
  if eos_token_id == 2:
    index = jnp.argmax(ids, axis=-1)
  else:
    index = jnp.argmax((ids == eos_token_id).astype(jnp.int32), axis=-1)  # first True
  return jnp.take_along_axis(hidden, index[:, None, None], axis=1)[:, 0]  # [B, D]


def _check_ids(ids: jax.Array, config: CLIPTextConfig) -> None:
  if ids.ndim != 2 or not jnp.issubdtype(ids.dtype, jnp.integer):
    raise ValueError(f"CLIP text tower expects integer token ids [B, L], got shape {ids.shape} "
                     f"dtype {ids.dtype}")
  if ids.shape[1] > config.max_position_embeddings:
    raise ValueError(f"CLIP text tower: {ids.shape[1]} tokens per prompt, but the model has "
                     f"max_position_embeddings={config.max_position_embeddings}; tokenize with "
                     f"max_length={config.max_position_embeddings}")


class CLIPTextTransformer(nn.Module):
  """Token + position embeddings, causal pre-LN blocks, final LayerNorm, eos pooling.

  Attributes:
    config: CLIPTextConfig.
    dtype: computation dtype (parameters are float32).
  """
  config: CLIPTextConfig
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, ids: jax.Array, attention_mask: jax.Array | None = None
               ) -> tuple[jax.Array, jax.Array]:
    """Encodes token ids.

    Args:
      ids: int token ids, `[bos] ... [eos] [pad]...` as the tokenizer gives.  # [B, L]
      attention_mask: optional 1/0 (or bool) keys to attend to, combined with the causal
        mask; Stable Diffusion passes none.  # [B, L]

    Returns:
      (last_hidden_state [B, L, D] after the final LayerNorm, pooled [B, D] at eos).
    """
    _check_ids(ids, self.config)
    ids = ids.astype(jnp.int32)
    length = ids.shape[1]
    mask = jnp.tril(jnp.ones((length, length), bool))[None, None]  # [1, 1, L, L]
    if attention_mask is not None:
      if attention_mask.shape != ids.shape:
        raise ValueError(f"attention_mask must have the shape of ids {ids.shape}, got "
                         f"{attention_mask.shape}")
      mask = mask & attention_mask.astype(bool)[:, None, None, :]
    h = _TextEmbeddings(self.config, self.dtype, name="embeddings")(ids)
    h = _Encoder(self.config, self.dtype, name="encoder")(h, mask)
    h = _layer_norm(self.config.layer_norm_eps, "final_layer_norm", self.dtype)(h)
    return h, pool_text_features(h, ids, self.config.eos_token_id)


class CLIPTextModel(CLIPTextTransformer):
  """The standalone text encoder (transformers' `CLIPTextModel`, Stable Diffusion's
  `text_encoder/`): `apply({"params": p}, ids) -> (last_hidden_state [B, L, D], pooled [B, D])`.
  Its parameters are those of `CLIPModel`'s `text_model` subtree."""


class _VisionEmbeddings(nn.Module):
  config: CLIPVisionConfig
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images):
    c = self.config
    p = c.patch_size
    patches = nn.Conv(c.hidden_size, (p, p), strides=(p, p), padding="VALID", use_bias=False,
                      dtype=self.dtype, param_dtype=jnp.float32, name="patch_embedding")(images)
    b = images.shape[0]
    patches = patches.reshape(b, -1, c.hidden_size)  # row-major grid, as torch's flatten(2)
    cls = self.param("class_embedding", nn.initializers.normal(c.hidden_size ** -0.5),
                     (c.hidden_size,), jnp.float32)
    positions = self.param("position_embedding", nn.initializers.normal(0.02),
                           (c.num_positions, c.hidden_size), jnp.float32)
    cls = jnp.broadcast_to(cls.astype(patches.dtype), (b, 1, c.hidden_size))
    return (jnp.concatenate([cls, patches], axis=1) + positions[None]).astype(self.dtype)


class CLIPVisionTransformer(nn.Module):
  """ViT image tower: patch conv (no bias), class token, position embeddings, `pre_layrnorm`,
  pre-LN blocks, `post_layernorm` of the class token (Dosovitskiy et al. 2021; Radford et al.
  2021 add the LayerNorm before the blocks).

  Attributes:
    config: CLIPVisionConfig.
    dtype: computation dtype.
  """
  config: CLIPVisionConfig
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Encodes normalised images.

    Args:
      images: float, normalised as `clip_preprocess` does.  # [B, S, S, C]

    Returns:
      (last_hidden_state [B, 1 + (S/patch)^2, D] before the post LayerNorm, pooled [B, D]:
      the class token after `post_layernorm`).
    """
    c = self.config
    expected = (c.image_size, c.image_size, c.num_channels)
    if images.ndim != 4 or tuple(images.shape[1:]) != expected:
      raise ValueError(f"CLIP image tower expects NHWC images [B, {c.image_size}, {c.image_size}, "
                       f"{c.num_channels}], got shape {images.shape}; resize with "
                       "clip_preprocess(images, image_size)")
    h = _VisionEmbeddings(c, self.dtype, name="embeddings")(images)
    h = _layer_norm(c.layer_norm_eps, "pre_layrnorm", self.dtype)(h)
    h = _Encoder(c, self.dtype, name="encoder")(h)
    pooled = _layer_norm(c.layer_norm_eps, "post_layernorm", self.dtype)(h[:, 0])
    return h, pooled


def _unit(x: jax.Array) -> jax.Array:
  return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


class CLIPModel(nn.Module):
  """Both towers, their projections and the learnt temperature.

  `apply(v, images, ids)` gives `logits_per_image [B_img, B_txt] = exp(logit_scale) *
  cos(encode_image(images), encode_text(ids))`; `method="encode_image"` / `"encode_text"`
  give the projected, unnormalised features (transformers' `get_image_features` /
  `get_text_features`).

  Attributes:
    config: CLIPConfig.
    dtype: computation dtype.
  """
  config: CLIPConfig
  dtype: Dtype = jnp.float32

  def setup(self):
    c = self.config
    self.text_model = CLIPTextTransformer(c.text_config, self.dtype)
    self.vision_model = CLIPVisionTransformer(c.vision_config, self.dtype)
    self.visual_projection = _dense(c.projection_dim, None, self.dtype, use_bias=False)
    self.text_projection = _dense(c.projection_dim, None, self.dtype, use_bias=False)
    self.logit_scale = self.param("logit_scale", nn.initializers.constant(
        c.logit_scale_init_value), (), jnp.float32)

  def encode_text(self, ids: jax.Array, attention_mask: jax.Array | None = None) -> jax.Array:
    """Args: ids [B, L] (and an optional attention_mask [B, L]). Returns the projected pooled
    text features [B, projection_dim]."""
    return self.text_projection(self.text_model(ids, attention_mask)[1])

  def encode_image(self, images: jax.Array) -> jax.Array:
    """Args: normalised images [B, S, S, C]. Returns projected features [B, projection_dim]."""
    return self.visual_projection(self.vision_model(images)[1])

  def __call__(self, images: jax.Array, ids: jax.Array,
               attention_mask: jax.Array | None = None) -> jax.Array:
    """Args: images [B_img, S, S, C]; ids [B_txt, L]. Returns logits_per_image [B_img, B_txt]
    (their transpose is transformers' logits_per_text)."""
    image = _unit(self.encode_image(images).astype(jnp.float32))
    text = _unit(self.encode_text(ids, attention_mask).astype(jnp.float32))
    return jnp.exp(self.logit_scale) * image @ text.T  # [B_img, B_txt]


def clip_preprocess(images: Any, image_size: int) -> jax.Array:
  """CLIP's pixel normalisation (CLIPImageProcessor's mean and std), optionally resizing.

  uint8 pixels are divided by 255, float pixels in [-1, 1] (jaxgen's range) mapped to [0, 1];
  then `(x - CLIP_MEAN) / CLIP_STD` per channel. Images of another size are resized so that
  the shorter side is `image_size` (bicubic, antialiased `jax.image.resize`) and centre-cropped
  to a square: the steps of CLIPImageProcessor, but its PIL resampling differs slightly, so
  only same-size inputs match it to float precision.

  Args:
    images: uint8 in [0, 255] or float in [-1, 1] (checked when not traced).  # [B, H, W, 3]
    image_size: side of the output.

  Returns:
    float32 normalised images.  # [B, image_size, image_size, 3]
  """
  if getattr(images, "ndim", None) != 4 or images.shape[-1] != 3:
    raise ValueError(f"clip_preprocess expects RGB NHWC images [B, H, W, 3], got shape "
                     f"{getattr(images, 'shape', type(images).__name__)}")
  dtype = np.dtype(images.dtype)
  if dtype == np.uint8:
    x = jnp.asarray(images, jnp.float32) / 255.0
  elif np.issubdtype(dtype, np.floating):
    if not isinstance(images, jax.core.Tracer):
      lo, hi = float(np.min(np.asarray(images))), float(np.max(np.asarray(images)))
      if lo < -1.0 - 1e-3 or hi > 1.0 + 1e-3:
        raise ValueError(f"clip_preprocess expects float images in [-1, 1] (or uint8), got "
                         f"values in [{lo:.3g}, {hi:.3g}]")
    x = (jnp.asarray(images, jnp.float32) + 1.0) / 2.0
  else:
    raise ValueError(f"clip_preprocess expects uint8 or float images, got dtype {dtype}")
  b, h, w, c = x.shape
  if (h, w) != (image_size, image_size):
    scale = image_size / min(h, w)
    nh, nw = max(image_size, round(h * scale)), max(image_size, round(w * scale))
    x = jax.image.resize(x, (b, nh, nw, c), "bicubic", antialias=True)
    top, left = (nh - image_size) // 2, (nw - image_size) // 2
    x = x[:, top:top + image_size, left:left + image_size]
  mean = jnp.asarray(CLIP_MEAN, jnp.float32).reshape(1, 1, 1, 3)
  std = jnp.asarray(CLIP_STD, jnp.float32).reshape(1, 1, 1, 3)
  return (x - mean) / std  # [B, image_size, image_size, 3]
