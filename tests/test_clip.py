"""CLIP: tokenizer ids, text / image towers, transformers import and the CLIP score.

Reference values come from transformers 5 + torch 2.13 on tiny random checkpoints
(tests/reference/generate_clip_fixtures.py); nothing here needs torch or transformers.
"""
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen.interop import (clip_config_to_dict, load_clip_model, load_clip_text_model,
                            save_clip_model)
from jaxgen.metrics import clip_score
from jaxgen.nn import (CLIPConfig, CLIPModel, CLIPTextConfig, CLIPTextModel, CLIPVisionConfig,
                       clip_preprocess, pool_text_features)
from jaxgen.text import load_clip_tokenizer, train_clip_tokenizer

REF = os.path.join(os.path.dirname(os.path.abspath(__file__)), "reference", "clip")
TOKENIZERS = ("tok_sd1", "tok_sd2", "tok_json")
TEXT_MODELS = ("text_quick_legacy", "text_gelu_eos")
CLIP_MODELS = ("clip_quick_legacy", "clip_gelu_eos")
# Relative to the largest reference magnitude of each array: the acceptance bound is 1e-4; the
# measured errors are <= 2e-6 (float32 on both sides), so 1e-5 catches smaller regressions.
RTOL = 1e-5


def rel_err(actual, expected) -> float:
  actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
  assert actual.shape == expected.shape, (actual.shape, expected.shape)
  return float(np.max(np.abs(actual - expected)) / np.max(np.abs(expected)))


def fixture(name: str) -> dict:
  with np.load(os.path.join(REF, f"{name}.npz")) as f:
    return dict(f)


@pytest.fixture(scope="module")
def tok_ref():
  return fixture("tokenizer")


# --- tokenizer ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", TOKENIZERS)
def test_tokenizer_ids_equal_transformers(name, tok_ref):
  tok = load_clip_tokenizer(os.path.join(REF, name))
  ids = tok(list(tok_ref["prompts"]), max_length=77)
  assert ids.dtype == np.int32 and ids.shape == (len(tok_ref["prompts"]), 77)
  np.testing.assert_array_equal(ids, tok_ref[f"{name}_ids"])
  assert [tok.bos_token_id, tok.eos_token_id, tok.pad_token_id] == list(tok_ref[f"{name}_special"])
  np.testing.assert_array_equal(tok(list(tok_ref["prompts"])), ids)  # model_max_length = 77


def test_tokenizer_pads_truncates_and_keeps_eos(tok_ref):
  prompts = list(tok_ref["prompts"])
  for name, pad in (("tok_sd1", "<|endoftext|>"), ("tok_sd2", "!")):
    tok = load_clip_tokenizer(os.path.join(REF, name))
    assert tok.pad_token == pad
    ids = tok(prompts)
    assert (ids[:, 0] == tok.bos_token_id).all()
    long_row = ids[prompts.index(max(prompts, key=len))]
    assert long_row[-1] == tok.eos_token_id and tok.eos_token_id not in long_row[1:-1]
    empty = ids[prompts.index("")]
    assert list(empty[:2]) == [tok.bos_token_id, tok.eos_token_id]
    assert (empty[2:] == tok.pad_token_id).all()
    short = tok(prompts, max_length=8)
    for row, bpe in zip(short, tok.tokenize(prompts)):
      expected = [tok.bos_token_id] + bpe[:6] + [tok.eos_token_id]
      np.testing.assert_array_equal(row[:len(expected)], expected)
      assert (row[len(expected):] == tok.pad_token_id).all()


def test_tokenizer_lowercases_and_cleans_whitespace():
  tok = load_clip_tokenizer(os.path.join(REF, "tok_sd1"))
  a, b = tok(["A  LARGE\tRed\n circle  ", "a large red circle"])
  np.testing.assert_array_equal(a, b)
  assert tok.decode(a) == "a large red circle"


