"""Pretrained models' own tokenizers, run by Hugging Face's `tokenizers` (the Rust library they ship for).

Built from a model folder's tokenizer.json, or rebuilt from a GGUF file's vocabulary the way llama.cpp
reads it (src/llama-vocab.cpp: the split rules that `tokenizer.ggml.pre` names, the token types, bos/eos).
A model may end a text with several ids (SmolLM2- and Qwen2.5-Instruct: `<|im_end|>` and `<|endoftext|>`;
Llama 3: `<|end_of_text|>` and `<|eot_id|>`): `stop_ids` keeps them all, as the source's own runtime reads
them (transformers from a folder, llama.cpp from a GGUF file).
Byte-level BPE (Llama 3, Qwen2/2.5/3, SmolLM/SmolLM2, GPT-2) and SentencePiece vocabularies (Gemma 3; Llama 2,
Mistral 7B, TinyLlama with their space prefix; sentencepiece.py rebuilds one from a GGUF file or tokenizer.model).
The whole tokenizer travels in `to_dict`, so a dataset or checkpoint never needs its source again.
"""

from __future__ import annotations

import array
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers
from tokenizers import Tokenizer as RustTokenizer

from bladegpt.tokenizer.bytelevel import byte_chars
from bladegpt.tokenizer.sentencepiece import (CONTROL, NORMAL, UNKNOWN, UNUSED, USER_DEFINED, byte_fallback,
                                              encode_pieces, gguf_sentencepiece, is_sentencepiece,
                                              model_file_sentencepiece, parts, piece_bytes, space_prefix,
                                              without_space_prefix)
from bladegpt.tokenizer.base import GPT2_EOT, Tokenizer
from bladegpt.errors import TokenizerError

# llama.cpp's split rules (llm_tokenizer_bpe), each applied to the pieces the one before left.
GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
LLAMA3_SPLIT = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}")  # one digit a token

# llama.cpp's end-of-generation tokens (src/llama-vocab.cpp, llama_vocab::impl::load, special_eog_ids): the
# ids the file names as eos, eot and eom; every token spelled as one of EOG_TEXTS; and its fill-in-the-middle
# pad, repo and file-separator tokens (named by the file, else found by their text).
EOG_KEYS = ("eos", "eot", "eom")
EOG_FIM = {"fim_pad": ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>"),
           "fim_rep": ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"),
           "fim_sep": ("<|file_sep|>",)}
EOG_TEXTS = frozenset({"<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<end_of_turn>",
                       "<|endoftext|>", "<|eom_id|>", "<EOT>", "_<EOT>", "<|end_of_text|>", "<end_of_utterance>",
                       "</s>"})  # llama.cpp (llama-cpp-python 0.3.36) ends Gemma 3 at its </s> (212) too


@dataclass(frozen=True)
class Split:
    """How a GGUF vocabulary cuts text before BPE: llama.cpp's rules for one `tokenizer.ggml.pre`."""

    regexes: tuple[str, ...]
    ignore_merges: bool = False  # a piece that is a whole token is taken whole (llama.cpp LLAMA3)
    add_bos: bool = False  # llama.cpp's default when the file has no tokenizer.ggml.add_bos_token
    nfc: bool = False  # Qwen's own tokenizer.json normalizes to NFC first (llama.cpp does not)


