"""Import / export of diffusers `UNet2DConditionModel` checkpoints (config.json + safetensors),
no torch: the Stable Diffusion 1.x / 2.x U-Nets.

The Flax tree of `jaxgen.nn.unet_condition.UNet2DConditionModel` mirrors diffusers' state
dict: the flax path `("down_blocks_0", "attentions_1", "transformer_blocks_0", "ff", "net_0",
"proj", "kernel")` is the key `down_blocks.0.attentions.1.transformer_blocks.0.ff.net.0.proj.weight`.
Only the numbered children of diffusers' `ModuleList`s are renamed `name.i <-> name_i` (those
of `jaxgen.interop.diffusers_unet2d` plus `transformer_blocks` and the feed-forward's `net`);
layouts change as in that module (conv OIHW <-> HWIO, linear [out, in] <-> [in, out], norm
weight <-> scale). A 1x1-conv `proj_in` / `proj_out` stored for a linear-projection config
(or the reverse) is reshaped, as diffusers' loader does for old SD 2.x conversions.
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

from jaxgen.interop.diffusers_unet2d import (_LEAF_TO_TORCH, _LIST_CONTAINERS, _load_weights,
                                             _to_flax_layout, CONFIG_NAME, DIFFUSERS_VERSION)
from jaxgen.interop.layout import to_torch_state_dict
from jaxgen.nn.unet_condition import (UNet2DConditionConfig, UNet2DConditionModel,
                                      unet_condition_param_shapes)

MODEL_NAME = "UNet2DConditionModel"
WEIGHTS_STEM = "diffusion_pytorch_model"

_CONDITION_LISTS = _LIST_CONTAINERS + ("transformer_blocks", "net")
_LIST_RE = re.compile(r"^(%s)_(\d+)$" % "|".join(_CONDITION_LISTS))


def unet_condition_flax_path_to_key(path: tuple[str, ...]) -> str:
  """Maps a flax parameter path of UNet2DConditionModel to the diffusers state-dict key.

  Args:
    path: e.g. ("mid_block", "attentions_0", "transformer_blocks_0", "attn1", "to_out_0", "kernel").

  Returns:
    e.g. "mid_block.attentions.0.transformer_blocks.0.attn1.to_out.0.weight".
  """
  *modules, leaf = path
  if leaf not in _LEAF_TO_TORCH:
    raise ValueError(f"unexpected flax parameter name {leaf!r} in {'/'.join(path)}")
  return ".".join([_LIST_RE.sub(r"\1.\2", m) for m in modules] + [_LEAF_TO_TORCH[leaf]])


def _expected(config: UNet2DConditionConfig) -> dict[str, tuple[tuple[str, ...], tuple[int, ...]]]:
  """diffusers key -> (flax path, flax shape) of every parameter of `config`'s model."""
  shapes = traverse_util.flatten_dict(unet_condition_param_shapes(UNet2DConditionModel(config)))
  return {unet_condition_flax_path_to_key(p): (p, tuple(s.shape)) for p, s in shapes.items()}


def _projection_layout(arr: np.ndarray, expected: tuple[int, ...]) -> np.ndarray:
  """A stored linear weight [out, in] where a 1x1 conv kernel [1, 1, in, out] is expected (the
  reverse, a stored 1x1 conv for a dense layer, is handled by `_to_flax_layout`)."""
  if len(expected) == 4 and arr.ndim == 2 and expected[:2] == (1, 1):
    return np.ascontiguousarray(arr.T[None, None])
  return arr


