"""Fresh parameters from a tree of shapes, with one random draw per distribution.

`model.init` runs every initializer as its own random call, and XLA compiles each threefry
call separately: on CPU, initialising a deep U-Net that way takes tens of seconds of
compile time. `init_from_shapes` instead draws all kernels (and all embeddings) with a
single call, slices the draw on the host and reshapes the slices into the parameter tree.
The distributions are those the modules declare; the values differ from `model.init`'s.
"""
from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

KERNELS = ("uniform", "lecun_normal")


def module_param_shapes(model: nn.Module, *args: Any) -> Any:
  """The `params` collection of `model.init(key, *args)` as `jax.ShapeDtypeStruct`s.

  Runs under `jax.eval_shape`: nothing is compiled or allocated.

  Args:
    model: the module.
    *args: example inputs of `model.__call__`: arrays, `ShapeDtypeStruct`s or None.

  Returns:
    The parameter tree (`variables["params"]`) with `ShapeDtypeStruct` leaves.
  """
  return jax.eval_shape(lambda k, *a: model.init({"params": k}, *a)["params"],
                        jax.random.key(0), *args)


def init_from_shapes(shapes: Any, key: jax.Array, *, kernel: str = "lecun_normal",
                     embedding_key: jax.Array | None = None) -> Any:
  """Float32 parameters for a tree of `ShapeDtypeStruct`s, chosen by the leaf's name.

  - "kernel" (Dense `[in, out]`, conv `[kh, kw, in, out]`; fan_in = product of all axes but
    the last), all drawn from `key` with one call:
    "uniform": U(-1/sqrt(fan_in), 1/sqrt(fan_in)), PyTorch's default for `Linear` / `Conv2d`
    (kaiming_uniform with a = sqrt(5)), drawn as U(-1, 1) times the float32 1/sqrt(fan_in);
    "lecun_normal": N(0, 1/fan_in) (LeCun et al. 1998; Flax's default distribution, here
    untruncated), drawn as N(0, 1) divided by the float32 sqrt(fan_in).
  - "embedding": N(0, 1) (as `flax.linen.Embed`), all drawn from `embedding_key` with one call.
  - "bias": 0; "scale": 1.

  Leaves are visited in sorted path order, so each slice of a draw belongs to a fixed
  parameter. Eagerly, the draws are sliced on the host (XLA's CPU compile time grows with
  every output array) and the tree is put on the default device; under `jax.jit` or
  `jax.eval_shape` everything stays traced (under jit, XLA may turn the "lecun_normal"
  division into a multiplication: those kernels can then differ from the eager ones by an ulp).

  Args:
    shapes: parameter tree with `ShapeDtypeStruct` (or array) leaves.
    key: PRNG key of the kernels.
    kernel: "uniform" or "lecun_normal", the distribution of every kernel.
    embedding_key: PRNG key of the embeddings; required when the tree has any.

  Returns:
    The parameter tree, same structure as `shapes`, float32 leaves.
  """
  if kernel not in KERNELS:
    raise ValueError(f"init_from_shapes: unknown kernel distribution {kernel!r}; expected one "
                     f"of {KERNELS}")
  known = ("kernel", "bias", "scale") + (() if embedding_key is None else ("embedding",))
  flat = traverse_util.flatten_dict(shapes)
  paths = sorted(flat)
  for p in paths:
    if p[-1] not in known:
      hint = " (pass embedding_key to draw embeddings)" if p[-1] == "embedding" else ""
      raise ValueError(f"init_from_shapes: no initializer for parameter {'/'.join(p)}; known "
                       f"leaf names are {known}{hint}")
  sizes = {p: math.prod(flat[p].shape) for p in paths}
  n_kernel = sum(sizes[p] for p in paths if p[-1] == "kernel")
  n_embed = sum(sizes[p] for p in paths if p[-1] == "embedding")
  draw, emb = _draw(key, embedding_key, kernel, max(n_kernel, 1), max(n_embed, 1))
  traced = isinstance(draw, jax.core.Tracer)
  xp = jnp if traced else np
  if not traced:
    draw = np.asarray(draw)
    emb = None if emb is None else np.asarray(emb)
  out, i, j = {}, 0, 0
  for p in paths:
    shape, n = flat[p].shape, sizes[p]
    if p[-1] == "kernel":
      fan_in = math.prod(shape[:-1])
      w = draw[i:i + n].reshape(shape)
      # The two scalings round differently; each keeps the values its models were trained with.
      if kernel == "uniform":
        out[p] = w * xp.float32(1.0 / math.sqrt(fan_in))
      else:
        out[p] = w / np.float32(math.sqrt(fan_in))
      i += n
    elif p[-1] == "embedding":
      out[p] = emb[j:j + n].reshape(shape)
      j += n
    else:
      out[p] = (xp.ones if p[-1] == "scale" else xp.zeros)(shape, xp.float32)
  tree = traverse_util.unflatten_dict(out)
  return tree if traced else jax.device_put(tree)


@functools.partial(jax.jit, static_argnums=(2, 3, 4))
def _draw(key, embedding_key, kernel: str, n_kernel: int, n_embed: int):
  """The flat kernel draw [n_kernel] and embedding draw [n_embed] (None without a key)."""
  if kernel == "uniform":
    draw = jax.random.uniform(key, (n_kernel,), jnp.float32, -1.0, 1.0)
  else:
    draw = jax.random.normal(key, (n_kernel,), jnp.float32)
  emb = None if embedding_key is None else jax.random.normal(embedding_key, (n_embed,),
                                                             jnp.float32)
  return draw, emb
