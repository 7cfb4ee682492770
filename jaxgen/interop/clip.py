"""Import / export of transformers CLIP checkpoints (config.json + model.safetensors), no torch.

`jaxgen.nn.CLIPModel` / `CLIPTextModel` keep transformers' module names, so a flax path maps
to a state-dict key by renaming alone: `("text_model", "encoder", "layers_0", "mlp", "fc1",
"kernel")` is `text_model.encoder.layers.0.mlp.fc1.weight`. Layouts change as
  linear weight [out, in]     <-> kernel [in, out]
  conv weight [O, I, kh, kw]  <-> kernel [kh, kw, I, O]   (the patch embedding)
  LayerNorm weight            <-> scale
  embedding weights, class_embedding, logit_scale: unchanged.
A `CLIPTextModel` folder saved by transformers 5 has keys without the `text_model.` prefix;
older ones (Stable Diffusion's `text_encoder/`) have it, and may hold the `position_ids`
buffers: both are read.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jaxgen.nn.clip import (CLIPConfig, CLIPModel, CLIPTextConfig, CLIPTextModel,
                            CLIPVisionConfig)
from jaxgen.interop.layout import to_torch_state_dict
from jaxgen.nn.init import module_param_shapes

__all__ = ["clip_config_from_dict", "clip_config_to_dict", "clip_params_to_state_dict",
           "clip_state_dict_to_params", "load_clip_model", "load_clip_text_model",
           "save_clip_model"]

CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"
TRANSFORMERS_VERSION = "5.24.0"  # the release whose CLIP modules these mirror
_RAW = ("token_embedding", "position_embedding", "class_embedding", "logit_scale")
_LEAF = {"kernel": "weight", "scale": "weight", "bias": "bias"}
# Keys of transformers configs that do not change the forward pass at inference (dropout,
# initialisation, generation and bookkeeping settings of PretrainedConfig).
_HARMLESS = frozenset("""
_name_or_path _commit_hash architectures attention_dropout dropout dtype torch_dtype
initializer_factor initializer_range model_type transformers_version use_bfloat16 id2label
label2id return_dict output_attentions output_hidden_states torchscript tie_word_embeddings
is_decoder is_encoder_decoder add_cross_attention cross_attention_hidden_size
tie_encoder_decoder chunk_size_feed_forward pruned_heads problem_type finetuning_task
tokenizer_class prefix task_specific_params max_length min_length do_sample early_stopping
num_beams num_beam_groups diversity_penalty temperature top_k top_p typical_p
repetition_penalty length_penalty no_repeat_ngram_size encoder_no_repeat_ngram_size
bad_words_ids num_return_sequences output_scores return_dict_in_generate forced_bos_token_id
forced_eos_token_id remove_invalid_values exponential_decay_length_penalty suppress_tokens
begin_suppress_tokens decoder_start_token_id sep_token_id tf_legacy_loss gradient_checkpointing
bos_token_id eos_token_id pad_token_id
""".split())  # the token ids are fields of the text tower; a vision tower's (None) are ignored


def _tower_config(cls, d: Mapping[str, Any], kind: str, ignore_unknown: bool):
  fields = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(d) - fields - _HARMLESS)
  if unknown and not ignore_unknown:
    raise ValueError(f"{kind} config has key(s) {unknown} that jaxgen's {cls.__name__} does not "
                     "know and that may change the model; pass ignore_unknown_config_keys=True "
                     "to drop them")
  values = {k: v for k, v in d.items() if k in fields and v is not None}
  bad = sorted(k for k, v in values.items() if k != "hidden_act" and k != "layer_norm_eps"
               and (not isinstance(v, int) or isinstance(v, bool)))
  if bad:
    raise ValueError(f"{kind} config: {[(k, values[k]) for k in bad]} must be single ints "
                     "(lists, e.g. several eos ids or non-square images, are not supported)")
  return cls(**values)


def clip_config_from_dict(d: Mapping[str, Any], *, ignore_unknown: bool = False
                          ) -> CLIPConfig | CLIPTextConfig:
  """A jaxgen config from a transformers `config.json` dict.

  Args:
    d: model_type "clip" (-> CLIPConfig) or "clip_text_model" (-> CLIPTextConfig).
    ignore_unknown: drop keys jaxgen does not know instead of raising.

  Returns:
    CLIPConfig or CLIPTextConfig; fields that are absent take transformers' defaults.

  Raises:
    ValueError: another model_type, unknown keys, or unsupported values.
  """
  kind = d.get("model_type")
  if kind == "clip_text_model":
    return _tower_config(CLIPTextConfig, d, "clip_text_model", ignore_unknown)
  if kind != "clip":
    raise ValueError(f"config.json has model_type={kind!r}; jaxgen reads 'clip' (CLIPModel) and "
                     "'clip_text_model' (CLIPTextModel) configs")
  towers = {}
  for name, cls, sub in (("text", CLIPTextConfig, "clip_text_model"),
                         ("vision", CLIPVisionConfig, "clip_vision_model")):
    tower = dict(d.get(f"{name}_config") or {})
    tower.update(d.get(f"{name}_config_dict") or {})  # transformers: the _dict form wins
    if tower.get("model_type", sub) != sub:
      raise ValueError(f"{name}_config has model_type={tower['model_type']!r}, expected {sub!r}")
    towers[name] = _tower_config(cls, tower, f"clip {name}_config", ignore_unknown)
  top = {"text_config", "vision_config", "text_config_dict", "vision_config_dict",
         "projection_dim", "logit_scale_init_value"}
  unknown = sorted(set(d) - top - _HARMLESS)
  if unknown and not ignore_unknown:
    raise ValueError(f"clip config has key(s) {unknown} that jaxgen's CLIPConfig does not know; "
                     "pass ignore_unknown_config_keys=True to drop them")
  extra = {k: d[k] for k in ("projection_dim", "logit_scale_init_value") if d.get(k) is not None}
  return CLIPConfig(text_config=towers["text"], vision_config=towers["vision"], **extra)


def clip_config_to_dict(config: CLIPConfig | CLIPTextConfig) -> dict[str, Any]:
  """The transformers `config.json` dict of a jaxgen config (model_type, architectures)."""
  if isinstance(config, CLIPTextConfig):
    return {"architectures": ["CLIPTextModel"], "model_type": "clip_text_model",
            **dataclasses.asdict(config)}
  text = {"model_type": "clip_text_model", **dataclasses.asdict(config.text_config)}
  vision = {"model_type": "clip_vision_model", **dataclasses.asdict(config.vision_config)}
  return {"architectures": ["CLIPModel"], "model_type": "clip", "text_config": text,
          "vision_config": vision, "projection_dim": config.projection_dim,
          "logit_scale_init_value": config.logit_scale_init_value}


def _key(path: tuple[str, ...]) -> str:
  *modules, leaf = path
  parts = [m.replace("layers_", "layers.") if m.startswith("layers_") else m for m in modules]
  if leaf in _RAW:
    return ".".join(parts + [leaf] + ([] if leaf in ("class_embedding", "logit_scale")
                                      else ["weight"]))
  return ".".join(parts + [_LEAF[leaf]])


def _model_and_shapes(config):
  if isinstance(config, CLIPTextConfig):
    model = CLIPTextModel(config)
    ids = jax.ShapeDtypeStruct((1, config.max_position_embeddings), jnp.int32)
    return model, module_param_shapes(model, ids)
  v = config.vision_config
  model = CLIPModel(config)
  images = jax.ShapeDtypeStruct((1, v.image_size, v.image_size, v.num_channels), jnp.float32)
  ids = jax.ShapeDtypeStruct((1, config.text_config.max_position_embeddings), jnp.int32)
  return model, module_param_shapes(model, images, ids)


def _listed(keys: list[str]) -> str:
  return f"{len(keys)} {keys[:20]}{' ...' if len(keys) > 20 else ''}"


def clip_state_dict_to_params(state_dict: Mapping[str, np.ndarray],
                              config: CLIPConfig | CLIPTextConfig) -> dict:
  """Converts a transformers CLIPModel / CLIPTextModel state dict into jaxgen parameters.

  Args:
    state_dict: key -> numpy array (any float dtype), e.g. `safetensors.numpy.load_file`.
    config: CLIPConfig (CLIPModel weights) or CLIPTextConfig (CLIPTextModel weights, keys with
      or without the `text_model.` prefix).

  Returns:
    The float32 parameter tree (numpy) of `CLIPModel(config)` / `CLIPTextModel(config)`.

  Raises:
    ValueError: missing or unexpected keys (named), or shapes that do not match the config.
  """
  _, shapes = _model_and_shapes(config)
  shapes = traverse_util.flatten_dict(shapes)
  by_key = {_key(p): p for p in shapes}
  state = {k: v for k, v in state_dict.items() if not k.endswith(".position_ids")}  # buffers
  if isinstance(config, CLIPTextConfig) and state and all(
      k.startswith("text_model.") for k in state):
    state = {k[len("text_model."):]: v for k, v in state.items()}
  missing, unexpected = sorted(set(by_key) - set(state)), sorted(set(state) - set(by_key))
  if missing or unexpected:
    raise ValueError(f"CLIP weights do not match the config: missing key(s) {_listed(missing)}, "
                     f"unexpected key(s) {_listed(unexpected)}")
  flat, bad = {}, []
  for key, path in sorted(by_key.items()):
    arr = np.asarray(state[key])
    if not (np.issubdtype(arr.dtype, np.floating) or arr.dtype.name == "bfloat16"):
      raise ValueError(f"CLIP weight {key!r} has non-float dtype {arr.dtype}")
    arr = arr.astype(np.float32)
    if path[-1] == "kernel" and arr.ndim == 4:
      arr = arr.transpose(2, 3, 1, 0)  # OIHW -> HWIO
    elif path[-1] == "kernel" and arr.ndim == 2:
      arr = arr.T
    flat[path] = np.array(arr, order="C")  # (ascontiguousarray makes 0-d arrays 1-d)
    if arr.shape != tuple(shapes[path].shape):
      bad.append(f"{key}: {arr.shape} (flax layout), model expects {tuple(shapes[path].shape)}")
  if bad:
    raise ValueError("CLIP weights do not match the config (does config.json belong to them?): "
                     + "; ".join(bad[:20]))
  return traverse_util.unflatten_dict(flat)


def clip_params_to_state_dict(params: Any, dtype: Any = np.float32) -> dict[str, np.ndarray]:
  """jaxgen CLIP parameters -> transformers state dict (PyTorch layouts, contiguous numpy)."""
  return to_torch_state_dict(params, _key, dtype)


def _resolve(path, sub: str, what: str) -> str:
  path = os.fspath(path)
  if not os.path.isdir(path):
    raise FileNotFoundError(f"{path!r} is not a directory; expected a transformers {what} folder "
                            f"with {CONFIG_NAME} and {WEIGHTS_NAME}")
  if not os.path.exists(os.path.join(path, CONFIG_NAME)) and os.path.isdir(os.path.join(path, sub)):
    return os.path.join(path, sub)
  return path


def _read_config(folder: str, what: str) -> dict:
  file = os.path.join(folder, CONFIG_NAME)
  if not os.path.exists(file):
    raise FileNotFoundError(f"no {CONFIG_NAME} in {folder!r}; a transformers {what} folder holds "
                            f"{CONFIG_NAME} and {WEIGHTS_NAME}; found {sorted(os.listdir(folder))}")
  try:
    with open(file, encoding="utf-8") as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f"could not parse {file!r} as JSON: {e}") from e


def _read_safetensors(file: str) -> dict[str, np.ndarray]:
  from safetensors import SafetensorError
  from safetensors.numpy import load_file
  try:
    return load_file(file)
  except (SafetensorError, OSError, ValueError, TypeError) as e:
    raise ValueError(f"could not read safetensors file {file!r} (corrupt or truncated?): "
                     f"{e}") from e


def _read_weights(folder: str) -> dict[str, np.ndarray]:
  single = os.path.join(folder, WEIGHTS_NAME)
  index = single + ".index.json"
  if os.path.exists(single):
    return _read_safetensors(single)
  if os.path.exists(index):
    with open(index, encoding="utf-8") as f:
      try:
        shards = sorted(set(json.load(f)["weight_map"].values()))
      except (json.JSONDecodeError, KeyError) as e:
        raise ValueError(f"could not parse the shard index {index!r}: {e}") from e
    state = {}
    for shard in shards:
      state.update(_read_safetensors(os.path.join(folder, shard)))
    return state
  present = sorted(os.listdir(folder))
  hint = ""
  if any(n.endswith((".bin", ".pt", ".pth", ".ckpt")) for n in present):
    hint = (" (there is a pickle checkpoint, which jaxgen never loads: convert it to "
            "safetensors with transformers' `from_pretrained(p).save_pretrained(p, "
            "safe_serialization=True)`)")
  raise FileNotFoundError(f"no {WEIGHTS_NAME} in {folder!r}: jaxgen reads safetensors weights "
                          f"only{hint}; found {present}")


def load_clip_model(path: str | os.PathLike, *, dtype: Any = jnp.float32,
                    ignore_unknown_config_keys: bool = False) -> tuple[CLIPModel, dict]:
  """Loads a transformers `CLIPModel` folder (config.json + model.safetensors).

  Args:
    path: the folder (sharded `model.safetensors.index.json` checkpoints are accepted).
    dtype: computation dtype of the returned module; parameters are float32.
    ignore_unknown_config_keys: drop config keys jaxgen does not know instead of raising.

  Returns:
    (model, params): `model.apply({"params": params}, images, ids)` -> logits_per_image.

  Raises:
    FileNotFoundError: no folder, config.json or model.safetensors (pickle files refused).
    ValueError: a config of another model_type, unknown keys, mismatching weights.
  """
  folder = _resolve(path, "clip", "CLIPModel")
  config = clip_config_from_dict(_read_config(folder, "CLIPModel"),
                                 ignore_unknown=ignore_unknown_config_keys)
  if not isinstance(config, CLIPConfig):
    raise ValueError(f"{folder!r} holds a CLIPTextModel (model_type 'clip_text_model'); load it "
                     "with load_clip_text_model")
  params = clip_state_dict_to_params(_read_weights(folder), config)
  return CLIPModel(config, dtype=dtype), jax.tree.map(jnp.asarray, params)


def load_clip_text_model(path: str | os.PathLike, *, dtype: Any = jnp.float32,
                         ignore_unknown_config_keys: bool = False
                         ) -> tuple[CLIPTextModel, dict]:
  """Loads a transformers `CLIPTextModel` folder, e.g. Stable Diffusion's `text_encoder/`.

  A `CLIPModel` folder (model_type "clip") is read too: its text tower is returned and the
  image tower's weights are skipped.

  Args:
    path: the folder, or a pipeline folder holding it in `text_encoder/`.
    dtype: computation dtype of the returned module; parameters are float32.
    ignore_unknown_config_keys: drop config keys jaxgen does not know instead of raising.

  Returns:
    (model, params): `model.apply({"params": params}, ids)` -> (last_hidden_state [B, L, D],
    pooled [B, D]).

  Raises: as `load_clip_model`.
  """
  folder = _resolve(path, "text_encoder", "CLIPTextModel")
  config = clip_config_from_dict(_read_config(folder, "CLIPTextModel"),
                                 ignore_unknown=ignore_unknown_config_keys)
  state = _read_weights(folder)
  if isinstance(config, CLIPConfig):
    config = config.text_config
    state = {k[len("text_model."):]: v for k, v in state.items() if k.startswith("text_model.")}
  params = clip_state_dict_to_params(state, config)
  return CLIPTextModel(config, dtype=dtype), jax.tree.map(jnp.asarray, params)


def save_clip_model(path: str | os.PathLike, model: CLIPModel | CLIPTextModel, params: Any, *,
                    dtype: Any = np.float32) -> None:
  """Writes config.json + model.safetensors in the layout transformers' `from_pretrained` reads.

  Args:
    path: output folder (created; files of the same names replaced).
    model: a CLIPModel or CLIPTextModel (its config is written).
    params: its parameter tree.
    dtype: storage dtype (np.float32 or np.float16).
  """
  from safetensors.numpy import save_file
  if not isinstance(model, (CLIPModel, CLIPTextModel)):
    raise TypeError(f"save_clip_model expects a CLIPModel or CLIPTextModel, got "
                    f"{type(model).__name__}")
  state = clip_params_to_state_dict(params, dtype)
  expected = {_key(p) for p in traverse_util.flatten_dict(_model_and_shapes(model.config)[1])}
  if set(state) != expected:
    raise ValueError(f"params do not match the model: missing {sorted(expected - set(state))[:20]}"
                     f", unexpected {sorted(set(state) - expected)[:20]}")
  os.makedirs(path, exist_ok=True)
  config = {**clip_config_to_dict(model.config), "transformers_version": TRANSFORMERS_VERSION}
  with open(os.path.join(path, CONFIG_NAME), "w", encoding="utf-8") as f:
    json.dump(config, f, indent=2, sort_keys=True)
    f.write("\n")
  save_file(state, os.path.join(path, WEIGHTS_NAME), metadata={"format": "pt"})