def test_train_clip_tokenizer_reproduces_fixture_folder(tmp_path, tok_ref):
  tok = train_clip_tokenizer(list(tok_ref["captions"]), 600, tmp_path / "tok")
  for name in ("vocab.json", "merges.txt"):
    with open(tmp_path / "tok" / name, encoding="utf-8") as f, \
        open(os.path.join(REF, "tok_sd1", name), encoding="utf-8") as g:
      assert f.read() == g.read(), name
  vocab = tok.backend.get_vocab()
  # CLIP's layout: bytes, bytes + </w>, merges, then the two specials.
  assert vocab["!"] == 0 and vocab["!</w>"] == 256
  assert (vocab["<|startoftext|>"], vocab["<|endoftext|>"]) == (tok.vocab_size - 2,
                                                              tok.vocab_size - 1)
  caption = str(tok_ref["captions"][7])
  ids = tok([caption])[0]
  assert tok.decode(ids) == caption
  assert np.count_nonzero(ids != tok.pad_token_id) < len(caption.split()) + 2 + 1  # merged words
  sd2 = train_clip_tokenizer(["a b c"], 520, tmp_path / "sd2", pad_token="!")
  assert sd2.pad_token_id == 0 and sd2.vocab_size == 514  # no pair seen twice: no merge


def test_tokenizer_errors(tmp_path):
  tok = load_clip_tokenizer(os.path.join(REF, "tok_sd1"))
  with pytest.raises(TypeError, match="list of strings.*single string"):
    tok("a red circle")
  with pytest.raises(TypeError, match=r"entries \(index, type\) \[\(1, 'int'\)\]"):
    tok(["a", 3])
  with pytest.raises(ValueError, match="non-empty"):
    tok([])
  with pytest.raises(ValueError, match="max_length"):
    tok(["a"], max_length=1)
  with pytest.raises(FileNotFoundError, match="not a directory"):
    load_clip_tokenizer(tmp_path / "nowhere")
  shutil.copy(os.path.join(REF, "tok_sd1", "vocab.json"), tmp_path)
  with pytest.raises(FileNotFoundError, match="merges.txt"):
    load_clip_tokenizer(tmp_path)
  shutil.copy(os.path.join(REF, "tok_sd1", "merges.txt"), tmp_path)
  with open(tmp_path / "special_tokens_map.json", "w") as f:
    json.dump({"pad_token": "<pad>"}, f)
  with pytest.raises(ValueError, match=r"\['<pad>'\] are not in the vocabulary"):
    load_clip_tokenizer(tmp_path)
  with pytest.raises(ValueError, match="vocab_size"):
    train_clip_tokenizer(["a"], 100, tmp_path / "small")


# --- text towers against transformers --------------------------------------------------------

@pytest.fixture(scope="module")
def text_models():
  out = {}
  for name in TEXT_MODELS:
    model, params = load_clip_text_model(os.path.join(REF, name))
    out[name] = (model, params, jax.jit(model.apply))
  return out


@pytest.mark.parametrize("name", TEXT_MODELS)
def test_text_model_matches_transformers(name, text_models):
  ref = fixture(name)
  model, params, apply = text_models[name]
  assert isinstance(model, CLIPTextModel)
  hidden, pooled = apply({"params": params}, jnp.asarray(ref["ids"]))
  assert hidden.shape == ref["last_hidden_state"].shape and pooled.shape == (4, 32)
  assert rel_err(hidden, ref["last_hidden_state"]) < RTOL
  assert rel_err(pooled, ref["pooler_output"]) < RTOL
  # Rows where eos is neither the largest id nor unique: the legacy and eos rules differ.
  _, pooled = apply({"params": params}, jnp.asarray(ref["ids_random"]))
  assert rel_err(pooled, ref["pooler_output_random"]) < RTOL
  _, pooled = apply({"params": params}, jnp.asarray(ref["ids"]),
                    jnp.asarray(ref["attention_mask"]))
  assert rel_err(pooled, ref["pooler_output_masked"]) < RTOL


def test_text_model_reads_stable_diffusion_layout(tmp_path, text_models):
  """Keys prefixed `text_model.` and the `position_ids` buffer (older transformers, SD)."""
  from safetensors.numpy import load_file, save_file
  src = os.path.join(REF, "text_quick_legacy")
  state = load_file(os.path.join(src, "model.safetensors"))
  state = {f"text_model.{k}": v for k, v in state.items()}
  state["text_model.embeddings.position_ids"] = np.arange(77, dtype=np.int64)[None]
  folder = tmp_path / "pipeline" / "text_encoder"
  os.makedirs(folder)
  shutil.copy(os.path.join(src, "config.json"), folder)
  save_file(state, str(folder / "model.safetensors"))
  _, params = load_clip_text_model(tmp_path / "pipeline")  # finds text_encoder/
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(text_models["text_quick_legacy"][1])):
    np.testing.assert_array_equal(a, b)