LLAMA3 = Split((LLAMA3_SPLIT,), ignore_merges=True, add_bos=True)
GPT2 = Split((GPT2_SPLIT,))
SMOLLM = Split((r"\p{N}", GPT2_SPLIT))  # StarCoder's rule: every digit alone, then GPT-2's
SPLITS = {
    "llama3": LLAMA3, "llama-v3": LLAMA3, "llama-bpe": LLAMA3, "falcon3": LLAMA3,
    "smaug-bpe": Split((LLAMA3_SPLIT,)), "dbrx": Split((LLAMA3_SPLIT,)),
    "qwen2": Split((QWEN2_SPLIT,), nfc=True), "deepseek-r1-qwen": Split((QWEN2_SPLIT,), nfc=True),
    "smollm": SMOLLM, "starcoder": SMOLLM, "refact": SMOLLM, "codeshell": SMOLLM,
    "gpt-2": GPT2, "phi-2": GPT2, "mpt": GPT2, "olmo": GPT2, "roberta-bpe": GPT2,
    # A file without a known split (llama.cpp warns "generation quality will be degraded"; ollama writes it
    # for tokenizers it does not recognize): split as llama.cpp then does, so ids match what it runs.
    "default": Split((r"[\p{P}\$\+<=>\^~\|]+", GPT2_SPLIT, r"\p{N}+", r"[0-9][0-9][0-9]")),
}


