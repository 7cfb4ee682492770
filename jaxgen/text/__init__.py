"""Text tokenizers: CLIP's byte-level BPE on the `tokenizers` package."""
from jaxgen.text.clip_tokenizer import CLIPTokenizer, load_clip_tokenizer, train_clip_tokenizer

__all__ = ["CLIPTokenizer", "load_clip_tokenizer", "train_clip_tokenizer"]
