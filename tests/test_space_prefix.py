"""SentencePiece's space prefix (issue 40, item 2: Llama 2, Mistral 7B, TinyLlama): "▁" before a text and after
every added token, as llama.cpp puts it, from GGUF (`add_space_prefix`), tokenizer.model (`add_dummy_prefix`) and
tokenizer.json (a Prepend normalizer, or Metaspace's schemes run as they are); prepare's pieces after the first go
without it, so a dataset's ids are the whole text's; decode takes it off; both exports keep it.

Tiny Llama-2-shaped models trained here by `sentencepiece`; llama-cpp-python, where installed, is the llama.cpp
oracle."""

import io
import json
from pathlib import Path

import numpy as np
import pytest

from bladegpt.checkpoint import save_checkpoint
from bladegpt.data import prepare as prepare_module
from bladegpt.data.prepare import prepare
from bladegpt.errors import TokenizerError, UserError
from bladegpt.export import export
from bladegpt.sources import load_pretrained
from bladegpt.sources.gguf import read_metadata
from bladegpt.tokenizer import load_tokenizer
from bladegpt.tokenizer.hf import HFTokenizer
from tests.conftest import corpus_text
from tests.families import tiny_family, write_gguf

spm = pytest.importorskip("sentencepiece")
transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")
from tests.test_sentencepiece import CORPUS, MIXED, TEXTS, llama_cpp_ids, pieces  # noqa: E402

# Texts without added tokens: here SentencePiece, transformers' Metaspace and llama.cpp put the prefix alike
# (but for a text that starts with a space: SentencePiece and llama.cpp double it, Metaspace does not).
PLAIN = [t for t in TEXTS if not any(s in t for s in ("<", "\t"))]


def train(kind: str) -> bytes:
    """A SentencePiece model shaped like Llama 2's: a dummy prefix, byte fallback, <unk> <s> </s> first; two
    control tokens and one user-defined (a tab) to show where llama.cpp puts the prefix after them."""
    text = corpus_text(300) + CORPUS.read_text(encoding="utf-8") + "digits 1234567 3.14 emoji 😀🎉 CJK 日本語\n" * 3
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(text.splitlines()), model_writer=out, vocab_size=700, hard_vocab_limit=False,
        model_type=kind, byte_fallback=True, character_coverage=0.995, add_dummy_prefix=True,
        remove_extra_whitespaces=False, normalization_rule_name="identity", split_digits=True,
        control_symbols=["<start_of_turn>", "<end_of_turn>"], user_defined_symbols=["\t"], minloglevel=2)
    return out.getvalue()


def llama2_vocab(model: bytes, prefix: bool = True):
    """The vocabulary as llama.cpp's converter writes Llama 2's (bos 1, eos 2, unk 0)."""
    ps = pieces(model)

    def write(writer):
        writer.add_tokenizer_model("llama")
        writer.add_token_list([p.piece for p in ps])
        writer.add_token_scores([p.score for p in ps])
        writer.add_token_types([p.type for p in ps])
        writer.add_bos_token_id(1)
        writer.add_eos_token_id(2)
        writer.add_unk_token_id(0)
        writer.add_add_space_prefix(prefix)
    return write


@pytest.fixture(scope="module", params=["bpe", "unigram"])
def built(request, tmp_path_factory):
    """(kind, model bytes, GGUF file of a tiny Llama with the vocabulary, folder with only tokenizer.model)."""
    kind, model = request.param, train(request.param)
    root = tmp_path_factory.mktemp(f"prefix-{kind}")
    write_gguf(tiny_family("llama-gqa-tied", vocab=len(pieces(model))), root / "tiny.gguf", tokenizer=llama2_vocab(model))
    (root / "spm").mkdir()
    (root / "spm" / "tokenizer.model").write_bytes(model)
    return kind, model, root / "tiny.gguf", root / "spm"


