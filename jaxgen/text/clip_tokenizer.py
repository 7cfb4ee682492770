"""CLIP's byte-level BPE tokenizer on the `tokenizers` package (Radford et al. 2021, sec. 2.4).

CLIP lower-cases the text, collapses whitespace, splits it with its regex (letters, single
digits, runs of other symbols, English contractions, the two special tokens), maps bytes to
printable characters (GPT-2's byte-level alphabet) and applies BPE with an end-of-word suffix
`</w>`. A prompt becomes `[bos] + tokens + [eos]`, truncated to keep eos last and padded with
the folder's pad token: Stable Diffusion 1.x pads with `<|endoftext|>` (= eos), 2.x with `!`.
The normaliser and pre-tokeniser below are those of transformers' `CLIPTokenizer` (v5), so the
ids equal `CLIPTokenizer(prompts, padding="max_length", truncation=True)["input_ids"]`.
"""
from __future__ import annotations

import json
import os
from typing import Any, Iterable, Sequence

import numpy as np

__all__ = ["CLIPTokenizer", "load_clip_tokenizer", "train_clip_tokenizer"]

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
DEFAULT_MAX_LENGTH = 77
_CLIP_SPLIT = (r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]"""
               r"""|[^\s\p{L}\p{N}]+""")
_SPECIAL_KEYS = ("bos_token", "eos_token", "pad_token", "unk_token")
_DEFAULTS = {"bos_token": BOS, "eos_token": EOS, "pad_token": EOS, "unk_token": EOS}


def _clip_pipeline(vocab: dict[str, int], merges: list, unk_token: str):
  """A `tokenizers.Tokenizer` with CLIP's BPE, normaliser and pre-tokeniser (no specials)."""
  from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers
  from tokenizers.models import BPE
  tok = Tokenizer(BPE(vocab=vocab, merges=merges, dropout=None, continuing_subword_prefix="",
                      end_of_word_suffix="</w>", fuse_unk=False, unk_token=unk_token))
  tok.normalizer = normalizers.Sequence(
      [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
  tok.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Split(Regex(_CLIP_SPLIT), behavior="removed", invert=True),
      pre_tokenizers.ByteLevel(add_prefix_space=False),
  ])
  tok.decoder = decoders.ByteLevel()
  return tok


class CLIPTokenizer:
  """Prompts -> int32 ids `[B, max_length]`: `[bos] + BPE tokens + [eos] + [pad] * k`.

  Attributes:
    backend: the `tokenizers.Tokenizer` (CLIP pipeline, special tokens matched in text, no
      post-processor: bos/eos, truncation and padding are added here).
    bos_token, eos_token, pad_token, unk_token: the special token strings.
    bos_token_id, eos_token_id, pad_token_id: their ids.
    model_max_length: the default `max_length` (77 for CLIP and Stable Diffusion).
    vocab_size: size of the vocabulary, specials included.
  """

  def __init__(self, vocab: dict[str, int], merges: list, *, model_max_length: int =
               DEFAULT_MAX_LENGTH, **special_tokens: str):
    """Args: vocab: token -> id; merges: BPE merges, in priority order, as (left, right) pairs;
    model_max_length; bos_token / eos_token / pad_token / unk_token (CLIP's by default)."""
    from tokenizers import AddedToken
    unknown = sorted(set(special_tokens) - set(_SPECIAL_KEYS))
    if unknown:
      raise TypeError(f"CLIPTokenizer: unknown special token argument(s) {unknown}; expected "
                      f"some of {list(_SPECIAL_KEYS)}")
    tokens = {k: special_tokens.get(k) or _DEFAULTS[k] for k in _SPECIAL_KEYS}
    missing = sorted({t for t in tokens.values() if t not in vocab})
    if missing:
      raise ValueError(f"CLIPTokenizer: special token(s) {missing} are not in the vocabulary "
                       f"({len(vocab)} tokens); the folder's vocab.json and its token config "
                       "files disagree")
    self.backend = _clip_pipeline(vocab, merges, tokens["unk_token"])
    # As transformers does, every special token (SD 2.x's pad "!" too) is an added token: it is
    # matched as a whole in the text before BPE, never split.
    self.backend.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t in dict.fromkeys(tokens.values())])
    for k, t in tokens.items():
      setattr(self, k, t)
    self.bos_token_id, self.eos_token_id = vocab[tokens["bos_token"]], vocab[tokens["eos_token"]]
    self.pad_token_id = vocab[tokens["pad_token"]]
    self.model_max_length = int(model_max_length)
    self.vocab_size = self.backend.get_vocab_size(with_added_tokens=True)

  def __repr__(self) -> str:
    return (f"CLIPTokenizer(vocab_size={self.vocab_size}, model_max_length="
            f"{self.model_max_length}, pad_token={self.pad_token!r})")

  def tokenize(self, prompts: Sequence[str]) -> list[list[int]]:
    """The BPE ids of each prompt, without bos/eos, truncation or padding.

    Args:
      prompts: a list (or tuple) of strings.

    Returns:
      One list of ids per prompt.
    """
    _check_prompts(prompts)
    return [e.ids for e in self.backend.encode_batch(list(prompts), add_special_tokens=False)]

  def __call__(self, prompts: Sequence[str], max_length: int | None = None) -> np.ndarray:
    """Token ids, padded and truncated to `max_length` (transformers' `padding="max_length",
    truncation=True`).

    Args:
      prompts: a list (or tuple) of B strings; a bare string is refused (pass `[prompt]`).
      max_length: ids per prompt, bos and eos included; `model_max_length` by default.

    Returns:
      int32 ids.  # [B, max_length]
    """
    max_length = self.model_max_length if max_length is None else max_length
    if not isinstance(max_length, (int, np.integer)) or isinstance(max_length, bool) \
        or max_length < 2:
      raise ValueError(f"CLIPTokenizer: max_length must be an int >= 2 (room for bos and eos), "
                       f"got {max_length!r}")
    out = np.full((len(prompts) if isinstance(prompts, (list, tuple)) else 0, max_length),
                  self.pad_token_id, np.int32)
    for i, ids in enumerate(self.tokenize(prompts)):
      row = [self.bos_token_id] + ids[:max_length - 2] + [self.eos_token_id]
      out[i, :len(row)] = row
    return out  # [B, max_length]

  def decode(self, ids: Iterable[int]) -> str:
    """Text of a row of ids, special tokens dropped and `</w>` read as a space."""
    text = self.backend.decode([int(i) for i in ids], skip_special_tokens=True)
    return text.replace("</w>", " ").strip()


