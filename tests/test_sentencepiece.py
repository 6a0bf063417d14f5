"""SentencePiece vocabularies (issue 40, item 2): tiny BPE and Unigram models trained here with byte fallback,
written as GGUF files the way llama.cpp's converter writes them (tokens, scores, types) and as Hugging Face
folders by transformers' Gemma converter, give the ids transformers and llama.cpp give; token_bytes, decoding,
prepare, the exports; the real Gemma 3 270M file (slow).

`sentencepiece` (a test dependency) trains the models; llama-cpp-python, where installed, is the llama.cpp oracle."""

import io
import json
from pathlib import Path

import pytest
import torch

from typer.testing import CliRunner

from bladegpt.checkpoint import save_checkpoint
from bladegpt.cli import app
from bladegpt.generate import engine
from bladegpt.data.prepare import prepare
from bladegpt.errors import TokenizerError, UserError
from bladegpt.export.gguf_vocab import gguf_vocab as gguf_vocab_of
from bladegpt.export import export
from bladegpt.sources import load_pretrained, load_tokenizer_from
from bladegpt.sources.gguf import read_metadata
from bladegpt.tokenizer import tokenizer_from_dict
from bladegpt.tokenizer.hf import HFTokenizer
from bladegpt.tokenizer.sentencepiece import BYTE, CONTROL, NORMAL, USER_DEFINED
from tests.conftest import corpus_text
from tests.families import logits_of, tiny_family, write_gguf

spm = pytest.importorskip("sentencepiece")
transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")
from sentencepiece import sentencepiece_model_pb2  # noqa: E402
from tests.test_stops import by_seed  # noqa: E402  (needs transformers)

CORPUS = Path(__file__).resolve().parents[1] / "corpora" / "officer_k.txt"
# Digits, runs of spaces, newlines, tabs, emoji, CJK, characters only bytes spell (not in training), a leading
# and a trailing space, control tokens written in the text.
TEXTS = ["", " ", "Hello world", " leading space", "  two  spaces   three    four", "digits 1234567 3.14",
         "line\nbreak\n\n\npara\n", "tab\there\t\tx", "emoji 😀🎉 ok", "CJK 日本語の文章 中文", "rare \u0904\U0001F9FF \x07 ß",
         "<start_of_turn>user\nhi<end_of_turn>\n", "trailing space ", "café naïve — “smart”"]
MIXED = "".join(TEXTS)


def train(kind: str) -> bytes:
    """A SentencePiece model shaped like Gemma's: no space prefix, byte fallback, digits split, <pad> <eos> <bos>
    <unk> first, two control and three user-defined tokens."""
    text = corpus_text(300) + CORPUS.read_text(encoding="utf-8") + "digits 1234567 3.14 emoji 😀🎉 CJK 日本語の文章 中文\n" * 3
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(text.splitlines()), model_writer=out, vocab_size=700, hard_vocab_limit=False,
        model_type=kind, byte_fallback=True, character_coverage=0.995, add_dummy_prefix=False, split_digits=True,
        allow_whitespace_only_pieces=True, remove_extra_whitespaces=False, normalization_rule_name="identity",
        pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>",
        control_symbols=["<start_of_turn>", "<end_of_turn>"], user_defined_symbols=["\n", "\t", "  "], minloglevel=2)
    return out.getvalue()


def pieces(model: bytes) -> list:
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model)
    return list(proto.pieces)  # .piece, .score, .type: SentencePiece's types are GGUF's numbers


