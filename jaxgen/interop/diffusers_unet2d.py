"""Import / export of diffusers `UNet2DModel` checkpoints (config.json + safetensors), no torch.

The Flax parameter tree of `jaxgen.nn.UNet2D` mirrors diffusers' state dict: a flax path
`("down_blocks_0", "resnets_1", "conv1", "kernel")` is the key
`down_blocks.0.resnets.1.conv1.weight`. Only the numbered children of diffusers'
`ModuleList`s (`down_blocks`, `up_blocks`, `resnets`, `attentions`, `downsamplers`,
`upsamplers`, `to_out`) are renamed `name.i <-> name_i`; layouts change as
  conv weight  [O, I, kh, kw] <-> kernel [kh, kw, I, O]
  linear weight [out, in]     <-> kernel [in, out]
  GroupNorm weight            <-> scale
  Embedding weight            <-> embedding (same layout).
Legacy attention names of old checkpoints (`query`, `key`, `value`, `proj_attn`) are
accepted on import, as diffusers does.
"""
from __future__ import annotations

import json
import os
import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jaxgen.interop.layout import to_torch_state_dict
from jaxgen.nn.unet import UNet2D, UNetConfig, param_shapes

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
DIFFUSERS_VERSION = "0.42.1"  # the diffusers release whose UNet2DModel this mirrors

_LIST_CONTAINERS = ("down_blocks", "up_blocks", "resnets", "attentions", "downsamplers",
                    "upsamplers", "to_out")
_LIST_RE = re.compile(r"^(%s)_(\d+)$" % "|".join(_LIST_CONTAINERS))
_LEGACY_ATTN = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
_LEAF_TO_TORCH = {"kernel": "weight", "scale": "weight", "embedding": "weight", "bias": "bias"}


def flax_path_to_diffusers_key(path: tuple[str, ...]) -> str:
  """Maps a flax parameter path to the diffusers state-dict key.

  Args:
    path: e.g. ("mid_block", "attentions_0", "to_out_0", "kernel").

  Returns:
    e.g. "mid_block.attentions.0.to_out.0.weight".
  """
  *modules, leaf = path
  if leaf not in _LEAF_TO_TORCH:
    raise ValueError(f"unexpected flax parameter name {leaf!r} in {'/'.join(path)}")
  parts = [_LIST_RE.sub(r"\1.\2", m) for m in modules]
  return ".".join(parts + [_LEAF_TO_TORCH[leaf]])


def _to_flax_layout(arr: np.ndarray, leaf: str, expected: tuple[int, ...]) -> np.ndarray:
  if leaf == "kernel" and len(expected) == 4:  # conv OIHW -> HWIO
    if arr.ndim == 4:
      arr = arr.transpose(2, 3, 1, 0)
  elif leaf == "kernel" and len(expected) == 2:  # linear [out, in] -> [in, out]
    if arr.ndim == 4 and arr.shape[2:] == (1, 1):  # old checkpoints stored 1x1 convs
      arr = arr[:, :, 0, 0]
    if arr.ndim == 2:
      arr = arr.T
  return np.ascontiguousarray(arr, dtype=np.float32)


def _normalize_legacy_key(key: str) -> str:
  parts = key.split(".")
  if len(parts) >= 3 and "attentions" in parts and parts[-2] in _LEGACY_ATTN:
    return ".".join(parts[:-2] + [_LEGACY_ATTN[parts[-2]], parts[-1]])
  return key


