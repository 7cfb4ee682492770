"""Import / export of diffusers `AutoencoderKL` checkpoints (config.json + safetensors), no torch.

The Flax parameter tree of `jaxgen.nn.autoencoder_kl.AutoencoderKL` mirrors diffusers' state
dict: `("encoder", "down_blocks_0", "resnets_1", "conv1", "kernel")` is the key
`encoder.down_blocks.0.resnets.1.conv1.weight`, with the renaming and layouts of
`jaxgen.interop.diffusers_unet2d` (conv OIHW <-> HWIO, linear [out, in] <-> [in, out],
GroupNorm weight <-> scale). Checkpoints converted from the original LDM / SD code name the
mid-block attention `query`, `key`, `value`, `proj_attn` (sometimes as 1x1 convs); they are
accepted on import, as diffusers does. Only safetensors are read: a pickle `.bin` is refused.
"""
from __future__ import annotations

import json
import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jaxgen.interop.diffusers_unet2d import (CONFIG_NAME, DIFFUSERS_VERSION, WEIGHTS_NAME,
                                             _load_weights, _normalize_legacy_key,
                                             _to_flax_layout, flax_path_to_diffusers_key)
from jaxgen.interop.layout import to_torch_state_dict
from jaxgen.nn.autoencoder_kl import (AutoencoderKL, AutoencoderKLConfig,
                                      autoencoder_kl_param_shapes)

SUBFOLDER = "vae"  # the component's folder inside a diffusers pipeline


def _expected_keys(config: AutoencoderKLConfig) -> dict[str, tuple[tuple[str, ...], Any]]:
  """diffusers key -> (flax path, ShapeDtypeStruct) of `AutoencoderKL(config)`."""
  shapes = traverse_util.flatten_dict(autoencoder_kl_param_shapes(AutoencoderKL(config)))
  return {flax_path_to_diffusers_key(p): (p, s) for p, s in shapes.items()}


def _listed(keys: list[str]) -> str:
  return f"{keys[:20]}{' ...' if len(keys) > 20 else ''}"


def autoencoder_kl_state_dict_to_params(state_dict: Mapping[str, np.ndarray],
                                        config: AutoencoderKLConfig) -> dict:
  """Converts a diffusers AutoencoderKL state dict (numpy, any float dtype) into params.

  Args:
    state_dict: diffusers key -> array, e.g. from `safetensors.numpy.load_file`; legacy
      attention names (`query`, `key`, `value`, `proj_attn`) are renamed.
    config: the architecture the weights belong to.

  Returns:
    The float32 parameter tree of `AutoencoderKL(config)` (numpy arrays).

  Raises:
    ValueError: keys missing or unexpected (all listed), a non-float array, or a shape
      mismatch.
  """
  by_key = _expected_keys(config)
  renamed: dict[str, str] = {}
  for k in state_dict:
    nk = _normalize_legacy_key(k)
    if nk in renamed:
      raise ValueError(f"state dict has both {renamed[nk]!r} and {k!r} for parameter {nk!r}")
    renamed[nk] = k
  missing = sorted(set(by_key) - set(renamed))
  unexpected = sorted(renamed[k] for k in set(renamed) - set(by_key))
  if missing or unexpected:
    raise ValueError("diffusers AutoencoderKL weights do not match the config: "
                     f"{len(missing)} missing key(s) {_listed(missing)}, "
                     f"{len(unexpected)} unexpected key(s) {_listed(unexpected)}")
  flat, bad = {}, []
  for key, (path, shape) in sorted(by_key.items()):
    arr = np.asarray(state_dict[renamed[key]])
    if not np.issubdtype(arr.dtype, np.floating) and arr.dtype.name != "bfloat16":
      raise ValueError(f"diffusers key {key!r} has non-float dtype {arr.dtype}")
    flat[path] = _to_flax_layout(arr.astype(np.float32), path[-1], shape.shape)
    if flat[path].shape != tuple(shape.shape):
      bad.append(f"{key}: stored {tuple(arr.shape)} -> {flat[path].shape}, model expects "
                 f"{tuple(shape.shape)}")
  if bad:
    raise ValueError("diffusers AutoencoderKL weights do not match the config (flax layouts "
                     f"shown; does config.json belong to these weights?): {len(bad)} shape "
                     "mismatch(es): " + "; ".join(bad[:20]) + (" ..." if len(bad) > 20 else ""))
  return traverse_util.unflatten_dict(flat)


def autoencoder_kl_params_to_state_dict(params: Any, dtype: Any = np.float32
                                        ) -> dict[str, np.ndarray]:
  """AutoencoderKL params -> a diffusers state dict (PyTorch layouts, contiguous numpy).

  Args:
    params: the parameter tree, with or without a top "params" level.
    dtype: storage dtype (np.float16 for a half-precision checkpoint).
  """
  return to_torch_state_dict(params, flax_path_to_diffusers_key, dtype)


