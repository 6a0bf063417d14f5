"""A tokenizer as a GGUF file's vocabulary (the `tokenizer.ggml.*` keys): byte-level BPE (`gpt2`) for GPT-2's,
a corpus BPE and characters, a pretrained model's own as llama.cpp's converter writes it, and a SentencePiece
BPE as llama.cpp's `llama` model; what llama.cpp would read differently is refused or named (gguf.py writes it)."""

from __future__ import annotations

import json
from dataclasses import dataclass

from bladegpt.errors import UserError
from bladegpt.tokenizer import GPT2_EOT, CharTokenizer, TiktokenTokenizer, Tokenizer
from bladegpt.tokenizer.bpe import BPE_PATTERN, GPT2_PATTERN
from bladegpt.tokenizer.bytelevel import bpe_merges, char_pieces, spell
from bladegpt.tokenizer.hf import CONTROL, NORMAL, SPLITS, UNUSED, USER_DEFINED, gguf_stop_ids
from bladegpt.tokenizer.sentencepiece import BYTE, BYTE_PIECE, byte_fallback, is_sentencepiece, piece_scores

# llama.cpp's names for the split patterns BladeGPT's BPEs use (llama-vocab.cpp; transformers reads the same).
PRE_TOKENIZERS = {GPT2_PATTERN: "gpt-2", BPE_PATTERN: "llama-bpe"}


@dataclass
class Vocab:
    tokens: list[str]  # byte-level spellings; the first `n_own` are the model's own ids, in order
    types: list[int]
    merges: list[tuple[str, str]]
    pre: str
    eos: int
    n_own: int
    bos: int | None = None  # None: the end of text, as GPT-2
    add_bos: bool = False  # BladeGPT's own prompts start with the text itself
    chat_template: str | None = None
    stops: tuple[int, ...] = ()  # other ids that end a text, written as eot then eom (llama.cpp's keys)
    scores: list[float] | None = None  # a SentencePiece vocabulary (tokenizer.ggml.model llama): no merges
    unk: int | None = None
    space_prefix: bool = False  # SentencePiece's "▁" before a text and after each added token (llama.cpp's)


def adds_tokens(tokenizer: Tokenizer) -> bool:
    """Whether the GGUF vocabulary needs tokens the model has no id for (an end of text, char pieces)."""
    if isinstance(tokenizer, CharTokenizer):
        return len(gguf_vocab(tokenizer).tokens) > tokenizer.vocab_size
    return tokenizer.kind != "hf" and tokenizer.eot_id is None  # a pretrained vocabulary is written as it is


def unstopped(tokenizer: Tokenizer) -> list[int]:
    """Stop ids a GGUF file of this tokenizer would not make llama.cpp stop at: beyond its eos, eot and eom
    keys, it finds end tokens by their text alone (tokenizer/hf.py's gguf_stop_ids)."""
    if len(tokenizer.stop_ids) <= 3:
        return []
    vocab = gguf_vocab(tokenizer)
    keys = dict(zip(("eos", "eot", "eom"), (vocab.eos, *vocab.stops)))
    found = gguf_stop_ids({"tokenizer.ggml.tokens": vocab.tokens,
                           **{f"tokenizer.ggml.{name}_token_id": i for name, i in keys.items()}})
    return [i for i in tokenizer.stop_ids if i not in found]


def gguf_vocab(tokenizer: Tokenizer) -> Vocab:
    """The tokenizer as llama.cpp's byte-level BPE; refuses (one line) one it cannot express exactly."""
    if tokenizer.kind == "hf":
        return hf_vocab(tokenizer)
    if isinstance(tokenizer, CharTokenizer):
        has_eot = tokenizer.eot_id is not None
        own = [spell(ch.encode("utf-8")) for ch in tokenizer.chars] + ([GPT2_EOT] if has_eot else [])
        extra, merges = char_pieces(tokenizer.chars)
        tokens = own + extra + ([] if has_eot else [GPT2_EOT])
        if not merges:  # llama.cpp requires a merge list, and gguf cannot write an empty one:
            tokens.append(GPT2_EOT * 2)  # a merge no text can reach (control tokens are never merged)
            merges = [(GPT2_EOT, GPT2_EOT)]
        types = [NORMAL] * len(tokens)
        types[tokens.index(GPT2_EOT)] = CONTROL
        return Vocab(tokens, types, merges, "gpt-2", tokens.index(GPT2_EOT), len(own))
    assert isinstance(tokenizer, TiktokenTokenizer)
    pre = PRE_TOKENIZERS.get(tokenizer.pattern)
    if pre is None:
        raise UserError("This tokenizer splits text with a pattern llama.cpp has no name for, so a GGUF file "
                        "would tokenize differently; export --format hf instead.")
    ranks = tokenizer.ranks
    tokens = [spell(t) for t in sorted(ranks, key=ranks.__getitem__)]
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise UserError("This tokenizer's ids have gaps, which GGUF cannot hold; export --format hf instead.")
    types = [NORMAL] * len(tokens)
    specials = dict(tokenizer.special_tokens) or {GPT2_EOT: len(tokens)}
    for text, i in sorted(specials.items(), key=lambda kv: kv[1]):
        if i != len(tokens):
            raise UserError("This tokenizer's special tokens are not numbered after its vocabulary, which GGUF "
                            "cannot hold; export --format hf instead.")
        tokens.append(text)
        types.append(CONTROL)
    n_own = tokenizer.vocab_size
    eos = specials.get(GPT2_EOT, max(specials.values()))
    return Vocab(tokens, types, bpe_merges(ranks), pre, eos, n_own)