def state_dict_to_params(state_dict: Mapping[str, np.ndarray], config: UNetConfig) -> dict:
  """Converts a diffusers UNet2DModel state dict (numpy, any float dtype) into UNet2D params.

  Args:
    state_dict: diffusers key -> array, e.g. from `safetensors.numpy.load_file`.
    config: the architecture the weights belong to.

  Returns:
    The float32 parameter tree of `UNet2D(config)` (numpy arrays).

  Raises:
    ValueError: keys missing or unexpected (all listed), or a shape mismatch.
  """
  shapes = traverse_util.flatten_dict(param_shapes(UNet2D(config)))
  by_key = {flax_path_to_diffusers_key(p): p for p in shapes}
  renamed: dict[str, str] = {}
  for k in state_dict:
    nk = _normalize_legacy_key(k)
    if nk in renamed:
      raise ValueError(f"state dict has both {renamed[nk]!r} and {k!r} for parameter {nk!r}")
    renamed[nk] = k
  missing = sorted(set(by_key) - set(renamed))
  unexpected = sorted(renamed[k] for k in set(renamed) - set(by_key))
  if missing or unexpected:
    raise ValueError(
        "diffusers UNet2DModel weights do not match the config: "
        f"{len(missing)} missing key(s) {missing[:20]}{' ...' if len(missing) > 20 else ''}, "
        f"{len(unexpected)} unexpected key(s) {unexpected[:20]}"
        f"{' ...' if len(unexpected) > 20 else ''}")
  flat, bad = {}, []
  for key, path in sorted(by_key.items()):
    arr = np.asarray(state_dict[renamed[key]])
    if not np.issubdtype(arr.dtype, np.floating) and arr.dtype.name != "bfloat16":
      raise ValueError(f"diffusers key {key!r} has non-float dtype {arr.dtype}")
    flat[path] = _to_flax_layout(arr.astype(np.float32), path[-1], shapes[path].shape)
    if flat[path].shape != tuple(shapes[path].shape):
      bad.append(f"{key}: stored {tuple(arr.shape)} -> {flat[path].shape}, model expects "
                 f"{tuple(shapes[path].shape)}")
  if bad:
    raise ValueError("diffusers UNet2DModel weights do not match the config (flax layouts shown; "
                     f"does config.json belong to these weights?): {len(bad)} shape mismatch(es): "
                     + "; ".join(bad[:20]) + (" ..." if len(bad) > 20 else ""))
  return traverse_util.unflatten_dict(flat)


def params_to_state_dict(params: Any, dtype: Any = np.float32) -> dict[str, np.ndarray]:
  """Converts UNet2D params into a diffusers UNet2DModel state dict (contiguous numpy arrays).

  Args:
    params: the parameter tree (jax or numpy arrays), with or without a top "params" level.
    dtype: storage dtype, float32 by default (np.float16 for a half-precision checkpoint).

  Returns:
    diffusers key -> array in PyTorch layout.
  """
  return to_torch_state_dict(params, flax_path_to_diffusers_key, dtype)


def _resolve_folder(path: str | os.PathLike) -> str:
  path = os.fspath(path)
  if not os.path.isdir(path):
    raise FileNotFoundError(f"{path!r} is not a directory; expected a diffusers UNet2DModel folder "
                            f"with {CONFIG_NAME} and {WEIGHTS_NAME} (or a pipeline folder with unet/)")
  if not os.path.exists(os.path.join(path, CONFIG_NAME)) and os.path.isdir(os.path.join(path, "unet")):
    return os.path.join(path, "unet")
  return path


def _read_safetensors(file: str) -> dict[str, np.ndarray]:
  from safetensors import SafetensorError
  from safetensors.numpy import load_file
  try:
    return load_file(file)
  except (SafetensorError, OSError, ValueError, TypeError) as e:
    raise ValueError(f"could not read safetensors file {file!r} (corrupt or truncated?): {e}") from e


def _load_weights(folder: str, variant: str | None) -> dict[str, np.ndarray]:
  stem = "diffusion_pytorch_model" + (f".{variant}" if variant else "")
  single = os.path.join(folder, stem + ".safetensors")
  index = single + ".index.json"
  if os.path.exists(single):
    return _read_safetensors(single)
  if os.path.exists(index):
    with open(index) as f:
      try:
        weight_map = json.load(f)["weight_map"]
      except (json.JSONDecodeError, KeyError) as e:
        raise ValueError(f"could not parse the shard index {index!r}: {e}") from e
    state = {}
    for shard in sorted(set(weight_map.values())):
      state.update(_read_safetensors(os.path.join(folder, shard)))
    return state
  present = sorted(os.listdir(folder))
  hint = ""
  if any(name.endswith(".bin") for name in present):
    hint = (" (found a pickle .bin checkpoint, which jaxgen never loads: convert it with "
            "diffusers `UNet2DModel.from_pretrained(p).save_pretrained(p, safe_serialization=True)`)")
  raise FileNotFoundError(f"no {os.path.basename(single)} in {folder!r}; a diffusers UNet2DModel "
                          f"folder must contain {CONFIG_NAME} and {os.path.basename(single)}{hint}; "
                          f"found {present}")


