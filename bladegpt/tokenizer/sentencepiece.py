"""SentencePiece vocabularies (Gemma, Llama 2, Mistral, TinyLlama): pieces spelled with "▁" for a space, and
`<0xNN>` pieces that spell a character no piece holds as its UTF-8 bytes (byte fallback).

A GGUF file stores one as `tokenizer.ggml.model = llama`: tokens, scores and token types, no merges. llama.cpp
runs it (src/llama-vocab.cpp, llm_tokenizer_spm): spaces become "▁", the text starts as its characters, and the
adjacent pair whose joined piece scores highest is merged until none joins into a piece; what is left and is no
piece becomes byte pieces. That is a BPE whose merges are every split of a piece into two pieces, ranked by the
joined piece's score: transformers rebuilds a GGUF SentencePiece vocabulary the same way (integrations/gguf,
`generate_merges`), and `tokenizers` runs it here. Control and user-defined tokens are matched whole in the text
first, as llama.cpp matches them (Gemma's "\\n", "\\n\\n", runs of spaces and tabs are user-defined tokens).

The space prefix (`tokenizer.ggml.add_space_prefix`, SentencePiece's `add_dummy_prefix`: Llama 2, Mistral 7B,
TinyLlama) is put as llama.cpp puts it (llm_tokenizer_spm): " " before the text given to encode, even one that
starts with a space, and again after every control or user-defined token matched in it; a Prepend normalizer,
as transformers' legacy Llama tokenizer.json (Llama 2's, TinyLlama's) writes it. It follows how these models were
trained: SentencePiece encodes each text with "▁" first, and Llama 2's chat code encodes each exchange so, after
its <s>. (transformers' non-legacy Metaspace "first", which its GGUF reader builds, puts none after a token
and does not double a leading space; a tokenizer.json that has it is run as it is.) `encode_pieces` encodes the
pieces prepare cuts a text into so that their ids joined are the whole text's.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
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


def added_tokens(tokenizer: RustTokenizer, tokens: list[str], types: list[int], prefix: bool) -> RustTokenizer:
    """Control and unknown pieces as special tokens, user-defined ones as plain added tokens, all matched whole
    in the text before anything else (as llama.cpp and SentencePiece match them); `prefix`: "▁" put before the
    text and after each of them, and taken off the decoded text's start (transformers' Llama 2 tokenizer.json)."""
    first = [normalizers.Prepend(SPACE)] if prefix else []
    tokenizer.normalizer = normalizers.Sequence([*first, normalizers.Replace(" ", SPACE)])
    strip = [decoders.Strip(" ", 1, 0)] if prefix else []
    tokenizer.decoder = decoders.Sequence([decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse(),
                                           *strip])
    tokenizer.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False)
                                  for i in range(len(tokens)) if types[i] in (CONTROL, UNKNOWN)])
    tokenizer.add_tokens([AddedToken(tokens[i], special=False, normalized=False)
                          for i in range(len(tokens)) if types[i] == USER_DEFINED])
    return tokenizer


def gguf_sentencepiece(meta: dict) -> RustTokenizer:
    """The `tokenizers` Tokenizer that splits text as llama.cpp splits a GGUF file's SentencePiece vocabulary
    (`meta`: key -> value, as sources.gguf.metadata gives), the space prefix included; TokenizerError (one
    line) for an incomplete one."""
    tokens, scores, types = (meta.get(f"tokenizer.ggml.{key}") for key in ("tokens", "scores", "token_type"))
    types = [NORMAL] * len(tokens) if types is None and isinstance(tokens, list) else types
    if not (isinstance(tokens, list) and all(isinstance(t, str) for t in tokens) and isinstance(scores, list)
            and isinstance(types, list) and len(tokens) == len(scores) == len(types)):
        raise TokenizerError("The GGUF file's SentencePiece vocabulary is incomplete (tokenizer.ggml.tokens, "
                             "scores and token_type); the file is damaged: download it again.")
    if len(set(tokens)) != len(tokens):
        raise TokenizerError("The GGUF file's vocabulary spells two tokens alike (llama.cpp refuses it too); "
                             "the file is damaged: download it again.")
    unk = meta.get("tokenizer.ggml.unknown_token_id")
    has_bytes = BYTE in types
    bpe = models.BPE({token: i for i, token in enumerate(tokens)}, spm_merges(tokens, scores, types),
                     unk_token=tokens[unk] if isinstance(unk, int) and 0 <= unk < len(tokens) else None,
                     fuse_unk=True, byte_fallback=has_bytes)
    # llama.cpp's default is true for SentencePiece: a file without the key (older Llama 2 files) has the prefix.
    return added_tokens(RustTokenizer(bpe), tokens, types, bool(meta.get("tokenizer.ggml.add_space_prefix", True)))


def model_file_sentencepiece(path: Path) -> RustTokenizer:
    """A SentencePiece `tokenizer.model` run as SentencePiece runs it: a BPE model's pieces merged by score (as
    from GGUF), a Unigram model's by Viterbi over its scores, "▁" put first where it adds a dummy prefix;
    TokenizerError (one line) for a damaged file, one that normalizes text otherwise (extra whitespace removed,
    NFKC rules), which BladeGPT does not support yet, or no `sentencepiece` installed (an optional dependency:
    pyproject.toml says why). Google's library loads and checks the file; its ModelProto names each piece's
    type (the numbers are GGUF's), the model type and the normalizer."""
    try:
        import sentencepiece
        from sentencepiece import sentencepiece_model_pb2
    except Exception as e:  # ImportError, or protobuf's VersionError for a protobuf older than the file's code
        raise TokenizerError(f"{path} is SentencePiece's own file, read with Google's library ({_first_line(e)}): "
                             "pip install -U 'sentencepiece[protobuf]'.") from None
    try:
        processor = sentencepiece.SentencePieceProcessor(model_file=str(path))
        model = sentencepiece_model_pb2.ModelProto.FromString(processor.serialized_model_proto())
    except Exception as e:  # OSError, or the C++ loader's RuntimeError for a damaged file
        raise TokenizerError(f"Cannot read {path} as a SentencePiece model ({_first_line(e)}); download it "
                             "again.") from None
    tokens, scores, types = zip(*((p.piece, p.score, p.type) for p in model.pieces))
    kind, norm = model.trainer_spec.model_type, model.normalizer_spec  # 1 Unigram, 2 BPE
    rules = ["runs of spaces removed (remove_extra_whitespaces)"] if norm.remove_extra_whitespaces else []
    rules += ["normalization rules (precompiled_charsmap)"] if norm.precompiled_charsmap else []
    rules += ["spaces not spelled ▁ (escape_whitespaces false)"] if not norm.escape_whitespaces else []
    rules += ["▁ after words (treat_whitespace_as_suffix)"] if model.trainer_spec.treat_whitespace_as_suffix else []
    if kind not in (1, 2) or rules:
        what = ", ".join(rules) or f"model type {kind}, neither BPE nor Unigram"
        raise TokenizerError(f"{path} is a SentencePiece model with {what}, which BladeGPT does not support yet; "
                             "use a model without it (Gemma 3's, Llama 2's).")
    fallback, unk = model.trainer_spec.byte_fallback, processor.unk_id()
    if kind == 2:
        bpe = models.BPE({t: i for i, t in enumerate(tokens)}, spm_merges(tokens, scores, types), unk_token=tokens[unk],
                         fuse_unk=True, byte_fallback=fallback)
    else:
        bpe = models.Unigram(list(zip(tokens, scores)), unk_id=unk, byte_fallback=fallback)
    return added_tokens(RustTokenizer(bpe), tokens, types, norm.add_dummy_prefix)


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


def parts(node: dict | None, key: str) -> Iterator[dict]:
    """A tokenizer.json component and, for a Sequence, the ones inside it."""
    if isinstance(node, dict):
        yield node
        for inner in node.get(key) or ():
            yield from parts(inner, key)


def space_prefix(normalizer: dict | None, pre_tokenizer: dict | None) -> str | None:
    """How a tokenizer puts "▁" before text, from its tokenizer.json components: "prepend" before every stretch
    of text between added tokens, even one that starts with a space (a Prepend normalizer: llama.cpp's
    add_space_prefix), Metaspace's "always" (the same, but none where one is there) or "first" (before the
    text's start alone: transformers' non-legacy Llama); None where it puts none."""
    if any(p.get("type") == "Prepend" for p in parts(normalizer, "normalizers")):
        return "prepend"
    for p in parts(pre_tokenizer, "pretokenizers"):
        if p.get("type") == "Metaspace":
            scheme = p.get("prepend_scheme") or ("always" if p.get("add_prefix_space") else "never")
            return None if scheme == "never" else scheme
    return None


def without_space_prefix(spec: dict) -> dict:
    """The tokenizer.json `spec` with no "▁" put before text (the pieces prepare cuts a text into, after its
    first): Prepend normalizers dropped, Metaspace's scheme "never"."""
    spec = copy.deepcopy(spec)
    normalizer = spec.get("normalizer")
    if isinstance(normalizer, dict) and normalizer.get("type") == "Prepend":
        spec["normalizer"] = None
    for part in parts(spec.get("normalizer"), "normalizers"):
        if part.get("type") == "Sequence":
            part["normalizers"] = [n for n in part["normalizers"] if n.get("type") != "Prepend"]
    for part in parts(spec.get("pre_tokenizer"), "pretokenizers"):
        if part.get("type") == "Metaspace":
            part["prepend_scheme"] = "never"
    return spec


def encode_pieces(whole: RustTokenizer, plain: RustTokenizer, added: set[int], pieces: list[str],
                  before: str | None, every: bool) -> list[list[int]]:
    """The ids of consecutive pieces of one text, which joined are the whole text's ids: `whole` puts the space
    prefix first in a text, `plain` is it without the prefix, `added` the ids of its added tokens, `before` the
    piece before pieces[0] (None where pieces[0] starts the text), `every` whether the prefix goes after every
    added token too. A piece is encoded plain up to its first added token and whole from there; whole from its
    start where it starts the text or the piece before it ends in an added token."""
    texts = pieces if before is None else [before, *pieces]
    ids = [e.ids for e in plain.encode_batch_fast(texts, add_special_tokens=False)]
    after_token = before is None
    if before is not None:
        last = ids.pop(0)[-1:]
        after_token = every and bool(last) and last[0] in added
    redo = []  # (piece index, its first id to redo, where in the text that id starts)
    for i, piece_ids in enumerate(ids):
        if after_token:
            redo.append((i, 0, 0))
        elif every and (k := next((k for k, t in enumerate(piece_ids) if t in added), None)) is not None:
            redo.append((i, k, None))
        if piece_ids:
            after_token = every and piece_ids[-1] in added
    located = plain.encode_batch([pieces[i] for i, _, at in redo if at is None], add_special_tokens=False)
    located = iter(located)
    starts = [(i, k, next(located).offsets[k][0] if at is None else at) for i, k, at in redo]
    tails = whole.encode_batch_fast([pieces[i][at:] for i, _, at in starts], add_special_tokens=False)
    for (i, k, _), tail in zip(starts, tails):
        ids[i] = ids[i][:k] + tail.ids
    return ids


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]