def gguf_vocab(model: bytes):
    """The vocabulary as llama.cpp's converter writes it (_create_vocab_sentencepiece), Gemma's keys."""
    ps = pieces(model)

    def write(writer):
        writer.add_tokenizer_model("llama")
        writer.add_tokenizer_pre("default")
        writer.add_token_list([p.piece for p in ps])
        writer.add_token_scores([p.score for p in ps])
        writer.add_token_types([p.type for p in ps])
        writer.add_bos_token_id(2)
        writer.add_eos_token_id(1)
        writer.add_unk_token_id(3)
        writer.add_pad_token_id(0)
        writer.add_add_bos_token(True)
        writer.add_add_eos_token(False)
        writer.add_add_space_prefix(False)
        writer.add_chat_template("{% for m in messages %}<start_of_turn>{{ m['role'] }}\n{{ m['content'] }}"
                                 "<end_of_turn>\n{% endfor %}")
    return write


@pytest.fixture(scope="module", params=["bpe", "unigram"])
def built(request, tmp_path_factory):
    """(kind, SentencePiece model bytes, GGUF file of a tiny Llama with the vocabulary, HF folder)."""
    kind, model = request.param, train(request.param)
    root = tmp_path_factory.mktemp(f"spm-{kind}")
    n = len(pieces(model))
    write_gguf(tiny_family("llama-gqa-tied", vocab=n), root / "tiny.gguf", tokenizer=gguf_vocab(model))
    folder = root / "hf"
    folder.mkdir()
    (folder / "tokenizer.model").write_bytes(model)
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "GemmaTokenizer"}))
    transformers.AutoTokenizer.from_pretrained(folder).save_pretrained(folder)  # tokenizer.json, as Gemma ships
    return kind, model, root / "tiny.gguf", folder


def gemma_vocab_file(model: bytes, path: Path) -> Path:
    """The vocabulary alone under arch gemma3: transformers reads a SentencePiece GGUF by its architecture, and
    for arch llama puts a space first whatever add_space_prefix says (its LlamaTokenizer's Metaspace), unlike
    llama.cpp; Gemma's reader keeps the text as it is."""
    writer = gguf.GGUFWriter(str(path), "gemma3")
    gguf_vocab(model)(writer)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    return path


def llama_cpp_ids(path: Path, texts: list[str]) -> list[list[int]]:
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (the llama.cpp oracle)")
    llm = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
    return [llm.tokenize(t.encode("utf-8"), add_bos=False, special=True) for t in texts]


def test_a_gguf_vocabulary_gives_transformers_and_llama_cpps_ids(built):
    kind, model, path, _ = built
    tok = HFTokenizer.from_gguf(read_metadata(path))
    assert (tok.bos_id, tok.eos_id, tok.add_bos) == (2, 1, True)
    assert tok.stop_ids == (1, tok.tokenizer.token_to_id("<end_of_turn>"))  # llama.cpp's end of generation too
    ours = [tok.encode(t) for t in TEXTS + [MIXED]]
    gemma = gemma_vocab_file(model, path.parent / "vocab.gguf")
    theirs = transformers.AutoTokenizer.from_pretrained(gemma.parent, gguf_file=gemma.name)
    assert [theirs.encode(t, add_special_tokens=False) for t in TEXTS + [MIXED]] == ours
    if kind == "bpe":  # SentencePiece's own BPE merges as llama.cpp does (a Unigram model it runs another way;
        sp = spm.SentencePieceProcessor(model_proto=model)  # and it matches user-defined tokens its own way)
        plain = [t for t in TEXTS if not any(s in t for s in ("<", "  ", "\n", "\t"))]
        assert [sp.encode(t) for t in plain] == [tok.encode(t) for t in plain]
    assert llama_cpp_ids(path, TEXTS + [MIXED]) == ours


