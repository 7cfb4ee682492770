"""Experiment configuration: plain dataclasses, loaded from ``configs/NAME.py[:variant]``.

A config file defines ``get_config(variant: str | None = None) -> Config``; every file has a
``smoke`` variant (a few steps, for tests). ``--set section.field=value`` overrides fields.
"""
from __future__ import annotations

import ast
import dataclasses
import importlib.util
import os
from typing import Any


@dataclasses.dataclass
class DataConfig:
  name: str = "digits"
  image_size: int | None = None    # None: the dataset's own size
  batch_size: int = 128            # global batch, split over devices
  data_dir: str | None = None      # TFDS data directory


@dataclasses.dataclass
class DiffusionConfig:
  schedule: str = "linear"
  num_timesteps: int = 1000
  beta_start: float = 1e-4
  beta_end: float = 0.02
  rescale_zero_terminal_snr: bool = False
  prediction_type: str = "epsilon"
  variance_type: str = "fixed_small"
  clip_sample: bool = True


@dataclasses.dataclass
class TrainConfig:
  num_steps: int = 1000
  learning_rate: float = 2e-4
  warmup_steps: int = 100
  lr_decay: str = "constant"       # or "cosine"
  weight_decay: float = 0.0
  grad_clip: float | None = 1.0
  ema_decay: float = 0.999
  ema_warmup: bool = True
  cond_drop_prob: float = 0.0      # > 0: classifier-free guidance training
  log_every: int = 50
  checkpoint_every: int = 500
  sample_every: int = 0            # 0: only at the end
  max_to_keep: int = 3


@dataclasses.dataclass
class SampleConfig:
  sampler: str = "ddim"            # "ddpm" or "ddim"
  steps: int = 50
  spacing: str = "leading"
  eta: float = 0.0
  num: int = 64                    # images in a grid
  batch_size: int = 500


@dataclasses.dataclass
class EvalConfig:
  num_samples: int = 1000
  classifier_steps: int = 600
  bpd_examples: int = 64           # test images for the variational bound (0: skip)
  untrained_baseline: bool = True


@dataclasses.dataclass
class Config:
  name: str = "ddpm"
  family: str = "ddpm"             # which runner module trains it (experiments/families.py)
  seed: int = 0
  data: DataConfig = dataclasses.field(default_factory=DataConfig)
  model: dict = dataclasses.field(default_factory=dict)  # jaxgen.nn.UNetConfig fields
  diffusion: DiffusionConfig = dataclasses.field(default_factory=DiffusionConfig)
  train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
  sample: SampleConfig = dataclasses.field(default_factory=SampleConfig)
  eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
  options: dict = dataclasses.field(default_factory=dict)  # family-specific settings

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict) -> "Config":
    sections = {f.name: f.type for f in dataclasses.fields(cls)}
    kwargs = dict(d)
    for name, klass in (("data", DataConfig), ("diffusion", DiffusionConfig),
                        ("train", TrainConfig), ("sample", SampleConfig), ("eval", EvalConfig)):
      if name in kwargs:
        kwargs[name] = klass(**kwargs[name])
    unknown = set(kwargs) - set(sections)
    if unknown:
      raise ValueError(f"unknown config sections {sorted(unknown)}")
    return cls(**kwargs)


CONFIG_DIR = os.path.join(os.path.dirname(__file__), "configs")


def available_configs() -> list[str]:
  return sorted(f[:-3] for f in os.listdir(CONFIG_DIR)
                if f.endswith(".py") and not f.startswith("_"))


def load_config(spec: str, overrides: list[str] = ()) -> Config:
  """Loads ``path/to/NAME.py[:variant]`` (or just ``NAME[:variant]``) and applies overrides."""
  path, _, variant = spec.partition(":")
  if not path.endswith(".py"):
    path = os.path.join(CONFIG_DIR, path + ".py")
  if not os.path.isfile(path):
    raise ValueError(f"no config file {path!r}; available configs: {available_configs()} "
                     f"(use experiments/configs/NAME.py[:smoke])")
  spec_ = importlib.util.spec_from_file_location(
      "jaxgen_config_" + os.path.basename(path)[:-3], path)
  module = importlib.util.module_from_spec(spec_)
  spec_.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ValueError(f"{path} defines no get_config()")
  config = module.get_config(variant or None)
  for item in overrides:
    apply_override(config, item)
  return config


def apply_override(config: Config, item: str) -> None:
  """Applies ``section.field=value`` (value parsed as a Python literal, else a string)."""
  key, sep, raw = item.partition("=")
  if not sep:
    raise ValueError(f"override {item!r} must look like section.field=value")
  try:
    value: Any = ast.literal_eval(raw)
  except (ValueError, SyntaxError):
    value = raw
  *parents, leaf = key.split(".")
  target: Any = config
  for p in parents:
    target = target[p] if isinstance(target, dict) else getattr(target, p, None)
    if target is None:
      raise ValueError(f"override {item!r}: no config section {p!r}")
  if isinstance(target, dict):
    target[leaf] = value
  elif dataclasses.is_dataclass(target) and leaf in {f.name for f in dataclasses.fields(target)}:
    setattr(target, leaf, value)
  else:
    raise ValueError(f"override {item!r}: unknown field {leaf!r}")
