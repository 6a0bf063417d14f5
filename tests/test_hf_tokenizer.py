"""Pretrained models' tokenizers (issue #22): tiny byte-level BPEs trained here in the shape of each family
(SmolLM2, Llama 3, Qwen2, GPT-2), saved as Hugging Face folders and as GGUF files the way llama.cpp's converter
writes them, give the ids transformers gives; they travel in datasets and checkpoints; the real SmolLM2 (slow)."""

import json
import re
import unicodedata

import pytest
import torch

from bladegpt.data import prepare as prepare_module
from bladegpt.data.dataset import TokenData
from bladegpt.tokenizer.hf import CONTROL, NORMAL, UNUSED, USER_DEFINED, HFTokenizer
from bladegpt.sources.gguf import read_metadata as read_gguf_metadata
from bladegpt.data.prepare import prepare
from bladegpt.tokenizer import load_tokenizer, tokenizer_from_dict
from bladegpt.errors import TokenizerError
from bladegpt.generate.settings import SampleSettings
from tests.conftest import corpus_text

transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")
from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers, processors, trainers  # noqa: E402
from tokenizers import Tokenizer as RustTokenizer  # noqa: E402

# Punctuation, Unicode (a decomposed é for NFC), runs of spaces and newlines, specials written as text.
MIXED = ("Hello,  world!!! It's 'TIS, I'LL don't... \"quoted\" (x) [y] {z} #tag @me $5 ~/path\n\n\n"
         "\tcafé naïve Cafe\u0301 — “smart” 😀🎉 日本語のテキスト Ελληνικά العربية\r\n   trailing   \n \n"
         "12 345 3.14159 x=1000000 v2.0.1 ٣٤ <|im_start|>user\nhi<|im_end|>\n<tool_call><|endoftext|>  end  ")
TRAIN = corpus_text(300) + MIXED.replace("<|", "<") * 3
LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
          r"|\s*[\r\n]+|\s+(?!\S)|\s+")  # the regexes as the models' own tokenizer.json files spell them
QWEN2 = LLAMA3.replace(r"\p{N}{1,3}", r"\p{N}")


def byte_level(use_regex: bool) -> pre_tokenizers.ByteLevel:
    return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=use_regex)


# Each family as its tokenizer.json has it: pre-tokenizer, normalizer, specials (first in the vocabulary,
# or after it), user-defined added tokens, bos/eos, whether a template adds bos, and GGUF's pre name.
FAMILIES = {
    "smollm": dict(pre=lambda: pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level(True)]),
                   first=["<|endoftext|>", "<|im_start|>", "<|im_end|>"], bos="<|im_start|>", eos="<|im_end|>"),
    "llama-bpe": dict(pre=lambda: pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(LLAMA3), "isolated"), byte_level(False)]),
                      after=["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"], bos="<|begin_of_text|>",
                      eos="<|eot_id|>", template=True, ignore_merges=True),
    "qwen2": dict(pre=lambda: pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(QWEN2), "isolated"), byte_level(False)]),
                  nfc=True, after=["<|endoftext|>", "<|im_start|>", "<|im_end|>"], user=["<tool_call>"],
                  eos="<|endoftext|>"),
    "gpt-2": dict(pre=lambda: byte_level(True), after=["<|endoftext|>"], bos="<|endoftext|>", eos="<|endoftext|>"),
}
TEMPLATE = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"


def build_folder(folder, family: str):
    """A Hugging Face folder, written by transformers, with a BPE of ~500 ids trained on TRAIN."""
    spec = FAMILIES[family]
    tok = RustTokenizer(models.BPE(ignore_merges=spec.get("ignore_merges", False)))
    tok.normalizer = normalizers.NFC() if spec.get("nfc") else None
    tok.pre_tokenizer = spec["pre"]()
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=500, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=spec.get("first", []), show_progress=False)
    tok.train_from_iterator(TRAIN.splitlines(keepends=True), trainer)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in spec.get("after", [])])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in spec.get("user", [])])
    if spec.get("template"):  # as Llama 3's tokenizer.json has it
        bos = spec["bos"]
        template = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                 special_tokens=[(bos, tok.token_to_id(bos))])
        tok.post_processor = processors.Sequence([processors.ByteLevel(trim_offsets=False), template])
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=spec.get("bos"), eos_token=spec["eos"])
    fast.chat_template = TEMPLATE
    fast.save_pretrained(folder)
    return folder


