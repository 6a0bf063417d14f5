"""The modern block changes from scratch (issue #26): each trains, `--block modern` on the default path exports as
its Llama family with equal logits, the blocks no family computes refuse in one line, and checkpoints from before
the block fields load as GPT-2's block and resume exactly."""

import dataclasses

import pytest
import torch

from bladegpt.checkpoint import load_checkpoint
from bladegpt.config import BLOCK_CHANGES, BLOCKS, ModelConfig, block_settings
from bladegpt.errors import ConfigError, UserError
from bladegpt.export import export
from bladegpt.train import train
from bladegpt.model import GPT
from bladegpt.data.prepare import prepare
from tests.conftest import TINY_MODEL, TINY_TRAIN, corpus_text
from tests.families import logits_of
from tests.test_trainer import CtrlCAt, assert_resume_follows


@pytest.mark.parametrize("spec", [*BLOCK_CHANGES, *BLOCKS])
def test_each_block_option_trains(spec):
    torch.manual_seed(0)
    settings = block_settings(spec, 32)
    model = GPT(ModelConfig(vocab_size=64, n_layer=2, n_head=2, n_embd=32, block_size=8, **settings))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    x = torch.randint(0, 64, (4, 8))
    losses = []
    for _ in range(25):
        _, loss = model(x, torch.roll(x, -1, 1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 1.0, losses


def test_softcap_bounds_the_logits_and_the_loss_sees_the_same_logits():
    model = GPT(ModelConfig(vocab_size=64, n_layer=2, n_head=2, n_embd=32, block_size=8, logit_softcap=0.5))
    x = torch.randint(0, 64, (2, 8))
    logits, _ = model(x)
    assert logits.abs().max() < 0.5
    _, loss = model(x, x)
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(logits.flatten(0, 1), x.flatten()))


def test_block_mistakes_are_one_line():
    with pytest.raises(ConfigError, match="unknown 'rotary'; use gpt2 or modern, or changes joined with"):
        block_settings("rope+rotary", 192)
    with pytest.raises(ConfigError, match="choose one"):
        block_settings("swiglu+relu2", 192)
    with pytest.raises(ConfigError, match="logit_softcap must be a positive number"):
        ModelConfig(logit_softcap=0.0)


def test_the_default_takes_the_modern_block_and_the_presets_keep_gpt2s(corpus):
    """With no --preset a run gets the modern block (issue #26); a named preset, which reproduces nanoGPT,
    and --block gpt2 keep GPT-2's."""
    prepare([corpus], tokenizer="char")
    default = train(None, None, TINY_MODEL, {**TINY_TRAIN, "steps": 2}, compile="off")
    model, _, _ = load_checkpoint(default.run_dir / "last.safetensors")
    assert model.config == ModelConfig(**{**model.config.to_dict(), **block_settings("modern", 32)})
    assert (model.config.arch, model.config.intermediate_size, model.config.zero_init) == ("qwen3", 64, True)
    for preset, block in (("nano", None), (None, "gpt2")):
        run = train(None, preset, {**TINY_MODEL, "block": block}, {**TINY_TRAIN, "steps": 2}, compile="off")
        model, _, _ = load_checkpoint(run.run_dir / "last.safetensors")
        assert model.config == ModelConfig(**{**model.config.to_dict(), **block_settings("gpt2", 32)})
        assert (model.config.arch, model.config.positions, model.config.norm) == ("gpt2", "learned", "layernorm")


@pytest.mark.parametrize("kind", ["bpe", "char"])
def test_a_modern_model_exports_as_its_family_with_equal_logits(workdir, kind):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("gguf")
    from bladegpt.sources import load_pretrained

    (workdir / "tales.txt").write_text(corpus_text(300) + "Café — naïve 😀 <|endoftext|> 12,345\n")
    prepare([workdir / "tales.txt"], tokenizer=kind, vocab_size=300)
    run = train(None, None, {**TINY_MODEL, "block_size": 64, "block": "modern"}, {**TINY_TRAIN, "steps": 5},
                compile="off").run_dir
    model, tokenizer, _ = load_checkpoint(run / "best.safetensors")
    text = "The hunter lit the lamp. Café — naïve 😀<|endoftext|>12,345"
    ids = tokenizer.encode(text)
    hf = export(workdir / "hf", run, format="hf")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32).eval()
    assert type(theirs).__name__ == "Qwen3ForCausalLM"
    torch.testing.assert_close(logits_of(theirs, ids), logits_of(model, ids), atol=1e-4, rtol=0)
    assert transformers.AutoTokenizer.from_pretrained(hf).encode(text, add_special_tokens=False) == ids
    back = load_pretrained(str(export(workdir / "voice.gguf", run, format="gguf", dtype="f32")))
    assert back.model.config.arch == "qwen3" and back.tokenizer.encode(text) == ids
    torch.testing.assert_close(logits_of(back.model, ids), logits_of(model, ids)[..., :back.model.config.vocab_size],
                               atol=1e-5, rtol=0)