def test_ids_decode_back_and_token_bytes_spell_each_piece(built):
    _, model, path, _ = built
    tok = HFTokenizer.from_gguf(read_metadata(path))
    ps = pieces(model)
    for text in TEXTS + [MIXED]:
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        plain = text.replace("<start_of_turn>", "").replace("<end_of_turn>", "")  # special tokens have no bytes
        assert b"".join(tok.token_bytes(i) for i in ids) == plain.encode("utf-8")
    for i, p in enumerate(ps):
        if p.type == BYTE:
            assert tok.token_bytes(i) == bytes([int(p.piece[3:5], 16)])
        elif p.type == NORMAL:
            assert tok.token_bytes(i) == p.piece.replace("▁", " ").encode("utf-8")
        elif p.type == CONTROL:
            assert tok.token_bytes(i) == b""
    assert any(p.type == BYTE for p in ps) and tok.encode("\x07") == [ps.index(next(p for p in ps if p.piece == "<0x07>"))]
    again = tokenizer_from_dict(json.loads(json.dumps(tok.to_dict())))
    assert again.encode(MIXED) == tok.encode(MIXED) and again.stop_ids == tok.stop_ids


def test_a_folder_gives_transformers_ids(built):
    _, _, path, folder = built
    tok = HFTokenizer.from_folder(folder)
    theirs = transformers.AutoTokenizer.from_pretrained(folder)
    assert [tok.encode(t) for t in TEXTS + [MIXED]] == [theirs.encode(t, add_special_tokens=False) for t in TEXTS + [MIXED]]
    assert (tok.bos_id, tok.eos_id) == (theirs.bos_token_id, theirs.eos_token_id)
    assert tok.add_bos == (theirs.encode("hi")[0] == theirs.bos_token_id)  # this conversion adds none
    assert tok.decode(tok.encode(MIXED)) == MIXED
    assert b"".join(tok.token_bytes(i) for i in tok.encode("rare \u0904 ß 😀")) == "rare \u0904 ß 😀".encode()
    assert tok.encode(MIXED) == HFTokenizer.from_gguf(read_metadata(path)).encode(MIXED)  # one vocabulary, one split


def test_a_folder_with_only_tokenizer_model_runs_it_as_sentencepiece_does(built, tmp_path):
    kind, model, _, folder = built
    (tmp_path / "tokenizer.model").write_bytes(model)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<bos>", "eos_token": "<eos>"}))
    tok = HFTokenizer.from_folder(tmp_path)
    assert (tok.bos_id, tok.eos_id, tok.vocab_size) == (2, 1, len(pieces(model)))
    sp = spm.SentencePieceProcessor(model_proto=model)
    plain = [t for t in TEXTS if not any(s in t for s in ("<", "  ", "\n", "\t"))]  # as sentencepiece matches them
    assert [tok.encode(t) for t in plain] == [sp.encode(t) for t in plain]
    assert tok.decode(tok.encode(MIXED)) == MIXED
    if kind == "bpe":  # transformers' Gemma converter runs a BPE model alike (a Unigram one it makes a BPE)
        assert tok.encode(MIXED) == HFTokenizer.from_folder(folder).encode(MIXED)
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model)
    proto.normalizer_spec.remove_extra_whitespaces = True  # (the space prefix: test_space_prefix.py)
    (tmp_path / "tokenizer.model").write_bytes(proto.SerializeToString())
    with pytest.raises(TokenizerError, match="runs of spaces removed .remove_extra_whitespaces., which BladeGPT does not"):
        HFTokenizer.from_folder(tmp_path)


def test_unsupported_sentencepiece_files_are_one_line_errors(built):
    meta = read_metadata(built[2])
    cases = [({"tokenizer.ggml.add_eos_token": True}, "ends every text with eos"),
             ({"tokenizer.ggml.scores": [0.0]}, "SentencePiece vocabulary is incomplete"),
             ({"tokenizer.ggml.tokens": ["a"] * len(meta["tokenizer.ggml.tokens"])}, "spells two tokens alike")]
    for change, message in cases:
        with pytest.raises(TokenizerError, match=message):
            HFTokenizer.from_gguf({**meta, **change})
    without = {k: v for k, v in meta.items() if k != "tokenizer.ggml.add_space_prefix"}
    assert HFTokenizer.from_gguf(without).space_prefix == "prepend"  # llama.cpp's default: Llama 2's older files