class HFTokenizer(Tokenizer):
    """A `tokenizers.Tokenizer` behind BladeGPT's interface.

    `encode` never adds bos (`add_bos` says whether the model expects one first) and encodes special
    tokens written in the text (`<|im_start|>`) as their ids, as transformers does. `token_bytes` of a
    special token is b"": it stands for no text, so bits per byte count the text's bytes only. A space prefix
    (`space_prefix`, sentencepiece.py) is put before a text; decode takes it off, and prepare's pieces after
    the first go without it (`encode_pieces_bytes`), so a dataset counts no byte the text lacks.
    """

    kind = "hf"

    def __init__(self, tokenizer: RustTokenizer, bos_id: int | None = None, eos_id: int | None = None,
                 add_bos: bool = False, chat_template: str | None = None, unused: Iterable[int] = (),
                 stop_ids: Iterable[int] = ()):
        """`eos_id` is the model's end of text (exports name it eos); `stop_ids` the other ids its source ends
        a text with. `<|endoftext|>`, where the vocabulary has it as one token, is the separator (`eot_id`)."""
        self.tokenizer = tokenizer
        self.vocab_size = max(tokenizer.get_vocab(with_added_tokens=True).values(), default=-1) + 1
        stop_ids = list(stop_ids)
        for name, token_id in (("bos", bos_id), ("eos", eos_id), *(("stop", i) for i in stop_ids)):
            if token_id is not None and not (type(token_id) is int and 0 <= token_id < self.vocab_size):
                raise TokenizerError(f"The tokenizer's {name} id {token_id!r} is none of its {self.vocab_size:,} "
                                     "tokens; the tokenizer files are damaged: download them again.")
        added = tokenizer.get_added_tokens_decoder()
        self.bos_id, self.eos_id = bos_id, eos_id
        self.eot_id = next((i for i, token in added.items() if token.content == GPT2_EOT), None)
        self._stop_ids = tuple(i for i in dict.fromkeys([eos_id, *stop_ids, self.eot_id]) if i is not None)
        self.add_bos = bool(add_bos and bos_id is not None)
        self.chat_template = chat_template if isinstance(chat_template, str) else None
        self.unused = frozenset(unused)  # GGUF padding entries ([PAD123]): ids no text encodes to
        self.special_ids = {i for i, token in added.items() if token.special}
        self._added = {i: token.content for i, token in added.items()}
        self._bytes: list[bytes] | None = None
        self.space_prefix = space_prefix(_state(tokenizer.normalizer), _state(tokenizer.pre_tokenizer))
        self._plain: tuple | None = None  # (the tokenizer without its space prefix, the ids matched before it)

    @property
    def stop_ids(self) -> tuple[int, ...]:
        """eos first, then the source's other end ids, then the separator."""
        return self._stop_ids

    # -- building ------------------------------------------------------------------------------

    @classmethod
    def from_folder(cls, folder: Path) -> HFTokenizer:
        """A Hugging Face model folder's tokenizer: tokenizer.json (else a SentencePiece tokenizer.model), with
        bos/eos, add_bos and the chat template from tokenizer_config.json (else special_tokens_map.json,
        generation_config.json, config.json);
        the ids that end a text as transformers' generate() reads them: generation_config.json's eos_token_id
        (one or a list), else config.json's."""
        folder = Path(folder)
        path = folder / "tokenizer.json"
        if not path.is_file() and (folder / "tokenizer.model").is_file():  # SentencePiece's own file alone
            tokenizer, spec = model_file_sentencepiece(folder / "tokenizer.model"), {}
        elif not path.is_file():
            if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
                raise TokenizerError(f"{folder} has vocab.json and merges.txt but no tokenizer.json; write one with "
                                     "transformers: AutoTokenizer.from_pretrained(FOLDER).save_pretrained(FOLDER).")
            raise TokenizerError(f"{folder} has no tokenizer.json; download the model's tokenizer files too.")
        else:
            try:
                text = path.read_text(encoding="utf-8")
                spec = json.loads(text)
                tokenizer = RustTokenizer.from_str(text)
            except Exception as e:  # OSError, UnicodeDecodeError, JSONDecodeError, or the Rust parser's Exception
                raise TokenizerError(f"Cannot read {path} ({_first_line(e)}); download the model's tokenizer "
                                     "again.") from None
            _check_supported(spec, path)
        config = _read_json(folder / "tokenizer_config.json")
        sources = [config, _read_json(folder / "special_tokens_map.json")]
        numbers = [_read_json(folder / "generation_config.json"), _read_json(folder / "config.json")]

        def token_id(name: str) -> int | None:
            for source in sources:
                token = source.get(f"{name}_token")
                token = token.get("content") if isinstance(token, dict) else token
                if isinstance(token, str) and tokenizer.token_to_id(token) is not None:
                    return tokenizer.token_to_id(token)
            for source in numbers:
                value = source.get(f"{name}_token_id")
                value = value[0] if isinstance(value, list) and value else value
                if isinstance(value, int) and not isinstance(value, bool):
                    return value
            return None

        stops = next((source["eos_token_id"] for source in numbers if source.get("eos_token_id") is not None), [])
        stops = stops if isinstance(stops, list) else [stops]
        bos_id, add_bos = token_id("bos"), config.get("add_bos_token") is True
        template_bos = _template_bos(spec)
        if template_bos is not None:  # the post-processor is what transformers runs: it decides
            add_bos = template_bos is not False
            bos_id = template_bos if template_bos is not False else bos_id
        return cls(tokenizer, bos_id, token_id("eos"), add_bos, _chat_template(folder, config), stop_ids=stops)

    @classmethod
    def from_gguf(cls, meta: dict) -> HFTokenizer:
        """A GGUF file's tokenizer from its metadata (key -> value, as sources.gguf.metadata gives):
        byte-level BPE (`tokenizer.ggml.model` gpt2) split as llama.cpp splits for `tokenizer.ggml.pre`,
        ending a text where llama.cpp does (gguf_stop_ids)."""
        model = meta.get("tokenizer.ggml.model")
        if model == "llama":
            return cls.from_gguf_sentencepiece(meta)
        if model != "gpt2":
            what = f"a {model!r} vocabulary" if model else "no tokenizer"
            raise TokenizerError(f"The GGUF file has {what}; BladeGPT reads byte-level BPE vocabularies "
                                 "(tokenizer.ggml.model = gpt2, as Llama 3, Qwen2 and SmolLM2 files have) and "
                                 "SentencePiece ones (llama, as Gemma 3 has).")
        name = meta.get("tokenizer.ggml.pre") or "default"
        split = SPLITS.get(name)
        if split is None:
            raise TokenizerError(f"The GGUF file's pre-tokenizer {name!r} (tokenizer.ggml.pre) is not one BladeGPT "
                                 f"knows; supported: {', '.join(SPLITS)}.")
        tokens, types, merges = (meta.get(f"tokenizer.ggml.{key}") for key in ("tokens", "token_type", "merges"))
        types = [NORMAL] * len(tokens) if types is None and isinstance(tokens, list) else types
        if not (_strings(tokens) and _strings(merges) and isinstance(types, list) and len(types) == len(tokens)):
            raise TokenizerError("The GGUF file's vocabulary is incomplete (tokenizer.ggml.tokens, token_type and "
                                 "merges); the file is damaged: download it again.")
        n = len(tokens)
        while n and types[n - 1] == UNUSED:  # padding to the embedding's rows: no token of the tokenizer
            n -= 1
        vocab = {tokens[i]: i for i in range(n)}
        cuts = [m.find(" ", 1) for m in merges]  # "a b", cut as llama.cpp cuts it
        try:
            if -1 in cuts:
                raise ValueError(f"merge {merges[cuts.index(-1)]!r} is not two tokens")
            bpe = models.BPE(vocab, [(m[:c], m[c + 1 :]) for m, c in zip(merges, cuts)], fuse_unk=False,
                             byte_fallback=False, ignore_merges=split.ignore_merges)
        except Exception as e:  # a merge of tokens the vocabulary lacks
            raise TokenizerError(f"The GGUF file's merges do not fit its tokens ({_first_line(e)}); the file is "
                                 "damaged: download it again.") from None
        tokenizer = RustTokenizer(bpe)
        if split.nfc:
            tokenizer.normalizer = normalizers.NFC()
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(regex), behavior="isolated") for regex in split.regexes]
            + [pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)])
        tokenizer.decoder = decoders.ByteLevel()
        # Tokens llama.cpp matches whole in the text: control ones as special tokens, user-defined as plain.
        for i in range(n):
            if types[i] in (CONTROL, UNKNOWN, USER_DEFINED) and vocab.get(tokens[i]) == i:
                token = AddedToken(tokens[i], special=types[i] != USER_DEFINED, normalized=False)
                (tokenizer.add_tokens if types[i] == USER_DEFINED else tokenizer.add_special_tokens)([token])
        add_bos = meta.get("tokenizer.ggml.add_bos_token", split.add_bos)
        bos, eos = meta.get("tokenizer.ggml.bos_token_id"), meta.get("tokenizer.ggml.eos_token_id")
        return cls(tokenizer, bos, eos, bool(add_bos), meta.get("tokenizer.chat_template"),
                   [i for i in range(n) if types[i] == UNUSED], gguf_stop_ids(meta))

    @classmethod
    def from_gguf_sentencepiece(cls, meta: dict) -> HFTokenizer:
        """A GGUF file's SentencePiece vocabulary (`tokenizer.ggml.model` llama), with the bos, eos and add_bos
        it names (llama.cpp adds bos to a SentencePiece text unless the file says not to) and llama.cpp's stops.
        The ids are the file's as they stand: Gemma 3's bos 2, eos 1, pad 0 differ from Llama 2's (bos 1, eos 2,
        unk 0, llama.cpp's defaults) but are Gemma's own (transformers' Gemma tokenizer: <pad> 0, <eos> 1,
        <bos> 2), and llama.cpp reads them as written; pad is never needed (BladeGPT's batches are never padded)."""
        if meta.get("tokenizer.ggml.add_eos_token"):
            raise TokenizerError("The GGUF file's tokenizer ends every text with eos (tokenizer.ggml.add_eos_token), "
                                 "which BladeGPT does not support yet; start from a model without it.")
        tokenizer = gguf_sentencepiece(meta)
        types = meta.get("tokenizer.ggml.token_type") or []
        return cls(tokenizer, meta.get("tokenizer.ggml.bos_token_id"), meta.get("tokenizer.ggml.eos_token_id"),
                   bool(meta.get("tokenizer.ggml.add_bos_token", True)), meta.get("tokenizer.chat_template"),
                   [i for i, kind in enumerate(types) if kind == UNUSED], gguf_stop_ids(meta))

    @classmethod
    def from_dict(cls, data: dict) -> HFTokenizer:
        try:
            tokenizer = RustTokenizer.from_str(json.dumps(data["tokenizer"]))
        except Exception as e:  # the Rust parser raises a plain Exception
            raise TokenizerError(f"The saved tokenizer cannot be read ({_first_line(e)}); prepare the data again.") from None
        return cls(tokenizer, data.get("bos_id"), data.get("eos_id"), data.get("add_bos", False),
                   data.get("chat_template"), data.get("unused", ()), data.get("stop_ids", ()))

    def to_dict(self) -> dict:
        return {"kind": self.kind, "tokenizer": json.loads(self.tokenizer.to_str()), "bos_id": self.bos_id,
                "eos_id": self.eos_id, "stop_ids": list(self.stop_ids), "add_bos": self.add_bos,
                "chat_template": self.chat_template, "unused": sorted(self.unused)}

    # -- using -----------------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        return self._encodings([text])[0].ids

    def encode_bytes(self, text: str, dtype: str) -> bytes:
        return self.encode_batch_bytes([text], dtype)[0]

    def encode_batch_bytes(self, texts: list[str], dtype: str) -> list[bytes]:
        """Each text's ids packed as token files store them; the texts are encoded on every core at once
        (the Rust side releases the GIL), so prepare needs no worker processes for this kind."""
        code = "H" if dtype == "uint16" else "I"
        return [array.array(code, encoding.ids).tobytes() for encoding in self._encodings(texts)]

    def encode_pieces_bytes(self, pieces: list[str], dtype: str, before: str | None) -> list[bytes]:
        """`encode_batch_bytes` for consecutive pieces of one text (prepare's cuts), `before` the piece before
        pieces[0] (None where pieces[0] starts the text): the ids joined are the whole text's, the space prefix
        put where encoding the text once puts it."""
        if self.space_prefix is None:
            return self.encode_batch_bytes(pieces, dtype)
        if self._plain is None:  # the prefix goes after added tokens matched before normalizing alone
            spec = without_space_prefix(json.loads(self.tokenizer.to_str()))
            added = {i for i, token in self.tokenizer.get_added_tokens_decoder().items() if not token.normalized}
            self._plain = RustTokenizer.from_str(json.dumps(spec)), added
        ids = encode_pieces(self.tokenizer, *self._plain, [_utf8(p) for p in pieces],
                            None if before is None else _utf8(before), self.space_prefix != "first")
        return [array.array("H" if dtype == "uint16" else "I", piece).tobytes() for piece in ids]

    def _encodings(self, texts: list[str]) -> list:
        try:
            return self.tokenizer.encode_batch_fast(texts, add_special_tokens=False)
        except TypeError:  # a lone surrogate (undecodable bytes in a command line) is no UTF-8
            return self.tokenizer.encode_batch_fast([_utf8(text) for text in texts], add_special_tokens=False)

    def decode(self, ids: list[int]) -> str:
        """The text of `ids`, special tokens written out (the sampler decides what to show)."""
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def token_bytes(self, token_id: int) -> bytes:
        if self._bytes is None:
            self._bytes = self._byte_table()
        return self._bytes[token_id]

    def _byte_table(self) -> list[bytes]:
        """Every id's UTF-8 bytes: byte-level characters mapped back to bytes, or SentencePiece pieces ("▁" a
        space, `<0xNN>` one byte); added tokens are their text; special tokens, padding entries and ids no token
        has are b""."""
        from_char = {ch: byte for byte, ch in byte_chars().items()}
        decoder = self.tokenizer.decoder
        spm = is_sentencepiece({"decoder": _state(decoder)})
        fallback = spm and (getattr(self.tokenizer.model, "byte_fallback", None)
                            or byte_fallback({"model": json.loads(self.tokenizer.model.__getstate__())}))
        table = []
        for i in range(self.vocab_size):
            token = self.tokenizer.id_to_token(i)
            if token is None or i in self.special_ids or i in self.unused:
                table.append(b"")
            elif i in self._added:
                table.append(self._added[i].encode("utf-8"))
            elif spm:
                table.append(piece_bytes(token, fallback))
            else:
                try:
                    table.append(bytes(from_char[ch] for ch in token))
                except KeyError:  # not spelled in byte-level characters: taken as text
                    table.append(token.encode("utf-8"))
        return table