# --- CLIPModel against transformers --------------------------------------------------------

@pytest.fixture(scope="module")
def clip_models():
  return {name: load_clip_model(os.path.join(REF, name)) for name in CLIP_MODELS}


@pytest.mark.parametrize("name", CLIP_MODELS)
def test_clip_model_matches_transformers(name, clip_models):
  ref = fixture(name)
  model, params = clip_models[name]
  v = {"params": params}
  pixels = clip_preprocess(ref["images"], 32)
  assert rel_err(pixels, ref["pixel_values"]) < 1e-6
  ids = jnp.asarray(ref["ids"])
  logits = jax.jit(model.apply)(v, pixels, ids)
  assert logits.shape == (4, 4)
  assert rel_err(logits, ref["logits_per_image"]) < RTOL
  text = jax.jit(lambda v, t: model.apply(v, t, method="encode_text"))(v, ids)
  image = jax.jit(lambda v, x: model.apply(v, x, method="encode_image"))(v, pixels)
  assert rel_err(text, ref["text_features"]) < RTOL
  assert rel_err(image, ref["image_features"]) < RTOL
  unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
  assert rel_err(unit(np.asarray(text)), ref["text_embeds"]) < RTOL
  assert rel_err(unit(np.asarray(image)), ref["image_embeds"]) < RTOL
  np.testing.assert_allclose(np.exp(params["logit_scale"]), np.exp(ref["logit_scale"]), rtol=1e-6)
  # The text tower of a CLIPModel folder, read as a CLIPTextModel.
  text_model, text_params = load_clip_text_model(os.path.join(REF, name))
  hidden, pooled = jax.jit(text_model.apply)({"params": text_params}, ids)
  assert rel_err(hidden, ref["last_hidden_state"]) < RTOL
  assert rel_err(pooled, ref["pooler_output"]) < RTOL


def test_save_clip_model_round_trip(tmp_path, clip_models, text_models):
  for name, (model, params) in [("clip_gelu_eos", clip_models["clip_gelu_eos"]),
                                ("text_gelu_eos", text_models["text_gelu_eos"][:2])]:
    save_clip_model(tmp_path / name, model, params)
    loader = load_clip_model if name.startswith("clip") else load_clip_text_model
    again, params2 = loader(tmp_path / name)
    assert again.config == model.config
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(params2)):
      np.testing.assert_array_equal(a, b)
    with open(os.path.join(REF, name, "config.json")) as f:
      reference = json.load(f)
    mine = clip_config_to_dict(model.config)
    sub = ("text_config", "vision_config") if name.startswith("clip") else ()
    for k in sub:
      assert {key: reference[k][key] for key in mine[k]} == mine[k]
    assert all(reference[key] == mine[key] for key in mine if key not in sub)


def test_clip_config_of_older_transformers_loads(tmp_path, clip_models):
  """transformers 4 wrote every PretrainedConfig default into each tower, the vision tower's
  token ids as None, and `text_config_dict` overrides (which win)."""
  src = os.path.join(REF, "clip_quick_legacy")
  with open(os.path.join(src, "config.json")) as f:
    config = json.load(f)
  dump = {"add_cross_attention": False, "bad_words_ids": None, "chunk_size_feed_forward": 0,
          "id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0}, "num_beams": 1, "top_k": 50,
          "tie_word_embeddings": True, "torchscript": False, "typical_p": 1, "torch_dtype": None,
          "bos_token_id": None, "eos_token_id": None, "pad_token_id": None}
  config["vision_config"].update(dump)
  config["text_config"].update({k: v for k, v in dump.items() if not k.endswith("token_id")})
  config["text_config_dict"] = {"eos_token_id": 2}
  config["text_config"]["eos_token_id"] = 569
  config["transformers_version"] = None
  folder = tmp_path / "old"
  os.makedirs(folder)
  shutil.copy(os.path.join(src, "model.safetensors"), folder)
  with open(folder / "config.json", "w") as f:
    json.dump(config, f)
  model, _ = load_clip_model(folder)
  assert model.config == clip_models["clip_quick_legacy"][0].config