def test_prepare_sample_and_both_exports_keep_the_vocabulary(built, tmp_path, monkeypatch):
    _, _, path, _ = built
    text = tmp_path / "tales.txt"
    text.write_text(corpus_text(200) + MIXED, encoding="utf-8")
    data = prepare([text], tmp_path / "data", tokenizer_from=str(path)).out_dir
    meta = json.loads((data / "meta.json").read_text())
    tok = load_tokenizer_from(str(path))
    assert meta["dtype"] == "uint16" and meta["stop_ids"] == list(tok.stop_ids)
    from bladegpt.tokenizer import load_tokenizer

    assert load_tokenizer(data / "tokenizer.json").encode(MIXED) == tok.encode(MIXED)
    pretrained = load_pretrained(str(path))
    save_checkpoint(tmp_path / "model.safetensors", pretrained.model, pretrained.tokenizer, step=0)
    piece = tok.tokenizer.token_to_id
    emoji = [piece(f"<0x{b:02X}>") for b in "😀".encode()]  # no piece holds it: four byte pieces
    monkeypatch.setattr(engine, "sample_next_token", by_seed({0: [piece("▁"), *emoji, piece("<end_of_turn>"), 9]}))
    result = CliRunner().invoke(app, ["sample", "Hello", "--checkpoint", str(tmp_path / "model.safetensors"),
                                      "--max-new-tokens", "8", "--seed", "0", "--precision", "fp32", "--compile", "off"])
    assert result.exit_code == 0, result.output
    assert result.stdout == "Hello 😀\n"  # the bytes joined into one character; stopped at <end_of_turn>
    hf = export(tmp_path / "hf", tmp_path / "model.safetensors", format="hf")
    theirs = transformers.AutoTokenizer.from_pretrained(hf)
    assert theirs.encode(MIXED, add_special_tokens=False) == tok.encode(MIXED)
    out = export(tmp_path / "out.gguf", tmp_path / "model.safetensors", format="gguf", dtype="f32")
    fields = gguf.GGUFReader(out).fields
    assert fields["tokenizer.ggml.model"].contents() == "llama"
    assert fields["tokenizer.ggml.add_space_prefix"].contents() is False
    back = load_pretrained(str(out))
    assert back.tokenizer.encode(MIXED) == tok.encode(MIXED) and back.tokenizer.stop_ids == tok.stop_ids
    ids = tok.encode(MIXED)[:40]
    torch.testing.assert_close(logits_of(back.model, ids), logits_of(pretrained.model, ids), atol=1e-5, rtol=0)
    assert llama_cpp_ids(out, TEXTS + [MIXED]) == [tok.encode(t) for t in TEXTS + [MIXED]]


