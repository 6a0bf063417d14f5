"""`<|endoftext|>` means one thing everywhere (issue #28, item 3): the document separator, one id in
every tokenizer kind, in prepare (one process or many), in sampling and chat (which stop at it and
never print it), and in the Hugging Face and GGUF exports."""

import json

import pytest
import torch
from typer.testing import CliRunner

from bladegpt.generate import engine
from bladegpt.data import prepare as prepare_module
from bladegpt.checkpoint import save_checkpoint
from bladegpt.cli import app
from bladegpt.config import ModelConfig, padded_vocab
from bladegpt.data.dataset import TokenData
from bladegpt.generate.engine import generate, generate_batch, generate_reference
from bladegpt.model import GPT
from bladegpt.data.prepare import outside_separator, pieces, prepare
from bladegpt.tokenizer import GPT2_EOT, tokenizer_from_dict, train_tokenizer
from bladegpt.errors import TokenizerError
from tests.conftest import corpus_text

KINDS = ["gpt2", "bpe", "char"]
LITERAL = [27, 91, 437, 1659, 5239, 91, 29]  # GPT-2's ids for the characters of <|endoftext|>
SAID = "The hunter counted the coins.<|endoftext|>A tired witch lit the lamp."


def documents(n: int = 24) -> str:
    """gpt-2-simple's way: documents joined by <|endoftext|> lines."""
    return f"\n{GPT2_EOT}\n".join(corpus_text(20, seed=i) for i in range(n))


def contains(ids: list[int], run: list[int]) -> bool:
    return any(ids[i : i + len(run)] == run for i in range(len(ids) - len(run) + 1))


def test_gpt2_dataset_encodes_the_separator_as_50256(workdir):
    """The issue's instance: 50256 where the text says <|endoftext|>, never its seven characters' ids."""
    text = documents()
    (workdir / "docs.txt").write_text(text)
    one = TokenData(prepare([workdir / "docs.txt"], out_dir=workdir / "one", tokenizer="gpt2").out_dir)
    ids = one.splits["train"].tolist() + one.splits["val"].tolist()
    assert ids.count(50256) == text.count(GPT2_EOT) == 23 and not contains(ids, LITERAL)
    assert one.tokenizer.eot_id == one.meta["eot_id"] == 50256
    assert one.tokenizer.decode(ids) == text


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_has_one_separator_id_on_every_path(workdir, monkeypatch, kind):
    text = documents()
    (workdir / "docs.txt").write_text(text)
    one = TokenData(prepare([workdir / "docs.txt"], out_dir=workdir / "one", tokenizer=kind, vocab_size=400).out_dir)
    tok = one.tokenizer
    assert tok.eot_id == tok.vocab_size - 1 if kind != "gpt2" else tok.eot_id == 50256
    ids = one.splits["train"].tolist() + one.splits["val"].tolist()
    assert ids.count(tok.eot_id) == 23 and tok.decode(ids) == text
    assert tok.encode(GPT2_EOT) == [tok.eot_id] and tok.token_bytes(tok.eot_id) == GPT2_EOT.encode()
    if kind == "char":  # the separator's characters are not in a vocabulary that never meets them alone
        assert "|" not in tok.chars and "<" not in tok.chars
    if kind == "bpe":  # nor do a corpus BPE's merges learn its pieces
        assert not any(b"<|" in tok.token_bytes(i) or b"|>" in tok.token_bytes(i) for i in range(tok.eot_id))
    # bits per byte counts the separator as the 13 bytes it takes in the file: the dataset's bytes
    assert sum(len(tok.token_bytes(i)) for i in one.splits["train"].tolist()) == one.meta["train_bytes"]
    monkeypatch.setattr(prepare_module, "PIECE_CHARS", 300)
    monkeypatch.setattr("bladegpt.data.textfile.READ_BYTES", 97)
    monkeypatch.setattr(prepare_module, "PARALLEL_MIN_BYTES", 0)
    many = TokenData(prepare([workdir / "docs.txt"], out_dir=workdir / "many", tokenizer=kind, vocab_size=400).out_dir)
    for split in ("train", "val"):
        assert torch.equal(many.splits[split], one.splits[split])