def _check_prompts(prompts: Any) -> None:
  if isinstance(prompts, str):
    raise TypeError("CLIPTokenizer expects a list of strings (a batch of prompts), got a single "
                    f"string {prompts[:40]!r}; pass [prompt]")
  if not isinstance(prompts, (list, tuple)):
    raise TypeError(f"CLIPTokenizer expects a list of strings, got {type(prompts).__name__}")
  if not prompts:
    raise ValueError("CLIPTokenizer expects a non-empty list of strings, got an empty list")
  bad = [(i, type(p).__name__) for i, p in enumerate(prompts) if not isinstance(p, str)]
  if bad:
    raise TypeError(f"CLIPTokenizer expects a list of strings; entries (index, type) {bad[:5]} "
                    "are not strings")


def _read_json(path: str) -> dict:
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f"could not parse {path!r} as JSON: {e}") from e


def _token_content(value: Any) -> str | None:
  """A special token as written in tokenizer_config.json: a string or {"content": ...}."""
  if isinstance(value, dict):
    return value.get("content")
  return value if isinstance(value, str) else None


def _token_settings(folder: str) -> dict[str, Any]:
  """Special tokens and model_max_length from special_tokens_map.json / tokenizer_config.json
  (the latter wins, as in transformers); absent files give CLIP's defaults."""
  settings: dict[str, Any] = {}
  for name in ("special_tokens_map.json", "tokenizer_config.json"):
    path = os.path.join(folder, name)
    if os.path.exists(path):
      config = _read_json(path)
      for k in _SPECIAL_KEYS:
        if _token_content(config.get(k)):
          settings[k] = _token_content(config[k])
      length = config.get("model_max_length")
      # transformers writes int(1e30) when a tokenizer has no limit; CLIP's positions stop at 77.
      if isinstance(length, int) and 1 < length < 1_000_000:
        settings["model_max_length"] = length
  return settings


def load_clip_tokenizer(folder: str | os.PathLike) -> CLIPTokenizer:
  """Reads a CLIP tokenizer folder (a Stable Diffusion `tokenizer/`, a transformers CLIP folder).

  The vocabulary comes from `vocab.json` + `merges.txt`, or else from the BPE model of a
  `tokenizer.json`; special tokens and `model_max_length` from `tokenizer_config.json` /
  `special_tokens_map.json` when present (CLIP's `<|startoftext|>`, `<|endoftext|>` and 77
  otherwise). The text rules are CLIP's whatever the files say.

  Args:
    folder: the folder, or a pipeline folder holding it in `tokenizer/`.

  Returns:
    A `CLIPTokenizer`; `tok(prompts)` gives int32 ids `[B, 77]`.

  Raises:
    FileNotFoundError: no such folder, or neither vocab.json + merges.txt nor tokenizer.json.
    ValueError: unreadable files, or a tokenizer.json that is not a BPE model.
  """
  from tokenizers.models import BPE
  folder = os.fspath(folder)
  if not os.path.isdir(folder):
    raise FileNotFoundError(f"{folder!r} is not a directory; expected a CLIP tokenizer folder "
                            "with vocab.json + merges.txt (or tokenizer.json)")
  if not any(os.path.exists(os.path.join(folder, n)) for n in
             ("vocab.json", "merges.txt", "tokenizer.json")) \
      and os.path.isdir(os.path.join(folder, "tokenizer")):
    folder = os.path.join(folder, "tokenizer")
  vocab_file, merges_file = os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt")
  json_file = os.path.join(folder, "tokenizer.json")
  if os.path.exists(vocab_file) and os.path.exists(merges_file):
    try:
      vocab, merges = BPE.read_file(vocab_file, merges_file)
    except Exception as e:  # the Rust reader raises a plain Exception
      raise ValueError(f"could not read {vocab_file!r} / {merges_file!r}: {e}") from e
  elif os.path.exists(json_file):
    model = _read_json(json_file).get("model", {})
    if model.get("type") != "BPE":
      raise ValueError(f"{json_file!r} holds a {model.get('type')!r} model; a CLIP tokenizer is "
                       "BPE")
    vocab = model["vocab"]
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]
  else:
    present = sorted(os.listdir(folder))
    raise FileNotFoundError(f"no CLIP tokenizer files in {folder!r}: expected vocab.json and "
                            f"merges.txt, or tokenizer.json; found {present}")
  return CLIPTokenizer(vocab, merges, **_token_settings(folder))


