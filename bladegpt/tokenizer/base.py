"""The interface every tokenizer kind implements, and the end-of-text token they share.

`<|endoftext|>` in a text is the document separator, as gpt-2-simple's users write it between
documents and as GPT-2 learned it: every kind encodes it as one id, `eot_id` (GPT-2's 50256; the
last id of a corpus BPE or a char vocabulary), which sampling stops at and the exports name as their
end of text. Tokenizers saved before the separator existed (a BPE or char file without
"special_tokens") keep reading it as the characters it is spelled with, and have no `eot_id`.
"""

from __future__ import annotations

import array
from pathlib import Path

from bladegpt import strictjson
from bladegpt.errors import TokenizerError

GPT2_EOT = "<|endoftext|>"


class Tokenizer:
    """Encodes text to ids and back; `token_bytes` gives each id's UTF-8 bytes (for bits per byte).

    `eot_id` is the id `<|endoftext|>` in a text becomes, the document separator that sampling stops at
    and exports name as their end of text; None when the vocabulary has no such token (the text is
    then its characters). Its bytes are the separator's text, so decode gives back the text that was
    encoded and bits per byte counts the separator as the bytes it takes in the file (the same
    denominator for every tokenizer, and for datasets prepared before, which spelled it out).
    `stop_ids` are every id that ends a text: the separator here, a pretrained model's own list
    (hf.py), the first the one exports name as eos.
    """

    kind: str
    vocab_size: int
    eot_id: int | None = None
    bos_id: int | None = None  # a pretrained model's beginning of text, put before a prompt where add_bos
    add_bos: bool = False  # (Llama 3 expects <|begin_of_text|> first; SmolLM2 and Qwen add none)

    @property
    def stop_ids(self) -> tuple[int, ...]:
        return () if self.eot_id is None else (self.eot_id,)

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def decode(self, ids: list[int]) -> str:
        return b"".join(self.token_bytes(i) for i in ids).decode("utf-8", errors="replace")

    def token_bytes(self, token_id: int) -> bytes:
        raise NotImplementedError

    def encode_bytes(self, text: str, dtype: str) -> bytes:
        """The ids of `text` packed as token files store them ("uint16" or "uint32", native order)."""
        return array.array("H" if dtype == "uint16" else "I", self.encode(text)).tobytes()

    def to_dict(self) -> dict:
        raise NotImplementedError

    def save(self, path: Path) -> None:
        Path(path).write_text(strictjson.dumps(self.to_dict(), ensure_ascii=False), encoding="utf-8")


def has_eot(data: dict, n: int) -> bool:
    """Whether a saved vocabulary of `n` ordinary ids ends with `<|endoftext|>` (files saved before it
    have no "special_tokens"); anything else there is damage."""
    specials = data.get("special_tokens")
    if specials is None:
        return False
    if specials != {GPT2_EOT: n}:
        raise TokenizerError(f"The tokenizer file's special tokens {specials!r} are not BladeGPT's "
                             f"({{{GPT2_EOT!r}: {n}}}); prepare the data again.")
    return True