def _resolve_folder(path: str | os.PathLike) -> str:
  path = os.fspath(path)
  expected = (f"a diffusers AutoencoderKL folder with {CONFIG_NAME} and {WEIGHTS_NAME} (or a "
              f"pipeline folder with {SUBFOLDER}/)")
  if not os.path.isdir(path):
    raise FileNotFoundError(f"{path!r} is not a directory; expected {expected}")
  if not os.path.exists(os.path.join(path, CONFIG_NAME)):
    if os.path.isdir(os.path.join(path, SUBFOLDER)):
      path = os.path.join(path, SUBFOLDER)
    if not os.path.exists(os.path.join(path, CONFIG_NAME)):
      raise FileNotFoundError(f"no {CONFIG_NAME} in {path!r}; expected {expected}")
  return path


def _check_safetensors(folder: str, variant: str | None) -> None:
  """Refuses a folder without safetensors weights, naming what it holds instead."""
  stem = "diffusion_pytorch_model" + (f".{variant}" if variant else "")
  if (os.path.exists(os.path.join(folder, stem + ".safetensors"))
      or os.path.exists(os.path.join(folder, stem + ".safetensors.index.json"))):
    return
  present = sorted(os.listdir(folder))
  hint = ""
  if any(name.endswith(".bin") for name in present):
    hint = (" The folder holds a pickle .bin checkpoint, which jaxgen never loads: convert it "
            "once with diffusers, `AutoencoderKL.from_pretrained(p).save_pretrained(p, "
            "safe_serialization=True)`.")
  raise FileNotFoundError(f"no {stem}.safetensors in {folder!r}: the AutoencoderKL (vae) "
                          f"weights must be safetensors.{hint} Found {present}")


def load_diffusers_autoencoder_kl(path: str | os.PathLike, *, variant: str | None = None,
                                  dtype: Any = jnp.float32,
                                  ignore_unknown_config_keys: bool = False
                                  ) -> tuple[AutoencoderKL, dict]:
  """Loads a diffusers `AutoencoderKL` folder as a Flax `AutoencoderKL` and its parameters.

  Args:
    path: a folder with `config.json` and `diffusion_pytorch_model.safetensors` (as written
      by `save_pretrained`), or a pipeline folder (e.g. a Stable Diffusion download) with
      them in `vae/`. Sharded checkpoints (`.safetensors.index.json`) are accepted.
    variant: weight file variant, e.g. "fp16" for `diffusion_pytorch_model.fp16.safetensors`.
    dtype: computation dtype of the returned module; parameters are float32 whatever the
      stored precision.
    ignore_unknown_config_keys: drop config keys that AutoencoderKL does not know.

  Returns:
    (model, params) with `model.apply({"params": params}, x, method=AutoencoderKL.encode)`.

  Raises:
    FileNotFoundError: the folder, its config or its safetensors weights are missing (a
      `.bin`-only folder is refused).
    ValueError: unreadable config or weights, unsupported option, key or shape mismatch.
  """
  folder = _resolve_folder(path)
  config_file = os.path.join(folder, CONFIG_NAME)
  try:
    with open(config_file) as f:
      config_dict = json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f"could not parse {config_file!r} as JSON: {e}") from e
  config = AutoencoderKLConfig.from_diffusers_dict(config_dict,
                                                   ignore_unknown=ignore_unknown_config_keys)
  _check_safetensors(folder, variant)
  params = autoencoder_kl_state_dict_to_params(_load_weights(folder, variant), config)
  return AutoencoderKL(config, dtype=dtype), jax.tree_util.tree_map(jnp.asarray, params)


def save_diffusers_autoencoder_kl(path: str | os.PathLike,
                                  model: AutoencoderKL | AutoencoderKLConfig, params: Any, *,
                                  dtype: Any = np.float32) -> None:
  """Writes `config.json` + `diffusion_pytorch_model.safetensors` that diffusers'
  `AutoencoderKL.from_pretrained(path)` loads.

  Args:
    path: output folder (created if needed; files of the same names are replaced).
    model: the AutoencoderKL (or its config); its `scaling_factor` / `shift_factor` are
      written as they are.
    params: its parameter tree (with or without a top "params" level).
    dtype: storage dtype of the weights (np.float32 or np.float16).

  Raises:
    TypeError: `model` is not an AutoencoderKL or its config.
    ValueError: the params belong to another architecture (keys or shapes differ).
  """
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel
  config = model.config if isinstance(model, AutoencoderKL) else model
  if not isinstance(config, AutoencoderKLConfig):
    raise TypeError(f"save_diffusers_autoencoder_kl expects an AutoencoderKL or "
                    f"AutoencoderKLConfig, got {type(model).__name__}")
  state = autoencoder_kl_params_to_state_dict(params, dtype)
  expected = _expected_keys(config)
  missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
  if missing or extra:
    raise ValueError(f"params do not match the config: missing {_listed(missing)}, "
                     f"unexpected {_listed(extra)}")
  bad = [f"{k}: {state[k].shape}" for k, (_, s) in sorted(expected.items())
         if np.prod(state[k].shape) != np.prod(s.shape)]
  if bad:
    raise ValueError(f"params do not match the config: shape mismatch(es) {_listed(bad)}")
  os.makedirs(path, exist_ok=True)
  d = {"_class_name": "AutoencoderKL", "_diffusers_version": DIFFUSERS_VERSION}
  d.update(config.to_diffusers_dict())
  with open(os.path.join(path, CONFIG_NAME), "w") as f:
    json.dump(d, f, indent=2, sort_keys=True)
    f.write("\n")
  save_file(state, os.path.join(path, WEIGHTS_NAME), metadata={"format": "pt"})
