"""Import / export of diffusers `AutoencoderKL` folders (config.json + safetensors), no torch.

Keys map as for the U-Net (`jaxgen.interop.diffusers_unet2d`): `encoder.down_blocks.0.
resnets.1.conv1.weight` is the flax path ("encoder", "down_blocks_0", "resnets_1", "conv1",
"kernel"); the legacy mid-attention names (`query`, `key`, `value`, `proj_attn`) of old
checkpoints are accepted, as diffusers does.
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


def autoencoder_kl_state_dict_to_params(state_dict: Mapping[str, np.ndarray],
                                        config: AutoencoderKLConfig) -> dict:
  """A diffusers AutoencoderKL state dict (numpy) as the float32 params of `AutoencoderKL`.

  Raises:
    ValueError: missing / unexpected keys (listed) or shape mismatches.
  """
  shapes = traverse_util.flatten_dict(autoencoder_kl_param_shapes(AutoencoderKL(config)))
  by_key = {flax_path_to_diffusers_key(p): p for p in shapes}
  renamed = {_normalize_legacy_key(k): k for k in state_dict}
  missing = sorted(set(by_key) - set(renamed))
  unexpected = sorted(renamed[k] for k in set(renamed) - set(by_key))
  if missing or unexpected:
    raise ValueError(f"diffusers AutoencoderKL weights do not match the config: {len(missing)} "
                     f"missing key(s) {missing[:20]}, {len(unexpected)} unexpected key(s) "
                     f"{unexpected[:20]}")
  flat, bad = {}, []
  for key, path in by_key.items():
    arr = np.asarray(state_dict[renamed[key]]).astype(np.float32)
    if arr.ndim == 4 and len(shapes[path].shape) == 2 and arr.shape[2:] == (1, 1):
      arr = arr[:, :, 0, 0]  # old checkpoints stored the attention projections as 1x1 convs
    flat[path] = _to_flax_layout(arr, path[-1], shapes[path].shape)
    if flat[path].shape != tuple(shapes[path].shape):
      bad.append(f"{key}: {flat[path].shape} vs {tuple(shapes[path].shape)}")
  if bad:
    raise ValueError("diffusers AutoencoderKL weights do not match the config (flax layouts): "
                     + "; ".join(bad[:20]))
  return traverse_util.unflatten_dict(flat)


def autoencoder_kl_params_to_state_dict(params: Any, dtype: Any = np.float32
                                        ) -> dict[str, np.ndarray]:
  """AutoencoderKL params as a diffusers state dict (PyTorch layouts)."""
  return to_torch_state_dict(params, flax_path_to_diffusers_key, dtype)


def _folder(path) -> str:
  path = os.fspath(path)
  if not os.path.isdir(path):
    raise FileNotFoundError(f"{path!r} is not a directory; expected a diffusers AutoencoderKL "
                            f"folder with {CONFIG_NAME} and {WEIGHTS_NAME} (or a pipeline folder "
                            "with vae/)")
  if not os.path.exists(os.path.join(path, CONFIG_NAME)) and os.path.isdir(os.path.join(path, "vae")):
    return os.path.join(path, "vae")
  return path


def load_diffusers_autoencoder_kl(path: str | os.PathLike, *, variant: str | None = None,
                                  dtype: Any = jnp.float32,
                                  ignore_unknown_config_keys: bool = False
                                  ) -> tuple[AutoencoderKL, dict]:
  """Loads a diffusers `AutoencoderKL` folder (e.g. Stable Diffusion's `vae/`).

  Args:
    path: the folder, or a pipeline folder holding it in `vae/`.
    variant: weight variant, e.g. "fp16".
    dtype: computation dtype; parameters are float32.
    ignore_unknown_config_keys: drop config keys jaxgen does not know.

  Returns:
    (model, params): `model.apply({"params": p}, x, method="encode")` -> (mean, logvar).

  Raises:
    FileNotFoundError: missing folder, config or safetensors weights (a `.bin` is refused).
    ValueError: an unreadable or unsupported config, mismatched weights.
  """
  folder = _folder(path)
  file = os.path.join(folder, CONFIG_NAME)
  if not os.path.exists(file):
    raise FileNotFoundError(f"no {CONFIG_NAME} in {folder!r} (a diffusers AutoencoderKL folder)")
  try:
    with open(file) as f:
      d = json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f"could not parse {file!r} as JSON: {e}") from e
  config = AutoencoderKLConfig.from_diffusers_dict(d, ignore_unknown=ignore_unknown_config_keys)
  params = autoencoder_kl_state_dict_to_params(_load_weights(folder, variant), config)
  return AutoencoderKL(config, dtype=dtype), jax.tree_util.tree_map(jnp.asarray, params)


def save_diffusers_autoencoder_kl(path: str | os.PathLike, model: AutoencoderKL, params: Any, *,
                                  dtype: Any = np.float32) -> None:
  """Writes config.json + diffusion_pytorch_model.safetensors that diffusers'
  `AutoencoderKL.from_pretrained(path)` loads."""
  from safetensors.numpy import save_file
  config = model.config if isinstance(model, AutoencoderKL) else model
  state = autoencoder_kl_params_to_state_dict(params, dtype)
  os.makedirs(path, exist_ok=True)
  d = {"_class_name": "AutoencoderKL", "_diffusers_version": DIFFUSERS_VERSION}
  d.update(config.to_diffusers_dict())
  with open(os.path.join(path, CONFIG_NAME), "w") as f:
    json.dump(d, f, indent=2, sort_keys=True)
    f.write("\n")
  save_file(state, os.path.join(path, WEIGHTS_NAME), metadata={"format": "pt"})