def _write_folder(folder, config: dict, weights: dict | None):
  from safetensors.numpy import save_file
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, "config.json"), "w") as f:
    json.dump(config, f)
  if weights is not None:
    save_file(weights, os.path.join(folder, "model.safetensors"))


def test_import_errors(tmp_path):
  from safetensors.numpy import load_file
  src = os.path.join(REF, "text_gelu_eos")
  with open(os.path.join(src, "config.json")) as f:
    config = json.load(f)
  state = load_file(os.path.join(src, "model.safetensors"))
  _write_folder(tmp_path / "bin", config, None)
  (tmp_path / "bin" / "pytorch_model.bin").write_bytes(b"not read")
  with pytest.raises(FileNotFoundError, match="safetensors.*pickle"):
    load_clip_text_model(tmp_path / "bin")
  _write_folder(tmp_path / "bert", {**config, "model_type": "bert"}, state)
  with pytest.raises(ValueError, match="model_type='bert'"):
    load_clip_text_model(tmp_path / "bert")
  _write_folder(tmp_path / "rope", {**config, "rope_theta": 1e4}, state)
  with pytest.raises(ValueError, match=r"\['rope_theta'\]"):
    load_clip_text_model(tmp_path / "rope")
  load_clip_text_model(tmp_path / "rope", ignore_unknown_config_keys=True)
  _write_folder(tmp_path / "act", {**config, "hidden_act": "relu"}, state)
  with pytest.raises(ValueError, match="hidden_act"):
    load_clip_text_model(tmp_path / "act")
  missing = {k: v for k, v in state.items() if k != "final_layer_norm.bias"}
  _write_folder(tmp_path / "missing", config, missing)
  with pytest.raises(ValueError, match=r"missing key\(s\) 1 \['final_layer_norm.bias'\]"):
    load_clip_text_model(tmp_path / "missing")
  extra = {**state, "text_projection.weight": np.zeros((4, 32), np.float32)}
  _write_folder(tmp_path / "extra", config, extra)
  with pytest.raises(ValueError, match=r"unexpected key\(s\) 1 \['text_projection.weight'\]"):
    load_clip_text_model(tmp_path / "extra")
  _write_folder(tmp_path / "wide", {**config, "hidden_size": 64}, state)
  with pytest.raises(ValueError, match="do not match the config"):
    load_clip_text_model(tmp_path / "wide")
  with pytest.raises(ValueError, match="load_clip_text_model"):
    load_clip_model(src)
  with pytest.raises(FileNotFoundError, match="config.json"):
    load_clip_model(tmp_path)


# --- closed forms ----------------------------------------------------------------------------

def _tiny_clip(eos_token_id: int = 9) -> CLIPModel:
  text = CLIPTextConfig(vocab_size=10, hidden_size=8, intermediate_size=16, num_hidden_layers=2,
                        num_attention_heads=2, max_position_embeddings=6, projection_dim=4,
                        eos_token_id=eos_token_id)
  vision = CLIPVisionConfig(hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                            num_attention_heads=2, image_size=8, patch_size=4, projection_dim=4)
  return CLIPModel(CLIPConfig(text, vision, projection_dim=4))


def test_causal_mask_and_eos_pooling(key):
  model = _tiny_clip()
  text = CLIPTextModel(model.config.text_config)
  ids = jnp.array([[8, 3, 4, 9, 9, 9], [8, 3, 4, 5, 6, 9]])
  params = text.init(key, ids)["params"]
  hidden, pooled = text.apply({"params": params}, ids)
  changed = ids.at[:, 3].set(1)
  hidden2, _ = text.apply({"params": params}, changed)
  np.testing.assert_allclose(hidden2[:, :3], hidden[:, :3], rtol=0, atol=1e-6)
  assert np.abs(hidden2[:, 3:] - hidden[:, 3:]).max() > 1e-3
  np.testing.assert_array_equal(pooled, hidden[jnp.arange(2), jnp.array([3, 5])])
  h = jnp.arange(2 * 6 * 1, dtype=jnp.float32).reshape(2, 6, 1)
  ids = jnp.array([[8, 2, 7, 2, 1, 0], [0, 5, 1, 1, 7, 2]])
  np.testing.assert_array_equal(pool_text_features(h, ids, 2)[:, 0], [0, 10])  # arg-max id
  np.testing.assert_array_equal(pool_text_features(h, ids, 1)[:, 0], [4, 8])  # first eos
  with pytest.raises(ValueError, match="max_position_embeddings=6"):
    text.apply({"params": params}, jnp.zeros((1, 7), jnp.int32))


