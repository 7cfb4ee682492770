"""Text to image with a style-based generator and a trained CLIP: the generator's latent
optimised for a prompt alone from the mean w, with restarts (StyleCLIP's optimisation without a
source image, Patashnik et al. 2021 sec. 4; the lecture's "image generation from text").

  python -m experiments.main clip-generate --workdir GAN --clip CLIPDIR --prompt "a red square"
      [--prompt ...] [--num 4] [--restarts 4] [--steps 100] [--space w|wplus] [--ensemble]
  python -m experiments.main clip-generate --workdir GAN --clip CLIPDIR --colour-shape --ensemble

``--colour-shape`` takes the twelve prompts "a <colour> <shape>". Every image is judged by the
workdir's attribute classifier on the attributes its prompt names (shape, colour, size,
position words).
"""
from __future__ import annotations

import re
import time

import jax
import numpy as np

from experiments.families.gan.tools.clip_edit import (_check_prompt, add_clip_arguments,
                                                      clip_cosines, load_clip, make_optimise,
                                                      prompt_features, readings)
from experiments.families.gan.trained import Trained, output_path, tool_command, write_output
from jaxgen import gan
from jaxgen.nn.stylegan import broadcast_ws

__all__ = ["COMMAND", "clip_generate", "named_attributes"]


def named_attributes(prompt: str, attributes: dict) -> dict:
  """{attribute: value index} of every attribute value `prompt` names as whole words (the
  longest value first, so "top left" is not read as "left")."""
  text = " " + " ".join(re.findall(r"[a-z]+", prompt.lower())) + " "
  out = {}
  for name, values in attributes.items():
    for i in sorted(range(len(values)), key=lambda i: -len(values[i])):
      if f" {values[i]} " in text:
        out[name] = i
        text = text.replace(f" {values[i]} ", " ")
        break
  return out


