"""Schedulers built from diffusers ``scheduler_config.json`` files.

A :class:`SchedulerConfig` reads the config of diffusers' ``DDIMScheduler``, ``DDPMScheduler``,
``DPMSolverMultistepScheduler`` (DPM-Solver++, Lu et al. 2022) or ``PNDMScheduler`` (PLMS,
Liu et al. 2022) and reproduces what that scheduler does: the same betas, the same timestep
table as ``scheduler.timesteps`` after ``set_timesteps(n)``, and :func:`scheduler_sample`, the
same sampling loop as a diffusers pipeline (one ``lax.scan``; jit it with the config and n
static). Differences from the papers that diffusers has (DDIM's previous timestep
``t - T // n``, the final alpha_bar of ``set_alpha_to_one``, DDPM's noise on a last step with
t > 0, DPM-Solver's ``lower_order_final`` rule) are reproduced here on purpose; the generic
samplers of :mod:`jaxgen.diffusion.sampler` follow the papers.

The config keeps the keys the file gave, not the class defaults, so that
:meth:`SchedulerConfig.with_class` behaves like diffusers' ``Other.from_config(s.config)``:
shared keys carry over, the other class's defaults fill the rest, and keys of other classes
stay for a later conversion. A key whose supported values are limited (e.g. DPM-Solver's
``use_karras_sigmas``) raises when a config of that class sets another value; keys that no
diffusers scheduler knows raise too.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import types
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.diffusion.dpm_solver import dpmpp_2m_sample
from jaxgen.diffusion.plms import plms_sample, plms_table
from jaxgen.diffusion.process import PREDICTION_TYPES, q_sample
from jaxgen.diffusion.sampler import sample
from jaxgen.diffusion.schedules import (Schedule, make_schedule, rescale_betas_zero_terminal_snr,
                                        schedule_from_betas)
from jaxgen.diffusion.timesteps import SPACINGS, dpm_solver_timesteps, timesteps

SUPPORTED_SCHEDULERS = ("DDIMScheduler", "DDPMScheduler", "DPMSolverMultistepScheduler",
                        "PNDMScheduler")
CONFIG_NAME = "scheduler_config.json"
BETA_SCHEDULES = {"linear": "linear", "scaled_linear": "scaled_linear",
                  "squaredcos_cap_v2": "cosine"}

_BETAS = dict(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
              trained_betas=None)
_THRESH = dict(thresholding=False, dynamic_thresholding_ratio=0.995, sample_max_value=1.0)
# The __init__ keyword arguments of each class and their defaults in diffusers 0.42.1.
DEFAULTS = {
    "DDIMScheduler": dict(
        _BETAS, **_THRESH, clip_sample=True, set_alpha_to_one=True, steps_offset=0,
        prediction_type="epsilon", clip_sample_range=1.0, timestep_spacing="leading",
        rescale_betas_zero_snr=False),
    "DDPMScheduler": dict(
        _BETAS, **_THRESH, variance_type="fixed_small", clip_sample=True,
        prediction_type="epsilon", clip_sample_range=1.0, timestep_spacing="leading",
        steps_offset=0, rescale_betas_zero_snr=False),
    "DPMSolverMultistepScheduler": dict(
        _BETAS, **_THRESH, solver_order=2, prediction_type="epsilon", algorithm_type="dpmsolver++",
        solver_type="midpoint", lower_order_final=True, euler_at_final=False,
        use_karras_sigmas=False, use_exponential_sigmas=False, use_beta_sigmas=False,
        use_lu_lambdas=False, use_flow_sigmas=False, flow_shift=1.0, final_sigmas_type="zero",
        lambda_min_clipped=-math.inf, variance_type=None, timestep_spacing="linspace",
        steps_offset=0, rescale_betas_zero_snr=False, use_dynamic_shifting=False,
        time_shift_type="exponential"),
    "PNDMScheduler": dict(
        _BETAS, skip_prk_steps=False, set_alpha_to_one=False, prediction_type="epsilon",
        timestep_spacing="leading", steps_offset=0),
}
# Keys of diffusers' other compatible schedulers (Euler, Heun, LMS, UniPC, ...): none of the
# four classes reads them, so they are kept (for to_diffusers_dict) and have no effect.
OTHER_SCHEDULER_KEYS = frozenset((
    "disable_corrector", "interpolation_type", "predict_x0", "rho", "shift_terminal",
    "sigma_data", "sigma_max", "sigma_min", "sigma_schedule", "solver_p", "timestep_type",
    "noise_sampler_seed"))
# dynamic_thresholding_ratio, sample_max_value (thresholding is off), flow_shift,
# time_shift_type (flow sigmas are off) and use_dynamic_shifting (only read with a ``mu`` that
# image pipelines of these classes never pass) do not change sampling and are not checked.
# Supported values of keys that have other values in diffusers.
_CHOICES = {
    "beta_schedule": tuple(BETA_SCHEDULES),
    "timestep_spacing": SPACINGS,
    "thresholding": (False,),
    "skip_prk_steps": (True,),
    "algorithm_type": ("dpmsolver++",),
    "solver_order": (1, 2),
    "solver_type": ("midpoint", "heun"),
    "final_sigmas_type": ("zero", "sigma_min"),
    "use_karras_sigmas": (False,), "use_exponential_sigmas": (False,),
    "use_beta_sigmas": (False,), "use_lu_lambdas": (False,), "use_flow_sigmas": (False,),
}
_CLASS_CHOICES = {("PNDMScheduler", "prediction_type"): ("epsilon", "v_prediction")}
_BOOLS = ("clip_sample", "set_alpha_to_one", "rescale_betas_zero_snr", "lower_order_final",
          "euler_at_final")
# DDPM's variance types: fixed_small_log draws exp(log(var) / 2) z = sqrt(var) z, and None
# (a DPM-Solver config's value carried over) falls through to fixed_small in diffusers.
_DDPM_VARIANCE = {"fixed_small": "fixed_small", "fixed_small_log": "fixed_small",
                  "fixed_large": "fixed_large", None: "fixed_small"}
_SAMPLERS = {"DDIMScheduler": "ddim", "DDPMScheduler": "ddpm",
             "DPMSolverMultistepScheduler": "dpmpp_2m", "PNDMScheduler": "plms"}
_ALL_KEYS = frozenset(k for d in DEFAULTS.values() for k in d) | OTHER_SCHEDULER_KEYS


def _frozen(v):
  """A hashable copy of a JSON value (lists -> tuples, dicts -> sorted item tuples)."""
  if isinstance(v, (list, tuple)):
    return tuple(_frozen(x) for x in v)
  if isinstance(v, dict):
    return tuple(sorted((str(k), _frozen(x)) for k, x in v.items()))
  if isinstance(v, np.ndarray):
    return _frozen(v.tolist())
  if isinstance(v, np.generic):
    return v.item()
  return v


def _check_class(name) -> None:
  if name not in SUPPORTED_SCHEDULERS:
    raise ValueError(f"unsupported scheduler class {name!r}; jaxgen builds schedulers from "
                     f"configs of {SUPPORTED_SCHEDULERS}")


def _is_number(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool)


_HINTS = {
    "skip_prk_steps": "PNDM's Runge-Kutta warm-up is not implemented; the PLMS form with "
                      "skip_prk_steps=true is what Stable Diffusion configs use",
    "thresholding": "dynamic thresholding (Saharia et al. 2022) is not implemented",
    "algorithm_type": "jaxgen implements the deterministic DPM-Solver++ (data prediction)",
    "solver_order": "the third-order multistep update is not implemented",
    "use_karras_sigmas": "only the training timesteps' own sigmas are implemented",
}


def _validate(cls: str, p: dict) -> None:
  def bad(key, expected):
    hint = f" ({_HINTS[key]})" if key in _HINTS else ""
    raise ValueError(f"{cls} config: {key}={p[key]!r} is not supported; expected "
                     f"{expected}{hint}")

  for key, allowed in _CHOICES.items():
    allowed = _CLASS_CHOICES.get((cls, key), allowed)
    if key in p and not (p[key] in allowed and type(p[key]) is type(allowed[0])):
      if key == "beta_schedule" and p.get("trained_betas") is not None:
        continue  # the betas are given: the schedule name is not used
      bad(key, f"one of {allowed}")
  predictions = _CLASS_CHOICES.get((cls, "prediction_type"), PREDICTION_TYPES)
  if p["prediction_type"] not in predictions:
    bad("prediction_type", f"one of {predictions}")
  if cls == "DDPMScheduler" and p["variance_type"] not in _DDPM_VARIANCE:
    bad("variance_type", f"one of {tuple(_DDPM_VARIANCE)} (learned variances need a model "
        "with 2C output channels, fixed_large_log gives NaN in diffusers)")
  if cls == "DPMSolverMultistepScheduler" and p["variance_type"] in ("learned", "learned_range"):
    bad("variance_type", "null: learned variances (a model with 2C output channels) are not "
        "supported")
  for key in _BOOLS:
    if key in p and not isinstance(p[key], bool):
      bad(key, "true or false")
  T = p["num_train_timesteps"]
  if not isinstance(T, int) or isinstance(T, bool) or T < 2:
    bad("num_train_timesteps", "an integer >= 2")
  if not isinstance(p["steps_offset"], int) or isinstance(p["steps_offset"], bool):
    bad("steps_offset", "an integer")
  for key in ("beta_start", "beta_end", "clip_sample_range", "lambda_min_clipped"):
    if key in p and not _is_number(p[key]):
      bad(key, "a number")
  if p.get("clip_sample_range", 1.0) <= 0:
    bad("clip_sample_range", "a positive number")
  tb = p["trained_betas"]
  if tb is not None and (not isinstance(tb, tuple) or len(tb) != T
                         or not all(_is_number(b) and 0 < b <= 1 for b in tb)):
    bad("trained_betas", f"null or a list of num_train_timesteps={T} numbers in (0, 1]")
  if tb is None and p["beta_schedule"] != "squaredcos_cap_v2" and not (
      0 < p["beta_start"] <= p["beta_end"] < 1):
    bad("beta_start", f"0 < beta_start <= beta_end < 1 (beta_end={p['beta_end']!r})")


@functools.lru_cache(maxsize=256)
def _resolve(cls: str, given: tuple) -> dict:
  """The class's __init__ arguments: its defaults updated by the given keys; validated."""
  _check_class(cls)
  unknown = sorted(k for k, _ in given if k not in _ALL_KEYS)
  if unknown:
    raise ValueError(f"unknown {cls} config key(s) {unknown}: no diffusers scheduler has them "
                     f"(known keys of {cls}: {sorted(DEFAULTS[cls])}); remove them or fix the "
                     "spelling")
  p = dict(DEFAULTS[cls])
  p.update((k, v) for k, v in given if k in p)
  _validate(cls, p)
  return p