def gguf_stop_ids(meta: dict) -> list[int]:
    """The ids llama.cpp ends generation at for a GGUF file's metadata, in the order of the comment on
    EOG_KEYS (eos first); keys naming no token are left to the tokenizer's check, which refuses them by name."""
    tokens = meta.get("tokenizer.ggml.tokens") or []
    keys = [meta.get(f"tokenizer.ggml.{name}_token_id") for name in EOG_KEYS]
    named = [i for i, token in enumerate(tokens) if token in EOG_TEXTS]
    fim = [meta.get(f"tokenizer.ggml.{name}_token_id", next((i for i, token in enumerate(tokens) if token in texts), None))
           for name, texts in EOG_FIM.items()]
    return list(dict.fromkeys(i for i in (*keys, *named, *fim) if i is not None))


def _utf8(text: str) -> str:
    """`text` with each lone surrogate (undecodable bytes in a command line) "\ufffd", as tiktoken does."""
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def _state(component) -> dict | None:
    """A `tokenizers` component (normalizer, pre-tokenizer, decoder) as its tokenizer.json entry."""
    return None if component is None else json.loads(component.__getstate__())


def _strings(value) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _read_json(path: Path) -> dict:
    """An optional JSON file of the folder; absent or unreadable is empty (tokenizer.json is what matters)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _check_supported(spec: dict, path: Path) -> None:
    """Refuse tokenizers whose text BladeGPT could not split into pieces and cut back into bytes faithfully:
    byte-level BPE without a space put before the text, and SentencePiece pieces (BPE or Unigram), are kept."""
    model = (spec.get("model") or {}).get("type")
    byte_level = model == "BPE" and any(p.get("type") == "ByteLevel" for p in parts(spec.get("decoder"), "decoders"))
    if not byte_level and not (model in ("BPE", "Unigram") and is_sentencepiece(spec)):
        raise TokenizerError(f"{path} is neither a byte-level BPE tokenizer (as Llama 3, Qwen2 and SmolLM2 have) nor "
                             f"a SentencePiece one (as Gemma 3 has) but a {model or 'model-less'} one; BladeGPT cannot "
                             "read it yet.")
    if byte_level and any(p.get("type") == "ByteLevel" and p.get("add_prefix_space")
                          for p in parts(spec.get("pre_tokenizer"), "pretokenizers")):
        raise TokenizerError(f"{path} is a byte-level BPE that adds a space before every text (add_prefix_space), "
                             "which BladeGPT does not support yet; use a tokenizer without it.")


def _template_bos(spec: dict) -> int | bool | None:
    """The id the post-processor puts first in a single text, False when it puts none, None without a template."""
    for part in parts(spec.get("post_processor"), "processors"):
        if part.get("type") == "TemplateProcessing":
            first = (part.get("single") or [{}])[0]
            if "SpecialToken" not in first:
                return False
            ids = (part.get("special_tokens") or {}).get(first["SpecialToken"].get("id"), {}).get("ids") or []
            return ids[0] if ids and isinstance(ids[0], int) else False
    return None


def _chat_template(folder: Path, config: dict) -> str | None:
    """tokenizer_config.json's chat_template (one, or the one named "default"), or chat_template.jinja."""
    template = config.get("chat_template")
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    if isinstance(template, str):
        return template
    try:
        return (folder / "chat_template.jinja").read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return _read_json(folder / "chat_template.json").get("chat_template")