def write_gguf(path, folder, pre: str, pads: int = 3, add_bos: bool | None = None):
    """A GGUF holding the folder's tokenizer as llama.cpp's converter writes it (add_vocabulary)."""
    writer = gguf.GGUFWriter(None, "llama")
    add_vocabulary(writer, folder, pre, pads, add_bos)
    writer.write_header_to_file(path=path)
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def add_vocabulary(writer, folder, pre: str, pads: int = 3, add_bos: bool | None = None) -> None:
    """The folder's tokenizer as llama.cpp's converter writes it: every token by id, typed CONTROL
    (special), USER_DEFINED (added, not special) or NORMAL, padded with [PAD{i}] entries."""
    spec = json.loads((folder / "tokenizer.json").read_text())
    tok = RustTokenizer.from_file(str(folder / "tokenizer.json"))
    added = tok.get_added_tokens_decoder()
    n = tok.get_vocab_size(with_added_tokens=True)
    tokens = [tok.id_to_token(i) for i in range(n)] + [f"[PAD{i}]" for i in range(n, n + pads)]
    types = [CONTROL if i in added and added[i].special else USER_DEFINED if i in added else NORMAL
             for i in range(n)] + [UNUSED] * pads
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    hf = transformers.AutoTokenizer.from_pretrained(folder)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    if hf.bos_token_id is not None:
        writer.add_bos_token_id(hf.bos_token_id)
    writer.add_eos_token_id(hf.eos_token_id)
    if add_bos is not None:
        writer.add_add_bos_token(add_bos)
    writer.add_chat_template(TEMPLATE)


@pytest.fixture(scope="module")
def families(tmp_path_factory):
    """family -> (its HF folder, its GGUF file)."""
    root = tmp_path_factory.mktemp("families")
    built = {}
    for family in FAMILIES:
        folder = build_folder(root / family, family)
        built[family] = folder, write_gguf(root / f"{family}.gguf", folder, family, add_bos=None if family == "llama-bpe" else False)
    return built


def texts() -> list[str]:
    return [MIXED, MIXED.upper(), "   ", "\n\n\n", " 2024\n\n  x", "a" * 300, corpus_text(30, seed=3), "ÆØÅ\u0301\u0302 \x00\x1f"]


@pytest.mark.parametrize("family", FAMILIES)
def test_a_folder_encodes_as_transformers_does(families, family):
    folder, _ = families[family]
    ours, theirs = HFTokenizer.from_folder(folder), transformers.AutoTokenizer.from_pretrained(folder)
    for text in texts():
        assert ours.encode(text) == theirs(text, add_special_tokens=False)["input_ids"], text
        assert [ours.bos_id] * ours.add_bos + ours.encode(text) == theirs(text)["input_ids"]
    separator = theirs.get_vocab().get("<|endoftext|>")  # the document separator, where the vocabulary has it
    assert (ours.bos_id, ours.eos_id, ours.eot_id) == (theirs.bos_token_id, theirs.eos_token_id, separator)
    assert ours.stop_ids == tuple(dict.fromkeys(i for i in (theirs.eos_token_id, separator) if i is not None))
    assert ours.add_bos == (family == "llama-bpe") and ours.chat_template == TEMPLATE
    assert ours.vocab_size == len(theirs)
    specials = FAMILIES[family].get("first", []) + FAMILIES[family].get("after", [])
    assert ours.special_ids == {theirs.convert_tokens_to_ids(t) for t in specials}


@pytest.mark.parametrize("family", FAMILIES)
def test_a_gguf_encodes_as_its_source_folder(families, family):
    folder, path = families[family]
    meta = read_gguf_metadata(path)
    assert meta["tokenizer.ggml.pre"] == family and meta["tokenizer.ggml.token_type"][-1] == UNUSED
    ours, source = HFTokenizer.from_gguf(meta), HFTokenizer.from_folder(folder)
    for text in texts():
        assert ours.encode(text) == source.encode(text), text
    assert ours.vocab_size == source.vocab_size  # the [PAD] entries after the last token are no tokens
    assert (ours.bos_id, ours.eos_id, ours.add_bos, ours.special_ids) == (source.bos_id, source.eos_id, source.add_bos,
                                                                          source.special_ids)
    assert ours.chat_template == TEMPLATE
    assert [ours.token_bytes(i) for i in range(ours.vocab_size)] == [source.token_bytes(i) for i in range(source.vocab_size)]