def train_clip_tokenizer(texts: Iterable[str], vocab_size: int, out_folder: str | os.PathLike, *,
                         pad_token: str = EOS, model_max_length: int = DEFAULT_MAX_LENGTH
                         ) -> CLIPTokenizer:
  """Trains a CLIP-format BPE vocabulary offline (tokenizers' `BpeTrainer`) and writes it.

  The vocabulary is laid out as CLIP's: the 256 byte characters, the same with `</w>`, one
  token per merge in merge order, then `<|startoftext|>` and `<|endoftext|>`; so every byte
  sequence has a tokenization and `vocab_size - 514` merges are learnt from `texts`, with the
  CLIP normaliser and pre-tokeniser. Written files: vocab.json, merges.txt,
  special_tokens_map.json, tokenizer_config.json (the layout of a Stable Diffusion
  `tokenizer/` folder, which transformers' CLIPTokenizer also reads).

  Args:
    texts: training captions.
    vocab_size: the final vocabulary size, >= 514; fewer merges are written when the texts
      admit fewer (then the vocabulary is smaller).
    out_folder: created if needed; files of the same names are replaced.
    pad_token: `<|endoftext|>` (Stable Diffusion 1.x) or a vocabulary token such as "!" (2.x).
    model_max_length: written to tokenizer_config.json.

  Returns:
    `load_clip_tokenizer(out_folder)`.
  """
  from tokenizers import pre_tokenizers, trainers
  if not isinstance(vocab_size, int) or vocab_size < 514:
    raise ValueError(f"train_clip_tokenizer: vocab_size must be an int >= 514 (512 byte tokens "
                     f"and 2 specials), got {vocab_size!r}")
  texts = list(texts)
  _check_prompts(texts)
  alphabet = _byte_alphabet()
  if set(alphabet) != set(pre_tokenizers.ByteLevel.alphabet()):
    raise AssertionError("the byte alphabet differs from tokenizers' ByteLevel.alphabet()")
  base = alphabet + [c + "</w>" for c in alphabet]
  tok = _clip_pipeline({}, [], EOS)
  trainer = trainers.BpeTrainer(vocab_size=vocab_size + 2 * len(base), min_frequency=2,
                                show_progress=False, initial_alphabet=alphabet,
                                end_of_word_suffix="</w>", special_tokens=[])
  tok.train_from_iterator(texts, trainer)
  merges = json.loads(tok.to_str())["model"]["merges"][:vocab_size - len(base) - 2]
  merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in merges]
  vocab = {t: i for i, t in enumerate(base + [a + b for a, b in merges] + [BOS, EOS])}
  if pad_token not in vocab:
    raise ValueError(f"train_clip_tokenizer: pad_token {pad_token!r} is not a vocabulary token")
  out = os.fspath(out_folder)
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, "vocab.json"), "w", encoding="utf-8") as f:
    json.dump(vocab, f, ensure_ascii=False)
  with open(os.path.join(out, "merges.txt"), "w", encoding="utf-8") as f:
    f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
  specials = {"bos_token": BOS, "eos_token": EOS, "pad_token": pad_token, "unk_token": EOS}
  with open(os.path.join(out, "special_tokens_map.json"), "w", encoding="utf-8") as f:
    json.dump(specials, f, indent=2)
  with open(os.path.join(out, "tokenizer_config.json"), "w", encoding="utf-8") as f:
    json.dump({**specials, "model_max_length": model_max_length,
               "tokenizer_class": "CLIPTokenizer", "do_lower_case": True}, f, indent=2)
  return load_clip_tokenizer(out)


def _byte_alphabet() -> list[str]:
  """GPT-2's 256 printable stand-ins for the bytes, in CLIP's vocabulary order: the printable
  bytes as themselves ("!" first, id 0), then the others as chr(256 + n)."""
  keep = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
          + list(range(ord("®"), ord("ÿ") + 1)))
  return [chr(b) for b in keep] + [chr(256 + n) for n in range(256 - len(keep))]