# llama.cpp's pre-tokenizer names for the splits these models' tokenizer.json files spell (convert_hf_to_gguf
# hashes their output to the same names): Llama 3's and Qwen2's regexes as Hugging Face writes them.
HF_SPLITS = {
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+": "llama-bpe",
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+": "qwen2",
}


def gguf_pre(spec: dict) -> str:
    """The `tokenizer.ggml.pre` name of a tokenizer.json's split, so llama.cpp splits text as the model does;
    UserError (one line) for a split llama.cpp has no name for."""
    pre = spec.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [step.get("type") for step in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and steps[1].get("use_regex", True):
        return "smollm"
    if kinds[-1:] == ["ByteLevel"] and set(kinds[:-1]) == {"Split"}:
        regexes = tuple(step["pattern"].get("Regex", "") for step in steps[:-1])
        if len(regexes) == 1 and regexes[0] in HF_SPLITS:
            return HF_SPLITS[regexes[0]]
        for name in ("llama-bpe", "qwen2", "smollm", "gpt-2", "smaug-bpe", "default"):
            if SPLITS[name].regexes == regexes:
                return name
        for name, split in SPLITS.items():
            if split.regexes == regexes:
                return name
    raise UserError("This tokenizer splits text in a way llama.cpp has no name for (tokenizer.ggml.pre), so a GGUF "
                    "file would tokenize differently; export --format hf instead.")


def hf_vocab(tokenizer):
    """A pretrained model's tokenizer (kind hf) as llama.cpp's converter writes it: every id's token,
    CONTROL for special tokens, USER_DEFINED for added ones, UNUSED for padding entries, the merges, the
    split's name, bos, the stop ids (eos, then eot and eom), whether bos is added, the chat template.
    A SentencePiece BPE goes out as its pieces (BYTE for `<0xNN>`), scored so llama.cpp merges in its order."""
    spec = json.loads(tokenizer.tokenizer.to_str())
    added = tokenizer.tokenizer.get_added_tokens_decoder()
    spm, fallback = is_sentencepiece(spec), byte_fallback(spec)
    if spm and spec["model"].get("type") != "BPE":
        raise UserError("A Unigram SentencePiece tokenizer is no vocabulary llama.cpp runs as its SentencePiece "
                        "(it merges pieces by score), so a GGUF file would tokenize differently; export --format hf.")
    if tokenizer.space_prefix not in (None, "prepend"):  # llama.cpp's add_space_prefix is a Prepend normalizer
        raise UserError(f"This tokenizer puts a space first as Metaspace {tokenizer.space_prefix!r} does, not as "
                        "llama.cpp does (after special tokens too, doubled before a leading space), so a GGUF file "
                        "would tokenize differently; export --format hf.")
    tokens, types = [], []
    for i in range(tokenizer.vocab_size):
        token = tokenizer.tokenizer.id_to_token(i)
        tokens.append(token if token is not None else f"[PAD{i}]")
        types.append(UNUSED if token is None or i in tokenizer.unused else CONTROL if i in tokenizer.special_ids
                     else USER_DEFINED if i in added else BYTE if fallback and BYTE_PIECE.fullmatch(token)
                     else NORMAL)
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in spec["model"].get("merges", [])]
    stops = tokenizer.stop_ids or (0,)
    if spm:
        unk = spec["model"].get("unk_token")
        return Vocab(tokens, types, [], "", stops[0], tokenizer.vocab_size, bos=tokenizer.bos_id,
                     add_bos=tokenizer.add_bos, chat_template=tokenizer.chat_template, stops=stops[1:3],
                     scores=piece_scores(tokens, merges), unk=tokenizer.tokenizer.token_to_id(unk) if unk else None,
                     space_prefix=tokenizer.space_prefix == "prepend")
    return Vocab(tokens, types, merges, gguf_pre(spec), stops[0], tokenizer.vocab_size, bos=tokenizer.bos_id,
                 add_bos=tokenizer.add_bos, chat_template=tokenizer.chat_template, stops=stops[1:3])


STRIP_FLAGS = ("lstrip", "rstrip", "single_word")


def unkept_flags(tokenizer) -> list[str]:
    """A pretrained tokenizer's added tokens whose flags a GGUF file cannot hold, as 'TOKEN (flag, ...)': GGUF
    keeps a token type alone, and llama.cpp sets lstrip/rstrip only for a few models it knows by name
    (llama-vocab.cpp; llama.cpp#15842), so text around these tokens encodes to other ids there. `normalized`
    counts only where the tokenizer has a normalizer (llama.cpp matches added tokens in the raw text)."""
    normalizes = json.loads(tokenizer.tokenizer.to_str()).get("normalizer") is not None
    unkept = []
    for _, token in sorted(tokenizer.tokenizer.get_added_tokens_decoder().items()):
        flags = [flag for flag in STRIP_FLAGS if getattr(token, flag)] + (["normalized"] if normalizes and
                                                                          token.normalized else [])
        if flags:
            unkept.append(f"{token.content} ({', '.join(flags)})")
    return unkept