@functools.lru_cache(maxsize=64)
def _schedule(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas,
              rescale, dpm_clamp) -> Schedule:
  # Concrete arrays even when first asked for inside a jit trace (the result is cached).
  with jax.ensure_compile_time_eval():
    return _make_schedule(num_train_timesteps, beta_start, beta_end, beta_schedule,
                          trained_betas, rescale, dpm_clamp)


def _make_schedule(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas,
                   rescale, dpm_clamp) -> Schedule:
  if trained_betas is not None:
    betas = np.asarray(trained_betas, np.float32)
    if rescale:
      betas = rescale_betas_zero_terminal_snr(betas)
    s = schedule_from_betas(betas)
  else:
    s = make_schedule(BETA_SCHEDULES[beta_schedule], num_train_timesteps, beta_start=beta_start,
                      beta_end=beta_end, rescale_zero_terminal_snr=rescale)
  if rescale and dpm_clamp:
    # diffusers' DPM-Solver replaces the exact zero of alpha_bar_{T-1} by 2^-24, so that
    # lambda stays finite at the first step.
    ac = np.asarray(s.alphas_cumprod, np.float32).copy()
    ac[-1] = 2.0 ** -24
    s = s.replace(alphas_cumprod=jnp.asarray(ac), sqrt_alphas_cumprod=jnp.asarray(np.sqrt(ac)),
                  sqrt_one_minus_alphas_cumprod=jnp.asarray(np.sqrt(np.float32(1) - ac)))
  return s


