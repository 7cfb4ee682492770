"""Noise schedules as pytrees of precomputed arrays.

A :class:`Schedule` is a frozen ``flax.struct.dataclass``: it is passed into every function
as an argument (never closed over), so it jits, vmaps and shards like any array.

Indexing follows diffusers: timesteps are 0-based, index ``t`` is the paper's step ``t + 1``,
and ``alphas_cumprod[t] = prod_{s <= t} (1 - betas[s])`` (Ho et al. 2020, eq. 4 with the
product to ``t``, not to ``T`` as a lecture slide has it).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

SCHEDULE_KINDS = ("linear", "scaled_linear", "cosine")


@struct.dataclass
class Schedule:
  """Precomputed diffusion coefficients, all float32 arrays of shape [T]."""
  betas: jax.Array                          # [T] beta_t
  alphas: jax.Array                         # [T] alpha_t = 1 - beta_t
  alphas_cumprod: jax.Array                 # [T] alpha_bar_t
  alphas_cumprod_prev: jax.Array            # [T] alpha_bar_{t-1}, 1 at t = 0
  sqrt_alphas_cumprod: jax.Array            # [T]
  sqrt_one_minus_alphas_cumprod: jax.Array  # [T]
  posterior_variance: jax.Array             # [T] beta~_t of Ho et al. eq. 7
  posterior_log_variance_clipped: jax.Array # [T] log beta~_t, with beta~_0 := beta~_1
  posterior_mean_coef1: jax.Array           # [T] coefficient of x_0 in eq. 7
  posterior_mean_coef2: jax.Array           # [T] coefficient of x_t in eq. 7

  @property
  def num_timesteps(self) -> int:
    return self.betas.shape[-1]


def _cosine_betas(num_timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
  """Nichol & Dhariwal 2021, eq. 17: alpha_bar(t) = cos^2(((t/T + s) / (1 + s)) pi/2), betas
  from consecutive ratios, capped at 0.999 (diffusers' ``squaredcos_cap_v2``)."""
  def alpha_bar(u):
    return math.cos((u + s) / (1 + s) * math.pi / 2) ** 2
  betas = [min(1 - alpha_bar((i + 1) / num_timesteps) / alpha_bar(i / num_timesteps), max_beta)
           for i in range(num_timesteps)]
  return np.asarray(betas, dtype=np.float64).astype(np.float32)


def rescale_betas_zero_terminal_snr(betas) -> np.ndarray:
  """Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps are Flawed", Alg. 1.

  Shifts and scales sqrt(alpha_bar) so that its last value is exactly 0 (zero terminal SNR)
  while its first value is unchanged, then recovers the betas. Computed in float32 in the same
  order of operations as the reference implementation, for parity.
  """
  betas = np.asarray(betas, np.float32)
  alphas_bar_sqrt = np.sqrt(_cumprod_f32(np.float32(1) - betas))
  first, last = alphas_bar_sqrt[0].copy(), alphas_bar_sqrt[-1].copy()
  alphas_bar_sqrt = (alphas_bar_sqrt - last) * (first / (first - last))
  alphas_bar = alphas_bar_sqrt ** 2
  alphas = np.concatenate([alphas_bar[:1], alphas_bar[1:] / alphas_bar[:-1]])
  return (np.float32(1) - alphas).astype(np.float32)


def _cumprod_f32(x) -> np.ndarray:
  return np.cumprod(np.asarray(x, np.float32).astype(np.float64)).astype(np.float32)


def schedule_from_betas(betas) -> Schedule:
  """Builds a :class:`Schedule` from a [T] array of betas in (0, 1].

  The cumulative product is accumulated in float64 and rounded to float32 per entry, as
  torch's CPU ``cumprod`` does, so ``alphas_cumprod`` matches diffusers bit for bit.
  """
  betas = np.asarray(betas, dtype=np.float32)
  if betas.ndim != 1 or betas.size < 1:
    raise ValueError(f"betas must be a non-empty 1-D array, got shape {betas.shape}")
  if not np.all(np.isfinite(betas)) or np.any(betas <= 0) or np.any(betas > 1):
    raise ValueError("betas must be finite and in (0, 1]; got min "
                     f"{betas.min()!r}, max {betas.max()!r}")
  alphas = (np.float32(1) - betas).astype(np.float32)
  ac = _cumprod_f32(alphas)
  ac_prev = np.concatenate([np.ones(1, np.float32), ac[:-1]])
  # Coefficients of the Gaussian posterior q(x_{t-1} | x_t, x_0), Ho et al. eq. 6-7, in float64.
  b, a, ac64, acp64 = (x.astype(np.float64) for x in (betas, alphas, ac, ac_prev))
  with np.errstate(divide="ignore", invalid="ignore"):
    post_var = b * (1.0 - acp64) / (1.0 - ac64)
    coef1 = b * np.sqrt(acp64) / (1.0 - ac64)
    coef2 = (1.0 - acp64) * np.sqrt(a) / (1.0 - ac64)
  # beta~_0 = 0: the log is clipped to beta~_1 as in Ho et al.'s code (the t = 0 term is the
  # decoder, never a Gaussian with this variance).
  post_logvar = np.log(np.append(post_var[1], post_var[1:]) if b.size > 1 else post_var)
  f32 = lambda x: jnp.asarray(np.asarray(x, np.float64).astype(np.float32))
  return Schedule(
      betas=f32(betas), alphas=f32(alphas), alphas_cumprod=f32(ac),
      alphas_cumprod_prev=f32(ac_prev), sqrt_alphas_cumprod=f32(np.sqrt(ac64)),
      sqrt_one_minus_alphas_cumprod=f32(np.sqrt(1.0 - ac64)),
      posterior_variance=f32(post_var), posterior_log_variance_clipped=f32(post_logvar),
      posterior_mean_coef1=f32(coef1), posterior_mean_coef2=f32(coef2))


def make_schedule(kind: str, num_timesteps: int = 1000, *, beta_start: float = 1e-4,
                  beta_end: float = 0.02, rescale_zero_terminal_snr: bool = False) -> Schedule:
  """Makes a beta schedule.

  Args:
    kind: ``linear`` (Ho et al. 2020: linspace(beta_start, beta_end, T)), ``scaled_linear``
      (linspace(sqrt(beta_start), sqrt(beta_end), T)^2, as in Stable Diffusion) or ``cosine``
      (Nichol & Dhariwal 2021 eq. 17, capped at 0.999; equal to diffusers'
      ``squaredcos_cap_v2``; ignores beta_start / beta_end).
    num_timesteps: T, the number of training timesteps.
    beta_start, beta_end: first and last beta of the linear kinds.
    rescale_zero_terminal_snr: rescale so that alpha_bar_{T-1} = 0 (Lin et al. 2023). Pair it
      with ``v_prediction``: with zero terminal SNR an epsilon model cannot recover x_0 at t=T-1.

  Returns:
    A :class:`Schedule` with float32 arrays of shape [T].
  """
  if kind not in SCHEDULE_KINDS:
    raise ValueError(f"unknown schedule kind {kind!r}; expected one of {SCHEDULE_KINDS}")
  if int(num_timesteps) != num_timesteps or num_timesteps < 2:
    raise ValueError(f"num_timesteps must be an integer >= 2, got {num_timesteps!r}")
  if kind in ("linear", "scaled_linear") and not 0 < beta_start <= beta_end < 1:
    raise ValueError("expected 0 < beta_start <= beta_end < 1, got "
                     f"beta_start={beta_start}, beta_end={beta_end}")
  if kind == "linear":
    betas = np.linspace(beta_start, beta_end, num_timesteps, dtype=np.float64)
    betas = betas.astype(np.float32)
  elif kind == "scaled_linear":
    betas = np.linspace(beta_start ** 0.5, beta_end ** 0.5, num_timesteps, dtype=np.float64)
    betas = betas.astype(np.float32) ** 2
  else:
    betas = _cosine_betas(num_timesteps)
  if rescale_zero_terminal_snr:
    betas = rescale_betas_zero_terminal_snr(betas)
  return schedule_from_betas(betas)


def respace_schedule(schedule: Schedule, table) -> Schedule:
  """The Markov chain on a subset of timesteps (Nichol & Dhariwal 2021, sec. 4).

  Keeps alpha_bar at the chosen timesteps and sets beta'_i = 1 - alpha_bar_{t_i} /
  alpha_bar_{t_{i-1}}, so ancestral sampling with fewer steps stays a valid DDPM.
  ``ddpm_step(..., prev_t=...)`` computes the same chain on the fly; this function makes it an
  explicit schedule (index i of the result is timestep ``sorted(table)[i]``).

  Args:
    schedule: the training schedule.
    table: timesteps to keep (any order, unique, in [0, T-1]).
  """
  t = np.unique(np.asarray(table, dtype=np.int64))
  if t.size != np.asarray(table).size:
    raise ValueError("respace_schedule: the timestep table has repeated entries")
  if t[0] < 0 or t[-1] >= schedule.num_timesteps:
    raise ValueError(f"timesteps must lie in [0, {schedule.num_timesteps - 1}], got "
                     f"[{t[0]}, {t[-1]}]")
  ac = np.asarray(schedule.alphas_cumprod, np.float64)[t]
  prev = np.concatenate([[1.0], ac[:-1]])
  return schedule_from_betas((1.0 - ac / prev).astype(np.float32))