@pytest.mark.parametrize("spec, why", [("softcap", "caps its logits"), ("relu2", "uses ReLU²"),
                                       ("rope", "part GPT-2's, part the Llama family's")])
def test_a_block_no_family_computes_refuses_to_export(corpus, spec, why):
    prepare([corpus], tokenizer="char")
    run = train(None, "nano", {**TINY_MODEL, "block": spec}, {**TINY_TRAIN, "steps": 2}, compile="off").run_dir
    for format in ("hf", "gguf"):
        with pytest.raises(UserError, match=why):
            export(run.parent / f"out-{format}", run, format=format)
    assert export(run.parent / "copy", run, format="safetensors").is_file()


def test_checkpoints_from_before_the_block_fields_load_as_gpt2s_block_and_resume_exactly(corpus, monkeypatch):
    prepare([corpus], tokenizer="char")
    new_fields = ("zero_init", "logit_softcap")
    to_dict = ModelConfig.to_dict
    monkeypatch.setattr(ModelConfig, "to_dict", lambda self: {k: v for k, v in to_dict(self).items()
                                                              if k not in new_fields})  # the code before #26
    settings = {**TINY_MODEL, "dropout": 0.1}
    whole = train(None, "nano", settings, TINY_TRAIN, compile="off")
    cut = train(None, "nano", settings, TINY_TRAIN, compile="off", reporter=CtrlCAt(15))
    monkeypatch.setattr(ModelConfig, "to_dict", to_dict)
    model, _, _ = load_checkpoint(cut.run_dir / "last.safetensors")
    assert model.config == dataclasses.replace(model.config, zero_init=False, logit_softcap=None, arch="gpt2")
    resumed = train(resume=True, run=cut.run_dir, compile="off")
    assert_resume_follows(whole, resumed, 15)


def test_a_named_block_takes_more_changes():
    """--block modern+softcap: the bundle and the soft-cap, which no export family computes (so no arch)."""
    modern = block_settings("modern", 192)
    assert modern["arch"] == "qwen3"
    assert block_settings("modern+softcap", 192) == {**{k: v for k, v in modern.items() if k != "arch"},
                                                     "logit_softcap": 15.0}
    with pytest.raises(ConfigError, match="choose one"):
        block_settings("modern+relu2", 192)


@pytest.mark.slow  # trains and exports a 400-character model
def test_a_char_vocabulary_past_its_padding_exports_to_gguf(workdir):
    """A char vocabulary's byte pieces outnumber its padding rows (a 66k-character one stopped with 'no spare
    rows'): the file gets a row for every token, and reads back with the same ids and logits."""
    pytest.importorskip("gguf")
    from bladegpt.sources import load_pretrained

    han = "".join(chr(0x4E00 + 7 * i) for i in range(300))  # 300 three-byte characters: 300+ pieces, 64 rows spare
    (workdir / "tales.txt").write_text((corpus_text(100) + han + "\n") * 2)
    prepare([workdir / "tales.txt"], tokenizer="char")
    run = train(None, None, {**TINY_MODEL, "block_size": 32, "block": "modern"}, {**TINY_TRAIN, "steps": 2},
                compile="off").run_dir
    model, tokenizer, _ = load_checkpoint(run / "best.safetensors")
    back = load_pretrained(str(export(workdir / "voice.gguf", run, format="gguf", dtype="f32")))
    assert back.model.config.vocab_size > model.config.vocab_size  # grown past the padding
    text = "The hunter " + han[:20]
    ids = tokenizer.encode(text)
    assert back.tokenizer.encode(text) == ids
    n = model.config.vocab_size
    torch.testing.assert_close(logits_of(back.model, ids)[..., :n], logits_of(model, ids), atol=1e-5, rtol=0)
