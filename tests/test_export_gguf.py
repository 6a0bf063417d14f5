"""GGUF exports read back with gguf's reader and with transformers (which loads GGUF the way
llama.cpp lays it out), for every tokenizer kind: same ids, same logits."""

import copy

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from bladegpt.checkpoint import load_checkpoint
from bladegpt.cli import app
from bladegpt.export.gguf import gguf_tensors
from bladegpt.export.gguf_vocab import gguf_vocab
from bladegpt.train import train
from bladegpt.data.prepare import prepare
from tests.conftest import TINY_MODEL, TINY_TRAIN, corpus_text
from tests.test_export import MIXED

pytestmark = pytest.mark.slow  # trains three tiny models, loads nine files in transformers

gguf = pytest.importorskip("gguf")
transformers = pytest.importorskip("transformers")

# Beyond test_export's lines: what llama.cpp's splitters are known to trip on.
TRICKY = MIXED + ["  leading spaces", "trailing\n\n", "a\r\nb", "x  \n  y", "12,345.678 9999 0x1F", "é—e"]
# f16 and q8_0 round the weights: about 3-4x the largest change measured on these tiny models (2.4e-3, 3.2e-2).
TOLERANCE = {"f32": 1e-4, "f16": 1e-2, "q8_0": 1e-1}


def tanh_gelu(model):
    """The same weights computing GELU with the tanh approximation, as llama.cpp's GPT-2 graph does."""
    model = copy.deepcopy(model)
    for block in model.transformer.h:
        block.mlp.gelu = torch.nn.GELU(approximate="tanh")
    return model


@pytest.fixture(scope="module", params=["bpe", "gpt2", "char"])
def trained(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        text = corpus_text(600) + "\n".join(TRICKY) + "\n"
        (folder / "tales.txt").write_text(text * 2)
        prepare([folder / "tales.txt"], tokenizer=request.param, vocab_size=512)
        train(None, "nano", {**TINY_MODEL, "block_size": 32}, {**TINY_TRAIN, "steps": 20}, compile="off")
        for dtype in ("f32", "f16", "q8_0"):
            result = CliRunner().invoke(app, ["export", f"voice-{dtype}", "--format", "gguf", "--dtype", dtype])
            assert result.exit_code == 0, result.output
    model, tokenizer, _ = load_checkpoint(folder / "runs" / "tales-1" / "best.safetensors")
    return folder, model, tokenizer


def test_reader_sees_metadata_and_every_tensor(trained):
    folder, model, tokenizer = trained
    reader = gguf.GGUFReader(folder / "voice-f32.gguf")
    fields = {name: field.contents() for name, field in reader.fields.items()}
    cfg = model.config
    assert fields["general.architecture"] == "gpt2"
    assert (fields["gpt2.block_count"], fields["gpt2.embedding_length"], fields["gpt2.attention.head_count"],
            fields["gpt2.context_length"], fields["gpt2.feed_forward_length"]) == (
        cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.block_size, 4 * cfg.n_embd)
    vocab = gguf_vocab(tokenizer)
    assert fields["tokenizer.ggml.model"] == "gpt2"
    assert fields["tokenizer.ggml.pre"] == {"gpt2": "gpt-2", "bpe": "llama-bpe", "char": "gpt-2"}[tokenizer.kind]
    assert fields["tokenizer.ggml.tokens"] == vocab.tokens and len(set(vocab.tokens)) == len(vocab.tokens)
    assert fields["tokenizer.ggml.merges"] and len(fields["tokenizer.ggml.token_type"]) == len(vocab.tokens)
    assert fields["tokenizer.ggml.eos_token_id"] == fields["tokenizer.ggml.bos_token_id"] == vocab.eos
    assert vocab.tokens[vocab.eos] == "<|endoftext|>"
    expected = gguf_tensors(model, vocab)
    assert {t.name for t in reader.tensors} == set(expected)  # tied head: no output.weight
    for t in reader.tensors:
        assert np.array_equal(np.asarray(t.data).reshape(expected[t.name].shape), expected[t.name].numpy()), t.name
    assert expected["token_embd.weight"].shape == (len(vocab.tokens), cfg.n_embd)
    # the added tokens (end of text, char pieces) take the spare rows training taught never to be predicted
    assert cfg.vocab_size > tokenizer.vocab_size == vocab.n_own
    if vocab.eos >= vocab.n_own:  # GPT-2's own end of text is a real token
        spare = model.transformer.wte.weight[vocab.n_own:].detach()
        assert (spare == expected["token_embd.weight"][vocab.eos]).all(dim=1).any()
    assert tuple(int(n) for n in next(t for t in reader.tensors if t.name == "blk.0.attn_qkv.weight").shape) == (
        cfg.n_embd, 3 * cfg.n_embd)  # ggml order {in, out}, as llama.cpp's graph loads it


def test_transformers_tokenizes_like_bladegpt(trained):
    folder, _, tokenizer = trained
    hf_tok = transformers.AutoTokenizer.from_pretrained(folder, gguf_file="voice-f16.gguf")
    for text in TRICKY:
        ids = tokenizer.encode(text)
        assert hf_tok(text, add_special_tokens=False)["input_ids"] == ids, text
        assert hf_tok.decode(ids) == text


@pytest.mark.parametrize("dtype", ["f32", "f16", "q8_0"])
def test_transformers_logits_match(trained, dtype):
    folder, model, tokenizer = trained
    # transformers' GGUF reader maps context_length to n_ctx but not to n_positions (what sizes GPT-2's
    # position table, 1024 by default); llama.cpp reads context_length itself.
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=f"voice-{dtype}.gguf", n_positions=model.config.block_size).eval()
    same = tanh_gelu(model).eval()
    n = tokenizer.vocab_size
    for text in TRICKY:
        x = torch.tensor([tokenizer.encode(text)[:32]])
        with torch.no_grad():
            theirs, ours = hf(x).logits[..., :n], same(x)[0][..., :n]
        assert (theirs - ours).abs().max() < TOLERANCE[dtype], (text, (theirs - ours).abs().max())