def test_the_split_follows_the_pre_name_not_the_vocabulary(families):
    """The same vocabulary read as smollm cuts every digit alone; read as gpt-2 it keeps a run of digits whole."""
    meta = read_gguf_metadata(families["smollm"][1])

    def pieces(pre: str) -> list[str]:
        tok = HFTokenizer.from_gguf({**meta, "tokenizer.ggml.pre": pre})
        return [piece for piece, _ in tok.tokenizer.pre_tokenizer.pre_tokenize_str("In 2024, x")]

    assert pieces("smollm") == ["In", "Ġ", "2", "0", "2", "4", ",", "Ġx"]
    assert pieces("gpt-2") == ["In", "Ġ2024", ",", "Ġx"]
    assert pieces("llama-bpe") == ["In", "Ġ", "202", "4", ",", "Ġx"]
    assert pieces("qwen2") == ["In", "Ġ", "2", "0", "2", "4", ",", "Ġx"]
    assert pieces("") == pieces("default") == ["In", "Ġ", "202", "4", ",", "Ġx"]  # llama.cpp's list for no name


def test_llama3_takes_a_whole_word_token_before_merging():
    """llama.cpp's LLAMA3 split ignores merges for a piece that is a token (Llama 3's ignore_merges)."""
    meta = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": ["a", "b", "c", "ab", "abc"],
            "tokenizer.ggml.merges": ["a b"]}
    assert HFTokenizer.from_gguf({**meta, "tokenizer.ggml.pre": "llama-bpe"}).encode("abc") == [4]
    assert HFTokenizer.from_gguf({**meta, "tokenizer.ggml.pre": "gpt-2"}).encode("abc") == [3, 2]


def test_llama3_files_add_bos_unless_they_say_otherwise(families):
    meta = read_gguf_metadata(families["llama-bpe"][1])
    assert "tokenizer.ggml.add_bos_token" not in meta and HFTokenizer.from_gguf(meta).add_bos  # llama.cpp's default
    assert not HFTokenizer.from_gguf({**meta, "tokenizer.ggml.add_bos_token": False}).add_bos


@pytest.mark.parametrize("family", FAMILIES)
def test_token_bytes_spell_the_text_and_specials_are_no_text(families, family):
    tok = HFTokenizer.from_folder(families[family][0])
    plain = unicodedata.normalize("NFC", re.sub(r"<\|[a-z_]+\|>|<tool_call>", "", MIXED))
    assert b"".join(tok.token_bytes(i) for i in tok.encode(plain)) == plain.encode("utf-8")
    assert all(tok.token_bytes(i) == b"" for i in tok.special_ids)
    assert tok.encode("ab\udcff") == tok.encode("ab\ufffd")  # undecodable bytes in a prompt: no traceback
    assert tok.decode(tok.encode(MIXED)) == unicodedata.normalize("NFC", MIXED) if family == "qwen2" else MIXED
    if family == "qwen2":  # a user-defined added token is text, matched whole
        (user,) = tok.encode("<tool_call>")
        assert user not in tok.special_ids and tok.token_bytes(user) == b"<tool_call>"


@pytest.mark.parametrize("family", FAMILIES)
def test_it_travels_in_a_dataset_file(families, family, tmp_path):
    for tok in (HFTokenizer.from_folder(families[family][0]), HFTokenizer.from_gguf(read_gguf_metadata(families[family][1]))):
        tok.save(tmp_path / "tokenizer.json")
        again = load_tokenizer(tmp_path / "tokenizer.json")
        assert isinstance(again, HFTokenizer) and again.encode(MIXED) == tok.encode(MIXED)
        fields = ("vocab_size", "bos_id", "eos_id", "eot_id", "add_bos", "chat_template", "special_ids", "unused")
        assert [getattr(again, f) for f in fields] == [getattr(tok, f) for f in fields]
        assert [again.token_bytes(i) for i in range(again.vocab_size)] == [tok.token_bytes(i) for i in range(tok.vocab_size)]


def test_it_travels_in_a_checkpoint(families, tmp_path):
    from bladegpt.checkpoint import load_checkpoint, save_checkpoint
    from bladegpt.config import ModelConfig
    from bladegpt.model import GPT

    tok = HFTokenizer.from_folder(families["smollm"][0])
    save_checkpoint(tmp_path / "model.safetensors", GPT(ModelConfig(vocab_size=tok.vocab_size, n_layer=1, n_head=2,
                                                                   n_embd=16, block_size=8)), tok, step=1)
    _, again, _ = load_checkpoint(tmp_path / "model.safetensors")
    assert again.encode(MIXED) == tok.encode(MIXED) and again.eos_id == tok.eos_id