def unet_condition_state_dict_to_params(state_dict: Mapping[str, np.ndarray],
                                        config: UNet2DConditionConfig) -> dict:
  """Converts a diffusers UNet2DConditionModel state dict (numpy, any float dtype) into params.

  Args:
    state_dict: diffusers key -> array, e.g. from `safetensors.numpy.load_file`.
    config: the architecture the weights belong to.

  Returns:
    The float32 parameter tree of `UNet2DConditionModel(config)` (numpy arrays).

  Raises:
    ValueError: keys missing or unexpected (all counted, the first 20 listed), a non-float
      array, or a shape mismatch.
  """
  expected = _expected(config)
  missing = sorted(set(expected) - set(state_dict))
  unexpected = sorted(set(state_dict) - set(expected))
  if missing or unexpected:
    raise ValueError(
        f"diffusers {MODEL_NAME} weights do not match the config: "
        f"{len(missing)} missing key(s) {missing[:20]}{' ...' if len(missing) > 20 else ''}, "
        f"{len(unexpected)} unexpected key(s) {unexpected[:20]}"
        f"{' ...' if len(unexpected) > 20 else ''}")
  flat, bad = {}, []
  for key, (path, shape) in sorted(expected.items()):
    arr = np.asarray(state_dict[key])
    if not np.issubdtype(arr.dtype, np.floating) and arr.dtype.name != "bfloat16":
      raise ValueError(f"diffusers key {key!r} has non-float dtype {arr.dtype}")
    value = _to_flax_layout(arr.astype(np.float32), path[-1], shape)
    if path[-1] == "kernel" and path[-2] in ("proj_in", "proj_out"):
      value = _projection_layout(value, shape)
    if value.shape != shape:
      bad.append(f"{key}: stored {tuple(arr.shape)} -> {value.shape}, model expects {shape}")
    flat[path] = value
  if bad:
    raise ValueError(f"diffusers {MODEL_NAME} weights do not match the config (flax layouts "
                     f"shown; does config.json belong to these weights?): {len(bad)} shape "
                     "mismatch(es): " + "; ".join(bad[:20]) + (" ..." if len(bad) > 20 else ""))
  return traverse_util.unflatten_dict(flat)


def unet_condition_params_to_state_dict(params: Any, dtype: Any = np.float32) -> dict[str, np.ndarray]:
  """Converts UNet2DConditionModel params into a diffusers state dict (contiguous numpy arrays).

  Args:
    params: the parameter tree (jax or numpy arrays), with or without a top "params" level.
    dtype: storage dtype, float32 by default (np.float16 for a half-precision checkpoint).

  Returns:
    diffusers key -> array in PyTorch layout.
  """
  return to_torch_state_dict(params, unet_condition_flax_path_to_key, dtype)


def _resolve_folder(path: str | os.PathLike) -> str:
  path = os.fspath(path)
  if not os.path.isdir(path):
    raise FileNotFoundError(f"{path!r} is not a directory; expected a diffusers {MODEL_NAME} folder "
                            f"with {CONFIG_NAME} and {WEIGHTS_STEM}.safetensors (or a pipeline "
                            "folder with unet/)")
  if not os.path.exists(os.path.join(path, CONFIG_NAME)) and os.path.isdir(os.path.join(path, "unet")):
    return os.path.join(path, "unet")
  return path


def _read_weights(folder: str, variant: str | None) -> dict[str, np.ndarray]:
  """The safetensors weights of `folder` (single file or shard index); never a pickle."""
  try:
    return _load_weights(folder, variant)
  except FileNotFoundError as e:
    weights = WEIGHTS_STEM + (f".{variant}" if variant else "") + ".safetensors"
    present = sorted(os.listdir(folder))
    hint = ""
    if any(name.endswith(".bin") for name in present):
      hint = (" (found a pickle .bin checkpoint, which jaxgen never loads: convert it to "
              f"safetensors with diffusers `{MODEL_NAME}.from_pretrained(p).save_pretrained(p, "
              "safe_serialization=True)`)")
    raise FileNotFoundError(f"no {weights} (nor {weights}.index.json) in {folder!r}; a diffusers "
                            f"{MODEL_NAME} folder must contain {CONFIG_NAME} and {weights}{hint}; "
                            f"found {present}") from e