@dataclasses.dataclass(frozen=True)
class SchedulerConfig:
  """A diffusers scheduler config: the class name and the keys the config gave.

  Frozen and hashable, so it can be a static argument of ``jax.jit``. Build it with
  :meth:`from_diffusers_dict` or :func:`load_scheduler_config`; ``params`` holds the class's
  resolved arguments (defaults filled in).
  """
  class_name: str
  given: tuple = ()  # ((key, value), ...) sorted; values made hashable

  def __post_init__(self):
    _check_class(self.class_name)
    given = self.given.items() if isinstance(self.given, dict) else self.given
    items = tuple(sorted((str(k), _frozen(v)) for k, v in given))
    object.__setattr__(self, "given", items)
    _resolve(self.class_name, items)

  # ------------------------------------------------------------------ construction
  @classmethod
  def from_diffusers_dict(cls, d: dict, class_name: str | None = None) -> "SchedulerConfig":
    """From a parsed ``scheduler_config.json`` (or a diffusers ``scheduler.config``).

    Private keys (``_diffusers_version``, ...) are dropped, and so are the keys listed in
    ``_use_default_values`` (diffusers' record of defaults it filled in), as diffusers'
    ``from_config`` does. ``class_name`` overrides ``_class_name``.

    Raises:
      ValueError: no or an unsupported class name, an unknown key, an unsupported value.
    """
    if not isinstance(d, dict):
      raise TypeError(f"expected the config as a dict, got {type(d).__name__}")
    name = class_name or d.get("_class_name")
    if name is None:
      raise ValueError("the config has no _class_name; pass class_name=, one of "
                       f"{SUPPORTED_SCHEDULERS}")
    _check_class(name)
    defaulted = set(d.get("_use_default_values", ()))
    return cls(name, tuple((k, v) for k, v in d.items()
                           if not str(k).startswith("_") and k not in defaulted))

  def with_class(self, class_name: str) -> "SchedulerConfig":
    """The same config read by another class, like diffusers' ``Other.from_config(config)``:
    the given keys carry over, the other class's defaults fill the rest."""
    return SchedulerConfig(class_name, self.given)

  def with_options(self, **changes) -> "SchedulerConfig":
    """A copy with keys set (``from_config(config, key=value)``), e.g.
    ``timestep_spacing="trailing"``."""
    return SchedulerConfig(self.class_name, tuple(dict(self.given, **changes).items()))

  def to_diffusers_dict(self) -> dict:
    """What diffusers' ``scheduler.config`` holds: ``_class_name``, every argument of the
    class, the given keys of other classes, and ``_use_default_values`` (the keys left at
    their defaults; ``save_config`` does not write it)."""
    thaw = lambda v: [thaw(x) for x in v] if isinstance(v, tuple) else v
    given = dict(self.given)
    out = {"_class_name": self.class_name}
    out.update((k, thaw(v)) for k, v in sorted({**given, **self.params}.items()))
    out["_use_default_values"] = sorted(k for k in DEFAULTS[self.class_name] if k not in given)
    return out

  # ------------------------------------------------------------------ properties
  @property
  def params(self) -> types.MappingProxyType:
    return types.MappingProxyType(_resolve(self.class_name, self.given))

  @property
  def num_train_timesteps(self) -> int:
    return self.params["num_train_timesteps"]

  @property
  def prediction_type(self) -> str:
    return self.params["prediction_type"]

  @property
  def method(self) -> str:
    """The jaxgen sampler: ``ddim``, ``ddpm``, ``dpmpp_2m`` or ``plms``."""
    return _SAMPLERS[self.class_name]

  @property
  def order(self) -> int:
    """diffusers' ``scheduler.order`` (1 for the four classes): img2img starts at
    ``t_start * order``."""
    return 1

  @property
  def init_noise_sigma(self) -> float:
    """The std of x_T (1 for these variance-preserving schedulers)."""
    return 1.0

  @property
  def final_alpha_bar(self) -> float:
    """alpha_bar past the last step: ``alphas_cumprod[0]`` under ``set_alpha_to_one=False``
    (DDIM, PNDM), else 1."""
    if self.class_name in ("DDIMScheduler", "PNDMScheduler") and not self.params[
        "set_alpha_to_one"]:
      return float(np.asarray(self.schedule().alphas_cumprod)[0])
    return 1.0

  # ------------------------------------------------------------------ numerics
  def schedule(self) -> Schedule:
    """The jaxgen :class:`Schedule` of the config's betas (cached). For DPM-Solver with
    ``rescale_betas_zero_snr``, alpha_bar_{T-1} is 2^-24 instead of 0, as in diffusers."""
    p = self.params
    return _schedule(p["num_train_timesteps"], p["beta_start"], p["beta_end"],
                     p["beta_schedule"], p["trained_betas"], p.get("rescale_betas_zero_snr", False),
                     self.class_name == "DPMSolverMultistepScheduler")

  def timesteps(self, num_inference_steps: int) -> np.ndarray:
    """The int32 table equal to diffusers' ``scheduler.timesteps`` after
    ``set_timesteps(num_inference_steps)``: DDIM/DDPM as :func:`jaxgen.diffusion.timesteps`,
    DPM-Solver as :func:`jaxgen.diffusion.dpm_solver_timesteps`, PNDM the PLMS table (n + 1
    entries, the second one repeated)."""
    p, n = self.params, int(num_inference_steps)
    T, spacing, offset = p["num_train_timesteps"], p["timestep_spacing"], p["steps_offset"]
    if self.class_name == "DPMSolverMultistepScheduler":
      return dpm_solver_timesteps(T, n, spacing, offset, self._dpm_last_timestep())
    table = timesteps(T, n, spacing, offset)
    return plms_table(table) if self.class_name == "PNDMScheduler" else table

  def _dpm_last_timestep(self) -> int:
    lam_min = self.params["lambda_min_clipped"]
    T = self.num_train_timesteps
    if lam_min == -math.inf:
      return T
    # lambda_t = log(alpha_t) - log(sigma_t) in float32, as diffusers computes it; timesteps
    # whose lambda is below lambda_min_clipped are cut from the noisy end.
    ac = np.asarray(self.schedule().alphas_cumprod, np.float32)
    lam = np.log(np.sqrt(ac)) - np.log(np.sqrt(np.float32(1) - ac))
    return T - int(np.searchsorted(lam[::-1], np.float32(lam_min), side="left"))

  def add_noise(self, x0: jax.Array, noise: jax.Array, t) -> jax.Array:
    """diffusers' ``scheduler.add_noise``: x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) noise
    (:func:`jaxgen.diffusion.q_sample`); t an int scalar or [B]."""
    return q_sample(self.schedule(), x0, t, noise)

  def sample(self, denoise_fn, x_T, key, num_inference_steps, **kwargs):
    """:func:`scheduler_sample` with this config."""
    return scheduler_sample(self, denoise_fn, x_T, key, num_inference_steps, **kwargs)


