"""Flax <-> PyTorch weight layouts shared by the importers (diffusers, transformers).

Flax stores a dense kernel as [in, out] and a convolution kernel as HWIO; PyTorch stores
[out, in] and OIHW."""
from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import numpy as np
from flax import traverse_util


def to_torch_state_dict(params: Any, key_fn: Callable[[tuple], str],
                        dtype: Any = np.float32) -> dict[str, np.ndarray]:
  """A flax parameter tree (with or without a top "params" level) as a PyTorch state dict:
  ``key_fn(flax path) -> key``, kernels transposed to PyTorch's layouts, contiguous numpy
  arrays of `dtype`."""
  if isinstance(params, Mapping) and set(params) == {"params"}:
    params = params["params"]
  out = {}
  for path, value in traverse_util.flatten_dict(dict(params)).items():
    arr = np.asarray(jax.device_get(value), dtype=np.float32)
    if path[-1] == "kernel" and arr.ndim == 4:
      arr = arr.transpose(3, 2, 0, 1)
    elif path[-1] == "kernel" and arr.ndim == 2:
      arr = arr.T
    out[key_fn(path)] = np.array(arr, dtype=dtype, order="C")  # a 0-d array stays 0-d
  return out
