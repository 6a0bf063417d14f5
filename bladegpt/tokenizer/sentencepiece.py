"""SentencePiece vocabularies (Gemma, Llama 2, Mistral, TinyLlama): pieces spelled with "▁" for a space, and
`<0xNN>` pieces that spell a character no piece holds as its UTF-8 bytes (byte fallback).

A GGUF file stores one as `tokenizer.ggml.model = llama`: tokens, scores and token types, no merges. llama.cpp
runs it (src/llama-vocab.cpp, llm_tokenizer_spm): spaces become "▁", the text starts as its characters, and the
adjacent pair whose joined piece scores highest is merged until none joins into a piece; what is left and is no
piece becomes byte pieces. That is a BPE whose merges are every split of a piece into two pieces, ranked by the
joined piece's score: transformers rebuilds a GGUF SentencePiece vocabulary the same way (integrations/gguf,
`generate_merges`), and `tokenizers` runs it here. Control and user-defined tokens are matched whole in the text
first, as llama.cpp matches them (Gemma's "\\n", "\\n\\n", runs of spaces and tabs are user-defined tokens).
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

from tokenizers import AddedToken, decoders, models, normalizers
from tokenizers import Tokenizer as RustTokenizer

from bladegpt.errors import TokenizerError

# GGUF token types (gguf-py constants.py TokenType).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = range(1, 7)
SPACE = "\u2581"  # "▁", SentencePiece's spelling of a space
BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def spm_merges(tokens: list[str], scores: list[float], types: list[int]) -> list[tuple[str, str]]:
    """Every split of a normal piece into two pieces, best first: by the joined piece's score (llama.cpp's
    order), then its id, then longer left halves (transformers' `generate_merges` order; for Gemma, whose
    scores fall with the id, this is the file's order, which transformers' Gemma reader uses).
    Only normal pieces: control and user-defined ones are matched whole before merging, so no merge reaches them."""
    index = {token: i for i, token in enumerate(tokens)}
    ranked = []
    for i, token in enumerate(tokens):
        if types[i] != NORMAL:
            continue
        splits = [(token[:k], token[k:]) for k in range(1, len(token)) if token[:k] in index and token[k:] in index]
        splits.sort(key=lambda pair: (index[pair[0]], index[pair[1]]))
        ranked += [(-scores[i], i, -len(a), -len(b), a, b) for a, b in splits]
    ranked.sort(key=lambda r: r[:4])
    return [(a, b) for *_, a, b in ranked]


def added_tokens(tokenizer: RustTokenizer, tokens: list[str], types: list[int]) -> RustTokenizer:
    """Control and unknown pieces as special tokens, user-defined ones as plain added tokens, all matched whole
    in the text before anything else (as llama.cpp and SentencePiece match them)."""
    tokenizer.normalizer = normalizers.Replace(" ", SPACE)
    tokenizer.decoder = decoders.Sequence([decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()])
    tokenizer.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False)
                                  for i in range(len(tokens)) if types[i] in (CONTROL, UNKNOWN)])
    tokenizer.add_tokens([AddedToken(tokens[i], special=False, normalized=False)
                          for i in range(len(tokens)) if types[i] == USER_DEFINED])
    return tokenizer


def gguf_sentencepiece(meta: dict) -> RustTokenizer:
    """The `tokenizers` Tokenizer that splits text as llama.cpp splits a GGUF file's SentencePiece vocabulary
    (`meta`: key -> value, as sources.gguf.metadata gives); TokenizerError (one line) for an incomplete one or
    one with a space prefix (`tokenizer.ggml.add_space_prefix`, Llama 2's), which BladeGPT does not support yet."""
    tokens, scores, types = (meta.get(f"tokenizer.ggml.{key}") for key in ("tokens", "scores", "token_type"))
    types = [NORMAL] * len(tokens) if types is None and isinstance(tokens, list) else types
    if not (isinstance(tokens, list) and all(isinstance(t, str) for t in tokens) and isinstance(scores, list)
            and isinstance(types, list) and len(tokens) == len(scores) == len(types)):
        raise TokenizerError("The GGUF file's SentencePiece vocabulary is incomplete (tokenizer.ggml.tokens, "
                             "scores and token_type); the file is damaged: download it again.")
    if len(set(tokens)) != len(tokens):
        raise TokenizerError("The GGUF file's vocabulary spells two tokens alike (llama.cpp refuses it too); "
                             "the file is damaged: download it again.")
    # llama.cpp's default is true for SentencePiece: a file without the key (older Llama 2 files) has the prefix.
    if meta.get("tokenizer.ggml.add_space_prefix", True):
        raise TokenizerError("The GGUF file's tokenizer puts a space before every text (tokenizer.ggml."
                             "add_space_prefix: Llama 2, Mistral, TinyLlama), which BladeGPT does not support yet; "
                             "start from a model without it (Gemma 3) or a byte-level BPE one (Llama 3, SmolLM2).")
    unk = meta.get("tokenizer.ggml.unknown_token_id")
    has_bytes = BYTE in types
    bpe = models.BPE({token: i for i, token in enumerate(tokens)}, spm_merges(tokens, scores, types),
                     unk_token=tokens[unk] if isinstance(unk, int) and 0 <= unk < len(tokens) else None,
                     fuse_unk=True, byte_fallback=has_bytes)
    return added_tokens(RustTokenizer(bpe), tokens, types)


def model_file_sentencepiece(path: Path) -> RustTokenizer:
    """A SentencePiece `tokenizer.model` run as SentencePiece runs it: a BPE model's pieces merged by score (as
    from GGUF), a Unigram model's by Viterbi over its scores; TokenizerError (one line) for a damaged file or
    one that normalizes text (a space prefix, extra whitespace removed, NFKC rules), which BladeGPT does not
    support yet. Read with a small protobuf reader (sentencepiece_model.proto's field numbers): no dependency."""
    try:
        model = _message(Path(path).read_bytes())
        pieces = [_message(p) for p in model.get(1, [])]
        tokens = [p[1][0].decode("utf-8") for p in pieces]
        scores = [struct.unpack("<f", p[2][0])[0] if 2 in p else 0.0 for p in pieces]
        types = [p[3][0] if 3 in p else NORMAL for p in pieces]
        trainer, norm = (_message(model[k][0]) if k in model else {} for k in (2, 3))
    except (OSError, ValueError, IndexError, KeyError, struct.error) as e:  # UnicodeDecodeError is a ValueError
        raise TokenizerError(f"Cannot read {path} as a SentencePiece model ({e}); download it again.") from None
    kind = trainer.get(3, [1])[0]  # 1 Unigram (the default), 2 BPE
    rules = [name for key, name in ((3, "a space put first (add_dummy_prefix)"),  # both on unless the file says
                                    (4, "runs of spaces removed (remove_extra_whitespaces)")) if norm.get(key, [1])[0]]
    rules += ["normalization rules (precompiled_charsmap)"] if norm.get(2, [b""])[0] else []
    if kind not in (1, 2) or rules:
        what = ", ".join(rules) or f"model type {kind}, neither BPE nor Unigram"
        raise TokenizerError(f"{path} is a SentencePiece model with {what}, which BladeGPT does not support yet; "
                             "use a model without it (Gemma 3's).")
    fallback, unk = bool(trainer.get(35, [0])[0]), trainer.get(40, [0])[0]
    if kind == 2:
        bpe = models.BPE({t: i for i, t in enumerate(tokens)}, spm_merges(tokens, scores, types), unk_token=tokens[unk],
                         fuse_unk=True, byte_fallback=fallback)
    else:
        bpe = models.Unigram(list(zip(tokens, scores)), unk_id=unk, byte_fallback=fallback)
    return added_tokens(RustTokenizer(bpe), tokens, types)


def _message(data: bytes) -> dict[int, list]:
    """A protobuf message's fields: number -> values (ints for varints, bytes for the rest), in order."""
    fields: dict[int, list] = {}
    at = 0

    def varint() -> int:
        nonlocal at
        value = shift = 0
        while True:
            byte = data[at]
            at += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                return value

    while at < len(data):
        key = varint()
        wire = key & 7
        if wire == 0:
            value = varint()
        elif wire in (1, 5):
            value, at = data[at : at + (8 if wire == 1 else 4)], at + (8 if wire == 1 else 4)
        elif wire == 2:
            size = varint()
            value, at = data[at : at + size], at + size
        else:
            raise ValueError(f"wire type {wire}")
        fields.setdefault(key >> 3, []).append(value)
    return fields


def piece_bytes(piece: str, byte_fallback: bool) -> bytes:
    """A SentencePiece piece's bytes: "▁" is a space, `<0xNN>` one byte where the model falls back to bytes."""
    match = BYTE_PIECE.fullmatch(piece) if byte_fallback else None
    return bytes([int(match[1], 16)]) if match else piece.replace(SPACE, " ").encode("utf-8")


def is_sentencepiece(spec: dict) -> bool:
    """Whether a tokenizer.json spells text as SentencePiece does: its decoder turns "▁" back into spaces
    (Replace, as Gemma's and Llama's fast tokenizers write it, or Metaspace) and it has no byte-level decoder."""
    parts = [spec.get("decoder") or {}]
    parts += parts[0].get("decoders") or []
    kinds = {part.get("type") for part in parts if isinstance(part, dict)}
    replaces = any(part.get("type") == "Replace" and (part.get("pattern") or {}).get("String") == SPACE
                   for part in parts if isinstance(part, dict))
    return "ByteLevel" not in kinds and (replaces or "Metaspace" in kinds)


def byte_fallback(spec: dict) -> bool:
    """Whether a tokenizer.json's model spells unknown characters as `<0xNN>` pieces."""
    return bool((spec.get("model") or {}).get("byte_fallback"))


def piece_scores(tokens: list[str], merges: list) -> list[float]:
    """Scores under which llama.cpp merges as a BPE's `merges` (best first; "a b" strings or pairs) do: a piece
    scores minus the rank of the first merge that joins it, pieces no merge joins 0 (GGUF's `scores`)."""
    index = {token: i for i, token in enumerate(tokens)}
    scores = [0.0] * len(tokens)
    joined = set()
    for rank, merge in enumerate(merges):
        a, b = merge.split(" ", 1) if isinstance(merge, str) else merge
        i = index.get(a + b)
        if i is not None and i not in joined:
            joined.add(i)
            scores[i] = -float(rank)
    return scores
