"""A run directory: its config, its trained state, and the files written beside every output.

  WORKDIR/config.json        the typed config (read back with its family's schema)
  WORKDIR/run.json           seed, config, versions of the training run
  WORKDIR/checkpoints/       orbax checkpoints (`jaxgen.training.train_loop`)
  WORKDIR/samples/, eval/    outputs, each PNG with an .npz of its arrays and a .run.json
"""
from __future__ import annotations

import json
import math
import os
import shutil
from typing import Any, Callable, Mapping

import jax
import numpy as np

from experiments.config import Config, from_dict
from jaxgen import data as jdata
from jaxgen import metrics as M
from jaxgen.training import restore_arrays, write_run_json

CONFIG_FILE = "config.json"


def build_source(config: Config, split: str):
  """The dataset split named by ``config.data``."""
  return jdata.get_source(config.data.name, split, image_size=config.data.image_size,
                          data_dir=config.data.data_dir, held_out=config.data.held_out)


def run_record(config: Config, command: str, **extra) -> dict:
  """What a ``run.json`` records: the command, the seed, the config (only the sections of the
  config's family) and `extra` (sampler settings, checkpoint step, ...)."""
  return {"command": command, "seed": config.seed, "config": config.to_dict(), **extra}


def save_config(workdir: str, config: Config) -> None:
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, CONFIG_FILE), "w", encoding="utf-8") as f:
    json.dump(config.to_dict(), f, indent=2)


def load_config(workdir: str) -> Config:
  """The config a workdir was trained with, typed by its family's schema."""
  from experiments.families import get_family  # pylint: disable=import-outside-toplevel
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{workdir!r} is not a training directory (no {CONFIG_FILE}); "
                            "train first with `python -m experiments.main train --config "
                            "experiments/configs/NAME.py --workdir DIR`")
  with open(path, encoding="utf-8") as f:
    d = json.load(f)
  if not isinstance(d, dict) or "family" not in d:
    raise ValueError(f"{path} names no model family; it was not written by this runner")
  return from_dict(get_family(d["family"]).config_class, d)


def restore(workdir: str, init: Callable[[], Any]):
  """(state, step) of the newest readable checkpoint in ``workdir/checkpoints``.

  ``init()`` builds a fresh state; only its structure is used (`jax.eval_shape`: nothing is
  computed or compiled), so loading a trained model costs the read alone.
  """
  abstract = jax.eval_shape(init)
  zeros = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), abstract)
  return restore_arrays(os.path.join(workdir, "checkpoints"), zeros)


def write_images(path: str, images, *, nrow: int | None = None,
                 record: Mapping[str, Any] | None = None, **arrays) -> str:
  """Writes ``path`` (a PNG grid of ``images`` [N, H, W, C] in [-1, 1]), ``path.npz`` with
  ``images`` and `arrays`, and with `record` a ``.run.json`` beside them. Returns `path`."""
  images = np.asarray(images)
  nrow = nrow or int(math.ceil(math.sqrt(len(images))))
  M.save_image_grid(path, images, nrow=nrow)
  np.savez_compressed(path[:-4] + ".npz", images=images, **arrays)
  if record is not None:
    write_run_json(path[:-4] + ".run.json", record)
  return path


def write_json(path: str, result: Mapping[str, Any]) -> str:
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    json.dump(result, f, indent=2, default=float)
  return path


def write_evaluation(workdir: str, config: Config, step: int, result: Mapping[str, Any],
                     samples=None, **record) -> dict:
  """Writes an evaluation: ``eval/eval_step<N>.json``, a grid of the first 100 `samples`
  (``eval/samples_step<N>.png``), ``eval/run.json`` (with `record`) and its scalars appended to
  ``metrics.jsonl``. Returns `result`."""
  out = os.path.join(workdir, "eval")
  write_json(os.path.join(out, f"eval_step{step}.json"), result)
  if samples is not None:
    M.save_image_grid(os.path.join(out, f"samples_step{step}.png"), samples[:100], nrow=10)
  write_run_json(os.path.join(out, "run.json"),
                 run_record(config, "evaluate", checkpoint_step=step, **record))
  log_eval(workdir, step, result)
  return dict(result)


def log_eval(workdir: str, step: int, result: Mapping[str, Any]) -> None:
  """Appends the scalar entries of an evaluation to ``metrics.jsonl`` as ``eval/<name>``."""
  with open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8") as f:
    f.write(json.dumps({"step": step, **{f"eval/{k}": v for k, v in result.items()
                                          if isinstance(v, (int, float))}}) + "\n")


def cached_classifier(path: str, images, labels, *, key, num_steps: int, **kwargs):
  """The feature / attribute classifier in directory ``path``: loaded when it is there and
  was trained for ``num_steps`` steps with the architecture asked for, otherwise trained
  (`jaxgen.metrics.train_classifier`, checkpointed in ``path`` so a SIGTERM resumes it) and
  saved. A saved classifier that is unreadable, records training for another number of
  steps, or has other ``features`` / ``embed_dim`` / ``coord_channels`` than ``kwargs`` name
  is trained again from scratch (one that records no step count, e.g. placed there by hand,
  is used as it is whatever its architecture)."""
  if os.path.isfile(os.path.join(path, "config.json")):
    try:
      bundle = M.load_classifier(path)
    except (OSError, ValueError) as e:
      print(f"cached classifier in {path} is unreadable ({e}); training it again")
    else:
      if "num_steps" not in bundle.info:  # put there by hand: used as it is
        return bundle
      why = _classifier_mismatch(bundle, num_steps, kwargs)
      if why is None:
        return bundle
      print(f"cached classifier in {path} {why}; training it again")
    # a fresh run: the old run's checkpoints would resume on the old schedule / shapes
    shutil.rmtree(os.path.join(path, "checkpoints"), ignore_errors=True)
    if os.path.isfile(os.path.join(path, "metrics.jsonl")):
      os.remove(os.path.join(path, "metrics.jsonl"))
  bundle = M.train_classifier(images, labels, key=key, num_steps=num_steps, workdir=path,
                              **kwargs)
  M.save_classifier(path, bundle)
  return bundle


def _classifier_mismatch(bundle, num_steps: int, kwargs: dict) -> str | None:
  """Why a saved classifier is not the one asked for (None when it is)."""
  if bundle.info["num_steps"] != num_steps:
    return f"was trained for {bundle.info['num_steps']} steps, not the {num_steps} asked for"
  for name, cast in (("features", lambda v: tuple(int(f) for f in v)), ("embed_dim", int),
                     ("coord_channels", bool)):
    if name in kwargs and cast(kwargs[name]) != getattr(bundle.config, name):
      return (f"has {name}={getattr(bundle.config, name)}, not the {cast(kwargs[name])} "
              "asked for")
  return None


def fid_to(clf, reference_images) -> Callable[[np.ndarray], float]:
  """images -> classifier-FID against `reference_images` (features of the reference once)."""
  ref = M.feature_statistics(M.classifier_features(clf, reference_images))

  def fid(images) -> float:
    return M.frechet_distance(*M.feature_statistics(M.classifier_features(clf, images)), *ref)

  return fid


def real_subset(images, n: int, seed: int):
  """`n` (at most all) of `images`, drawn without replacement by ``default_rng(seed)``: the
  real images of a classifier-FID floor."""
  rng = np.random.default_rng(seed)
  return images[rng.choice(len(images), size=min(n, len(images)), replace=False)]
