"""Tokenizers behind one small interface (base.py), a module a kind: a corpus-trained BPE or GPT-2's (bpe.py),
characters (char.py), a pretrained model's own (hf.py). All are saved as JSON (never pickle); this front door
trains them and loads them back by "kind"."""

from __future__ import annotations

import json
from pathlib import Path

from bladegpt.errors import TokenizerError
from bladegpt.tokenizer.base import GPT2_EOT, Tokenizer
from bladegpt.tokenizer.bpe import DEFAULT_BPE_VOCAB, TiktokenTokenizer
from bladegpt.tokenizer.char import CharTokenizer
from bladegpt.tokenizer.hf import HFTokenizer

KINDS = ("bpe", "gpt2", "char")  # what prepare --tokenizer trains
__all__ = ["GPT2_EOT", "CharTokenizer", "HFTokenizer", "TiktokenTokenizer", "Tokenizer", "load_tokenizer",
           "tokenizer_from_dict", "train_tokenizer"]
LOADERS = {"char": CharTokenizer, "bpe": TiktokenTokenizer, "gpt2": TiktokenTokenizer, "hf": HFTokenizer}


def train_tokenizer(kind: str, text: str, vocab_size: int = DEFAULT_BPE_VOCAB) -> Tokenizer:
    """Build a tokenizer of the given kind for this corpus."""
    if kind == "char":
        return CharTokenizer.train(text)
    if kind == "gpt2":
        return TiktokenTokenizer.gpt2()
    if kind == "bpe":
        return TiktokenTokenizer.train(text, vocab_size)
    raise TokenizerError(f"Unknown tokenizer '{kind}'; choose one of: {', '.join(KINDS)}.")


def tokenizer_from_dict(data: dict) -> Tokenizer:
    """A tokenizer rebuilt from what `to_dict` saved, by its "kind"."""
    kind = data.get("kind")
    if kind not in LOADERS:
        raise TokenizerError(f"Unknown tokenizer kind {kind!r} in tokenizer file; prepare the data again.")
    return LOADERS[kind].from_dict(data)


def load_tokenizer(path: Path) -> Tokenizer:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise TypeError(f"a JSON {type(data).__name__}, not an object")
        return tokenizer_from_dict(data)
    except TokenizerError:
        raise
    except (OSError, UnicodeDecodeError, KeyError, TypeError, ValueError) as e:  # JSON and base64 errors are ValueErrors
        raise TokenizerError(f"Cannot read the tokenizer at {path} ({e}); run `bladegpt prepare` again.") from None
