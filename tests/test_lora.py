"""LoRA (issue #25): adapters on a frozen tiny Llama-family model, trained, resumed, merged and exported as peft
writes them; every misuse one line."""

import json
import shutil

import pytest
import torch
from safetensors import safe_open

from bladegpt.checkpoint import read_adapters
from bladegpt.sources import load_bladegpt, load_pretrained
from bladegpt.train import train
from bladegpt.lora import LoraConfig, attach, load_adapters, merge
from bladegpt.data.prepare import prepare
from tests.families import logits_of, tiny_family
from tests.safety import assert_one_line_error, invoke
from tests.test_trainer import CtrlCAt, assert_resume_follows

transformers = pytest.importorskip("transformers")
from tests.test_hf_tokenizer import build_folder  # noqa: E402  (needs transformers)

TINY = dict(steps=6, batch_size=4, eval_interval=3, eval_iters=2, sample_tokens=0, log_interval=1)
EXACT = dict(device="cpu", precision="fp32", compile="off")
IDS = [5, 17, 42, 7, 99, 3, 250, 11]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny random SmolLM2-like model in a Hugging Face folder: its tokenizer and its weights."""
    folder = build_folder(tmp_path_factory.mktemp("lora") / "tiny-smollm", "smollm")
    vocab = json.loads((folder / "tokenizer.json").read_text())
    size = max(vocab["model"]["vocab"].values()) + 1
    tiny_family("llama-gqa-tied", vocab=(size + 63) // 64 * 64).save_pretrained(folder)
    return folder


def lora_run(base, corpus, reporter=None, **lora):
    if not (corpus.parent / "datasets").exists():
        prepare([corpus], tokenizer_from=str(base))
    adapters = LoraConfig(**{"base_dtype": "fp32", **lora})
    return train(None, None, {"block_size": 16}, TINY, init_from=str(base), lora=adapters, reporter=reporter, **EXACT)


def test_zero_b_is_the_base_and_only_adapters_train(base, corpus):
    source = load_pretrained(str(base)).model
    adapted = attach(load_pretrained(str(base)).model, LoraConfig(base_dtype="fp32"))
    assert torch.equal(logits_of(adapted, IDS), logits_of(source, IDS))  # B = 0: exactly the base
    in_bf16 = attach(load_pretrained(str(base)).model, LoraConfig())
    torch.testing.assert_close(logits_of(in_bf16, IDS), logits_of(source, IDS), atol=0.05, rtol=0)

    result = lora_run(base, corpus)
    trained = dict(result.model.named_parameters())
    for name, p in source.named_parameters():
        assert torch.equal(trained[name], p), name  # the base never moves
    assert all(trained[n].abs().max() > 0 for n in trained if n.endswith("lora_B"))
    assert {n for n, p in trained.items() if p.requires_grad} == {n for n in trained if ".lora_" in n}


def test_checkpoints_hold_adapters_merge_exactly_and_sample(base, corpus, workdir):
    result = lora_run(base, corpus, dropout=0.0)
    last = result.run_dir / "last.safetensors"
    with safe_open(str(last), "pt") as f:
        names = set(f.keys())
        meta = json.loads(f.metadata()["lora"])
    assert names and all(".lora_" in n for n in names)  # adapters only, not the base
    assert meta["base"] == str(base.resolve()) and meta["base_fingerprint"]
    result.model.eval()
    unmerged = logits_of(result.model, IDS)
    merged, _, _ = load_bladegpt(last)  # the base from its folder, the adapters merged in
    torch.testing.assert_close(logits_of(merged, IDS), unmerged, atol=1e-5, rtol=0)
    assert not any(".lora_" in n for n in merged.state_dict())
    # the run's attention may be "manual" where auto timed it faster, the loaded model's is SDPA
    torch.testing.assert_close(logits_of(merge(result.model), IDS), logits_of(merged, IDS), atol=1e-5, rtol=0)

    sampled = invoke("sample", "The hunter", "--max-new-tokens", "6", "--seed", "1")
    assert sampled.exit_code == 0 and "The hunter" in sampled.output, sampled.output
    listing = invoke("runs", "--json")
    assert listing.exit_code == 0 and "LoRA r16" in listing.output, listing.output


def test_resume_follows_an_uninterrupted_run(base, corpus):
    whole = lora_run(base, corpus)  # dropout 0.05 on the adapters: the RNG state matters
    cut = lora_run(base, corpus, reporter=CtrlCAt(3))
    assert cut.interrupted and cut.step == 3
    resumed = train(resume=True, run=cut.run_dir, compile="off")
    assert resumed.step == 6
    assert_resume_follows(whole, resumed, 3)


def test_merged_exports_and_the_peft_export_load_in_transformers(base, corpus, workdir):
    peft = pytest.importorskip("peft")
    result = lora_run(base, corpus, dropout=0.0)
    merged, _, _ = load_bladegpt(result.run_dir / "best.safetensors")
    ours = logits_of(merged, IDS)
    assert invoke("export", workdir / "merged", "--format", "hf").exit_code == 0
    hf = transformers.AutoModelForCausalLM.from_pretrained(workdir / "merged")
    torch.testing.assert_close(logits_of(hf, IDS), ours, atol=1e-4, rtol=0)

    exported = invoke("export", workdir / "adapter", "--format", "peft")
    assert exported.exit_code == 0, exported.output
    config = json.loads((workdir / "adapter" / "adapter_config.json").read_text())
    assert config["target_modules"] == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
    with safe_open(str(workdir / "adapter" / "adapter_model.safetensors"), "pt") as f:
        assert "base_model.model.model.layers.1.self_attn.k_proj.lora_B.weight" in f.keys()
    on_base = peft.PeftModel.from_pretrained(transformers.AutoModelForCausalLM.from_pretrained(base),
                                             workdir / "adapter").eval()
    torch.testing.assert_close(logits_of(on_base, IDS), ours, atol=1e-4, rtol=0)
    assert_one_line_error(invoke("export", workdir / "adapter", "--format", "peft"), "--force")


def test_a_missing_or_changed_base_is_one_line(base, corpus, workdir):
    moved = workdir / "base-copy"
    shutil.copytree(base, moved)
    result = lora_run(moved, corpus)
    shutil.move(moved, workdir / "elsewhere")
    for command in (("sample", "Hi", "--max-new-tokens", "2"), ("export", workdir / "x", "--format", "gguf"),
                    ("train", "--resume")):
        assert_one_line_error(invoke(*command), "LoRA adapters for the base model", "cannot be loaded")
    assert invoke("export", workdir / "adapter", "--format", "peft").exit_code == 0  # the adapters need no base
    changed = tiny_family("llama-gqa-tied", seed=1, vocab=load_pretrained(str(base)).model.config.vocab_size)
    shutil.copytree(base, moved)
    changed.save_pretrained(moved)
    assert_one_line_error(invoke("sample", "Hi", "--checkpoint", result.run_dir), "weights have changed")


def test_lora_mistakes_are_one_line(base, corpus, workdir):
    assert invoke("prepare", corpus, "--tokenizer-from", base).exit_code == 0
    assert_one_line_error(invoke("train", "--lora"), "add --init-from")
    assert_one_line_error(invoke("train", "--init-from", base, "--lora-rank", "8"), "--lora-rank", "add --lora")
    for flag, value, says in (("--lora-rank", "0", "at least 1"), ("--lora-alpha", "-1", "positive"),
                              ("--lora-dropout", "1", "[0, 1)"), ("--lora-targets", "attn.q", "comma-separated"),
                              ("--lora-base-dtype", "f16", "fp32, bf16")):
        assert_one_line_error(invoke("train", "--init-from", base, "--lora", flag, value), flag, says)
    assert not (workdir / "runs").exists() or not list((workdir / "runs").iterdir())
    run = invoke("train", "--init-from", base, "--block-size", "16", "--steps", "2", "--eval-interval", "2",
                 "--sample-tokens", "0", "--compile", "off")  # a whole fine-tune
    assert run.exit_code == 0, run.output
    assert_one_line_error(invoke("export", workdir / "adapter", "--format", "peft"), "whole model", "--format hf")
    assert_one_line_error(invoke("train", "--resume", "--lora"), "drop --lora")


def test_a_bf16_base_is_loaded_in_bf16_and_found_again(base, corpus, workdir):
    result = lora_run(base, corpus, base_dtype="bf16", dropout=0.0)
    block = result.model.transformer.h[0]
    assert block.mlp.c_fc.weight.dtype == torch.bfloat16 and block.mlp.c_fc.lora_A.dtype == torch.float32
    assert result.model.transformer.wte.weight.dtype == torch.float32
    last = result.run_dir / "last.safetensors"
    merged, _, _ = load_bladegpt(last)  # its fingerprint found again, the base read in fp32 for the merge
    on_fp32 = attach(load_pretrained(str(base)).model, LoraConfig(base_dtype="fp32", dropout=0.0))
    load_adapters(on_fp32, read_adapters(last)[3])
    torch.testing.assert_close(logits_of(merged, IDS), logits_of(merge(on_fp32), IDS), atol=1e-5, rtol=0)
    assert merged.transformer.h[0].mlp.c_fc.weight.dtype == torch.float32


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_merged_export_is_peft_on_the_base_at_its_own_precision(base, corpus, workdir, dtype):
    """Training keeps a bf16 copy of the base; the merge reads the source again (measured 0.155 apart on
    SmolLM2-135M before): an fp32 or bf16 base file gives what peft computes on it, in fp32."""
    peft = pytest.importorskip("peft")
    source = workdir / "base"
    shutil.copytree(base, source)
    transformers.AutoModelForCausalLM.from_pretrained(base, torch_dtype=dtype).save_pretrained(source)
    result = lora_run(source, corpus, base_dtype="bf16", dropout=0.0)
    for target, fmt in ((workdir / "merged", "hf"), (workdir / "adapter", "peft")):
        done = invoke("export", target, "--format", fmt, "--checkpoint", result.run_dir / "last.safetensors")
        assert done.exit_code == 0, done.output
    merged = transformers.AutoModelForCausalLM.from_pretrained(workdir / "merged", torch_dtype=torch.float32)
    on_base = peft.PeftModel.from_pretrained(
        transformers.AutoModelForCausalLM.from_pretrained(source, torch_dtype=torch.float32), workdir / "adapter")
    torch.testing.assert_close(logits_of(merged, IDS), logits_of(on_base.eval(), IDS), atol=1e-4, rtol=0)
