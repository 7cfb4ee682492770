"""The registry of model families.

Each package under ``experiments/families/`` is a family (or several that share code) and
registers itself on import with `register`. A family supplies its config dataclass and what
differs between families: ``train``, ``sample``, ``evaluate`` and any commands of its own;
the training loop, restore, SIGTERM, metrics and run.json are `jaxgen.training.train_loop`'s.
Adding a family is adding a package here: no other file changes.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import pkgutil
from typing import Any, Callable, Mapping


@dataclasses.dataclass(frozen=True)
class Command:
  """A family's own command of the runner (``python -m experiments.main NAME ...``).

  Attributes:
    help: one line for ``--help``.
    add_arguments: adds the command's flags to its argparse parser (``--workdir`` is added).
    run: ``run(args) -> result`` (a path or a JSON-serialisable value, printed).
  """
  help: str
  add_arguments: Callable[[argparse.ArgumentParser], None]
  run: Callable[[argparse.Namespace], Any]


@dataclasses.dataclass(frozen=True)
class Family:
  """One model family.

  Attributes:
    name: the value of ``config.family``.
    config_class: the config dataclass (a subclass of `experiments.config.Config`).
    train: ``train(config, workdir) -> dict`` (summary: step, loss, terminated, resumed_from).
    sample: ``sample(workdir, *, num, seed, **options) -> str`` (path of the PNG grid).
    evaluate: ``evaluate(workdir, *, num_samples) -> dict``.
    sample_options: the keyword options ``sample`` takes beyond ``num`` and ``seed`` (the
      runner refuses the others for this family).
    commands: the family's own commands (name -> `Command`).
    description: one line for ``python -m experiments.main families``.
  """
  name: str
  config_class: type
  train: Callable[..., dict]
  sample: Callable[..., str]
  evaluate: Callable[..., dict]
  sample_options: tuple[str, ...] = ()
  commands: Mapping[str, Command] = dataclasses.field(default_factory=dict)
  description: str = ""


_FAMILIES: dict[str, Family] = {}
_LOADED = False


def register(family: Family) -> Family:
  """Adds `family` to the registry (called by each family package on import)."""
  other = _FAMILIES.get(family.name)
  if other is not None and other is not family:
    raise ValueError(f"two families are named {family.name!r}")
  _FAMILIES[family.name] = family
  return family


def _load_all() -> None:
  global _LOADED
  if not _LOADED:
    for info in pkgutil.iter_modules(__path__):
      if info.ispkg:
        importlib.import_module(f"{__name__}.{info.name}")
    _LOADED = True


def families() -> dict[str, Family]:
  """Every family the packages here add, by name."""
  _load_all()
  return dict(sorted(_FAMILIES.items()))


def get_family(name: str) -> Family:
  """The family called `name`; an unknown name lists the known ones."""
  known = families()
  if name not in known:
    raise ValueError(f"unknown model family {name!r}; expected one of {sorted(known)}")
  return known[name]


def commands() -> dict[str, tuple[Family, Command]]:
  """Every family's own commands, by name (two families may not claim one name)."""
  out: dict[str, tuple[Family, Command]] = {}
  for fam in families().values():
    for name, cmd in fam.commands.items():
      if name in out and out[name][1] is not cmd:
        raise ValueError(f"families {out[name][0].name!r} and {fam.name!r} both define the "
                         f"command {name!r}")
      out[name] = (fam, cmd)
  return out
