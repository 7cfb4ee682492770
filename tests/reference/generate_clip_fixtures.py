"""Writes the CLIP reference fixtures used by tests/test_clip.py.

Run from the repository root with a reference venv holding torch 2.13 + transformers 5
(`pip install -e ".[reference]"`, or `pip install torch==2.13.0 transformers safetensors numpy
tokenizers pillow`):

  /tmp/refvenv/bin/python tests/reference/generate_clip_fixtures.py

It writes under tests/reference/clip/:
  tok_sd1/   trained by jaxgen's `train_clip_tokenizer` on shape captions, pad = eos (SD 1.x);
  tok_sd2/   trained here with tokenizers' BpeTrainer in its own vocabulary order, pad "!"
             (SD 2.x), vocab.json + merges.txt + the two token config files;
  tok_json/  the tok_sd2 tokenizer saved by transformers as tokenizer.json only;
  tokenizer.npz  the captions, the tricky prompts and, per folder, transformers'
             `CLIPTokenizer(prompts, padding="max_length", truncation=True, max_length=77)`;
  <model>/   tiny random CLIPModel / CLIPTextModel folders (`save_pretrained`, safetensors),
  <model>.npz  their inputs and transformers' outputs (float32, CPU).
Parameters are redrawn with larger spreads than transformers' init (LayerNorm affines too), so
that a mis-mapped or mis-laid-out weight changes the outputs.
"""
import importlib.util
import json
import os
import shutil

import numpy as np
import tokenizers
import torch
import transformers
from tokenizers import pre_tokenizers, trainers
from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPTextModel, CLIPTokenizer
# The PIL flavour of CLIPImageProcessor: same steps, no torchvision needed (pip install pillow).
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "clip")
ROOT = os.path.dirname(os.path.dirname(HERE))

CAPTIONS = [f"a {size} {colour} {shape} in the {where}"
            for size in ("small", "large") for colour in ("red", "green", "blue", "yellow")
            for shape in ("circle", "square", "triangle") for where in
            ("top left", "top right", "bottom left", "bottom right", "centre")]
PROMPTS = [
    "a red circle",
    "A  Large BLUE   square!!",
    "",
    "hello, world! it's 3.14 o'clock; don't STOP",
    "<|endoftext|> a red <|startoftext|>",
    "héllo wörld 日本 🙂",
    "  leading and trailing  ",
    "!",
    "a!b ! c!",
    "a\tsmall\ngreen  triangle",
    " ".join(["a large yellow triangle in the bottom right"] * 12),  # > 77 tokens
    "THE BLUE TRIANGLE'S top-left corner (x2)",
    "x" * 90,
    "12345 67",
]
MODEL_PROMPTS = [1, 2, 3, 10]  # rows of PROMPTS fed to the models
MAX_LENGTH = 77


