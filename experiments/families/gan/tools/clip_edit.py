"""Text-driven edits of a style-based generator with a trained CLIP (StyleCLIP, Patashnik et al.
2021): latent optimisation (sec. 4) or global directions in style space (sec. 6).

  python -m experiments.main clip-edit --workdir GAN --clip CLIPDIR --source "a blue square"
      --target "a red square" --method optimise|global [--seeds 0-7] [--ensemble] [--resize]
      [--steps 100 --learning-rate 0.1 --l2 0.008 --space wplus|w]
      [--strength 3 --threshold 0.1 --num-channel-images 64]
  python -m experiments.main clip-edit --workdir GAN --clip CLIPDIR --sweep colour
      --method optimise|global [--num-latents 256]

``--sweep colour`` measures every colour edit (4 source colours x 3 targets) on
``--num-latents`` sampled latents per source colour whose colour the workdir's attribute
classifier reads with confidence >= 0.9; the prompts are the colour words, ensembled over the
CLIP's training captions that contain them. The attribute classifier, not CLIP, judges.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import re
import time

import jax
import jax.numpy as jnp
import numpy as np

from experiments.families.gan.trained import (CONFIDENT, Trained, output_path, tool_command,
                                              write_output)
from experiments.families.gan.tools.clip_guide import (FrozenCLIP, _check_prompt,
                                                       caption_matches, clip_cosines,
                                                       clip_images_fn, load_clip, number,
                                                       prompt_features)
from jaxgen import gan
from jaxgen.nn.stylegan import broadcast_ws

__all__ = ["COMMAND", "FrozenCLIP", "caption_matches", "clip_edit", "clip_images_fn",
           "colour_sweep", "load_clip", "number", "prompt_features"]

# --------------------------------------------------------------------- the two methods


def _synth(t: Trained):
  return _synth_of(t.generator)


@functools.lru_cache(maxsize=None)
def _synth_of(generator):
  def synth(variables, latents):
    ws = latents if latents.ndim == 3 else broadcast_ws(latents, generator.config.num_ws)
    return jnp.clip(generator.apply(variables, ws, method="synthesis"), -1.0, 1.0)
  return synth


@functools.lru_cache(maxsize=None)
def _optimise_fns(generator, model, image_size: int, num_steps: int, learning_rate: float,
                  l2_weight: float):
  """(init, step, finish) of `gan.make_latent_optimizer_steps`, each jitted and vmapped over
  latents and prompts, the variables of G and CLIP their first two arguments."""
  synth = _synth_of(generator)

  def pieces(variables, params):
    def feats(images):
      images = gan.resize_for_clip(jnp.clip(images, -1.0, 1.0), image_size)
      return model.apply({"params": params}, images, method="encode_image")
    return gan.make_latent_optimizer_steps(lambda lat: synth(variables, lat), feats,
                                           num_steps=num_steps, learning_rate=learning_rate,
                                           l2_weight=l2_weight)

  init = jax.jit(lambda v, p, src, txt: jax.vmap(pieces(v, p)[0])(src, txt))
  step = jax.jit(lambda v, p, carry: jax.vmap(pieces(v, p)[1])(carry), donate_argnums=2)
  finish = jax.jit(lambda v, p, carry: jax.vmap(pieces(v, p)[2])(carry))
  return init, step, finish


def make_optimise(t: Trained, clip: FrozenCLIP, *, num_steps: int, learning_rate: float,
                  l2_weight: float):
  """(sources [B, ...], text features [B, E]) -> `gan.LatentOptimizationResult` batched:
  `gan.make_latent_optimizer_steps` vmapped over latents and prompts, its jitted step driven
  by a Python loop (on XLA:CPU several times faster than the same steps in one `lax.scan`;
  the same latents). Compiled once per generator, CLIP and settings."""
  init, step, finish = _optimise_fns(t.generator, clip.model, clip.image_size, num_steps,
                                     float(learning_rate), float(l2_weight))

  def run(sources, texts, steps: int | None = None):
    """`steps` < num_steps stops early (e.g. 1: compiles every piece for these shapes)."""
    carry = init(t.variables, clip.params, jnp.asarray(sources), jnp.asarray(texts))
    losses = []
    for _ in range(num_steps if steps is None else steps):
      carry, loss = step(t.variables, clip.params, carry)
      losses.append(loss)
    return finish(t.variables, clip.params, carry).replace(loss=jnp.stack(losses, -1))
  return run


@functools.lru_cache(maxsize=None)
def _codes_fn(generator):
  return jax.jit(lambda v, w: gan.style_codes(generator, v, w))


def channel_directions(t: Trained, clip: FrozenCLIP, *, num_images: int = 64,
                       num_stats: int = 2000, step: float = 1.0, seed: int = 0) -> dict:
  """StyleCLIP's Delta i_c of every style channel of the generator under this CLIP
  (`gan.channel_image_directions` on `num_images` sampled latents; the channels' std from
  `num_stats` others), cached in ``WORKDIR/edits/styleclip_channels_*.npz``.

  Returns:
    {"directions": [S, E], "std": [S], "seconds": time to compute them (0 when cached)}.
  """
  name = ("styleclip_channels_clip"
          + hashlib.sha1(os.path.abspath(clip.workdir).encode()).hexdigest()[:8] +
          f"_step{clip.step}_n{num_images}_step{step:g}")
  path = output_path(t, name, seed)[:-4] + ".npz"
  if os.path.isfile(path):
    d = np.load(path)
    return {"directions": d["directions"], "std": d["std"], "seconds": 0.0}
  key = jax.random.key(seed)
  z = jax.random.normal(jax.random.fold_in(key, 1), (num_stats + num_images, t.z_dim))
  w = np.asarray(t.latents(z, "w"))
  codes = _codes_fn(t.generator)
  styles = np.concatenate([np.asarray(codes(t.variables, w[i:i + 500]))
                           for i in range(0, len(w), 500)])
  std = styles[:num_stats].std(0)
  feats = clip_images_fn(clip)

  def run(variables, params, styles, std):
    def features(s):
      x = jnp.clip(gan.synthesis_from_styles(t.generator, variables, s), -1.0, 1.0)
      return feats(params, x)
    return gan.channel_image_directions(features, styles, std, step=step)
  start = time.perf_counter()
  dirs = np.asarray(jax.jit(run)(t.variables, clip.params, jnp.asarray(styles[num_stats:]),
                                 jnp.asarray(std)))
  seconds = time.perf_counter() - start
  np.savez_compressed(path, directions=dirs, std=std)
  return {"directions": dirs, "std": std, "seconds": seconds}


@functools.lru_cache(maxsize=None)
def _global_fn(generator):
  def run(variables, styles, delta, strength):
    return jnp.clip(gan.synthesis_from_styles(generator, variables,
                                              styles + strength * delta[None]), -1.0, 1.0)
  return jax.jit(run)


def make_global(t: Trained):
  """jit(styles [B, S], delta [S], strength) -> images: s + alpha Delta s drawn."""
  if t.generator.config.synthesis_input != "const":
    raise ValueError("global directions here edit the styles of a generator with a constant "
                     "input; this workdir has a Fourier input.")
  fn = _global_fn(t.generator)
  return lambda styles, delta, strength: fn(t.variables, styles, delta, strength)


@dataclasses.dataclass
class EditSettings:
  """The settings of both methods (flags of the same names)."""
  method: str = "optimise"
  num_steps: int = 100
  learning_rate: float = 0.1
  l2_weight: float = 0.008
  space: str = "wplus"
  strength: float = 3.0
  threshold: float = 0.1
  num_channel_images: int = 64
  perturbation: float = 1.0

  def __post_init__(self):
    if self.method not in ("optimise", "global"):
      raise ValueError(f"method must be 'optimise' or 'global', got {self.method!r}.")
    if self.space not in ("w", "wplus"):
      raise ValueError(f"space must be 'w' or 'wplus', got {self.space!r}.")
    self.strength = gan.check_strength(self.strength)


def run_edits(t: Trained, clip: FrozenCLIP, w, source_feats, target_feats,
              settings: EditSettings, *, seed: int = 0, batch_size: int = 256) -> dict:
  """Edits latents w [N, w_dim] from one source text to one target text (features [E] each)
  with `settings.method`.

  Returns:
    {"before", "after": images [N, H, W, C], "w_distance": ||w - w_s|| [N] (optimise; the
    Frobenius norm in W+), "s_distance": ||s - s_s|| [N], "seconds_per_edit" (global: the
    direction of the text pair, computed once, and every edited image, over N),
    "compile_seconds", "setup_seconds" (global: the channel directions, once per generator
    and CLIP; 0 when cached), "channels" (global: channels kept by the threshold),
    "relevance_max" (global: the largest |R_c|)}.
  """
  w = np.asarray(w, np.float32)
  n = len(w)
  source_feats = np.asarray(source_feats, np.float32)
  target_feats = np.asarray(target_feats, np.float32)
  codes = _codes_fn(t.generator)
  s_before = np.concatenate([np.asarray(codes(t.variables, w[i:i + batch_size]))
                             for i in range(0, n, batch_size)])
  out = {"before": t.images(w, "w"), "compile_seconds": 0.0, "setup_seconds": 0.0}
  if settings.method == "optimise":
    latents = w if settings.space == "w" else np.asarray(broadcast_ws(w, t.generator.config.num_ws))
    fn = make_optimise(t, clip, num_steps=settings.num_steps,
                       learning_rate=settings.learning_rate, l2_weight=settings.l2_weight)
    b = min(batch_size, n)
    lat_p = np.concatenate([latents, np.repeat(latents[-1:], (-n) % b, 0)])
    tgt_p = np.broadcast_to(target_feats, (len(lat_p),) + target_feats.shape)
    start = time.perf_counter()
    jax.block_until_ready(fn(lat_p[:b], tgt_p[:b], steps=1).latent)    # compiles
    out["compile_seconds"] = time.perf_counter() - start
    results, start = [], time.perf_counter()
    for i in range(0, len(lat_p), b):
      results.append(np.asarray(fn(lat_p[i:i + b], tgt_p[i:i + b]).latent))
    out["seconds_per_edit"] = (time.perf_counter() - start) / len(lat_p)
    edited = np.concatenate(results)[:n]
    out["after"] = t.images(edited, "w")
    out["w_distance"] = np.sqrt(((edited - latents) ** 2).reshape(n, -1).sum(-1))
    s_after = np.concatenate([np.asarray(codes(t.variables, edited[i:i + batch_size]))
                              for i in range(0, n, batch_size)])
    out["s_distance"] = np.linalg.norm(s_after - s_before, axis=-1)
    return out
  apply = make_global(t)
  chan = channel_directions(t, clip, num_images=settings.num_channel_images,
                            step=settings.perturbation, seed=seed)
  out["setup_seconds"] = chan["seconds"]
  rel = gan.channel_relevance(chan["directions"], gan.text_direction(source_feats, target_feats))
  peak = float(jnp.max(jnp.abs(rel)))
  if peak < settings.threshold:
    raise ValueError(f"no style channel's relevance reaches the threshold beta="
                     f"{settings.threshold:g} (the largest |R_c| is {peak:.3f}); lower "
                     "--threshold.")
  b = min(batch_size, n)
  s_p = np.concatenate([s_before, np.repeat(s_before[-1:], (-n) % b, 0)])
  start = time.perf_counter()
  jax.block_until_ready(apply(s_p[:b], jnp.zeros(s_p.shape[1]), settings.strength))
  out["compile_seconds"] = time.perf_counter() - start
  start = time.perf_counter()
  rel = gan.channel_relevance(chan["directions"], gan.text_direction(source_feats, target_feats))
  delta = np.asarray(gan.global_direction(rel, chan["std"], settings.threshold))
  after = [np.asarray(apply(s_p[i:i + b], delta, settings.strength))
           for i in range(0, len(s_p), b)]
  out["seconds_per_edit"] = (time.perf_counter() - start) / n
  out["after"] = np.concatenate(after)[:n]
  out["s_distance"] = np.linalg.norm(
      np.asarray(gan.apply_global_direction(s_before, delta, settings.strength)) - s_before,
      axis=-1)
  out["channels"] = int(np.sum(delta != 0))
  out["relevance_max"] = peak
  return out


# --------------------------------------------------------------------- measurements


def readings(t: Trained, images) -> dict:
  """{attribute: the classifier's class index [N]} and {attribute + "_p": its probability}."""
  logits = t.classifier_logits(images)
  out = {}
  for k, v in logits.items():
    p = np.asarray(jax.nn.softmax(jnp.asarray(v), -1))
    out[k], out[k + "_p"] = p.argmax(-1), p.max(-1)
  return out


def summarise(t: Trained, clip: FrozenCLIP, res: dict, target_feats, *, target_colour=None,
              source_colour=None) -> dict:
  """The measurements of one batch of edits (`run_edits`' output): classifier readings
  before and after, the share reaching `target_colour` (an index) and keeping the shape, the
  CLIP-score gain towards the target text, the distances and times."""
  before, after = readings(t, res["before"]), readings(t, res["after"])
  gain = clip_cosines(clip, res["after"], target_feats) - clip_cosines(clip, res["before"],
                                                                      target_feats)
  rec = {"num": int(len(res["before"])),
         "shape_kept": float(np.mean(after["shape"] == before["shape"])) if "shape" in after
         else None,
         "clip_score_gain": float(gain.mean()),
         "s_distance": float(np.mean(res["s_distance"])),
         "w_distance": float(np.mean(res["w_distance"])) if "w_distance" in res else None,
         "seconds_per_edit": res["seconds_per_edit"], "compile_seconds": res["compile_seconds"],
         "setup_seconds": res["setup_seconds"]}
  if "color" in after:
    if target_colour is not None:
      rec["target_reached"] = float(np.mean(after["color"] == target_colour))
    if source_colour is not None:
      rec["source_colour_left"] = float(np.mean(after["color"] != source_colour))
    rec["position_kept"] = float(np.mean(after["position"] == before["position"]))
    rec["size_kept"] = float(np.mean(after["size"] == before["size"]))
  for k in ("channels", "relevance_max"):
    if k in res:
      rec[k] = res[k]
  return rec


def _settings_record(s: EditSettings) -> dict:
  keys = (("num_steps", "learning_rate", "l2_weight", "space") if s.method == "optimise" else
          ("strength", "threshold", "num_channel_images", "perturbation"))
  return {"method": s.method, **{k: getattr(s, k) for k in keys}}


def clip_edit(t: Trained, clip: FrozenCLIP, source: str, target: str, *, seeds,
              settings: EditSettings, ensemble: bool = False, seed: int = 0) -> str:
  """Edits the images of `seeds` from the text `source` to the text `target`.

  Returns:
    The path of ``WORKDIR/edits/clip_edit_<method>_<source>_to_<target>.png`` (before above,
    after below) with its JSON: the settings, each image's classifier readings before and
    after, the CLIP-score gain, distances and times.
  """
  if not t.style:
    raise ValueError("clip-edit needs a style-based generator (a W space).")
  src, tgt = (prompt_features(clip, [p], ensemble=ensemble, flag=f)[0]
              for p, f in ((source, "--source"), (target, "--target")))
  w = t.latents(gan.latents_from_seeds(seeds, t.z_dim), "w")
  res = run_edits(t, clip, w, src, tgt, settings, seed=seed)
  rec = {"source": source, "target": target, "ensemble": ensemble, "seeds": list(seeds),
         "clip": clip.workdir, "clip_step": clip.step, "resize": clip.resize,
         **_settings_record(settings), **summarise(t, clip, res, tgt)}
  names = t.attributes
  for when, images in (("before", res["before"]), ("after", res["after"])):
    r = readings(t, images)
    rec[when] = {k: [names[k][i] for i in r[k]] for k in names if k in r}
  slug = lambda p: re.sub(r"[^a-z0-9]+", "-", p.lower()).strip("-")[:40]
  path = output_path(t, f"clip_edit_{settings.method}_{slug(source)}_to_{slug(target)}", seed)
  n = len(seeds)
  return write_output(path, np.concatenate([res["before"], res["after"]]), n, rec, t,
                      "clip-edit")


def colour_sweep(t: Trained, clip: FrozenCLIP, settings: EditSettings, *,
                 num_latents: int = 256, seed: int = 0, show: int = 8,
                 confident_shape: bool = False) -> str:
  """Every colour edit: for each source colour, `num_latents` sampled latents whose colour
  the attribute classifier reads with P >= 0.9 (drawn from ``key(seed)``; with
  `confident_shape` their shape too), edited to each other colour; prompts are the colour
  words ensembled over the CLIP's captions. As a control, the optimisation also edits each
  source towards its own colour (an edit that should change nothing): its shape / position /
  size kept are the floor the colour edits' figures are read against.

  Returns:
    The path of ``clip_edit_<method>_colours.png`` (per edit, `show` images before and after)
    and its JSON: one record per (source, target) pair, the means over the pairs, the
    control's means and the classifier's mean shape confidence on the sampled images.
  """
  colours = t.attributes.get("color")
  if colours is None:
    raise ValueError("the colour sweep needs a generator of the shapes data (a colour "
                     "attribute).")
  feats = prompt_features(clip, list(colours), ensemble=True)
  key = jax.random.key(seed)
  pools, drawn, batch, shape_p = {c: [] for c in range(len(colours))}, 0, 4096, []
  while min(len(v) for v in pools.values()) < num_latents and drawn < 200_000:
    z = jax.random.normal(jax.random.fold_in(key, drawn), (batch, t.z_dim))
    w = np.asarray(t.latents(z, "w"))
    r = readings(t, t.images(w, "w"))
    keep = r["color_p"] >= CONFIDENT
    if "shape" in r:
      shape_p.append(r["shape_p"])
      keep &= (r["shape_p"] >= CONFIDENT) | (not confident_shape)
    for c in pools:
      pools[c].extend(w[(r["color"] == c) & keep])
    drawn += batch
  short = {colours[c]: len(v) for c, v in pools.items() if len(v) < num_latents}
  if short:
    raise ValueError(f"fewer than {num_latents} confident samples of {short} in {drawn} draws.")
  pairs, grid = [], []
  for c_src in range(len(colours)):
    w = np.stack(pools[c_src][:num_latents])
    for c_tgt in range(len(colours)):
      if c_tgt == c_src:
        continue
      res = run_edits(t, clip, w, feats[c_src], feats[c_tgt], settings, seed=seed)
      pairs.append({"source": colours[c_src], "target": colours[c_tgt],
                    **summarise(t, clip, res, feats[c_tgt], target_colour=c_tgt,
                                source_colour=c_src)})
      grid += [res["before"][:show], res["after"][:show]]
      print(pairs[-1])
  control = []  # a global direction between a text and itself is zero: nothing to measure
  for c in range(len(colours)) if settings.method == "optimise" else ():
    res = run_edits(t, clip, np.stack(pools[c][:num_latents]), feats[c], feats[c], settings,
                    seed=seed)
    control.append(summarise(t, clip, res, feats[c], target_colour=c))
  keys = ("target_reached", "shape_kept", "clip_score_gain", "w_distance", "s_distance",
          "seconds_per_edit", "position_kept", "size_kept", "source_colour_left")
  mean = {k: float(np.mean([p[k] for p in pairs])) for k in keys if pairs[0].get(k) is not None}
  rec = {"sweep": "colour", "num_latents": num_latents, "clip": clip.workdir,
         "clip_step": clip.step, "resize": clip.resize, **_settings_record(settings),
         "confident_shape": confident_shape,
         "shape_confidence_mean": float(np.mean(np.concatenate(shape_p))) if shape_p else None,
         "shape_confidence_share_confident": (float(np.mean(np.concatenate(shape_p) >= CONFIDENT))
                                              if shape_p else None),
         "mean": mean,
         "control_same_colour": {k: float(np.mean([c[k] for c in control]))
                                 for k in ("target_reached", "shape_kept", "position_kept",
                                           "size_kept") if control[0].get(k) is not None}
                                if control else None,
         "compile_seconds": pairs[0]["compile_seconds"],
         "setup_seconds": max(p["setup_seconds"] for p in pairs), "pairs": pairs}
  name = f"clip_edit_{settings.method}_colours" + ("_confident_shape" if confident_shape else "")
  path = output_path(t, name, seed)
  return write_output(path, np.concatenate(grid), show, rec, t, "clip-edit")


# --------------------------------------------------------------------- the command


def add_clip_arguments(p) -> None:
  """The flags clip-edit and clip-generate share."""
  p.add_argument("--clip", required=True, help="a trained clip workdir")
  p.add_argument("--resize", action="store_true",
                 help="resize the generator's images to the CLIP's image size")
  p.add_argument("--ensemble", action="store_true",
                 help="average each prompt's feature over the CLIP's training captions that "
                      "contain its words")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--steps", type=int, default=100)
  p.add_argument("--learning-rate", type=float, default=0.1)
  p.add_argument("--space", choices=("w", "wplus"), default="wplus")


def add_arguments(p) -> None:
  add_clip_arguments(p)
  p.add_argument("--source", default=None, help="the text describing the images now")
  p.add_argument("--target", default=None, help="the text describing the edit's result")
  p.add_argument("--method", choices=("optimise", "global"), default="optimise")
  p.add_argument("--seeds", default="0-7")
  p.add_argument("--sweep", choices=("colour",), default=None,
                 help="measure every colour edit instead of one text pair")
  p.add_argument("--num-latents", type=int, default=256)
  p.add_argument("--confident-shape", action="store_true",
                 help="sweep sources whose shape the classifier also reads with P >= 0.9")
  p.add_argument("--l2", type=float, default=0.008, help="lambda_L2 of the optimisation")
  p.add_argument("--strength", type=number, default=3.0, help="alpha of a global direction")
  p.add_argument("--threshold", type=float, default=0.1, help="beta of a global direction")
  p.add_argument("--num-channel-images", type=int, default=64)
  p.add_argument("--perturbation", type=float, default=1.0,
                 help="channel perturbation, in stds, of the relevance computation")


def settings_from_args(a) -> EditSettings:
  return EditSettings(method=getattr(a, "method", "optimise"), num_steps=a.steps,
                      learning_rate=a.learning_rate, l2_weight=getattr(a, "l2", 0.0),
                      space=a.space, strength=getattr(a, "strength", 3.0),
                      threshold=getattr(a, "threshold", 0.1),
                      num_channel_images=getattr(a, "num_channel_images", 64),
                      perturbation=getattr(a, "perturbation", 1.0))


def run_tool(t: Trained, a) -> str:
  settings = settings_from_args(a)
  if not t.style:
    raise ValueError("clip-edit needs a style-based generator (a W space).")
  if a.sweep is None and (a.source is None or a.target is None):
    raise ValueError("give --source and --target texts (or --sweep colour).")
  if a.sweep is None:
    _check_prompt(a.source, "--source")
    _check_prompt(a.target, "--target")
  clip = load_clip(a.clip, t.generator.config.image_shape, resize=a.resize)
  if a.sweep == "colour":
    return colour_sweep(t, clip, settings, num_latents=a.num_latents, seed=a.seed,
                        confident_shape=a.confident_shape)
  return clip_edit(t, clip, a.source, a.target, seeds=gan.parse_seeds(a.seeds),
                   settings=settings, ensemble=a.ensemble, seed=a.seed)


COMMAND = tool_command("edit generated images towards a text with CLIP (StyleCLIP: "
                       "optimisation or global directions)", add_arguments, run_tool)
