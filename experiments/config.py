"""Typed experiment configs: dataclass sections, checked before anything compiles.

A config file ``configs/NAME.py`` defines ``get_config(variant: str | None = None)`` returning
the config dataclass of its family (``experiments.families.<family>``); every file has a
``smoke`` variant (a few steps, for tests) and starts with the command that runs it.

Every section is a dataclass whose annotations are the schema: an unknown key, a value of the
wrong type or a choice outside a ``Literal`` raises `ConfigError` naming the key and listing
what is allowed, when the file is loaded, when ``--set section.field=value`` is applied (typed
the same way) and when a workdir's ``config.json`` is read back. A section may also be a dict
of overrides of a library dataclass (``overrides_of(UNetConfig)``: the model fields; its keys
and types are those of the library class, the rest comes from the data).
"""
from __future__ import annotations

import ast
import dataclasses
import importlib.util
import os
import types
import typing
from typing import Any, Literal

CONFIG_DIR = os.path.join(os.path.dirname(__file__), "configs")


class ConfigError(ValueError):
  """A config key that does not exist, or a value of the wrong type."""


def overrides_of(cls: type, *, exclude: tuple[str, ...] = (), extra: dict | None = None):
  """A dict section whose keys are fields of the dataclass `cls` (minus `exclude`, plus
  `extra`: name -> type), each checked against that field's annotation."""
  return dataclasses.field(default_factory=dict, metadata={
      "fields_of": cls, "exclude": exclude, "extra": dict(extra or {})})


def _dict_schema(field: dataclasses.Field) -> dict[str, Any] | None:
  meta = field.metadata
  if "fields_of" not in meta:
    return None
  cls = meta["fields_of"]
  hints = typing.get_type_hints(cls)
  schema = {f.name: hints[f.name] for f in dataclasses.fields(cls)
            if f.name not in meta["exclude"]}
  schema.update(meta["extra"])
  return schema


def _hints(cls) -> dict[str, Any]:
  return typing.get_type_hints(cls)


def _describe(hint) -> str:
  if hint is Any:
    return "any value"
  if isinstance(hint, type):
    return hint.__name__
  return str(hint).replace("typing.", "")