def load_scheduler_config(path) -> SchedulerConfig:
  """Reads a ``scheduler_config.json``: the file itself, a folder holding it, or a pipeline
  folder with it in ``scheduler/``.

  Raises:
    FileNotFoundError: none of those exists. ValueError: not JSON, or an unsupported config.
  """
  path = os.fspath(path)
  candidates = [path] if os.path.isfile(path) else [
      os.path.join(path, CONFIG_NAME), os.path.join(path, "scheduler", CONFIG_NAME)]
  for c in candidates:
    if os.path.isfile(c):
      try:
        with open(c, encoding="utf-8") as f:
          d = json.load(f)
      except json.JSONDecodeError as e:
        raise ValueError(f"{c} is not valid JSON: {e}") from None
      try:
        return SchedulerConfig.from_diffusers_dict(d)
      except (ValueError, TypeError) as e:
        raise type(e)(f"{c}: {e}") from None
  raise FileNotFoundError(f"no scheduler config at {path!r}: expected a {CONFIG_NAME} file, a "
                          f"folder with one, or a pipeline folder with scheduler/{CONFIG_NAME} "
                          f"(looked for {candidates})")


def scheduler_sample(config: SchedulerConfig, denoise_fn: Callable, x_T: jax.Array,
                     key: jax.Array | None, num_inference_steps: int, *, start: int = 0,
                     eta=0.0, noise=None, return_trajectory: bool = False):
  """Runs the config's diffusers sampling loop over ``config.timesteps(n)[start:]``, as one
  ``lax.scan``.

  What it reproduces, per class (from diffusers 0.42.1's ``step``):

  * DDIM: ``ddim_step`` to ``prev_t = t - T // n``, negative meaning ``final_alpha_bar``
    (``set_alpha_to_one``); ``clip_sample`` with ``clip_sample_range``; ``eta``.
  * DDPM: ancestral steps to the next entry of the full table, with ``variance_type``, and
    noise whenever t > 0 (also on a last step with t > 0).
  * DPM-Solver++: (2M) steps to the next entry (the last to sigma = 0, or to t = 0 for
    ``final_sigmas_type="sigma_min"``); the run's first step is first order (the multistep
    state starts fresh at ``start``), and the last one of the full table when
    ``final_sigmas_type="zero"``, ``euler_at_final``, or ``lower_order_final`` with fewer
    than 15 timesteps.
  * PNDM: PLMS (:mod:`jaxgen.diffusion.plms`) with ``prev_t = t - T // n``, its warm-up counted
    from ``start``.

  Args:
    config: the scheduler config (static under jit).
    denoise_fn: ``(x_t [B, ...], t [B] int32) -> model_output`` in the config's
      ``prediction_type`` (any guidance transform of :mod:`jaxgen.diffusion.guidance`).
    x_T: the starting sample [B, ...]: noise times ``init_noise_sigma`` (1), or for img2img
      ``config.add_noise(x0, noise, table[start])``.
    key: PRNG key for DDIM with eta > 0 and DDPM (entry i of the run draws from
      ``fold_in(split(key)[1], i)``); None for the deterministic samplers.
    num_inference_steps: n (static).
    start: index into the full table where the run starts (static): diffusers' img2img runs
      ``scheduler.timesteps[t_start * scheduler.order:]``, so pass ``t_start * config.order``.
    eta: DDIM's stochasticity (ignored by the other classes, as diffusers' pipelines do);
      traced values compile once.
    noise: per-step noise [L, B, ...] (L = len(table) - start) instead of drawing from key
      (DDIM, DDPM), to match a reference bit for bit.
    return_trajectory: also return x after every entry, [L, B, ...].
  Returns:
    x after the last entry [B, ...] (and the trajectory).
  """
  if not isinstance(config, SchedulerConfig):
    raise TypeError(f"config must be a SchedulerConfig, got {type(config).__name__}")
  n, start = int(num_inference_steps), int(start)
  full = config.timesteps(n).astype(np.int64)
  if not 0 <= start <= full.size:
    raise ValueError(f"start={start} must lie in [0, {full.size}], the {config.class_name} "
                     f"table for {n} steps having {full.size} entries")
  x_T = jnp.asarray(x_T)
  table, p, T = full[start:], config.params, config.num_train_timesteps
  nxt = np.append(full[1:], -1)[start:]
  common = dict(prediction_type=p["prediction_type"], return_trajectory=return_trajectory)
  if config.class_name in ("DDIMScheduler", "DDPMScheduler"):
    ddim = config.class_name == "DDIMScheduler"
    extra = dict(eta=eta, final_alpha_bar=config.final_alpha_bar) if ddim else dict(
        variance_type=_DDPM_VARIANCE[p["variance_type"]], last_step_noise=True)
    return sample(denoise_fn, config.schedule(), key, x_T.shape, table.astype(np.int32),
                  method=config.method, prev_table=(table - T // n if ddim else nxt)
                  .astype(np.int32), clip_sample=p["clip_sample"],
                  clip_sample_range=p["clip_sample_range"], x_T=x_T, noise=noise, **extra,
                  **common)
  if noise is not None:
    raise ValueError(f"{config.class_name} samples deterministically: it takes no noise")
  if config.class_name == "PNDMScheduler":
    return plms_sample(denoise_fn, config.schedule(), x_T, table.astype(np.int32),
                       prev_table=(table - T // n).astype(np.int32),
                       final_alpha_bar=config.final_alpha_bar, **common)
  if p["final_sigmas_type"] == "sigma_min":
    nxt[-1:] = 0  # the last step ends at sigma(t = 0) instead of 0
  first = np.zeros(table.shape, bool)
  if p["solver_order"] == 1:
    first[:] = True
  elif table.size and (p["final_sigmas_type"] == "zero" or p["euler_at_final"]
                       or (p["lower_order_final"] and full.size < 15)):
    first[-1] = True
  return dpmpp_2m_sample(denoise_fn, config.schedule(), x_T, table.astype(np.int32),
                         prev_table=nxt.astype(np.int32), solver_type=p["solver_type"],
                         lower_order_final=False, first_order=first, **common)
