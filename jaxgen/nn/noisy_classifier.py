"""A noise-aware classifier p(y | x_t, t) for classifier guidance (Dhariwal & Nichol 2021).

Architecture: the encoder half of the DDPM U-Net (the same sinusoidal time embedding + MLP,
:class:`~jaxgen.nn.layers.DownBlock` levels with time-conditioned resnets, an optional
middle block), then GroupNorm, SiLU, global average pooling and a linear head — the
"adaptive" pooling variant of Dhariwal & Nichol's encoder classifier (their app. B uses the
U-Net's downsampling trunk with an attention-pool head). The module is architecture only;
the training loss lives in :mod:`jaxgen.training.classifier_step`.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.nn.init import init_from_shapes, module_param_shapes
from jaxgen.nn.layers import (DownBlock, MidBlock, TimestepEmbedding, _conv, _dense, _group_norm,
                              timestep_embedding)

_BLOCK_TYPES = ("DownBlock2D", "AttnDownBlock2D")


@dataclasses.dataclass(frozen=True)
class NoisyClassifierConfig:
  """Architecture of :class:`NoisyClassifier` (fields named as in :class:`UNetConfig`).

  Attributes:
    num_classes: number of classes K of the head.
    in_channels: image channels.
    block_out_channels: channels per level, finest first.
    down_block_types: per level, "DownBlock2D" or "AttnDownBlock2D".
    layers_per_block: resnets per level.
    mid_block: add a UNetMidBlock2D (resnet, attention, resnet) at the coarsest level.
    norm_num_groups: GroupNorm groups.
    norm_eps: GroupNorm epsilon.
    dropout: resnet dropout (train=True only).
    attention_head_dim: head width, None for one head per attention block.
    freq_shift, flip_sin_to_cos: the sinusoidal time embedding (DDPM: 1, False).
    downsample_padding: 0 = pad bottom/right by one (DDPM), else symmetric.
  """
  num_classes: int
  in_channels: int = 3
  block_out_channels: tuple[int, ...] = (32, 64)
  down_block_types: tuple[str, ...] = ("DownBlock2D", "AttnDownBlock2D")
  layers_per_block: int = 1
  mid_block: bool = True
  norm_num_groups: int = 8
  norm_eps: float = 1e-6
  dropout: float = 0.0
  attention_head_dim: int | None = None
  freq_shift: float = 1
  flip_sin_to_cos: bool = False
  downsample_padding: int = 0

  def __post_init__(self):
    for name in ("block_out_channels", "down_block_types"):
      value = getattr(self, name)
      if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise ValueError(f"NoisyClassifierConfig: {name} must be a list or tuple, got {value!r}")
      object.__setattr__(self, name, tuple(value))
    if not isinstance(self.num_classes, (int, np.integer)) or self.num_classes < 2:
      raise ValueError(f"NoisyClassifierConfig: num_classes must be an int >= 2, got "
                       f"{self.num_classes!r}")
    if len(self.block_out_channels) != len(self.down_block_types) or not self.block_out_channels:
      raise ValueError("NoisyClassifierConfig: block_out_channels and down_block_types need the "
                       f"same non-zero length, got {self.block_out_channels} and "
                       f"{self.down_block_types}")
    for b in self.down_block_types:
      if b not in _BLOCK_TYPES:
        raise ValueError(f"NoisyClassifierConfig: unknown block type {b!r}; expected one of "
                         f"{_BLOCK_TYPES}")
    for c in self.block_out_channels:
      if c < 1 or c % self.norm_num_groups:
        raise ValueError(f"NoisyClassifierConfig: block_out_channels {self.block_out_channels} "
                         f"must be positive multiples of norm_num_groups={self.norm_num_groups}")
    if self.layers_per_block < 1 or self.in_channels < 1:
      raise ValueError("NoisyClassifierConfig: layers_per_block and in_channels must be >= 1")
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"NoisyClassifierConfig: dropout must be in [0, 1), got {self.dropout}")

  @property
  def time_embed_dim(self) -> int:
    return 4 * self.block_out_channels[0]

  @property
  def downsample_factor(self) -> int:
    return 2 ** (len(self.block_out_channels) - 1)

  def to_dict(self) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v
            for k, v in dataclasses.asdict(self).items()}

  @classmethod
  def from_dict(cls, d: dict) -> "NoisyClassifierConfig":
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - fields)
    if unknown:
      raise ValueError(f"NoisyClassifierConfig: unknown fields {unknown}; known {sorted(fields)}")
    return cls(**d)


class NoisyClassifier(nn.Module):
  """Logits of p(y | x_t, t): ``model.apply({"params": p}, x_t, t) -> [B, num_classes]``.

  Attributes:
    config: the architecture.
  """
  config: NoisyClassifierConfig

  @nn.compact
  def __call__(self, x: jax.Array, t: Any, *, train: bool = False) -> jax.Array:
    """Args:
      x: noisy images x_t, NHWC float in about [-1, 1] (more spread at large t).  # [B, H, W, C]
      t: int timesteps, scalar or [B].
      train: enables dropout (rng 'dropout').
    Returns:
      float32 logits.  # [B, num_classes]
    """
    cfg = self.config
    if x.ndim != 4 or x.shape[-1] != cfg.in_channels:
      raise ValueError(f"NoisyClassifier: x must be NHWC [B, H, W, {cfg.in_channels}], got shape "
                       f"{tuple(x.shape)}")
    f = cfg.downsample_factor
    if x.shape[1] % f or x.shape[2] % f:
      raise ValueError(f"NoisyClassifier: H and W must be multiples of {f} for "
                       f"{len(cfg.block_out_channels)} levels, got {tuple(x.shape)}")
    t = jnp.asarray(t)
    if t.ndim == 0:
      t = jnp.broadcast_to(t, (x.shape[0],))
    if t.shape != (x.shape[0],):
      raise ValueError(f"NoisyClassifier: t must be a scalar or [B={x.shape[0]}], got {t.shape}")
    c0 = cfg.block_out_channels[0]
    emb = timestep_embedding(t, c0, flip_sin_to_cos=cfg.flip_sin_to_cos, freq_shift=cfg.freq_shift)
    emb = TimestepEmbedding(cfg.time_embed_dim, name="time_embedding")(emb)  # [B, T]
    h = _conv(c0, 3, "conv_in", jnp.float32)(x.astype(jnp.float32))
    common = dict(groups=cfg.norm_num_groups, eps=cfg.norm_eps, dropout=cfg.dropout,
                  attention_head_dim=cfg.attention_head_dim)
    n = len(cfg.block_out_channels)
    for i, (kind, ch) in enumerate(zip(cfg.down_block_types, cfg.block_out_channels)):
      h, _ = DownBlock(ch, cfg.layers_per_block, attention=kind == "AttnDownBlock2D",
                       add_downsample=i < n - 1, downsample_padding=cfg.downsample_padding,
                       **common, name=f"down_blocks_{i}")(h, emb, train=train)
    if cfg.mid_block:
      h = MidBlock(cfg.block_out_channels[-1], **common, name="mid_block")(h, emb, train=train)
    h = nn.silu(_group_norm(cfg.norm_num_groups, cfg.norm_eps, "norm_out", jnp.float32)(h))
    h = jnp.mean(h, axis=(1, 2))  # [B, C]
    return _dense(cfg.num_classes, "head", jnp.float32)(h).astype(jnp.float32)  # [B, K]


def noisy_classifier_param_shapes(model: NoisyClassifier) -> Any:
  """The parameter tree as ``jax.ShapeDtypeStruct``s (eval_shape: no compile, no memory)."""
  cfg = model.config
  f = cfg.downsample_factor
  x = jax.ShapeDtypeStruct((1, f, f, cfg.in_channels), jnp.float32)
  return module_param_shapes(model, x, jax.ShapeDtypeStruct((1,), jnp.int32))


def init_noisy_classifier(model: NoisyClassifier, key: jax.Array) -> Any:
  """Fresh parameters (``variables["params"]``) with the modules' distributions: kernels
  U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (PyTorch's default) drawn from ``key`` with one call,
  zero biases, unit norm scales (see :func:`jaxgen.nn.init.init_from_shapes`), which
  compiles in a fraction of the time of ``model.init``.
  """
  return init_from_shapes(noisy_classifier_param_shapes(model), key, kernel="uniform")
