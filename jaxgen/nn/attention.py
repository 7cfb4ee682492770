"""Multi-head scaled dot-product attention, shared by the U-Nets' self- and cross-attention.

`dot_product_attention` is the one core every attention layer of jaxgen's U-Nets calls
(`jaxgen.nn.layers.AttentionBlock`, and `Attention` below inside the transformer blocks of
`jaxgen.nn.transformer2d`). `Attention` keeps the parameter names of diffusers' `Attention`
(`to_q`, `to_k`, `to_v`, `to_out_0`) so diffusers state dicts map onto it by renaming alone.

References:
  Vaswani et al. (2017), "Attention Is All You Need", sec. 3.2 (eq. 1, multi-head attention).
  Rombach et al. (2022), "High-Resolution Image Synthesis with Latent Diffusion Models",
  sec. 3.3 (cross-attention from the U-Net's features to the conditioning tokens).
"""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

# PyTorch's default Linear init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)): the same initializer as
# `jaxgen.nn.layers.torch_like_kernel_init`, restated because layers.py imports this module.
torch_like_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
  """`softmax(q k^T / sqrt(d)) v` per batch element and head (Vaswani et al. 2017, eq. 1).

  The logits and the softmax are float32 whatever the input dtype. Batch dimensions
  (B, heads) lead in both operands: XLA:CPU then emits one batched matmul; with the heads
  axis in the middle ("bqhd,bkhd->bhqk") it was 3.5x slower (docs/performance.md).
  The softmax is computed as (exp(l - max l) v) / sum exp(l - max l): the normalisation
  divides the [Nq, d] result instead of the [Nq, Nk] matrix, and XLA fuses the exp into the
  matmul's operand (6x faster on CPU at N = 256; same values to ~1e-6). The shift cancels
  analytically, so its gradient is zero and it is a stop_gradient.

  Args:
    q: queries.  # [B, heads, Nq, d]
    k: keys.  # [B, heads, Nk, d]
    v: values.  # [B, heads, Nk, d]

  Returns:
    The attended values in v's dtype.  # [B, heads, Nq, d]
  """
  if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
    raise ValueError("dot_product_attention expects q [B, heads, Nq, d] and k, v [B, heads, Nk, d]; "
                     f"got shapes {q.shape}, {k.shape}, {v.shape}")
  if k.shape != v.shape or q.shape[:2] != k.shape[:2] or q.shape[-1] != k.shape[-1]:
    raise ValueError("dot_product_attention: q [B, heads, Nq, d] and k, v [B, heads, Nk, d] must "
                     f"agree on B, heads and d; got shapes {q.shape}, {k.shape}, {v.shape}")
  q = q * jnp.asarray(q.shape[-1] ** -0.5, q.dtype)
  logits = jnp.einsum("bhqd,bhkd->bhqk", q, k, preferred_element_type=jnp.float32)  # [B, h, Nq, Nk]
  shift = jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
  weights = jnp.exp(logits - shift)  # [B, h, Nq, Nk] float32
  denom = jnp.sum(weights, axis=-1, keepdims=True)  # [B, h, Nq, 1]
  o = jnp.einsum("bhqk,bhkd->bhqd", weights.astype(v.dtype), v,
                 preferred_element_type=jnp.float32)
  return (o / denom).astype(v.dtype)  # [B, h, Nq, d]


def split_heads(x: jax.Array, heads: int) -> jax.Array:
  """[B, N, heads * d] -> [B, heads, N, d]."""
  b, n, inner = x.shape
  return jnp.transpose(x.reshape(b, n, heads, inner // heads), (0, 2, 1, 3))


def merge_heads(x: jax.Array) -> jax.Array:
  """[B, heads, N, d] -> [B, N, heads * d]."""
  b, h, n, d = x.shape
  return jnp.transpose(x, (0, 2, 1, 3)).reshape(b, n, h * d)


class Attention(nn.Module):
  """Multi-head attention over token sequences (diffusers `Attention` without norms or
  residual, as built inside `BasicTransformerBlock`; Vaswani et al. 2017, sec. 3.2.2).

  `out = to_out_0(concat_h softmax(q_h k_h^T / sqrt(dim_head)) v_h)` with `q = to_q(x)` and
  `k, v = to_k(c), to_v(c)`, where `c` is `context` (cross-attention, Rombach et al. 2022,
  sec. 3.3) or `x` itself (self-attention) when no context is given.

  Attributes:
    heads: number of heads.
    dim_head: width of one head (the inner width is `heads * dim_head`).
    bias: biases on `to_q`, `to_k`, `to_v` (False in diffusers' transformer blocks).
    out_bias: bias on `to_out_0`.
    dropout: dropout rate after `to_out_0` (active only with `train=True`).
    dtype: computation dtype (the softmax runs in float32).
    kernel_init: initializer of the kernels used by `init` (PyTorch's uniform default).
  """
  heads: int
  dim_head: int
  bias: bool = False
  out_bias: bool = True
  dropout: float = 0.0
  dtype: Dtype = jnp.float32
  kernel_init: Callable = torch_like_kernel_init

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array | None = None, *,
               train: bool = False) -> jax.Array:
    """Args: x [B, N, C]; context [B, L, D] or None (self-attention); train enables dropout.
    Returns [B, N, C]."""
    if x.ndim != 3:
      raise ValueError(f"Attention expects x of shape [B, N, C], got {x.shape}")
    if context is None:
      context = x
    elif context.ndim != 3 or context.shape[0] != x.shape[0]:
      raise ValueError(f"Attention expects context of shape [B, L, D] with B = {x.shape[0]}, "
                       f"got {context.shape}")
    inner = self.heads * self.dim_head

    def proj(name, inp, use_bias):
      return nn.Dense(inner, use_bias=use_bias, dtype=self.dtype, param_dtype=jnp.float32,
                      kernel_init=self.kernel_init, name=name)(inp)

    q = split_heads(proj("to_q", x, self.bias), self.heads)
    k = split_heads(proj("to_k", context, self.bias), self.heads)
    v = split_heads(proj("to_v", context, self.bias), self.heads)
    o = merge_heads(dot_product_attention(q, k, v))  # [B, N, inner]
    o = nn.Dense(x.shape[-1], use_bias=self.out_bias, dtype=self.dtype, param_dtype=jnp.float32,
                 kernel_init=self.kernel_init, name="to_out_0")(o)
    if self.dropout > 0.0:
      o = nn.Dropout(self.dropout, deterministic=not train, name="to_out_1")(o)
    return o  # [B, N, C]
