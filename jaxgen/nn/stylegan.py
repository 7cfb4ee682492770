"""A small style-based generator and its discriminator (StyleGAN2 structure, CPU-sized).

Generator (Karras et al. 2019, "A Style-Based Generator Architecture for GANs"; Karras et
al. 2020, "Analyzing and Improving the Image Quality of StyleGAN"):
  * mapping network z -> w: pixel-normalised z through `mapping_layers` equalised-lr dense
    layers with leaky ReLU (learning-rate multiplier 0.01 as in the papers);
  * a tracked mean `w_avg` (collection ``"buffers"``), moved towards the batch mean of w at
    every training call, used by truncation ``w' = w_avg + psi (w - w_avg)``;
  * synthesis from a learned constant 4x4 input (or, as an option, StyleGAN3's Fourier
    features translated by w: `FourierInput`) through modulated/demodulated 3x3
    convolutions (StyleGAN2 eq. 1-3), per-layer noise inputs with learned strengths, and a
    "skip" RGB output summed over resolutions.
  The synthesis takes one w per layer: ``ws`` [B, num_ws, w_dim] (``W+``); feeding the same w
  to every layer is the ordinary ``W`` space. It also takes one w per modulated layer,
  [B, num_styles, w_dim] (`StyleGANConfig.style_layers`, `expand_ws`), where the toRGB
  styles are apart from the convs that share their w in W+ (StyleSpace's granularity, Wu et
  al. 2021): an edit of the toRGB entries alone changes the image affinely.

Discriminator: StyleGAN2's residual discriminator with a minibatch-standard-deviation layer.

Simplifications (documented): upsampling is bilinear (a [1, 3, 3, 1] filter, like
StyleGAN2's FIR upsampling), downsampling is 2x2 average pooling, there is no conv clamping,
style mixing is drawn per sample (``style_mixing_prob``), and modulation scales activations
rather than weights (the same arithmetic as StyleGAN2's ``fused_modconv=False`` path).
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.nn.stylegan_layers import (EqualConv, EqualDense, ModulatedConv, ToRGB, downsample2x,
                                       lrelu, upsample2x)

__all__ = ["StyleGANConfig", "broadcast_ws", "expand_ws", "mix_styles", "StyleGenerator",
           "StyleDiscriminator", "FourierInput", "EqualDense", "EqualConv",
           "check_truncation_psi", "truncate"]

_SQRT2 = math.sqrt(2.0)  # the residual discriminator's skip + conv sum is scaled by 1 / sqrt(2)

NOISE_MODES = ("const", "random", "none")
SYNTHESIS_INPUTS = ("const", "fourier")


def check_truncation_psi(psi) -> None:
  """Raises ValueError for a concrete truncation psi outside [0, 1] (traced values pass)."""
  if isinstance(psi, jax.core.Tracer):
    return
  try:
    values = np.asarray(psi, dtype=np.float64)
  except (TypeError, ValueError) as e:
    raise TypeError(f"truncation_psi must be a number in [0, 1], got {psi!r}.") from e
  if not np.all((values >= 0) & (values <= 1)):
    raise ValueError(f"truncation_psi must be in [0, 1] (1 = no truncation, 0 = the mean w), "
                     f"got {psi!r}.")


def _check_cutoff(cutoff, num_ws: int) -> int:
  if isinstance(cutoff, (bool, np.bool_)) or not isinstance(cutoff, numbers.Integral):
    raise TypeError(f"truncation_cutoff must be None or an int number of layers, got {cutoff!r}.")
  if not 0 <= cutoff <= num_ws:
    raise ValueError(f"truncation_cutoff must be in [0, {num_ws}] (the generator's layers), "
                     f"got {cutoff}.")
  return int(cutoff)


def truncate(w, w_avg, psi, cutoff: int | None = None):
  """The truncation trick in W: w' = w_avg + psi (w - w_avg) (Karras et al. 2019, sec. 3 and
  appendix B). Also `jaxgen.gan.truncate`.

  Args:
    w: [..., w_dim], or W+ latents [..., num_ws, w_dim] when ``cutoff`` is given.
    w_avg: [w_dim] the tracked mean w.
    psi: in [0, 1] (1: unchanged, 0: the mean); a concrete value outside raises ValueError.
    cutoff: None truncates every entry; an int in [0, num_ws] truncates only the first
      ``cutoff`` layers of W+ latents (StyleGAN's ``truncation_cutoff``: the coarse layers
      only; InterFaceGAN's StyleGAN settings truncate the first 8 of 18).
  """
  check_truncation_psi(psi)
  w = jnp.asarray(w)
  if cutoff is not None and w.ndim < 2:
    raise ValueError(f"truncation with a cutoff expects W+ latents [..., num_ws, w_dim], got "
                     f"shape {w.shape}.")
  w_avg = jnp.broadcast_to(w_avg, w.shape)
  truncated = w_avg + psi * (w - w_avg)
  if cutoff is None:
    return truncated
  cutoff = _check_cutoff(cutoff, w.shape[-2])
  layer = jnp.arange(w.shape[-2])[:, None]
  return jnp.where(layer < cutoff, truncated, w)


def broadcast_ws(w, num_ws: int):
  """w [..., w_dim] -> ws [..., num_ws, w_dim]: the same w for every synthesis layer (W)."""
  w = jnp.asarray(w)
  return jnp.broadcast_to(w[..., None, :], w.shape[:-1] + (num_ws, w.shape[-1]))


def expand_ws(ws, config: "StyleGANConfig"):
  """W+ latents [..., num_ws, w_dim] -> the per-layer layout [..., num_styles, w_dim]
  (`StyleGANConfig.style_layers`): each toRGB gets a copy of the w it reads. The synthesis
  gives the same image for both; editing entries of the per-layer layout can move a toRGB
  style without the conv that shares its w."""
  ws = jnp.asarray(ws)
  if ws.ndim < 2 or ws.shape[-2:] != (config.num_ws, config.w_dim):
    raise ValueError(f"expand_ws expects W+ latents [..., {config.num_ws}, {config.w_dim}], "
                     f"got {ws.shape}.")
  return ws[..., [i for _, i in config.style_layers], :]


def mix_styles(w1, w2, key, num_ws: int, prob: float):
  """Style mixing (Karras et al. 2019, sec. 3.1): per sample, with probability `prob` the
  layers from a cutoff drawn uniformly in [1, num_ws) on take w2, the others w1.

  Args:
    w1, w2: [B, w_dim].
    key: PRNG key of the cutoffs and the coin flips.
    num_ws: layers L.
    prob: mixing probability in [0, 1].

  Returns:
    ws [B, L, w_dim].
  """
  if num_ws < 2:
    raise ValueError(f"style mixing needs at least 2 layers of w, got num_ws={num_ws}.")
  cut_key, coin_key = jax.random.split(key)
  b = w1.shape[0]
  cutoff = jax.random.randint(cut_key, (b,), 1, num_ws)
  cutoff = jnp.where(jax.random.uniform(coin_key, (b,)) < prob, cutoff, num_ws)
  late = jnp.arange(num_ws)[None, :, None] >= cutoff[:, None, None]
  return jnp.where(late, w2[:, None], w1[:, None])


@dataclasses.dataclass(frozen=True)
class StyleGANConfig:
  """Architecture of `StyleGenerator` / `StyleDiscriminator`.

  Attributes:
    image_size: output side S (a power of two >= 8).
    channels: image channels (3 for RGB).
    z_dim: latent size of z.
    w_dim: size of the intermediate latent w.
    mapping_layers: dense layers of the mapping network.
    channel_base, channel_max: features at resolution r are min(channel_max, channel_base // r).
    mapping_lr_multiplier: learning-rate multiplier of the mapping network.
    w_avg_beta: w_avg <- w_avg + (1 - beta) (mean(w) - w_avg) at each training call.
    mbstd_group_size: group size of the minibatch-stddev layer (largest divisor of B used).
    style_mixing_prob: in training calls, the probability that a sample's layers from a
      random cutoff on take the w of a second random z (style-mixing regularisation, Karras
      et al. 2019 sec. 3.1; 0.9 in their FFHQ setting, 0 = off).
    instance_norm: normalise a modulated layer's input per sample and channel over H, W
      (zero mean, unit variance) before the style scales it, as StyleGAN's AdaIN does
      (Karras et al. 2019, eq. 1 and sec. 3: a style acts on one convolution only, as the
      next AdaIN resets the channel statistics). False (the default, StyleGAN2's
      demodulation, which normalises by expected statistics only, so per-channel magnitudes
      set by one style reach the following layers), True (every layer), or a tuple of W+
      layer indices in [0, num_ws) (the layers whose w is ``ws[:, i]``; e.g. ``(4, 5)`` for
      the 16x16 block's second conv and toRGB at image_size 16). A list is taken as a tuple
      (config files saved as JSON).
    synthesis_input: what the 4x4 block starts from. 'const' (StyleGAN2: a learned constant)
      or 'fourier' (`FourierInput`, after StyleGAN3, Karras et al. 2021: fixed random
      sinusoids whose translation is an affine function of the first w, so an object's
      position can move continuously with w instead of fading between fixed places).
  """
  image_size: int = 16
  channels: int = 3
  z_dim: int = 64
  w_dim: int = 64
  mapping_layers: int = 4
  channel_base: int = 1024
  channel_max: int = 128
  mapping_lr_multiplier: float = 0.01
  w_avg_beta: float = 0.995
  mbstd_group_size: int = 4
  style_mixing_prob: float = 0.0
  instance_norm: bool | tuple[int, ...] = False
  synthesis_input: str = "const"

  def __post_init__(self):
    s = self.image_size
    if not isinstance(s, int) or s < 8 or s & (s - 1):
      raise ValueError(f"StyleGANConfig.image_size must be a power of two >= 8, got {s!r}.")
    if self.channels not in (1, 3):
      raise ValueError(f"StyleGANConfig.channels must be 1 or 3, got {self.channels!r}.")
    for name in ("z_dim", "w_dim", "mapping_layers", "channel_base", "channel_max"):
      if int(getattr(self, name)) < 1:
        raise ValueError(f"StyleGANConfig.{name} must be >= 1, got {getattr(self, name)!r}.")
    if not 0.0 <= self.style_mixing_prob <= 1.0:
      raise ValueError(f"StyleGANConfig.style_mixing_prob must be in [0, 1], got "
                       f"{self.style_mixing_prob!r}.")
    inorm = self.instance_norm
    if isinstance(inorm, (bool, np.bool_)):
      object.__setattr__(self, "instance_norm", bool(inorm))
    elif (isinstance(inorm, (tuple, list)) and inorm
          and all(isinstance(i, (int, np.integer)) and not isinstance(i, (bool, np.bool_))
                  and 0 <= i < self.num_ws for i in inorm)):
      object.__setattr__(self, "instance_norm", tuple(sorted({int(i) for i in inorm})))
    else:
      raise ValueError(f"StyleGANConfig.instance_norm must be True, False or a non-empty "
                       f"tuple of W+ layer indices in [0, {self.num_ws}), got {inorm!r}.")
    if self.synthesis_input not in SYNTHESIS_INPUTS:
      raise ValueError(f"StyleGANConfig.synthesis_input must be one of {SYNTHESIS_INPUTS}, "
                       f"got {self.synthesis_input!r}.")

  def normalizes_layer(self, index: int) -> bool:
    """Whether the modulated layers taking ``ws[:, index]`` normalise their input."""
    inorm = self.instance_norm
    return inorm if isinstance(inorm, bool) else index in inorm

  @property
  def resolutions(self) -> tuple[int, ...]:
    return tuple(2 ** i for i in range(2, int(math.log2(self.image_size)) + 1))

  def features(self, res: int) -> int:
    return max(1, min(self.channel_max, self.channel_base // res))

  @property
  def num_ws(self) -> int:
    """Number of w vectors the synthesis consumes (conv layers + the last toRGB)."""
    return 2 * len(self.resolutions)

  @property
  def style_layers(self) -> tuple[tuple[str, int], ...]:
    """Every modulated layer in network order, as (name, W+ index of the w it reads).

    Each conv and each toRGB computes its own style s = A(w) (StyleGAN2 sec. 2.2). W+ has
    one w per conv plus the last toRGB; every other toRGB reads the w of the next block's
    first conv (as in StyleGAN2). Feeding the synthesis one w per entry of this list instead
    (``num_styles`` of them, `expand_ws`) separates those toRGB styles: the granularity of
    StyleSpace (Wu et al. 2021, "StyleSpace Analysis", sec. 3: a style per layer, the toRGB
    ones included)."""
    out = [("b4_conv1", 0), ("b4_torgb", 1)]
    layer = 1
    for res in self.resolutions[1:]:
      out += [(f"b{res}_conv0", layer), (f"b{res}_conv1", layer + 1),
              (f"b{res}_torgb", layer + 2)]
      layer += 2
    return tuple(out)

  @property
  def num_styles(self) -> int:
    """Number of modulated layers (convs and toRGBs): the per-layer latent layout."""
    return len(self.style_layers)

  @property
  def rgb_styles(self) -> tuple[int, ...]:
    """Indices of the toRGB layers in the per-layer layout (`style_layers`)."""
    return tuple(i for i, (name, _) in enumerate(self.style_layers) if name.endswith("torgb"))

  @property
  def noise_shapes(self) -> tuple[tuple[int, int], ...]:
    """(H, W) of each conv layer's noise input, in layer order."""
    shapes = [(4, 4)]
    for res in self.resolutions[1:]:
      shapes += [(res, res), (res, res)]
    return tuple(shapes)

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return (self.image_size, self.image_size, self.channels)


class MappingNetwork(nn.Module):
  config: StyleGANConfig

  @nn.compact
  def __call__(self, z):  # [B, z_dim] -> [B, w_dim]
    c = self.config
    x = z * jax.lax.rsqrt(jnp.mean(jnp.square(z), axis=-1, keepdims=True) + 1e-8)
    for i in range(c.mapping_layers):
      x = lrelu(EqualDense(c.w_dim, lr_multiplier=c.mapping_lr_multiplier, name=f"fc{i}")(x))
    return x


class FourierInput(nn.Module):
  """The synthesis input of StyleGAN3 (Karras et al. 2021, "Alias-Free Generative
  Adversarial Networks", sec. 3.2 and appendix F), translation only: ``channels`` sinusoids
  sin(2 pi (f_c . (p - t) + phi_c)) sampled at the pixel centres p of a size x size grid
  over the image ([-1/2, 1/2]^2), then mixed by a learned 1x1 linear layer.

  The frequencies f_c (uniform in the disc of radius ``bandwidth`` cycles per image) and the
  phases phi_c (uniform in [0, 1)) are drawn once at init and kept in ``"buffers"``. The
  translation t = A(w) is an equalised-lr affine map of w initialised to zero (t = 0 at
  init, as StyleGAN3 initialises its input transform to the identity), so the whole input
  pattern can shift continuously with w. A learned constant (StyleGAN2) has fixed places:
  moving an object between them can only fade one place out and another in.
  """
  channels: int
  size: int = 4
  bandwidth: float = 2.0

  @nn.compact
  def __call__(self, w):  # [B, w_dim] -> [B, size, size, channels]
    c = self.channels

    def draw_freqs():
      k_r, k_a = jax.random.split(self.make_rng("params"))
      radius = self.bandwidth * jnp.sqrt(jax.random.uniform(k_r, (c,)))
      angle = 2 * jnp.pi * jax.random.uniform(k_a, (c,))
      return jnp.stack([radius * jnp.cos(angle), radius * jnp.sin(angle)], -1)  # [c, 2]

    freqs = self.variable("buffers", "input_freqs", draw_freqs).value
    phases = self.variable("buffers", "input_phases",
                           lambda: jax.random.uniform(self.make_rng("params"), (c,))).value
    a = self.param("translation_kernel", nn.initializers.zeros, (w.shape[-1], 2))
    t = w @ (a / math.sqrt(w.shape[-1]))  # [B, 2] in image widths (x, y)
    grid = (jnp.arange(self.size, dtype=jnp.float32) + 0.5) / self.size - 0.5
    p = jnp.stack(jnp.meshgrid(grid, grid, indexing="xy"), -1)  # [S, S, 2] (x, y)
    arg = (p[None] - t[:, None, None]) @ freqs.T + phases[None, None, None]  # [B, S, S, c]
    x = jnp.sin(2 * jnp.pi * arg)
    mix = self.param("mix", nn.initializers.normal(1.0), (c, c))
    return x @ (mix / math.sqrt(c))


class SynthesisNetwork(nn.Module):
  config: StyleGANConfig

  @nn.compact
  def __call__(self, ws, noise=None, noise_mode: str = "const"):
    """ws [B, num_ws, w_dim] -> images [B, S, S, C] (unbounded; ~[-1, 1] after training).

    Args:
      ws: one w per W+ layer [B, num_ws, w_dim], or one per modulated layer
        [B, num_styles, w_dim] (`StyleGANConfig.style_layers`, `expand_ws`: the toRGB
        styles apart from the convs that share their w in W+).
      noise: optional sequence of per-layer noise maps, shapes `config.noise_shapes` as
        [B or 1, H, W, 1] (or [H, W]); overrides `noise_mode`.
      noise_mode: 'const' (fixed buffers drawn at init), 'random' (rng 'noise') or 'none'.
    """
    c = self.config
    if noise_mode not in NOISE_MODES:
      raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}.")
    if ws.ndim != 3 or ws.shape[1:] not in ((c.num_ws, c.w_dim), (c.num_styles, c.w_dim)):
      raise ValueError(f"synthesis expects ws [B, {c.num_ws}, {c.w_dim}] (W+) or "
                       f"[B, {c.num_styles}, {c.w_dim}] (one per modulated layer), got "
                       f"{ws.shape}.")
    if ws.shape[1] == c.num_ws:
      ws = expand_ws(ws, c)
    if noise is not None and len(noise) != len(c.noise_shapes):
      raise ValueError(f"synthesis expects {len(c.noise_shapes)} noise maps of shapes "
                       f"{c.noise_shapes}, got {len(noise)}.")
    b = ws.shape[0]

    def layer_noise(i):
      hw = c.noise_shapes[i]
      if noise is not None:
        n = jnp.asarray(noise[i])
        return n.reshape(n.shape[:-2] + hw + (1,)) if n.shape[-2:] == hw else n
      if noise_mode == "none":
        return None
      if noise_mode == "random":
        return jax.random.normal(self.make_rng("noise"), (b,) + hw + (1,))
      const = self.variable("buffers", f"noise_const{i}",
                            lambda: jax.random.normal(self.make_rng("params"), hw + (1,)))
      return const.value[None]

    f4 = c.features(4)
    if c.synthesis_input == "fourier":
      x = FourierInput(f4, name="input")(ws[:, 0])
    else:
      const = self.param("const", nn.initializers.normal(1.0), (4, 4, f4))
      x = jnp.broadcast_to(const[None], (b, 4, 4, f4))
    img = None
    # one pass over `style_layers`: style s reads ws[:, s]; the W+ index i of its w also
    # numbers its noise input (convs) and its `instance_norm` entry
    for s, (name, i) in enumerate(c.style_layers):
      block, kind = name.split("_")
      if kind == "torgb":
        rgb = ToRGB(c.channels, instance_norm=c.normalizes_layer(i), name=name)(x, ws[:, s])
        img = rgb if img is None else upsample2x(img) + rgb
      else:
        x = ModulatedConv(c.features(int(block[1:])), up=kind == "conv0",
                          instance_norm=c.normalizes_layer(i), name=name)(
                              x, ws[:, s], layer_noise(i))
    return img


class StyleGenerator(nn.Module):
  """z -> w -> image. Variables: 'params' and 'buffers' (w_avg, constant noise maps).

  Methods (use with ``model.apply(variables, ..., method=...)``):
    ``__call__(z, truncation_psi=1., noise_mode='const', train=False,
    truncation_cutoff=None)`` -> [B, S, S, C] (cutoff: truncate the first that many layers
    only, `truncate`; None: every layer);
    ``mapping(z, truncation_psi=1., train=False)`` -> w [B, w_dim];
    ``synthesis(ws, noise=None, noise_mode='const')`` -> [B, S, S, C].
  With ``train=True`` the mapping updates ``w_avg`` (apply with ``mutable=['buffers']``), the
  noise is random (rng 'noise') and, if ``config.style_mixing_prob > 0``, `mix_styles` mixes
  in the w of a second z drawn from the same rng.
  """
  config: StyleGANConfig

  def setup(self):
    c = self.config
    self.mapping_net = MappingNetwork(c)
    self.synthesis_net = SynthesisNetwork(c)
    self.w_avg = self.variable("buffers", "w_avg", jnp.zeros, (c.w_dim,), jnp.float32)

  @property
  def z_dim(self) -> int:
    return self.config.z_dim

  def mapping(self, z, truncation_psi=1.0, train: bool = False):
    c = self.config
    if z.ndim != 2 or z.shape[-1] != c.z_dim:
      raise ValueError(f"StyleGenerator expects z [B, {c.z_dim}], got shape {z.shape}.")
    check_truncation_psi(truncation_psi)
    w = self.mapping_net(z)  # [B, w_dim]
    if train and not self.is_initializing():
      batch_mean = jnp.mean(jax.lax.stop_gradient(w), axis=0)
      self.w_avg.value = batch_mean + c.w_avg_beta * (self.w_avg.value - batch_mean)
    if isinstance(truncation_psi, numbers.Number) and truncation_psi == 1:
      return w
    return truncate(w, self.w_avg.value, truncation_psi)

  def synthesis(self, ws, noise=None, noise_mode: str = "const"):
    return self.synthesis_net(ws, noise, noise_mode)

  def __call__(self, z, truncation_psi=1.0, noise_mode: str | None = None,
               train: bool = False, truncation_cutoff: int | None = None):
    c = self.config
    # With a cutoff, the layers' w are built untruncated and truncated per layer afterwards
    # (the same values as truncating before mixing: truncation is affine and per layer).
    map_psi = truncation_psi if truncation_cutoff is None else 1.0
    w = self.mapping(z, map_psi, train)
    ws = broadcast_ws(w, c.num_ws)
    if train and c.style_mixing_prob > 0 and not self.is_initializing():
      z_key, mix_key = jax.random.split(self.make_rng("noise"))
      w2 = self.mapping(jax.random.normal(z_key, z.shape, z.dtype), map_psi)
      ws = mix_styles(w, w2, mix_key, c.num_ws, c.style_mixing_prob)
    if truncation_cutoff is not None:
      ws = truncate(ws, self.w_avg.value, truncation_psi, truncation_cutoff)
    mode = noise_mode or ("random" if train else "const")
    return self.synthesis(ws, None, mode)


def _mbstd(x, group_size: int):
  """Minibatch standard deviation (Karras et al. 2018, sec. 3): appends one channel holding
  the mean over features of the std over each group of samples."""
  b, h, w, c = x.shape
  g = max(d for d in range(1, min(group_size, b) + 1) if b % d == 0)
  y = x.reshape(g, b // g, h, w, c)
  y = jnp.sqrt(jnp.var(y, axis=0) + 1e-8)  # [B/g, H, W, C]
  y = jnp.mean(y, axis=(1, 2, 3))  # [B/g]
  y = jnp.tile(y, g)[:, None, None, None]  # sample n belongs to group n % (B/g)
  return jnp.concatenate([x, jnp.broadcast_to(y, (b, h, w, 1))], axis=-1)


class StyleDiscriminator(nn.Module):
  """StyleGAN2 residual discriminator: images [B, S, S, C] -> logits [B]."""
  config: StyleGANConfig

  @nn.compact
  def __call__(self, images, train: bool = False):
    del train  # no train-only behaviour; the argument keeps one interface for all GANs
    c = self.config
    if images.ndim != 4 or images.shape[1:] != c.image_shape:
      raise ValueError(f"StyleDiscriminator expects images [B, {', '.join(map(str, c.image_shape))}]"
                       f", got shape {images.shape}.")
    res_list = c.resolutions[::-1]  # S, ..., 4
    x = lrelu(EqualConv(c.features(res_list[0]), 1, name="fromrgb")(images))
    for res in res_list[:-1]:
      f_out = c.features(res // 2)
      skip = EqualConv(f_out, 1, use_bias=False, name=f"b{res}_skip")(downsample2x(x))
      y = lrelu(EqualConv(c.features(res), name=f"b{res}_conv0")(x))
      y = lrelu(EqualConv(f_out, name=f"b{res}_conv1")(downsample2x(y)))
      x = (skip + y) / _SQRT2
    x = _mbstd(x, c.mbstd_group_size)
    x = lrelu(EqualConv(c.features(4), name="b4_conv")(x))
    x = lrelu(EqualDense(c.features(4), name="b4_fc")(x.reshape(x.shape[0], -1)))
    return EqualDense(1, name="b4_out")(x)[:, 0]


def stylegan_config_from_dict(d: dict, image_shape: Sequence[int]) -> StyleGANConfig:
  """A `StyleGANConfig` from a (config-file) dict, image size/channels from the data."""
  d = dict(d)
  h, w, ch = image_shape
  if h != w:
    raise ValueError(f"StyleGenerator makes square images, the data is {h}x{w}.")
  for k, v in (("image_size", h), ("channels", ch)):
    if d.setdefault(k, v) != v:
      raise ValueError(f"model.{k}={d[k]} does not match the data's images of shape "
                       f"{tuple(image_shape)}.")
  return StyleGANConfig(**d)