def test_a_gguf_prefix_gives_llama_cpps_ids_and_decodes_back(built):
    kind, model, path, _ = built
    tok = HFTokenizer.from_gguf(read_metadata(path))
    assert tok.space_prefix == "prepend"
    ours = [tok.encode(t) for t in TEXTS + [MIXED]]
    hello = tok.encode("Hello")
    assert tok.tokenizer.id_to_token(hello[0]).startswith("▁")  # the prefix, as Llama 2 starts every text
    assert tok.encode(" Hello")[:2] != hello[:2]  # a leading space is kept: "▁" + "▁Hello", as llama.cpp has it
    turn = tok.encode("<start_of_turn>Hello")
    assert turn[1:] == hello  # after a control token the text starts again with the prefix (llama.cpp)
    assert [tok.decode(tok.encode(t)) for t in PLAIN] == PLAIN  # the prefix is no part of the text
    if kind == "bpe":  # SentencePiece's own BPE, which adds its dummy prefix to the whole text
        assert [spm.SentencePieceProcessor(model_proto=model).encode(t) for t in PLAIN] == [tok.encode(t) for t in PLAIN]
    assert llama_cpp_ids(path, TEXTS + [MIXED]) == ours
    theirs = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)  # Metaspace "first"
    same = [t for t in PLAIN if not t.startswith(" ")]  # where it puts the prefix as llama.cpp does
    assert [theirs.encode(t, add_special_tokens=False) for t in same] == [tok.encode(t) for t in same]
    without = {**read_metadata(path), "tokenizer.ggml.add_space_prefix": False}
    assert HFTokenizer.from_gguf(without).encode("Hello") != hello
    assert HFTokenizer.from_gguf(without).space_prefix is None


def test_a_tokenizer_model_folder_puts_the_prefix_as_sentencepiece_and_the_gguf_do(built):
    kind, model, path, folder = built
    tok = HFTokenizer.from_folder(folder)
    assert tok.space_prefix == "prepend"
    sp = spm.SentencePieceProcessor(model_proto=model)
    assert [tok.encode(t) for t in PLAIN] == [sp.encode(t) for t in PLAIN]
    if kind == "bpe":  # the same pieces merged alike: one vocabulary, one split, whichever file it comes in
        assert tok.encode(MIXED) == HFTokenizer.from_gguf(read_metadata(path)).encode(MIXED)
    assert tok.decode(tok.encode(PLAIN[-1])) == PLAIN[-1]


def test_a_damaged_tokenizer_model_or_no_sentencepiece_is_one_line(built, tmp_path, monkeypatch):
    (tmp_path / "tokenizer.model").write_bytes(b"\x0a\x05hello-not-a-model")
    with pytest.raises(TokenizerError, match="Cannot read .* as a SentencePiece model"):
        HFTokenizer.from_folder(tmp_path)
    monkeypatch.setitem(__import__("sys").modules, "sentencepiece", None)  # as if it were not installed
    with pytest.raises(TokenizerError, match="pip install -U 'sentencepiece"):
        HFTokenizer.from_folder(built[3])


def cuts(text: str, added: list[str]) -> list[int]:
    """Places where no piece joins across: before a space, and before and after every added token."""
    at = {i for i, ch in enumerate(text) if ch == " " and i > 0}
    for token in added:
        start = text.find(token)
        while start != -1:
            at |= {start, start + len(token)}
            start = text.find(token, start + 1)
    return sorted(i for i in at if 0 < i < len(text))


@pytest.mark.parametrize("source", ["gguf", "metaspace"])
def test_pieces_encode_as_the_whole_text(built, tmp_path, source):
    """prepare's pieces, cut anywhere a piece cannot join across (after an added token too), in batches of any
    size: their ids joined are the whole text's, for llama.cpp's prefix and transformers' Metaspace "first"."""
    _, model, path, _ = built
    tok = HFTokenizer.from_gguf(read_metadata(path)) if source == "gguf" else metaspace_folder(model, tmp_path)
    text = "Hello world.<start_of_turn>user\thi  there<end_of_turn>\t\tx <end_of_turn> and\tmore" + MIXED
    at = cuts(text, ["<start_of_turn>", "<end_of_turn>", "\t"])
    parts = [text[a:b] for a, b in zip([0, *at], [*at, len(text)])]
    whole = tok.encode(text)
    for size in (1, 3, len(parts)):
        ids = []
        for i in range(0, len(parts), size):
            before = parts[i - 1] if i else None
            for data in tok.encode_pieces_bytes(parts[i : i + size], "uint16", before):
                ids += np.frombuffer(data, dtype=np.uint16).tolist()
        assert ids == whole, size