def check_value(value, hint, where: str):
  """Returns `value` as type `hint` (ints widen to float, lists become tuples) or raises
  `ConfigError` naming `where`."""
  origin, args = typing.get_origin(hint), typing.get_args(hint)
  if hint is Any:
    return value
  if origin in (typing.Union, types.UnionType):
    for h in args:
      try:
        return check_value(value, h, where)
      except ConfigError:
        pass
    raise ConfigError(f"{where}={value!r}: expected {_describe(hint)}")
  if hint is type(None):
    if value is None:
      return None
    raise ConfigError(f"{where}={value!r}: expected None")
  if origin is Literal:
    if not isinstance(value, bool) and value in args:
      return value
    raise ConfigError(f"{where}={value!r}: expected one of {list(args)}")
  if hint is bool:
    if isinstance(value, bool):
      return value
    raise ConfigError(f"{where}={value!r}: expected True or False")
  if hint is int:
    if isinstance(value, int) and not isinstance(value, bool):
      return value
    raise ConfigError(f"{where}={value!r}: expected an int")
  if hint is float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
      return float(value)
    raise ConfigError(f"{where}={value!r}: expected a number")
  if hint is str:
    if isinstance(value, str):
      return value
    raise ConfigError(f"{where}={value!r}: expected a string")
  if origin is tuple or hint is tuple:
    if not isinstance(value, (tuple, list)):
      raise ConfigError(f"{where}={value!r}: expected a tuple ({_describe(hint)})")
    if not args:
      return tuple(value)
    if len(args) == 2 and args[1] is Ellipsis:
      return tuple(check_value(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
    if len(value) != len(args):
      raise ConfigError(f"{where}={value!r}: expected {len(args)} entries ({_describe(hint)})")
    return tuple(check_value(v, h, f"{where}[{i}]") for i, (v, h) in enumerate(zip(value, args)))
  if origin is list or hint is list:
    if not isinstance(value, (tuple, list)):
      raise ConfigError(f"{where}={value!r}: expected a list")
    return [check_value(v, args[0], f"{where}[{i}]") if args else v for i, v in enumerate(value)]
  if origin is dict or hint is dict:
    if not isinstance(value, dict):
      raise ConfigError(f"{where}={value!r}: expected a dict")
    return dict(value)
  if dataclasses.is_dataclass(hint):
    if isinstance(value, hint):
      return check_section(value, where)
    if isinstance(value, dict):
      return from_dict(hint, value, where)
    raise ConfigError(f"{where}: expected a {hint.__name__} section, got {value!r}")
  if isinstance(value, hint):
    return value
  raise ConfigError(f"{where}={value!r}: expected {_describe(hint)}")


def check_fields(d: dict, schema: dict, where: str) -> dict:
  """Checks a dict of fields against ``schema`` (name -> type): unknown keys and wrong types
  raise `ConfigError` naming ``where.key``; returns the coerced dict."""
  if not isinstance(d, dict):
    raise ConfigError(f"{where}={d!r}: expected a dict of fields {sorted(schema)}")
  unknown = sorted(set(d) - set(schema))
  if unknown:
    raise ConfigError(f"unknown field {where}.{unknown[0]!s}; the allowed keys of {where}: "
                      f"{sorted(schema)}")
  return {k: check_value(v, schema[k], f"{where}.{k}") for k, v in d.items()}


def check_section(section, where: str = "config"):
  """Checks every field of the dataclass `section` in place (coercing ints to floats and lists
  to tuples) and returns it."""
  hints = _hints(type(section))
  for f in dataclasses.fields(section):
    name = f"{where}.{f.name}" if where != "config" else f.name
    value = getattr(section, f.name)
    schema = _dict_schema(f)
    if schema is not None:
      value = check_fields(value, schema, name)
    else:
      value = check_value(value, hints[f.name], name)
    object.__setattr__(section, f.name, value)
  return section


def from_dict(cls, d: dict, where: str = "config"):
  """Builds the dataclass `cls` from a nested dict (e.g. a workdir's config.json), checked."""
  if not isinstance(d, dict):
    raise ConfigError(f"{where}: expected a dict, got {d!r}")
  names = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(d) - names)
  if unknown:
    label = f"{where}." if where != "config" else ""
    raise ConfigError(f"unknown field {label}{unknown[0]}; the allowed keys"
                      f"{' of ' + where if where != 'config' else ''}: {sorted(names)}")
  hints = _hints(cls)
  kwargs = {}
  for f in dataclasses.fields(cls):
    if f.name in d:
      value = d[f.name]
      if dataclasses.is_dataclass(hints[f.name]) and isinstance(value, dict):
        value = from_dict(hints[f.name], value, f.name if where == "config" else
                          f"{where}.{f.name}")
      kwargs[f.name] = value
  section = check_section(cls(**kwargs), where)
  if isinstance(section, Config):
    section.validate()
  return section


def to_dict(config) -> dict:
  """The config as plain nested dicts (what config.json and run.json record)."""
  return dataclasses.asdict(config)


# ----------------------------------------------------------------------------- sections


@dataclasses.dataclass
class DataConfig:
  name: str = "digits"
  image_size: int | None = None    # None: the dataset's own size
  batch_size: int = 128            # global batch, split over devices
  data_dir: str | None = None      # TFDS data directory
  held_out: bool = False           # shapes: train without jaxgen.data.SHAPES_HELD_OUT's combinations


@dataclasses.dataclass
class LoopConfig:
  """The training loop's cadence (every family)."""
  num_steps: int = 1000
  log_every: int = 50
  checkpoint_every: int = 500
  sample_every: int = 0            # 0: only at the end
  max_to_keep: int = 3
  ema_decay: float = 0.999
  ema_warmup: bool = True


@dataclasses.dataclass
class TrainConfig(LoopConfig):
  """The loop plus one optimiser (`jaxgen.training.make_optimizer`): AdamW with warm-up."""
  learning_rate: float = 2e-4
  warmup_steps: int = 100
  lr_decay: Literal["constant", "cosine"] = "constant"
  weight_decay: float = 0.0
  grad_clip: float | None = 1.0


RematPolicy = Literal["nothing_saveable", "dots_saveable", "dots_with_no_batch_dims_saveable",
                      "everything_saveable"]


@dataclasses.dataclass
class UNetTrainConfig(TrainConfig):
  """The train section of the U-Net families: memory and precision (docs/parallelism.md).

  ``compute_dtype``: the U-Net's computation dtype; parameters, optimiser state, EMA and the
  loss stay float32 (mixed precision). ``remat_policy``: rematerialise every U-Net block in the
  backward pass (`jaxgen.nn.remat`). ``accum_steps``: average the gradients of this many
  micro-batches per update (`jaxgen.training.accumulate_gradients`); the batch size stays
  ``data.batch_size``. ``fsdp``: the size of the mesh's ``fsdp`` axis (`experiments.sharding`):
  parameters, EMA and optimiser state are split over it, the other devices form ``data``.
  """
  compute_dtype: Literal["float32", "bfloat16"] = "float32"
  remat_policy: RematPolicy | None = None
  accum_steps: int = 1
  fsdp: int = 1                    # > 1: shard the train state over this many devices


def unet_compute_dtype(train: UNetTrainConfig):
  """The jnp dtype named by ``train.compute_dtype``."""
  import jax.numpy as jnp
  return {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[train.compute_dtype]


def check_unet_train(config) -> None:
  """The checks of a `UNetTrainConfig` against the config: ``train.fsdp`` >= 1 and
  ``train.accum_steps`` >= 1 dividing ``data.batch_size`` (`ConfigError`)."""
  if config.train.fsdp < 1:
    raise ConfigError(f"train.fsdp={config.train.fsdp}: expected an int >= 1 (1: no FSDP)")
  k, b = config.train.accum_steps, config.data.batch_size
  if k < 1 or b % k:
    raise ConfigError(f"train.accum_steps={k}: expected an int >= 1 that divides "
                      f"data.batch_size={b} (each micro-batch has batch_size / accum_steps)")


@dataclasses.dataclass
class SampleConfig:
  num: int = 64                    # images in a grid written after training


@dataclasses.dataclass
class EvalConfig:
  num_samples: int = 1000          # samples `evaluate` draws
  classifier_steps: int = 600      # steps of the evaluation's feature classifier


@dataclasses.dataclass
class Config:
  """What every family's config has; families subclass it with their own sections."""
  name: str = "experiment"
  family: str = ""
  seed: int = 0
  data: DataConfig = dataclasses.field(default_factory=DataConfig)

  def to_dict(self) -> dict:
    return to_dict(self)

  def validate(self) -> None:
    """Checks across fields (a family overrides it); called after every load and override."""


# ----------------------------------------------------------------------------- loading


def available_configs() -> list[str]:
  return sorted(f[:-3] for f in os.listdir(CONFIG_DIR)
                if f.endswith(".py") and not f.startswith("_"))


def load_config(spec: str, overrides: list[str] = ()) -> Config:
  """Loads ``path/to/NAME.py[:variant]`` (or just ``NAME[:variant]``), applies the overrides
  and checks every section."""
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
  if not isinstance(config, Config):
    raise ValueError(f"{path}: get_config() must return a family config (a subclass of "
                     f"experiments.config.Config), got {type(config).__name__}")
  check_section(config)
  for item in overrides:
    apply_override(config, item)
  config.validate()
  return config


def parse_value(raw: str):
  """A ``--set`` value: a Python literal (``3``, ``1e-3``, ``(4, 5)``, ``None``), else a string."""
  try:
    return ast.literal_eval(raw)
  except (ValueError, SyntaxError):
    return raw


def apply_override(config, item: str) -> None:
  """Applies ``section.field=value`` (or ``field=value`` for a top-level field), typed by the
  section's schema: an unknown key or a wrong type raises `ConfigError`."""
  key, sep, raw = item.partition("=")
  if not sep:
    raise ConfigError(f"override {item!r} must look like section.field=value")
  value = parse_value(raw)
  *parents, leaf = key.strip().split(".")
  target, where, schema = config, "", None
  for p in parents:
    if schema is not None or not dataclasses.is_dataclass(target):
      raise ConfigError(f"override {item!r}: {where or 'config'} has no sections")
    fields = {f.name: f for f in dataclasses.fields(target)}
    if p not in fields:
      raise ConfigError(f"override {item!r}: no config section {p!r}; the sections: "
                        f"{sorted(fields)}")
    schema = _dict_schema(fields[p])
    target, where = getattr(target, p), (f"{where}.{p}" if where else p)
  name = f"{where}.{leaf}" if where else leaf
  if schema is not None:
    if leaf not in schema:
      raise ConfigError(f"override {item!r}: unknown field {name}; the allowed keys of "
                        f"{where}: {sorted(schema)}")
    target[leaf] = check_value(value, schema[leaf], name)
    return
  fields = {f.name for f in dataclasses.fields(target)}
  if leaf not in fields:
    raise ConfigError(f"override {item!r}: unknown field {name}; the allowed keys"
                      f"{' of ' + where if where else ''}: {sorted(fields)}")
  value = check_value(value, _hints(type(target))[leaf], name)
  setattr(target, leaf, value)


def apply_overrides(config, items) -> Any:
  """Applies several ``section.field=value`` overrides, then the config's cross-field checks;
  returns the config."""
  for item in items:
    apply_override(config, item)
  config.validate()
  return config