def load_diffusers_unet2d(path: str | os.PathLike, *, variant: str | None = None,
                          dtype: Any = jnp.float32, ignore_unknown_config_keys: bool = False
                          ) -> tuple[UNet2D, dict]:
  """Loads a diffusers `UNet2DModel` folder as a Flax `UNet2D` and its parameters.

  Args:
    path: a folder with `config.json` and `diffusion_pytorch_model.safetensors` (as written
      by `save_pretrained`), or a pipeline folder (e.g. a DDPMPipeline download) with them in
      `unet/`. Sharded checkpoints (`.safetensors.index.json`) are accepted.
    variant: weight file variant, e.g. "fp16" for `diffusion_pytorch_model.fp16.safetensors`.
    dtype: computation dtype of the returned module; parameters are float32 whatever the
      stored precision.
    ignore_unknown_config_keys: drop config keys that UNet2DModel does not know.

  Returns:
    (model, params) with `model.apply({"params": params}, x, t, y)`; params are jax arrays.

  Raises:
    FileNotFoundError: the folder or one of its files is missing.
    ValueError: unreadable config or weights, unsupported option, key or shape mismatch.
  """
  folder = _resolve_folder(path)
  config_file = os.path.join(folder, CONFIG_NAME)
  if not os.path.exists(config_file):
    raise FileNotFoundError(f"no {CONFIG_NAME} in {folder!r}; a diffusers UNet2DModel folder must "
                            f"contain {CONFIG_NAME} and {WEIGHTS_NAME}")
  try:
    with open(config_file) as f:
      config_dict = json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f"could not parse {config_file!r} as JSON: {e}") from e
  config = UNetConfig.from_diffusers_dict(config_dict, ignore_unknown=ignore_unknown_config_keys)
  params = state_dict_to_params(_load_weights(folder, variant), config)
  return UNet2D(config, dtype=dtype), jax.tree_util.tree_map(jnp.asarray, params)


def save_diffusers_unet2d(path: str | os.PathLike, model: UNet2D | UNetConfig, params: Any, *,
                          dtype: Any = np.float32) -> None:
  """Writes `config.json` + `diffusion_pytorch_model.safetensors` that diffusers'
  `UNet2DModel.from_pretrained(path)` loads.

  Args:
    path: output folder (created if needed; existing files of the same names are replaced).
    model: the UNet2D (or its config).
    params: its parameter tree.
    dtype: storage dtype of the weights (np.float32 or np.float16).
  """
  from safetensors.numpy import save_file
  config = model.config if isinstance(model, UNet2D) else model
  if not isinstance(config, UNetConfig):
    raise TypeError(f"save_diffusers_unet2d expects a UNet2D or UNetConfig, got {type(model).__name__}")
  state = params_to_state_dict(params, dtype)
  expected = {flax_path_to_diffusers_key(p) for p in
              traverse_util.flatten_dict(param_shapes(UNet2D(config)))}
  if set(state) != expected:
    raise ValueError(f"params do not match the config: missing {sorted(expected - set(state))[:20]}, "
                     f"unexpected {sorted(set(state) - expected)[:20]}")
  os.makedirs(path, exist_ok=True)
  d = {"_class_name": "UNet2DModel", "_diffusers_version": DIFFUSERS_VERSION}
  d.update(config.to_diffusers_dict())
  with open(os.path.join(path, CONFIG_NAME), "w") as f:
    json.dump(d, f, indent=2, sort_keys=True)
    f.write("\n")
  save_file(state, os.path.join(path, WEIGHTS_NAME), metadata={"format": "pt"})