def train_sd2_folder(folder: str):
  """A CLIP-rules BPE in tokenizers' own vocabulary order, pad "!" as in SD 2.x; returns
  jaxgen's tokenizer module (loaded from its file: no jax needed)."""
  spec = importlib.util.spec_from_file_location(
      "clip_tokenizer", os.path.join(ROOT, "jaxgen", "text", "clip_tokenizer.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  tok = module._clip_pipeline({}, [], "<|endoftext|>")  # the normaliser / pre-tokeniser only
  trainer = trainers.BpeTrainer(vocab_size=700, min_frequency=2, show_progress=False,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                end_of_word_suffix="</w>",
                                special_tokens=["<|startoftext|>", "<|endoftext|>"])
  tok.train_from_iterator(CAPTIONS, trainer)
  os.makedirs(folder, exist_ok=True)
  tok.model.save(folder)
  # The trainer numbers the `</w>` alphabet in hash order: renumber the non-merge tokens in
  # sorted order after the specials (merges keep theirs), so that reruns write the same files.
  with open(os.path.join(folder, "vocab.json"), encoding="utf-8") as f:
    vocab = json.load(f)
  with open(os.path.join(folder, "merges.txt"), encoding="utf-8") as f:
    merged = {"".join(line.split()) for line in f if line.strip() and not line.startswith("#")}
  specials = ["<|startoftext|>", "<|endoftext|>"]
  base = sorted(t for t in vocab if t not in merged and t not in specials)
  order = specials + base + sorted(merged, key=vocab.__getitem__)
  assert sorted(order) == sorted(vocab)
  with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
    json.dump({t: i for i, t in enumerate(order)}, f, ensure_ascii=False)
  specials = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "!",
              "unk_token": "<|endoftext|>"}
  with open(os.path.join(folder, "special_tokens_map.json"), "w") as f:
    json.dump(specials, f, indent=2)
  with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
    json.dump({**specials, "model_max_length": MAX_LENGTH, "tokenizer_class": "CLIPTokenizer"},
              f, indent=2)
  return module


def tokenizer_fixtures() -> dict:
  module = train_sd2_folder(os.path.join(OUT, "tok_sd2"))
  module.train_clip_tokenizer(CAPTIONS, 600, os.path.join(OUT, "tok_sd1"))
  json_folder = os.path.join(OUT, "tok_json")
  CLIPTokenizer.from_pretrained(os.path.join(OUT, "tok_sd2")).save_pretrained(json_folder)
  for name in os.listdir(json_folder):
    if name not in ("tokenizer.json", "tokenizer_config.json"):
      os.remove(os.path.join(json_folder, name))
  data = {"captions": np.array(CAPTIONS), "prompts": np.array(PROMPTS)}
  for name in ("tok_sd1", "tok_sd2", "tok_json"):
    ref = CLIPTokenizer.from_pretrained(os.path.join(OUT, name))
    ids = np.array(ref(PROMPTS, padding="max_length", truncation=True,
                       max_length=MAX_LENGTH)["input_ids"], np.int32)
    data[f"{name}_ids"] = ids
    data[f"{name}_special"] = np.array([ref.bos_token_id, ref.eos_token_id, ref.pad_token_id])
    print(name, ref.pad_token, ref.pad_token_id, len(ref), ids.shape)
  np.savez_compressed(os.path.join(OUT, "tokenizer.npz"), **data)
  return data


def perturb_(model: torch.nn.Module, gen: torch.Generator) -> None:
  """Redraws every parameter: weights N(0, 0.3^2)-ish, LayerNorm affines around (1, 0)."""
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=gen)
      if "layer_norm" in name or "layernorm" in name or "layrnorm" in name:
        p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.2 * noise)
      elif name == "logit_scale":
        p.fill_(float(np.log(30.0)))
      elif "embedding" in name:
        p.copy_(0.5 * noise)
      else:
        fan_in = p.shape[1] if p.ndim == 2 else max(1, int(np.prod(p.shape[1:])))
        p.copy_(noise * (1.5 / np.sqrt(fan_in)))


TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=MAX_LENGTH, projection_dim=16)
VISION = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
              image_size=32, patch_size=8, num_channels=3, projection_dim=16)
MODELS = {
    # Legacy pooling (eos_token_id = 2: arg-max id), quick_gelu, SD 1.x-style ids.
    "clip_quick_legacy": dict(kind="clip", tokenizer="tok_sd1", act="quick_gelu", eos=2,
                              eps=1e-5),
    # First-eos pooling with the real eos id, exact gelu, SD 2.x-style ids (pad "!").
    "clip_gelu_eos": dict(kind="clip", tokenizer="tok_sd2", act="gelu", eos=None, eps=1e-6),
    "text_quick_legacy": dict(kind="text", tokenizer="tok_sd1", act="quick_gelu", eos=2,
                              eps=1e-5),
    "text_gelu_eos": dict(kind="text", tokenizer="tok_sd2", act="gelu", eos=None, eps=1e-5),
}


def random_ids(gen: np.random.Generator, vocab: int, eos: int) -> np.ndarray:
  """Rows holding the config's eos id twice, and larger ids elsewhere: the legacy (arg-max)
  and the first-eos pooling rules pick different positions."""
  ids = gen.integers(0, vocab, size=(3, MAX_LENGTH)).astype(np.int64)
  ids[ids == eos] = (eos + 1) % vocab
  for row, (a, b) in enumerate([(5, 9), (30, 31), (70, 76)]):
    ids[row, a] = ids[row, b] = eos
  return ids