def load_diffusers_unet2d_condition(path: str | os.PathLike, *, variant: str | None = None,
                                    dtype: Any = jnp.float32,
                                    ignore_unknown_config_keys: bool = False
                                    ) -> tuple[UNet2DConditionModel, dict]:
  """Loads a diffusers `UNet2DConditionModel` folder (e.g. Stable Diffusion's `unet/`) as a Flax
  `UNet2DConditionModel` and its parameters.

  Args:
    path: a folder with `config.json` and `diffusion_pytorch_model.safetensors` (as written by
      `save_pretrained`), or a pipeline folder with them in `unet/`. Sharded checkpoints
      (`.safetensors.index.json`) are accepted; pickle `.bin` files never are.
    variant: weight file variant, e.g. "fp16" for `diffusion_pytorch_model.fp16.safetensors`.
    dtype: computation dtype of the returned module; parameters are float32 whatever the
      stored precision.
    ignore_unknown_config_keys: drop config keys that UNet2DConditionModel does not know.

  Returns:
    (model, params) with `model.apply({"params": params}, latents, t, encoder_hidden_states)`;
    params are jax arrays.

  Raises:
    FileNotFoundError: the folder, its config or its safetensors weights are missing.
    ValueError: unreadable config or weights, unsupported option, key or shape mismatch.
  """
  folder = _resolve_folder(path)
  config_file = os.path.join(folder, CONFIG_NAME)
  if not os.path.exists(config_file):
    raise FileNotFoundError(f"no {CONFIG_NAME} in {folder!r}; a diffusers {MODEL_NAME} folder must "
                            f"contain {CONFIG_NAME} and {WEIGHTS_STEM}.safetensors")
  try:
    with open(config_file) as f:
      config_dict = json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f"could not parse {config_file!r} as JSON: {e}") from e
  config = UNet2DConditionConfig.from_diffusers_dict(config_dict,
                                                     ignore_unknown=ignore_unknown_config_keys)
  params = unet_condition_state_dict_to_params(_read_weights(folder, variant), config)
  return UNet2DConditionModel(config, dtype=dtype), jax.tree_util.tree_map(jnp.asarray, params)


def save_diffusers_unet2d_condition(path: str | os.PathLike,
                                    model: UNet2DConditionModel | UNet2DConditionConfig,
                                    params: Any, *, dtype: Any = np.float32) -> None:
  """Writes `config.json` + `diffusion_pytorch_model.safetensors` that diffusers'
  `UNet2DConditionModel.from_pretrained(path)` loads.

  Args:
    path: output folder (created if needed; existing files of the same names are replaced).
    model: the UNet2DConditionModel (or its config).
    params: its parameter tree.
    dtype: storage dtype of the weights (np.float32 or np.float16).

  Raises:
    TypeError: `model` is neither a UNet2DConditionModel nor its config.
    ValueError: `params` do not belong to the config (missing / unexpected / misshapen).
  """
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel
  config = model.config if isinstance(model, UNet2DConditionModel) else model
  if not isinstance(config, UNet2DConditionConfig):
    raise TypeError("save_diffusers_unet2d_condition expects a UNet2DConditionModel or "
                    f"UNet2DConditionConfig, got {type(model).__name__}")
  state = unet_condition_params_to_state_dict(params, dtype)
  expected = _expected(config)
  if set(state) != set(expected):
    raise ValueError(f"params do not match the config: missing {sorted(set(expected) - set(state))[:20]}, "
                     f"unexpected {sorted(set(state) - set(expected))[:20]}")
  flat = traverse_util.flatten_dict(_unwrap(params))
  bad = [k for k, (p, shape) in sorted(expected.items()) if np.shape(flat[p]) != shape]
  if bad:
    raise ValueError(f"params do not match the config: {len(bad)} shape mismatch(es), e.g. {bad[:5]}")
  os.makedirs(path, exist_ok=True)
  d = {"_class_name": MODEL_NAME, "_diffusers_version": DIFFUSERS_VERSION}
  d.update(config.to_diffusers_dict())
  with open(os.path.join(path, CONFIG_NAME), "w") as f:
    json.dump(d, f, indent=2, sort_keys=True)
    f.write("\n")
  save_file(state, os.path.join(path, WEIGHTS_STEM + ".safetensors"), metadata={"format": "pt"})


def _unwrap(params: Any) -> Any:
  if isinstance(params, Mapping) and set(params) == {"params"}:
    return params["params"]
  return dict(params)
