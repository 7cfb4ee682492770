"""Inversion (projection) of images into the W or W+ space of a style-based generator.

  python -m experiments.main invert --workdir DIR --test-images 0-7 | --seeds 0-7 | --target a.png
      [--w-plus] [--steps 1000] [--perceptual-weight 0.1] [--restarts 1] [--fixed-noise]
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from experiments import workdir as W
from experiments.families import Command
from experiments.families.gan.trained import (Trained, command_result, load_trained,
                                              output_path, write_output)
from jaxgen import data as jdata
from jaxgen import gan
from jaxgen import metrics as M

__all__ = ["COMMAND", "invert", "invert_images", "load_target"]


def invert_images(t: Trained, targets, key, *, num_steps: int = 1000, w_plus: bool = False,
                  perceptual_weight: float = 0.1, batch_size: int = 16, **kwargs):
  """Projects targets [N, H, W, C] in [-1, 1] (`gan.make_projector`, vmapped in chunks of
  `batch_size`; chunk starting at s uses ``fold_in(key, s + 1)``, the W statistics
  ``fold_in(key, 0)``).

  Returns:
    (images [N, H, W, C], ws [N, num_ws, w_dim], psnr [N]).
  """
  if not t.style:
    raise ValueError("inversion needs a style-based generator (a W space).")
  targets = np.asarray(targets, np.float32)
  shape = t.generator.config.image_shape
  if targets.ndim != 4 or targets.shape[1:] != shape:
    raise ValueError(f"targets must be [N, {', '.join(map(str, shape))}] for this generator, "
                     f"got {targets.shape}; resize them to {shape[0]}x{shape[1]}.")
  feature_fn = gan.classifier_feature_fn(t.classifier()) if perceptual_weight > 0 else None
  project = gan.make_projector(t.generator, num_steps=num_steps, w_plus=w_plus,
                               feature_fn=feature_fn, perceptual_weight=perceptual_weight,
                               **kwargs)
  run_chunk = jax.jit(jax.vmap(project, in_axes=(None, 0, 0, None)))
  _, w_std = gan.w_statistics(t.generator, t.variables, jax.random.fold_in(key, 0))
  images, ws = [], []
  bar = tqdm(total=len(targets), desc=f"invert ({num_steps} steps each)", unit="image",
             dynamic_ncols=True)
  # Not `map_batched`: a chunk's keys depend on its start, and a single short chunk is run
  # at its own size (padded by repeating its last image only when there are several).
  for s in range(0, len(targets), batch_size):
    chunk = targets[s:s + batch_size]
    pad = batch_size - len(chunk) if len(targets) > batch_size else 0
    if pad:
      chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, 0)])
    res = run_chunk(t.variables, jnp.asarray(chunk),
                    jax.random.split(jax.random.fold_in(key, s + 1), len(chunk)), w_std)
    images.append(np.asarray(res.image)[:len(chunk) - pad])
    ws.append(np.asarray(res.ws)[:len(chunk) - pad])
    bar.update(len(chunk) - pad)
  bar.close()
  images = np.clip(np.concatenate(images), -1.0, 1.0)
  return images, np.concatenate(ws), np.asarray(M.psnr(images, targets, reduction="none"))


def load_target(path: str) -> np.ndarray:
  """An image file as [H, W, C] float32 in [-1, 1] (RGB; a grey image gets one channel)."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  img = np.asarray(Image.open(path))
  if img.ndim == 2:
    img = img[..., None]
  return img[..., :3].astype(np.float32) / 127.5 - 1.0


def invert(t: Trained, *, test_images=None, seeds=None, targets=None, num_steps: int = 1000,
           w_plus: bool = False, fid: bool = True, seed: int = 0, **kwargs) -> str:
  """Inverts held-out test images (indices), generated images (seeds) or image files (paths):
  exactly one of the three. With `fid` and at least 50 images, the record also has the
  classifier-FID of the projections and of the targets against the test split.

  Returns:
    The path of the grid (targets above, projections below); beside it the JSON record
    (PSNR per image and summary) and an .npz of targets, projections and ws.
  """
  if sum(x is not None for x in (test_images, seeds, targets)) != 1:
    raise ValueError("give exactly one of --test-images, --seeds, --target.")
  if test_images is not None:
    source, what = W.build_source(t.config, "test"), "test"
    images = source[np.asarray(test_images)]["image"]
  elif seeds is not None:
    images, what = t.images(gan.latents_from_seeds(seeds, t.z_dim), "z"), "generated"
  else:
    images, what = np.stack([load_target(p) for p in targets]), "files"
  proj, ws, psnr = invert_images(t, images, jax.random.key(seed), num_steps=num_steps,
                                 w_plus=w_plus, **kwargs)
  noise, restarts = kwargs.get("optimize_noise", True), kwargs.get("num_restarts", 1)
  record = {"targets": what, "num": int(len(images)), "num_steps": num_steps,
            "w_plus": w_plus, "optimize_noise": noise, "num_restarts": restarts,
            "perceptual_weight": kwargs.get("perceptual_weight", 0.1),
            "psnr_mean": float(psnr.mean()), "psnr_median": float(np.median(psnr)),
            "psnr_min": float(psnr.min()), "fraction_psnr_ge_30": float(np.mean(psnr >= 30.0)),
            "psnr": psnr.tolist()}
  if fid and len(images) >= 50:
    clf = t.classifier()
    test = jdata.load_all(W.build_source(t.config, "test"))["image"]
    record["fid_projections_vs_test"] = M.classifier_fid(clf, test, proj)
    record["fid_targets_vs_test"] = M.classifier_fid(clf, test, images)
  n = min(len(images), 16)
  grid = np.concatenate([images[:n], proj[:n]])
  name = (f"invert_{what}_{'wplus' if w_plus else 'w'}_{len(images)}"
          + ("" if noise else "_fixednoise") + (f"_restarts{restarts}" if restarts > 1 else ""))
  path = output_path(t, name, seed)
  np.savez_compressed(path[:-4] + ".npz", targets=images, projections=proj, ws=ws)
  return write_output(path, grid, n, record, t, "invert")


def add_arguments(p) -> None:
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--test-images", default=None, help="indices into the test split, e.g. 0-7")
  p.add_argument("--seeds", default=None, help="invert generated images of these seeds")
  p.add_argument("--target", action="append", default=None, help="a PNG file (repeatable)")
  p.add_argument("--steps", type=int, default=1000)
  p.add_argument("--w-plus", action="store_true")
  p.add_argument("--perceptual-weight", type=float, default=0.1)
  p.add_argument("--noise-weight", type=float, default=1e5)
  p.add_argument("--restarts", type=int, default=1,
                 help="also start from RESTARTS-1 random w and keep the best (default: mean w "
                      "only)")
  p.add_argument("--fixed-noise", action="store_true",
                 help="keep the generator's constant noise maps instead of optimising them")


def run(args) -> dict:
  def indices(text):
    return None if text is None else gan.parse_seeds(text)
  t = load_trained(args.workdir)
  return command_result(invert(
      t, test_images=indices(args.test_images), seeds=indices(args.seeds), targets=args.target,
      num_steps=args.steps, w_plus=args.w_plus, seed=args.seed,
      perceptual_weight=args.perceptual_weight, noise_weight=args.noise_weight,
      optimize_noise=not args.fixed_noise, num_restarts=args.restarts))


COMMAND = Command("project images into W / W+ of a style-based generator", add_arguments, run)