def test_gguf_target_rules(trained):
    folder, _, _ = trained
    runner = CliRunner()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        (folder / "mine.gguf").write_bytes(b"GGUF not ours")
        for args, says in [
            (["mine.gguf", "--format", "gguf", "--force"], "not an earlier BladeGPT export"),
            (["voice-f16", "--format", "gguf"], "--force"),
            (["other", "--format", "gguf", "--dtype", "q4_k"], "--dtype"),
            (["other", "--dtype", "f16"], "--format gguf"),
        ]:
            result = runner.invoke(app, ["export", *args])
            assert result.exit_code == 1 and says in result.output.replace("\n", " "), (args, result.output)
            assert "Traceback" not in result.output
        assert (folder / "mine.gguf").read_bytes() == b"GGUF not ours"
        before = (folder / "voice-f16.gguf").stat().st_mtime_ns
        result = runner.invoke(app, ["export", "voice-f16.gguf", "--format", "gguf", "--force"])
        assert result.exit_code == 0 and "llama-completion -m voice-f16.gguf -no-cnv -p" in result.output
        assert 'TEMPLATE """{{ .Prompt }}"""' in result.output  # not the chat template a voice never learnt
        assert (folder / "voice-f16.gguf").stat().st_mtime_ns != before
        assert not list(folder.glob(".*.tmp"))


def test_gpt2_shaped_model_with_biases(tmp_path):
    """A GPT-2 fine-tune's shape: biases everywhere, tanh GELU, vocabulary 50257 unpadded."""
    from bladegpt.config import ModelConfig
    from bladegpt.export.gguf import write_gguf
    from bladegpt.model import GPT
    from bladegpt.tokenizer import TiktokenTokenizer

    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=50257, block_size=24, n_layer=2, n_head=2, n_embd=32, bias=True,
                      activation="gelu_tanh")
    model = GPT(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.1)  # biases start at zero: make them count
    write_gguf(tmp_path / "gpt2ish.gguf", model, TiktokenTokenizer.gpt2(), "f32")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="gpt2ish.gguf", n_positions=24).eval()
    x = torch.tensor([TiktokenTokenizer.gpt2().encode(TRICKY[1])[:24]])
    with torch.no_grad():
        assert torch.allclose(hf(x).logits, model(x)[0], atol=1e-4)