def unigram_folder(model: bytes, folder: Path) -> Path:
    """A tokenizer.json with the Unigram model itself (transformers' Gemma converter makes a BPE of it)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers

    ps = pieces(model)
    rust = Tokenizer(models.Unigram([(p.piece, p.score) for p in ps], unk_id=3, byte_fallback=True))
    rust.normalizer = normalizers.Replace(" ", "▁")
    rust.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    rust.add_special_tokens([AddedToken(p.piece, special=True, normalized=False) for p in ps if p.type == CONTROL])
    rust.add_tokens([AddedToken(p.piece, normalized=False) for p in ps if p.type == USER_DEFINED])
    folder.mkdir()
    rust.save(str(folder / "tokenizer.json"))
    return folder


def test_a_folders_vocabulary_goes_to_gguf_as_llama_cpp_runs_it_or_is_refused(built):
    kind, model, path, folder = built
    tok = HFTokenizer.from_folder(folder)
    if kind == "unigram":  # a Unigram model is read as it is; llama.cpp would merge its pieces by score: refused
        unigram = HFTokenizer.from_folder(unigram_folder(model, path.parent / "unigram"))
        theirs = transformers.PreTrainedTokenizerFast(tokenizer_file=str(path.parent / "unigram" / "tokenizer.json"))
        assert [unigram.encode(t) for t in TEXTS] == [theirs.encode(t, add_special_tokens=False) for t in TEXTS]
        assert b"".join(unigram.token_bytes(i) for i in unigram.encode("ß \x07 😀")) == "ß \x07 😀".encode()
        with pytest.raises(UserError, match="Unigram SentencePiece tokenizer .* export --format hf"):
            gguf_vocab_of(unigram)
        return
    vocab = gguf_vocab_of(tok)
    assert vocab.scores is not None and vocab.merges == [] and vocab.types[:3] == [CONTROL] * 3
    assert vocab.types[tok.tokenizer.token_to_id("\n")] == USER_DEFINED and vocab.types[9] == BYTE
    meta = {"tokenizer.ggml.tokens": vocab.tokens, "tokenizer.ggml.scores": vocab.scores, "tokenizer.ggml.add_space_prefix": False,
            "tokenizer.ggml.token_type": vocab.types, "tokenizer.ggml.model": "llama", "tokenizer.ggml.unknown_token_id": vocab.unk}
    assert HFTokenizer.from_gguf(meta).encode(MIXED) == tok.encode(MIXED)  # the scores rank the merges as they were


GEMMA = Path.home() / ".cache" / "bladegpt-test" / "gemma-3-270m-q4_k_m.gguf"  # Gemma's terms: never committed


@pytest.mark.slow
def test_the_real_gemma_3_vocabulary(tmp_path):
    """Gemma 3 270M's 262,144 pieces: transformers' and llama.cpp's ids, its own bos/eos, llama.cpp's stops,
    a uint32 dataset."""
    if not GEMMA.is_file():
        pytest.skip(f"{GEMMA} is not fetched (issue 40 names the registry package that ships it)")
    tok = load_tokenizer_from(str(GEMMA))
    assert (tok.vocab_size, tok.bos_id, tok.eos_id, tok.add_bos) == (262144, 2, 1, True)
    assert tok.stop_ids == (1, 106, 212)  # <eos>, <end_of_turn>, </s>: llama.cpp's end-of-generation ids
    theirs = transformers.AutoTokenizer.from_pretrained(GEMMA.parent, gguf_file=GEMMA.name)
    ours = [tok.encode(t) for t in TEXTS + [MIXED]]
    assert ours == [theirs.encode(t, add_special_tokens=False) for t in TEXTS + [MIXED]]
    assert ours[TEXTS.index("digits 1234567 3.14")][1:5] == [236743, 236770, 236778, 236800]  # "▁", "1", "2", "3"
    assert all(tok.decode(ids) == text for ids, text in zip(ours, TEXTS))
    assert [len(tok.token_bytes(i)) for i in (238, 493, 236743, 107)] == [1, 1, 1, 1]  # <0x00>, <0xFF>, ▁, \n
    vocab = gguf_vocab_of(tok)  # what --format gguf writes: the file's pieces and types, scores from the merges
    meta = read_metadata(GEMMA)
    assert vocab.tokens == meta["tokenizer.ggml.tokens"] and vocab.types == meta["tokenizer.ggml.token_type"]
    written = {**meta, "tokenizer.ggml.scores": vocab.scores}
    assert [HFTokenizer.from_gguf(written).encode(t) for t in TEXTS + [MIXED]] == ours
    assert llama_cpp_ids(GEMMA, TEXTS + [MIXED]) == ours
    text = tmp_path / "tales.txt"
    text.write_text(corpus_text(50) + MIXED, encoding="utf-8")
    meta = prepare([text], tmp_path / "data", tokenizer_from=str(GEMMA)).meta
    assert (meta["dtype"], meta["vocab_size"], meta["stop_ids"]) == ("uint32", 262144, [1, 106, 212])
