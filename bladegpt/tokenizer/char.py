"""A tokenizer of one id a character: the smallest vocabulary, for tiny texts and tests."""

from __future__ import annotations

import array

from bladegpt.errors import TokenizerError
from bladegpt.tokenizer.base import GPT2_EOT, Tokenizer, has_eot


class CharTokenizer(Tokenizer):
    """One id a character, then (unless `eot` is False, as in files saved before it) `<|endoftext|>`."""

    kind = "char"

    def __init__(self, chars: list[str], eot: bool = True):
        self.chars = chars
        self.eot_id = len(chars) if eot else None
        self.vocab_size = len(chars) + int(eot)
        self._pieces = chars + [GPT2_EOT] if eot else chars
        self._ids = {ch: i for i, ch in enumerate(chars)}
        self._table = {ord(ch): i for i, ch in enumerate(chars)}

    @classmethod
    def train(cls, text: str) -> CharTokenizer:
        return cls(sorted(set("".join(text.split(GPT2_EOT)))))

    def encode(self, text: str) -> list[int]:
        if self.eot_id is None or GPT2_EOT not in text:
            return self._encode_chars(text)
        parts = text.split(GPT2_EOT)
        ids = self._encode_chars(parts[0])
        for part in parts[1:]:
            ids.append(self.eot_id)
            ids.extend(self._encode_chars(part))
        return ids

    def _check_seen(self, text: str) -> None:
        unseen = set(text) - self._ids.keys()
        if unseen:
            raise TokenizerError(
                f"The text has characters this char tokenizer never saw in training: "
                f"{''.join(sorted(unseen))!r}; remove them, or prepare the corpus with --tokenizer bpe."
            )

    def _encode_chars(self, text: str) -> list[int]:
        self._check_seen(text)
        if self.vocab_size >= 0xD800:  # ids would fall among the surrogate code points
            return [self._ids[ch] for ch in text]
        # At C speed: translate each character into the one whose code point is its id, read those as ints.
        ids = array.array("I")
        ids.frombytes(text.translate(self._table).encode("utf-32-le"))
        return ids.tolist()

    def token_bytes(self, token_id: int) -> bytes:
        return self._pieces[token_id].encode("utf-8")

    def decode(self, ids: list[int]) -> str:
        return "".join(self._pieces[i] for i in ids)

    def to_dict(self) -> dict:
        specials = {} if self.eot_id is None else {"special_tokens": {GPT2_EOT: self.eot_id}}
        return {"kind": self.kind, "chars": self.chars, **specials}

    @classmethod
    def from_dict(cls, data: dict) -> CharTokenizer:
        """The tokenizer `to_dict` saved (a file saved before <|endoftext|> existed has none)."""
        chars = list(data["chars"])
        return cls(chars, eot=has_eot(data, len(chars)))