def test_unusable_folders_are_one_line_errors(families, tmp_path):
    with pytest.raises(TokenizerError, match="no tokenizer.json"):
        HFTokenizer.from_folder(tmp_path)
    (tmp_path / "vocab.json").write_text("{}")
    (tmp_path / "merges.txt").write_text("")
    with pytest.raises(TokenizerError, match="save_pretrained"):
        HFTokenizer.from_folder(tmp_path)
    (tmp_path / "tokenizer.json").write_bytes(b"\xff{ not json")
    with pytest.raises(TokenizerError, match="Cannot read"):
        HFTokenizer.from_folder(tmp_path)
    spm = RustTokenizer(models.BPE({"▁a": 0, "a": 1, "▁": 2}, [("▁", "a")], byte_fallback=True))
    spm.pre_tokenizer = pre_tokenizers.Metaspace()
    spm.decoder = decoders.Metaspace()
    spm.save(str(tmp_path / "tokenizer.json"))  # Metaspace's default puts "▁" first: run as it is (test_space_prefix)
    assert HFTokenizer.from_folder(tmp_path).encode("a") == [0]
    RustTokenizer(models.WordLevel({"a": 0}, unk_token="a")).save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(TokenizerError, match="neither a byte-level BPE .* but a WordLevel one"):
        HFTokenizer.from_folder(tmp_path)
    (tmp_path / "tokenizer.json").unlink()
    (tmp_path / "vocab.json").unlink()
    for damaged in (b"", b"\x0a\xff"):  # no pieces; a cut-off one
        (tmp_path / "tokenizer.model").write_bytes(damaged)
        with pytest.raises(TokenizerError, match="Cannot read .*tokenizer.model as a SentencePiece model"):
            HFTokenizer.from_folder(tmp_path)
    spec = json.loads((families["gpt-2"][0] / "tokenizer.json").read_text())
    spec["pre_tokenizer"]["add_prefix_space"] = True
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(TokenizerError, match="add_prefix_space"):
        HFTokenizer.from_folder(tmp_path)
    with pytest.raises(TokenizerError, match="cannot be read"):
        tokenizer_from_dict({"kind": "hf", "tokenizer": {"model": "nonsense"}})


def test_unusable_gguf_vocabularies_are_one_line_errors(families, tmp_path):
    meta = read_gguf_metadata(families["smollm"][1])
    cases = [({"tokenizer.ggml.model": "llama", "tokenizer.ggml.scores": None}, "SentencePiece vocabulary is incomplete"),
             ({"tokenizer.ggml.model": "bert"}, "'bert' vocabulary"),
             ({"tokenizer.ggml.pre": "jais-2"}, "'jais-2' .* supported: llama3, .*smollm"),
             ({"tokenizer.ggml.merges": None}, "damaged"),
             ({"tokenizer.ggml.merges": ["Ġ zzz"]}, "merges do not fit"),
             ({"tokenizer.ggml.token_type": [1]}, "damaged"),
             ({"tokenizer.ggml.eos_token_id": 10**6}, "eos id 1000000 is none of its"),
             ({"tokenizer.ggml.bos_token_id": "1"}, "bos id '1' is none of its")]
    for change, message in cases:
        with pytest.raises(TokenizerError, match=message):
            HFTokenizer.from_gguf({**meta, **change})
    (tmp_path / "bad.gguf").write_bytes(b"GGUF\x03\x00\x00\x00" + b"\xff" * 40)
    from bladegpt.errors import SourceError

    with pytest.raises(SourceError, match="bad.gguf is not a readable GGUF file"):
        read_gguf_metadata(tmp_path / "bad.gguf")


def wide_vocabulary(meta: dict, pads: int = 70_000) -> dict:
    """The vocabulary with `pads` unused entries before its merged tokens, so they get ids past 65,535."""
    tokens, types = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]
    n = len([t for t in types if t != UNUSED])
    first = 256 + 3  # the bytes and the specials come first in the smollm-shaped vocabulary
    return {**meta, "tokenizer.ggml.tokens": tokens[:first] + [f"[PAD{i}]" for i in range(pads)] + tokens[first:n],
            "tokenizer.ggml.token_type": types[:first] + [UNUSED] * pads + types[first:n]}


def test_padding_entries_are_no_text(families):
    tok = HFTokenizer.from_gguf(wide_vocabulary(read_gguf_metadata(families["smollm"][1]), pads=5))
    assert tok.unused == set(range(259, 264))
    assert not set(tok.encode("[PAD0] [PAD3]")) & tok.unused
    assert all(tok.token_bytes(i) == b"" for i in tok.unused)