def test_no_cut_splits_a_separator():
    run = ("x" * 37 + GPT2_EOT) * 400  # one unbroken run: prepare must cut it by force
    cut = list(pieces((run[i : i + 101] for i in range(0, len(run), 101)), size=200))
    assert len(cut) > 5 and "".join(cut) == run
    assert sum(p.count(GPT2_EOT) for p in cut) == run.count(GPT2_EOT)
    assert all(outside_separator("ab" + GPT2_EOT, at) in (at, 2) for at in range(16))
    assert outside_separator("ab" + GPT2_EOT, 5) == 2 and outside_separator("ab" + GPT2_EOT, 15) == 15


def test_tokenizers_saved_before_keep_their_meaning():
    """A char or corpus-BPE file from before the separator has no special_tokens: its text stays characters."""
    char = tokenizer_from_dict({"kind": "char", "chars": sorted(set("<|endoftext> ab"))})
    assert char.eot_id is None and char.encode(GPT2_EOT) == [char.chars.index(c) for c in GPT2_EOT]
    new = train_tokenizer("bpe", corpus_text(200), 300)
    saved = {k: v for k, v in new.to_dict().items() if k != "special_tokens"}
    old = tokenizer_from_dict(saved)
    assert old.eot_id is None and old.vocab_size == new.vocab_size - 1 and len(old.encode(GPT2_EOT)) > 1
    assert tokenizer_from_dict(new.to_dict()).encode(SAID) == new.encode(SAID)
    with pytest.raises(TokenizerError, match="special tokens"):
        tokenizer_from_dict({**saved, "special_tokens": {"<|im_end|>": 3}})


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return GPT(ModelConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32)).eval()


def test_generation_stops_at_the_end_of_text(tiny):
    free = list(generate(tiny, [3, 1, 4], 40, 60, temperature=0))
    stop = next(t for t in free[3:] if t not in free[:3])
    until = free[: free.index(stop)]
    assert list(generate(tiny, [3, 1, 4], 40, 60, temperature=0, stop=(stop,))) == until
    assert generate_reference(tiny, [3, 1, 4], 40, 60, temperature=0, stop=(stop,)) == until
    steps = list(generate_batch(tiny, [3, 1, 4], 40, 60, [None] * 3, temperature=0, stop=(stop,)))
    assert len(steps) == len(until) + 1  # every row ended: no token more is computed


def scripted(rows: list[list[int]]):
    """sample_next_token replaced by a script: row r draws rows[r][t] at step t (its last entry after)."""
    step = iter(range(10**6))

    def draw(logits, *args, **kwargs):
        t = next(step)
        return torch.tensor([row[min(t, len(row) - 1)] for row in rows[: logits.size(0)]])

    return draw


@pytest.fixture
def checkpoint(workdir):
    tok = train_tokenizer("char", "ab \n\"")
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=padded_vocab(tok.vocab_size), block_size=16, n_layer=1, n_head=2, n_embd=16))
    save_checkpoint(workdir / "voice.safetensors", model, tok, step=0)
    a, b, eot = tok.encode("a")[0], tok.encode("b")[0], tok.eot_id
    return workdir / "voice.safetensors", a, b, eot


def test_sample_ends_each_sample_at_the_end_of_text(checkpoint, monkeypatch):
    path, a, b, eot = checkpoint
    monkeypatch.setattr(engine, "sample_next_token", scripted([[a, b, eot, a], [b, eot, a], [a]]))
    result = CliRunner().invoke(app, ["sample", "b", "--checkpoint", str(path), "--num-samples", "3",
                                      "--max-new-tokens", "6", "--seed", "0", "--precision", "fp32", "--compile", "off"])
    assert result.exit_code == 0, result.output
    assert result.stdout.split("\n" + "-" * 40 + "\n") == ["bab", "bb", "baaaaaa\n"]
    assert GPT2_EOT not in result.output


