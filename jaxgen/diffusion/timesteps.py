"""Timestep tables for sampling with fewer steps than training.

Spacings as defined by diffusers' DDPM/DDIM schedulers (and, for ``trailing`` and
``linspace``, by Lin et al. 2023, Table 2):

* ``leading``:  [0, k, 2k, ...] + steps_offset with k = T // n  (DDIM paper's "uniform");
* ``trailing``: round(arange(T, 0, -T/n)) - 1, which always includes T - 1;
* ``linspace``: round(linspace(0, T - 1, n)).

Tables are descending int32. The *previous* timestep of entry i is the next entry of the table
(and -1 after the last), which is what the papers' samplers use; diffusers instead takes
``t - T // n``, which differs under ``trailing``/``linspace`` (see
docs/differences_from_diffusers.md). :func:`previous_timesteps` gives both.

diffusers' DPM-Solver builds its tables differently (n + 1 points, the last dropped, and an
optional cut of the high-noise end by ``lambda_min_clipped``): :func:`dpm_solver_timesteps`.
PNDM's PLMS table repeats an entry: :func:`jaxgen.diffusion.plms_table`.
"""
from __future__ import annotations

import numpy as np

SPACINGS = ("leading", "trailing", "linspace")
PREVIOUS_RULES = ("table", "diffusers")
PAD = -1  # value of padding entries in a padded table; the sampler skips them


def timesteps(num_train_timesteps: int, num_inference_steps: int, spacing: str = "leading",
              steps_offset: int = 0) -> np.ndarray:
  """The descending timestep table [n] (int32) for n = num_inference_steps.

  Raises:
    ValueError: unknown spacing, n < 1, or n > num_train_timesteps.
  """
  T, n = int(num_train_timesteps), int(num_inference_steps)
  if spacing not in SPACINGS:
    raise ValueError(f"unknown timestep spacing {spacing!r}; expected one of {SPACINGS}")
  if n < 1:
    raise ValueError(f"num_inference_steps must be >= 1, got {n}")
  if n > T:
    raise ValueError(f"num_inference_steps={n} is more than the {T} timesteps the model was "
                     f"trained with; use at most {T} sampling steps")
  if spacing == "leading":
    table = (np.arange(n) * (T // n)).round()[::-1] + steps_offset
  elif spacing == "trailing":
    table = np.round(np.arange(T, 0, -T / n)) - 1
  else:
    table = np.linspace(0, T - 1, n).round()[::-1]
  table = table.astype(np.int64)
  if table.max() >= T or table.min() < 0:
    raise ValueError(f"steps_offset={steps_offset} puts timesteps outside [0, {T - 1}]")
  return table.astype(np.int32)


def dpm_solver_timesteps(num_train_timesteps: int, num_inference_steps: int,
                         spacing: str = "linspace", steps_offset: int = 0,
                         last_timestep: int | None = None) -> np.ndarray:
  """The descending [n] int32 table of diffusers' ``DPMSolverMultistepScheduler.set_timesteps``.

  With L = last_timestep (T unless ``lambda_min_clipped`` cuts the noisiest timesteps):

  * ``linspace``: round(linspace(0, L - 1, n + 1)), descending, without its last entry (0);
  * ``leading``:  [n, n - 1, ..., 1] * (L // (n + 1)) + steps_offset;
  * ``trailing``: round(arange(L, 0, -T / n)) - 1.

  Raises:
    ValueError: unknown spacing, n < 1 or n > T, or a table outside [0, T - 1].
  """
  T, n = int(num_train_timesteps), int(num_inference_steps)
  L = T if last_timestep is None else int(last_timestep)
  if spacing not in SPACINGS:
    raise ValueError(f"unknown timestep spacing {spacing!r}; expected one of {SPACINGS}")
  if not 1 <= n <= T:
    raise ValueError(f"num_inference_steps must be in [1, {T}] (the training timesteps), got {n}")
  if not 1 <= L <= T:
    raise ValueError(f"last_timestep must be in [1, {T}], got {L}")
  if spacing == "linspace":
    table = np.linspace(0, L - 1, n + 1).round()[::-1][:-1]
  elif spacing == "leading":
    table = (np.arange(0, n + 1) * (L // (n + 1))).round()[::-1][:-1] + steps_offset
  else:
    table = np.arange(L, 0, -T / n).round() - 1
  table = table.astype(np.int64)
  if table.max() >= T or table.min() < 0:
    raise ValueError(f"steps_offset={steps_offset} puts timesteps outside [0, {T - 1}]")
  return table.astype(np.int32)


def previous_timesteps(table, num_train_timesteps: int, rule: str = "table") -> np.ndarray:
  """The timestep each entry of ``table`` steps to: the next entry (``table``, the papers'
  rule) or ``t - T // n`` (``diffusers``); -1 means the clean data."""
  table = np.asarray(table, np.int64)
  if rule == "table":
    prev = np.append(table[1:], -1)
  elif rule == "diffusers":
    prev = table - num_train_timesteps // table.size
  else:
    raise ValueError(f"unknown previous-timestep rule {rule!r}; expected one of "
                     f"{PREVIOUS_RULES}")
  return np.maximum(prev, -1).astype(np.int32)


def pad_table(table, length: int) -> np.ndarray:
  """Pads a descending table to ``length`` with :data:`PAD` entries, so that samplers for
  every step count share one compiled function."""
  table = np.asarray(table, np.int32)
  if table.size > length:
    raise ValueError(f"table of {table.size} steps does not fit a padded length of {length}")
  return np.concatenate([table, np.full(length - table.size, PAD, np.int32)])