def metaspace_folder(model: bytes, folder: Path) -> HFTokenizer:
    """The folder transformers writes for a Llama tokenizer.model (its non-legacy Metaspace, prepend "first")."""
    (folder / "tokenizer.model").write_bytes(model)
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "LlamaTokenizer"}))
    transformers.AutoTokenizer.from_pretrained(folder).save_pretrained(folder)
    (folder / "tokenizer.model").unlink()
    tok = HFTokenizer.from_folder(folder)
    assert tok.space_prefix == "first"
    theirs = transformers.AutoTokenizer.from_pretrained(folder)
    assert [tok.encode(t) for t in TEXTS + [MIXED]] == [theirs.encode(t, add_special_tokens=False)
                                                       for t in TEXTS + [MIXED]]
    unspaced = [t for t in PLAIN if not t.startswith(" ")]  # Metaspace loses a leading space, in transformers too
    assert [tok.decode(tok.encode(t)) for t in unspaced] == unspaced
    return tok


def test_prepare_gives_the_whole_texts_ids_and_counts_its_bytes(built, tmp_path, monkeypatch):
    _, _, path, _ = built
    monkeypatch.setattr(prepare_module, "HF_PIECE_CHARS", 300)  # many pieces, in several batches
    monkeypatch.setattr(prepare_module, "HF_BATCH_PIECES", 2)
    text = corpus_text(300) + MIXED.replace("\n", " ") + "\n<start_of_turn>user\thi<end_of_turn>\n" + corpus_text(60, 1)
    (tmp_path / "tales.txt").write_text(text, encoding="utf-8")
    data = prepare([tmp_path / "tales.txt"], tmp_path / "data", tokenizer_from=str(path)).out_dir
    meta = json.loads((data / "meta.json").read_text())
    tok = load_tokenizer(data / "tokenizer.json")
    train, val = (np.fromfile(data / f"{split}.bin", dtype=np.uint16).tolist() for split in ("train", "val"))
    assert len(train) > 20 * 300 // 8 and train + val == tok.encode(text)
    assert sum(len(tok.token_bytes(i)) for i in val) == meta["val_bytes"]  # bits per byte: the text's bytes
    assert b"".join(map(tok.token_bytes, train[:9])).startswith(b" " + text[:9].encode())  # the prefix: first alone


def test_both_exports_keep_the_prefix(built, tmp_path):
    _, _, path, folder = built
    pretrained = load_pretrained(str(path))
    tok = pretrained.tokenizer
    save_checkpoint(tmp_path / "model.safetensors", pretrained.model, tok, step=0)
    out = export(tmp_path / "out.gguf", tmp_path / "model.safetensors", format="gguf", dtype="f32")
    assert gguf.GGUFReader(out).fields["tokenizer.ggml.add_space_prefix"].contents() is True
    assert load_pretrained(str(out)).tokenizer.encode(MIXED) == tok.encode(MIXED)
    assert llama_cpp_ids(out, TEXTS + [MIXED]) == [tok.encode(t) for t in TEXTS + [MIXED]]
    hf = export(tmp_path / "hf", tmp_path / "model.safetensors", format="hf")
    spec = json.loads((hf / "tokenizer.json").read_text(encoding="utf-8"))
    assert spec["normalizer"]["normalizers"][0] == {"type": "Prepend", "prepend": "▁"}
    theirs = transformers.AutoTokenizer.from_pretrained(hf)
    assert [theirs.encode(t, add_special_tokens=False) for t in TEXTS + [MIXED]] == [tok.encode(t) for t in TEXTS + [MIXED]]
    assert HFTokenizer.from_folder(hf).encode(MIXED) == tok.encode(MIXED)


def test_a_metaspace_prefix_goes_to_hf_but_not_to_gguf(built, tmp_path):
    _, model, path, _ = built
    tok = metaspace_folder(model, tmp_path)
    pretrained = load_pretrained(str(path))
    save_checkpoint(tmp_path / "model.safetensors", pretrained.model, tok, step=0)
    with pytest.raises(UserError, match="Metaspace 'first' .* export --format hf"):
        export(tmp_path / "out.gguf", tmp_path / "model.safetensors", format="gguf", dtype="f32")
    assert not (tmp_path / "out.gguf").exists()
    hf = export(tmp_path / "hf", tmp_path / "model.safetensors", format="hf")
    assert HFTokenizer.from_folder(hf).encode(MIXED) == tok.encode(MIXED)