def test_chat_turn_ends_at_the_end_of_text(checkpoint, monkeypatch):
    path, a, b, eot = checkpoint
    monkeypatch.setattr(engine, "sample_next_token", scripted([[a, b, eot, a, a]]))
    result = CliRunner().invoke(app, ["chat", "--checkpoint", str(path), "--seed", "0", "--precision", "fp32",
                                      "--compile", "off"], input="ab\nba\n")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == "ab" and GPT2_EOT not in result.output


def tokenizer_and_model(kind: str):
    tok = train_tokenizer(kind, documents(8) + " café 😀", 400)
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=padded_vocab(tok.vocab_size), block_size=16, n_layer=1, n_head=2, n_embd=16)
    return tok, GPT(cfg).eval()


@pytest.mark.parametrize("kind", KINDS)
def test_hf_export_reads_the_separator_as_bladegpt_does(workdir, kind):
    transformers = pytest.importorskip("transformers")
    tok, model = tokenizer_and_model(kind)
    save_checkpoint(workdir / "voice.safetensors", model, tok, step=0)
    assert CliRunner().invoke(app, ["export", "hf", "--checkpoint", "voice.safetensors"]).exit_code == 0
    hf_tok = transformers.AutoTokenizer.from_pretrained(workdir / "hf")
    for text in (SAID, GPT2_EOT, f"\n{GPT2_EOT}\nThe innkeeper"):
        assert hf_tok(text)["input_ids"] == tok.encode(text), text
        assert hf_tok.decode(tok.encode(text)) == text
    assert hf_tok.eos_token_id == tok.eot_id
    for name in ("config.json", "generation_config.json"):
        assert json.loads((workdir / "hf" / name).read_text())["eos_token_id"] == tok.eot_id


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_gguf_export_reads_the_separator_as_bladegpt_does(workdir, kind):
    gguf = pytest.importorskip("gguf")
    transformers = pytest.importorskip("transformers")
    from bladegpt.export.gguf import write_gguf
    from bladegpt.tokenizer.hf import CONTROL

    tok, model = tokenizer_and_model(kind)
    write_gguf(workdir / "voice.gguf", model, tok, "f32")
    fields = {name: f.contents() for name, f in gguf.GGUFReader(workdir / "voice.gguf").fields.items()}
    eos = fields["tokenizer.ggml.eos_token_id"]
    assert eos == fields["tokenizer.ggml.bos_token_id"] == tok.eot_id
    assert fields["tokenizer.ggml.tokens"][eos] == GPT2_EOT and fields["tokenizer.ggml.token_type"][eos] == CONTROL
    assert fields["tokenizer.ggml.tokens"].count(GPT2_EOT) == 1
    hf_tok = transformers.AutoTokenizer.from_pretrained(workdir, gguf_file="voice.gguf")
    for text in (SAID, f"\n{GPT2_EOT}\nThe innkeeper"):
        assert hf_tok(text, add_special_tokens=False)["input_ids"] == tok.encode(text), text


def test_gguf_export_of_a_model_from_before_says_what_differs(workdir):
    """A char model saved before the separator: the file still gets the end of text llama.cpp needs (in a
    padding row), and export says, in one warning, that it reads the text otherwise than BladeGPT."""
    tok, model = tokenizer_and_model("char")
    old = tokenizer_from_dict({k: v for k, v in tok.to_dict().items() if k != "special_tokens"})
    save_checkpoint(workdir / "old.safetensors", model, old, step=0)
    result = CliRunner().invoke(app, ["export", "old", "--format", "gguf", "--checkpoint", "old.safetensors"])
    assert result.exit_code == 0 and "saved before BladeGPT read <|endoftext|>" in result.output.replace("\n", " ")
    save_checkpoint(workdir / "new.safetensors", model, tok, step=0)
    result = CliRunner().invoke(app, ["export", "new", "--format", "gguf", "--checkpoint", "new.safetensors"])
    assert result.exit_code == 0 and "saved before" not in result.output
