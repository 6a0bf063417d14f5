"""Byte-level BPE spelled the way GPT-2's files spell it: every byte a printable character, merges
as pairs of such strings. Hugging Face tokenizers and GGUF both store vocabularies this way.

tiktoken keeps only ranks (token bytes -> id); the merges are rebuilt by replaying BPE on each token.
"""

from __future__ import annotations

import functools


@functools.cache
def byte_chars() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters (' ' -> 'Ġ', '\\n' -> 'Ċ')."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def spell(token: bytes) -> str:
    """A token's bytes in byte-level characters."""
    chars = byte_chars()
    return "".join(chars[b] for b in token)


def split_token(ranks: dict[bytes, int], token: bytes, rank: int) -> tuple[bytes, bytes]:
    """The pair whose merge made `token`: replay BPE on its bytes with the merges ranked below it."""
    parts = [bytes([b]) for b in token]
    while len(parts) > 2:
        best = min(
            (r, i) for i in range(len(parts) - 1) if (r := ranks.get(parts[i] + parts[i + 1], rank)) < rank
        )
        i = best[1]
        parts[i : i + 2] = [parts[i] + parts[i + 1]]
    return parts[0], parts[1]


def bpe_merges(ranks: dict[bytes, int]) -> list[tuple[str, str]]:
    """The merges of a tiktoken vocabulary, spelled, in rank order (the order BPE applies them)."""
    return [
        (spell(a), spell(b))
        for token, rank in sorted(ranks.items(), key=lambda kv: kv[1])
        if len(token) > 1
        for a, b in [split_token(ranks, token, rank)]
    ]


def char_pieces(chars: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """What a byte-level BPE needs beyond one token a character, so that every character becomes its
    own token: for a character of several UTF-8 bytes, its partial prefixes and lone bytes as tokens
    (never whole characters, so never clashing with one), and merges that join them left to right.
    ASCII needs nothing. Returns (extra tokens, merges)."""
    extra: dict[str, None] = {}  # ordered sets
    merges: dict[tuple[str, str], None] = {}
    for ch in chars:
        data = ch.encode("utf-8")
        for k in range(1, len(data)):
            prefix, byte = spell(data[:k]), spell(data[k : k + 1])
            extra.update({prefix: None, byte: None})
            merges[(prefix, byte)] = None
    return list(extra), list(merges)
