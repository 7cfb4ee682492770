"""The style space S of a `jaxgen.nn.StyleGenerator`: every modulated layer's style s = A(w).

Each modulated convolution and each toRGB computes its own per-channel style from its w with
an affine layer (StyleGAN2 sec. 2.2). Concatenated over the layers in network order
(`StyleGANConfig.style_layers`) these form one flat vector per image, StyleSpace's S (Wu et
al. 2021, "StyleSpace Analysis", sec. 3), the space in which StyleCLIP's global directions
live (Patashnik et al. 2021, sec. 6). The coordinates are the affine outputs themselves (a
toRGB's style is used divided by sqrt(C_in), as in the generator).

`style_codes` reads S from W+ latents, `synthesis_from_styles` draws images from S; both call
the generator unchanged and take or replace its affine outputs with a Flax method
interceptor, so they jit, vmap and differentiate like the synthesis itself.
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from jaxgen.nn.stylegan import StyleGANConfig, broadcast_ws
from jaxgen.nn.stylegan_layers import EqualDense, ModulatedConv, ToRGB

__all__ = ["style_codes", "style_dim", "style_layout", "style_statistics", "synthesis_from_styles"]


def style_layout(config: StyleGANConfig) -> tuple[tuple[str, int, int], ...]:
  """Every modulated layer as (name, offset of its channels in S, number of channels).

  A layer's style has one entry per input channel: the 4x4 block's conv and toRGB read the
  input's ``features(4)`` channels, a block's first conv the previous block's, its second
  conv and its toRGB its own."""
  out, offset = [], 0
  for name, _ in config.style_layers:
    block, kind = name.split("_")
    res = int(block[1:])
    width = config.features(res // 2 if kind == "conv0" else res)
    out.append((name, offset, width))
    offset += width
  return tuple(out)


def style_dim(config: StyleGANConfig) -> int:
  """The size of S (the sum of every modulated layer's input channels)."""
  return sum(width for _, _, width in style_layout(config))


def _is_style_affine(context) -> bool:
  m = context.module
  return (context.method_name == "__call__" and isinstance(m, EqualDense)
          and m.name == "affine" and isinstance(m.parent, (ModulatedConv, ToRGB)))


def _as_ws(generator, ws):
  c = generator.config
  ws = jnp.asarray(ws)
  if ws.ndim == 2 and ws.shape[-1] == c.w_dim:
    return broadcast_ws(ws, c.num_ws)
  if ws.ndim != 3 or ws.shape[1:] != (c.num_ws, c.w_dim):
    raise ValueError(f"expected latents w [B, {c.w_dim}] or W+ ws [B, {c.num_ws}, {c.w_dim}], "
                     f"got shape {ws.shape}.")
  return ws


def style_codes(generator, variables, ws):
  """The styles of W (or W+) latents.

  Args:
    generator: a `StyleGenerator`; variables: its variables.
    ws: w [B, w_dim] (every layer) or W+ ws [B, num_ws, w_dim].

  Returns:
    s [B, style_dim] in `style_layout` order.
  """
  ws = _as_ws(generator, ws)
  found = {}

  def capture(next_fun, args, kwargs, context):
    y = next_fun(*args, **kwargs)
    if _is_style_affine(context):
      found[context.module.parent.name] = y
    return y

  with nn.intercept_methods(capture):
    generator.apply(variables, ws, method="synthesis")
  return jnp.concatenate([found[name] for name, _, _ in style_layout(generator.config)], -1)


def synthesis_from_styles(generator, variables, styles, ws=None):
  """Images drawn from styles: each modulated layer's affine output replaced by its slice.

  Args:
    generator: a `StyleGenerator`; variables: its variables.
    styles: s [B, style_dim] (`style_codes` layout).
    ws: the latents the styles came from, [B, w_dim] or [B, num_ws, w_dim]; only a Fourier
      input reads them (its translation is a function of the first w), so they may be left
      out for a generator with a constant input.

  Returns:
    Images [B, S, S, C], unclipped (as the synthesis).
  """
  c = generator.config
  styles = jnp.asarray(styles)
  if styles.ndim != 2 or styles.shape[-1] != style_dim(c):
    raise ValueError(f"expected styles [B, {style_dim(c)}] (style_dim of this generator), got "
                     f"shape {styles.shape}.")
  if ws is None:
    if c.synthesis_input != "const":
      raise ValueError("a generator with a Fourier input reads its first w: pass the ws the "
                       "styles came from.")
    ws = jnp.zeros((styles.shape[0], c.num_ws, c.w_dim), styles.dtype)
  ws = _as_ws(generator, ws)
  slices = {name: (offset, width) for name, offset, width in style_layout(c)}

  def replace(next_fun, args, kwargs, context):
    if _is_style_affine(context):
      offset, width = slices[context.module.parent.name]
      return styles[:, offset:offset + width]
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(replace):
    return generator.apply(variables, ws, method="synthesis")


def style_statistics(generator, variables, ws) -> tuple[np.ndarray, np.ndarray]:
  """(mean [style_dim], std [style_dim]) of the styles of latents ws [N, ...]."""
  s = np.asarray(style_codes(generator, variables, ws))
  return s.mean(0), s.std(0)

