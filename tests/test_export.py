"""Exported models load in Hugging Face transformers and agree with BladeGPT token for token."""

import os

import pytest
import torch
from typer.testing import CliRunner

from bladegpt.checkpoint import load_checkpoint
from bladegpt.cli import app
from bladegpt.data.prepare import prepare
from bladegpt.generate.engine import generate
from bladegpt.train import train
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


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_export_force_replaces_only_an_earlier_export(workdir, corpus):
    runner = CliRunner()
    assert "bladegpt train" in runner.invoke(app, ["export", "out"]).output  # no run yet
    prepare([corpus], tokenizer="char")
    train(None, "nano", TINY_MODEL, {**TINY_TRAIN, "steps": 5}, compile="off")
    run = workdir / "runs" / "tales-1"
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    (workdir / "mine").mkdir()
    (workdir / "mine" / "keep.txt").write_text("mine")
    for target in ["mine", ".", str(run), "runs"]:
        result = runner.invoke(app, ["export", target, "--force"])
        assert result.exit_code == 1 and "Traceback" not in result.output, (target, result.output)
    assert (workdir / "mine" / "keep.txt").read_text() == "mine" and (workdir / "tales.txt").exists()
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before

    assert runner.invoke(app, ["export", "out"]).exit_code == 0
    result = runner.invoke(app, ["export", "out"])
    assert result.exit_code == 1 and "--force" in result.output
    (workdir / "out" / "config.json").write_text("{}")
    assert runner.invoke(app, ["export", "out", "--force"]).exit_code == 0
    assert "GPT2LMHeadModel" in (workdir / "out" / "config.json").read_text()  # replaced whole
    assert {oct(p.stat().st_mode & 0o777) for p in (workdir / "out").iterdir()} == {oct(0o666 & ~_umask())}
    assert not list(workdir.glob(".out*"))  # no temporary folder left


def test_safetensors_export_names_and_modes(workdir, corpus):
    prepare([corpus], tokenizer="char")
    train(None, "nano", TINY_MODEL, {**TINY_TRAIN, "steps": 5}, compile="off")
    runner = CliRunner()
    assert runner.invoke(app, ["export", "model.v2", "--format", "safetensors"]).exit_code == 0
    written = workdir / "model.v2.safetensors"
    assert written.exists() and not (workdir / "model.safetensors").exists()
    assert oct(written.stat().st_mode & 0o777) == oct((workdir / "tales.txt").stat().st_mode & 0o777)
    (workdir / "notes.safetensors").write_text("my notes")
    result = runner.invoke(app, ["export", "notes.safetensors", "--format", "safetensors", "--force"])
    assert result.exit_code == 1 and (workdir / "notes.safetensors").read_text() == "my notes"
    (workdir / "kept.safetensors").write_bytes((workdir / "runs" / "tales-1" / "best.safetensors").read_bytes())
    result = runner.invoke(app, ["export", "kept.safetensors", "--format", "safetensors", "--force"])
    assert result.exit_code == 1 and "not an earlier BladeGPT export" in result.output.replace("\n", " ")
    assert runner.invoke(app, ["export", "model.v2", "--format", "safetensors", "--force"]).exit_code == 0
    result = runner.invoke(app, ["export", "runs/tales-1/last.safetensors", "--format", "safetensors", "--force"])
    assert result.exit_code == 1 and "run's own checkpoint" in result.output


def test_export_format_follows_the_name_and_never_replaces_a_link(workdir, corpus):
    from bladegpt.files import is_gguf
    from tests.safety import assert_one_line_error

    prepare([corpus], tokenizer="char")
    train(None, "nano", TINY_MODEL, {**TINY_TRAIN, "steps": 5}, compile="off")
    runner = CliRunner()
    assert runner.invoke(app, ["export", "voice.gguf"]).exit_code == 0  # was a transformers folder so named
    assert (workdir / "voice.gguf").is_file() and is_gguf(workdir / "voice.gguf")
    assert runner.invoke(app, ["export", "voice.safetensors"]).exit_code == 0
    assert load_checkpoint(workdir / "voice.safetensors")[2]["exported_from"]
    for args in (["other.gguf", "--format", "hf"], ["other.safetensors", "--format", "gguf"],
                 ["other.gguf", "--format", "peft"]):
        assert_one_line_error(runner.invoke(app, ["export", *args]), f"--format {args[2]} writes")
    assert not list(workdir.glob("other*"))
    (workdir / "hf").mkdir()
    (workdir / "to-hf").symlink_to(workdir / "hf")
    (workdir / "to-voice.gguf").symlink_to(workdir / "voice.gguf")
    for link in ("to-hf", "to-voice.gguf"):
        assert_one_line_error(runner.invoke(app, ["export", link, "--force"]), f"{link} is a link")
        assert (workdir / link).is_symlink()
    assert not list(workdir.glob(".to-*")) and not list((workdir / "hf").iterdir())