def clip_generate(t: Trained, clip, prompts, *, num: int = 1, restarts: int = 4,
                  num_steps: int = 100, learning_rate: float = 0.1, space: str = "w",
                  psi: float = 0.7, ensemble: bool = False, seed: int = 0) -> str:
  """`num` images per prompt, each the best of `restarts` optimisations for the prompt alone
  (`gan.make_text_to_image`): the first start the mean w, the others truncated (`psi`)
  random ws drawn from ``fold_in(key(seed), image index)``.

  Returns:
    The path of ``WORKDIR/edits/clip_generate_*.png`` (one row per prompt) and its JSON: per
    prompt the classifier's readings of the named attributes, the share of images read as
    prompted, the CLIP score, and the seconds per image.
  """
  if not t.style:
    raise ValueError("clip-generate needs a style-based generator (a W space).")
  if not isinstance(restarts, int) or restarts < 1 or not isinstance(num, int) or num < 1:
    raise ValueError(f"--restarts and --num must be ints >= 1, got {restarts!r}, {num!r}.")
  if space not in ("w", "wplus"):
    raise ValueError(f"space must be 'w' or 'wplus', got {space!r}.")
  feats = prompt_features(clip, prompts, ensemble=ensemble, flag="--prompt")
  c = t.generator.config
  w_avg = np.asarray(t.variables["buffers"]["w_avg"], np.float32)
  key = jax.random.key(seed)
  starts = []
  for i in range(len(prompts) * num):
    z = jax.random.normal(jax.random.fold_in(key, i), (max(restarts - 1, 1), t.z_dim))
    ws = np.concatenate([w_avg[None], np.asarray(t.latents(z, "w", psi))])[:restarts]
    starts.append(ws if space == "w" else np.asarray(broadcast_ws(ws, c.num_ws)))
  starts = np.stack(starts)                                       # [P*num, R, ...]
  texts = np.repeat(feats, num, 0)                                # [P*num, E]
  optimise = make_optimise(t, clip, num_steps=num_steps, learning_rate=learning_rate,
                           l2_weight=0.0)
  t0 = time.perf_counter()
  # every start of every image at once; per image the start of lowest final D_CLIP is kept
  # (`gan.make_text_to_image`, driven step by step as `make_optimise` does)
  flat = optimise(starts.reshape((-1,) + starts.shape[2:]), np.repeat(texts, restarts, 0))
  dist = np.asarray(flat.clip_distance).reshape(len(starts), restarts)
  best = dist.argmin(-1)
  latents = np.asarray(flat.latent).reshape(starts.shape)[np.arange(len(starts)), best]
  seconds = time.perf_counter() - t0
  images = t.images(latents, "w")
  start_images = t.images(starts[:, 0], "w")
  read = readings(t, images)
  score = clip_cosines(clip, images, texts)
  per_prompt, hits = [], []
  for j, p in enumerate(prompts):
    named = named_attributes(p, t.attributes)
    rows = slice(j * num, (j + 1) * num)
    ok = np.ones(num, bool)
    got = {}
    for a, v in named.items():
      ok &= read[a][rows] == v
      got[a] = [t.attributes[a][k] for k in read[a][rows]]
    hits.append(ok)
    per_prompt.append({"prompt": p, "named": {a: t.attributes[a][v] for a, v in named.items()},
                       "read": got, "as_prompted": float(ok.mean()),
                       "clip_score": float(score[rows].mean()),
                       "best_restart": best[rows].tolist()})
  hits = np.concatenate(hits)
  rec = {"prompts": list(prompts), "num": num, "restarts": restarts, "num_steps": num_steps,
         "learning_rate": learning_rate, "space": space, "truncation_psi": psi,
         "ensemble": ensemble, "clip": clip.workdir, "clip_step": clip.step,
         "resize": clip.resize, "as_prompted": float(hits.mean()),
         "clip_score": float(score.mean()),
         "clip_score_mean_w": float(clip_cosines(clip, start_images, texts).mean()),
         "seconds_per_image": seconds / len(images), "per_prompt": per_prompt}
  name = ("clip_generate_" + re.sub(r"[^a-z0-9]+", "-", prompts[0].lower()).strip("-")[:40]
          + (f"_and{len(prompts) - 1}" if len(prompts) > 1 else "") + f"_n{num}_r{restarts}")
  path = output_path(t, name, seed)
  return write_output(path, images, num, rec, t, "clip-generate")


COLOUR_SHAPE = "colour-shape"


def add_arguments(p) -> None:
  add_clip_arguments(p)
  p.set_defaults(space="w")
  p.add_argument("--prompt", action="append", default=None, help="a text (repeatable)")
  p.add_argument("--colour-shape", action="store_true",
                 help="the twelve prompts 'a <colour> <shape>'")
  p.add_argument("--num", type=int, default=1, help="images per prompt")
  p.add_argument("--restarts", type=int, default=4)
  p.add_argument("--truncation-psi", type=float, default=0.7,
                 help="truncation of the random restarts' w")


def run_tool(t: Trained, a) -> str:
  prompts = list(a.prompt or [])
  if a.colour_shape:
    attrs = t.attributes
    if "color" not in attrs or "shape" not in attrs:
      raise ValueError("--colour-shape needs a generator of the shapes data.")
    prompts += [f"a {c} {s}" for c in attrs["color"] for s in attrs["shape"]]
  if not prompts:
    raise ValueError("give --prompt TEXT (repeatable) or --colour-shape.")
  prompts = [_check_prompt(p, "--prompt") for p in prompts]
  clip = load_clip(a.clip, t.generator.config.image_shape, resize=a.resize)
  return clip_generate(t, clip, prompts, num=a.num, restarts=a.restarts, num_steps=a.steps,
                       learning_rate=a.learning_rate, space=a.space, psi=a.truncation_psi,
                       ensemble=a.ensemble, seed=a.seed)


COMMAND = tool_command("generate images for a text with CLIP by optimising the latent from "
                       "the mean w (with restarts)", add_arguments, run_tool)