def test_prepare_stores_a_wide_vocabulary_as_uint32(families, workdir, monkeypatch):
    import bladegpt.sources

    tok = HFTokenizer.from_gguf(wide_vocabulary(read_gguf_metadata(families["smollm"][1])))
    assert tok.vocab_size > 65_536
    monkeypatch.setattr(bladegpt.sources, "load_tokenizer_from", lambda source: tok)
    monkeypatch.setattr(prepare_module, "HF_PIECE_CHARS", 700)  # many pieces...
    monkeypatch.setattr(prepare_module, "HF_BATCH_PIECES", 2)  # ...in several batches
    text = corpus_text(200) + MIXED
    (workdir / "tales.txt").write_text(text)
    data = TokenData(prepare([workdir / "tales.txt"], tokenizer_from="wide").out_dir)
    assert data.meta["dtype"] == "uint32" and data.meta["tokenizer"] == "hf" and data.meta["vocab_size"] == tok.vocab_size
    ids = torch.cat([data.splits["train"], data.splits["val"]]).tolist()
    assert ids == tok.encode(text) and max(ids) > 65_535  # the same ids as encoding the text whole
    assert data.meta["bytes"] == len(text.encode("utf-8"))
    assert sum(len(data.tokenizer.token_bytes(i)) for i in ids) == len(re.sub(r"<\|[a-z_]+\|>", "", text).encode("utf-8"))


@pytest.mark.slow  # trains a tiny model
def test_a_run_trains_and_samples_with_it(families, workdir, monkeypatch):
    """prepare, train (bits per byte from token_bytes), a checkpoint, and sampling, with a pretrained tokenizer."""
    import bladegpt.sources
    from bladegpt.train import train
    from bladegpt.generate.sampler import Sampler
    from tests.conftest import TINY_MODEL, TINY_TRAIN

    tok = HFTokenizer.from_folder(families["llama-bpe"][0])
    monkeypatch.setattr(bladegpt.sources, "load_tokenizer_from", lambda source: tok)
    (workdir / "tales.txt").write_text(corpus_text(300))
    prepare([workdir / "tales.txt"], tokenizer_from="tiny-llama3")
    result = train(None, "nano", TINY_MODEL, {**TINY_TRAIN, "steps": 20, "eval_interval": 20}, compile="off")
    assert 0 < [r for r in result.history if "val_bpb" in r][-1]["val_bpb"] < 20
    text = "".join(piece for _, piece in Sampler(result.run_dir / "best.safetensors").samples("The hunter", settings=SampleSettings(max_new_tokens=20)))
    assert isinstance(text, str) and text


# -- the real model ------------------------------------------------------------------------------------

WITHOUT_DIGITS = ("Hello,  world!!! It's 'TIS, I'LL don't... \"quoted\" (x) [y] {z} #tag @me ~/path\n\n\n"
                  "\tcafé naïve — “smart” 😀🎉 日本語のテキスト Ελληνικά العربية\r\n   trailing   \n \n"
                  "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<|endoftext|>  end  ")
DIGITS = "In 2024, 3.14159 of 1,000,000 people (v2.0.1) paid $42.50 at 10:30pm; ٣٤ too. x=12345678 \n 99\n"


@pytest.mark.slow
def test_smollm2_gguf_tokenizes_as_transformers_does():
    """transformers (5.x) rebuilds SmolLM2's GGUF tokenizer without its one-digit rule (it has no `smollm`
    entry), so digits are checked against that rule alone: text cut before and after every digit."""
    from tests.realmodel import smollm2_gguf

    path = smollm2_gguf()
    ours = HFTokenizer.from_gguf(read_gguf_metadata(path))
    theirs = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    assert (ours.vocab_size, ours.bos_id, ours.eos_id, ours.add_bos) == (49152, 1, 2, False)
    assert "<|im_start|>" in ours.chat_template and ours.special_ids == set(range(17))
    assert ours.encode(WITHOUT_DIGITS) == theirs.encode(WITHOUT_DIGITS, add_special_tokens=False)
    assert ours.encode("<|im_start|>user") == [1, *theirs.encode("user", add_special_tokens=False)]
    expected = [i for part in re.split(r"(\d)", DIGITS) if part for i in theirs.encode(part, add_special_tokens=False)]
    assert ours.encode(DIGITS) == expected
    assert ours.decode(ours.encode(WITHOUT_DIGITS + DIGITS)) == WITHOUT_DIGITS + DIGITS