def test_logits_are_scaled_cosines(key):
  model = _tiny_clip()
  images = jax.random.normal(key, (3, 8, 8, 3))
  ids = jnp.array([[8, 1, 9, 9, 9, 9], [8, 2, 3, 9, 9, 9]])
  v = model.init(jax.random.fold_in(key, 1), images, ids)
  logits = model.apply(v, images, ids)
  img = np.asarray(model.apply(v, images, method="encode_image"), np.float64)
  txt = np.asarray(model.apply(v, ids, method="encode_text"), np.float64)
  cos = (img @ txt.T) / np.linalg.norm(img, axis=1)[:, None] / np.linalg.norm(txt, axis=1)[None]
  np.testing.assert_allclose(logits, np.exp(2.6592) * cos, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match=r"\[B, 8, 8, 3\]"):
    model.apply(v, images[:, :4], ids)


def test_clip_preprocess_ranges_and_errors():
  u = np.arange(2 * 8 * 8 * 3, dtype=np.uint8).reshape(2, 8, 8, 3)
  mean, std = np.array([0.48145466, 0.4578275, 0.40821073]), np.array([0.26862954, 0.26130258,
                                                                       0.27577711])
  np.testing.assert_allclose(clip_preprocess(u, 8), (u / 255.0 - mean) / std, rtol=0, atol=1e-6)
  np.testing.assert_allclose(clip_preprocess(u.astype(np.float32) / 127.5 - 1.0, 8),
                             clip_preprocess(u, 8), rtol=0, atol=2e-6)
  assert clip_preprocess(np.zeros((1, 12, 16, 3), np.float32), 8).shape == (1, 8, 8, 3)
  with pytest.raises(ValueError, match=r"\[-1, 1\]"):
    clip_preprocess(np.full((1, 8, 8, 3), 3.0, np.float32), 8)
  with pytest.raises(ValueError, match="RGB NHWC"):
    clip_preprocess(np.zeros((8, 8, 3), np.uint8), 8)


def test_clip_score_equals_direct_cosine(clip_models):
  model, params = clip_models["clip_gelu_eos"]
  ref = fixture("clip_gelu_eos")
  images = np.concatenate([ref["images"], ref["images"][::-1]])[:7]  # 7 pairs, chunks of 3
  ids = np.concatenate([ref["ids"], ref["ids"][::-1]])[:7]
  scores = clip_score(model, params, images, ids, batch_size=3)
  img = np.asarray(model.apply({"params": params}, clip_preprocess(images, 32),
                               method="encode_image"), np.float64)
  txt = np.asarray(model.apply({"params": params}, jnp.asarray(ids), method="encode_text"),
                   np.float64)
  direct = np.sum(img * txt, 1) / np.linalg.norm(img, axis=1) / np.linalg.norm(txt, axis=1)
  assert scores.shape == (7,) and scores.dtype == np.float32
  np.testing.assert_allclose(scores, direct, rtol=1e-5, atol=1e-6)
  # The fixture's logits are 30 * cos: the first 4 pairs are their diagonal.
  np.testing.assert_allclose(scores[:4], np.diag(ref["logits_per_image"]) / 30.0, atol=1e-5)
  np.testing.assert_allclose(clip_score(model, params, images, ids, batch_size=4,
                                        times_100=True), 100 * np.maximum(direct, 0), atol=1e-3)
  with pytest.raises(ValueError, match="same N"):
    clip_score(model, params, images, ids[:3])
  with pytest.raises(ValueError, match=r"\[-1, 1\]"):
    clip_score(model, params, images.astype(np.float32), ids)
