"""Exported models load in Hugging Face transformers and agree with BladeGPT token for token."""

import pytest
import torch
from typer.testing import CliRunner

from bladegpt.checkpoint import load_checkpoint
from bladegpt.cli import app
from bladegpt.data import prepare
from bladegpt.engine import generate
from bladegpt.trainer import train
from tests.conftest import TINY_MODEL, TINY_TRAIN, corpus_text

transformers = pytest.importorskip("transformers")

MIXED = [
    "The hunter counted the coins.",
    "Numbers 1234567 and 3.14, punctuation!?;: (brackets) [x] {y}",
    "Unicode: café naïve — “quotes” 😀 日本",
    "Whitespace   runs\t\ttabs\n\n\nnewlines   ",
    "'tis don't we'll THEY'RE",
]


@pytest.fixture(params=["bpe", "gpt2", "char"])
def trained(request, workdir):
    text = corpus_text(600) + "\n".join(MIXED) + "\n"
    (workdir / "tales.txt").write_text(text * 2)
    prepare([workdir / "tales.txt"], tokenizer=request.param, vocab_size=512)
    model = {**TINY_MODEL, "block_size": 32}
    train(None, "nano", model, {**TINY_TRAIN, "steps": 20}, compile="off")
    return request.param


def test_hf_export_matches(trained, workdir):
    result = CliRunner().invoke(app, ["export", "hf-model"])
    assert result.exit_code == 0, result.output
    ours, tok, _ = load_checkpoint(workdir / "runs" / "tales-1" / "best.safetensors")
    hf_tok = transformers.AutoTokenizer.from_pretrained(workdir / "hf-model")
    hf = transformers.AutoModelForCausalLM.from_pretrained(workdir / "hf-model").eval()
    for text in MIXED:
        ids = tok.encode(text)
        assert hf_tok(text)["input_ids"] == ids, text
        assert hf_tok.decode(ids) == text
        x = torch.tensor([ids[:32]])
        with torch.no_grad():
            assert torch.allclose(hf(x).logits, ours(x)[0], atol=1e-4)
    prompt = tok.encode("The hunter")
    ours_greedy = list(generate(ours, prompt, 12, tok.vocab_size, temperature=0))
    hf_greedy = hf.generate(torch.tensor([prompt]), max_new_tokens=12, min_new_tokens=12, do_sample=False)
    assert hf_greedy[0, len(prompt):].tolist() == ours_greedy


def test_safetensors_export_samples_back(trained, workdir):
    runner = CliRunner()
    result = runner.invoke(app, ["export", "voice.safetensors", "--format", "safetensors"])
    assert result.exit_code == 0, result.output
    direct = runner.invoke(app, ["sample", "The", "--seed", "4", "--max-new-tokens", "10"])
    exported = runner.invoke(app, ["sample", "The", "--seed", "4", "--max-new-tokens", "10",
                                   "--checkpoint", "voice.safetensors"])
    assert exported.exit_code == 0 and exported.stdout == direct.stdout


def test_export_refuses_to_clobber(workdir, corpus):
    runner = CliRunner()
    assert "bladegpt train" in runner.invoke(app, ["export", "out"]).output  # no run yet
    prepare([corpus], tokenizer="char")
    train(None, "nano", TINY_MODEL, {**TINY_TRAIN, "steps": 5}, compile="off")
    (workdir / "out").mkdir()
    (workdir / "out" / "keep.txt").write_text("mine")
    result = runner.invoke(app, ["export", "out"])
    assert result.exit_code == 1 and "--force" in result.output
    assert runner.invoke(app, ["export", "out", "--force"]).exit_code == 0
    assert (workdir / "out" / "config.json").exists() and not (workdir / "out" / "keep.txt").exists()