def model_fixture(name: str, spec: dict, tok: dict, seed: int) -> None:
  special = tok[f"{spec['tokenizer']}_special"]
  vocab = int(len(CLIPTokenizer.from_pretrained(os.path.join(OUT, spec["tokenizer"]))))
  eos = int(special[1]) if spec["eos"] is None else spec["eos"]
  text = CLIPTextConfig(vocab_size=vocab, hidden_act=spec["act"], layer_norm_eps=spec["eps"],
                        bos_token_id=int(special[0]), eos_token_id=eos,
                        pad_token_id=int(special[2]), **TEXT)
  torch.manual_seed(seed)
  gen = torch.Generator().manual_seed(seed)
  rng = np.random.default_rng(seed)
  ids = torch.from_numpy(tok[f"{spec['tokenizer']}_ids"][MODEL_PROMPTS].astype(np.int64))
  rand = torch.from_numpy(random_ids(rng, vocab, eos))
  mask = (torch.arange(MAX_LENGTH)[None] < torch.tensor([[3], [10], [2], [77]]))
  data = {"ids": ids.numpy().astype(np.int32), "ids_random": rand.numpy().astype(np.int32),
          "attention_mask": mask.numpy().astype(np.int32)}
  if spec["kind"] == "text":
    model = CLIPTextModel(text).eval()
    perturb_(model, gen)
    with torch.no_grad():
      out = model(input_ids=ids)
      data["last_hidden_state"] = out.last_hidden_state.numpy()
      data["pooler_output"] = out.pooler_output.numpy()
      data["pooler_output_random"] = model(input_ids=rand).pooler_output.numpy()
      data["pooler_output_masked"] = model(input_ids=ids, attention_mask=mask).pooler_output.numpy()
  else:
    config = CLIPConfig(text_config=text.to_dict(),
                        vision_config=dict(hidden_act=spec["act"], layer_norm_eps=spec["eps"],
                                           **VISION), projection_dim=12)
    model = CLIPModel(config).eval()
    perturb_(model, gen)
    images = rng.integers(0, 256, size=(4, 32, 32, 3), dtype=np.uint8)
    processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32,
                                                                          "width": 32})
    pixels = processor(images=list(images), return_tensors="pt")["pixel_values"]
    mean, std = np.array(processor.image_mean), np.array(processor.image_std)
    manual = (images / 255.0 - mean) / std
    assert np.abs(pixels.numpy().transpose(0, 2, 3, 1) - manual).max() < 1e-5
    with torch.no_grad():
      out = model(input_ids=ids, pixel_values=pixels)
      text_out = model.text_model(input_ids=ids)
      data.update(
          images=images, pixel_values=pixels.numpy().transpose(0, 2, 3, 1),
          last_hidden_state=text_out.last_hidden_state.numpy(),
          pooler_output=text_out.pooler_output.numpy(),
          pooler_output_random=model.text_model(input_ids=rand).pooler_output.numpy(),
          text_features=model.get_text_features(input_ids=ids).pooler_output.numpy(),
          image_features=model.get_image_features(pixel_values=pixels).pooler_output.numpy(),
          vision_pooler_output=out.vision_model_output.pooler_output.numpy(),
          text_embeds=out.text_embeds.numpy(), image_embeds=out.image_embeds.numpy(),
          logits_per_image=out.logits_per_image.numpy(),
          logit_scale=model.logit_scale.detach().numpy())
  folder = os.path.join(OUT, name)
  shutil.rmtree(folder, ignore_errors=True)
  model.save_pretrained(folder, safe_serialization=True)
  data["versions"] = np.array([f"torch {torch.__version__}",
                               f"transformers {transformers.__version__}",
                               f"tokenizers {tokenizers.__version__}"])
  np.savez(os.path.join(OUT, f"{name}.npz"), **data)
  print(name, {k: v.shape for k, v in data.items()})


def main() -> None:
  os.makedirs(OUT, exist_ok=True)
  tok = tokenizer_fixtures()
  for seed, (name, spec) in enumerate(MODELS.items()):
    model_fixture(name, spec, tok, seed)


if __name__ == "__main__":
  main()
