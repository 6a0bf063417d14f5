"""Gemma 3 back out (issue #40): tiny random Gemma 3 models exported to Hugging Face folders and GGUF files load in
transformers with the same logits and come back into BladeGPT as they were; LoRA trains on a Gemma 3 base and its
adapters, exported for peft by transformers' module names, compute on transformers' model what BladeGPT's do."""

import json

import pytest
import torch
from safetensors import safe_open

from bladegpt.checkpoint import save_checkpoint
from bladegpt.export import export
from bladegpt.lora import LoraConfig
from bladegpt.sources import hf_model, load_bladegpt, load_pretrained
from bladegpt.tokenizer.hf import HFTokenizer
from bladegpt.train import train
from bladegpt.data.prepare import prepare
from bladegpt.train.recipes import FINETUNE_LR_BY_ARCH
from tests.families import logits_of, tiny_family
from tests.safety import assert_one_line_error, invoke

transformers = pytest.importorskip("transformers")
from tests.test_hf_tokenizer import build_folder  # noqa: E402  (needs transformers)

TEXT = "The hunter counted 1234 coins, twice.\n\n  Then: <|im_start|>user said café 😀, and walked on alone."


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return HFTokenizer.from_folder(build_folder(tmp_path_factory.mktemp("tok") / "smollm", "smollm"))


def checkpoint(family, tokenizer, folder):
    """A BladeGPT checkpoint of the family's tiny model with a SmolLM2-like tokenizer."""
    tiny_family(family, vocab=(tokenizer.vocab_size + 63) // 64 * 64).save_pretrained(folder / "source")
    model, _, _ = hf_model(folder / "source")
    save_checkpoint(folder / "model.safetensors", model, tokenizer, step=0)
    return model


@pytest.mark.parametrize("family", ["gemma3", "gemma3-softcap-linear"])
def test_hf_export_loads_in_transformers_and_comes_back(tmp_path, tokenizer, family):
    model = checkpoint(family, tokenizer, tmp_path)
    ids = tokenizer.encode(TEXT)
    assert len(ids) > 2 * model.config.sliding_window
    out = export(tmp_path / "hf", tmp_path / "model.safetensors", format="hf")
    config = json.loads((out / "config.json").read_text())
    assert (config["architectures"], config["model_type"]) == (["Gemma3ForCausalLM"], "gemma3_text")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    torch.testing.assert_close(logits_of(theirs, ids), logits_of(model, ids), atol=1e-4, rtol=0)
    assert transformers.AutoTokenizer.from_pretrained(out).encode(TEXT, add_special_tokens=False) == ids
    back, _, _ = hf_model(out)
    assert back.config == model.config
    # Gemma's 1 + w goes out as w and comes back as 1 + w: exact in fp32 wherever 1 + w >= 0.5
    torch.testing.assert_close(logits_of(back, ids), logits_of(model, ids), atol=1e-6, rtol=0)


@pytest.mark.parametrize("dtype, tolerance", [("f32", 1e-4), ("q8_0", 3e-2)])
def test_gguf_export_loads_in_transformers_and_comes_back_exactly(tmp_path, tokenizer, dtype, tolerance):
    import gguf

    model = checkpoint("gemma3-llamacpp", tokenizer, tmp_path)
    out = export(tmp_path / "voice.gguf", tmp_path / "model.safetensors", format="gguf", dtype=dtype)
    reader = gguf.GGUFReader(out)
    assert reader.fields["general.architecture"].contents() == "gemma3"
    assert reader.fields["gemma3.attention.sliding_window"].contents() == 8
    names = {t.name for t in reader.tensors}
    assert {"blk.0.post_attention_norm.weight", "blk.0.post_ffw_norm.weight", "blk.0.ffn_norm.weight"} <= names
    norm = next(t for t in reader.tensors if t.name == "blk.0.ffn_norm.weight")
    torch.testing.assert_close(torch.from_numpy(norm.data.copy()), model.transformer.h[0].ln_2.weight.detach())  # 1 + w
    ids = tokenizer.encode(TEXT)
    # transformers' GGUF reader leaves query_pre_attn_scalar at Gemma3TextConfig's 256 (the real models' head_dim);
    # llama.cpp scales by head_dim, 32 here
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="voice.gguf", dtype=torch.float32,
                                                               query_pre_attn_scalar=32)
    torch.testing.assert_close(logits_of(theirs.eval(), ids), logits_of(model, ids), atol=tolerance, rtol=0)
    back = load_pretrained(str(out))
    assert back.model.config.sliding_layers == model.config.sliding_layers
    if dtype == "f32":
        assert torch.equal(logits_of(back.model, ids), logits_of(model, ids))


def test_a_gemma3_llama_cpp_would_compute_otherwise_is_not_written_to_gguf(tmp_path, tokenizer, workdir):
    checkpoint("gemma3", tokenizer, tmp_path)  # sliding layers 3:1 where llama.cpp fixes 5:1, and its own query scale
    result = invoke("export", tmp_path / "voice.gguf", "--checkpoint", tmp_path / "model.safetensors", "--format", "gguf")
    assert_one_line_error(result, "llama.cpp's gemma3", "--format hf")
    assert not (tmp_path / "voice.gguf").exists()


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny random Gemma 3 in a Hugging Face folder, with a SmolLM2-like tokenizer."""
    folder = build_folder(tmp_path_factory.mktemp("lora") / "tiny-gemma3", "smollm")
    size = max(json.loads((folder / "tokenizer.json").read_text())["model"]["vocab"].values()) + 1
    tiny_family("gemma3", vocab=(size + 63) // 64 * 64).save_pretrained(folder)
    return folder


def test_lora_on_gemma3_exports_for_peft_and_merged(base, corpus, workdir):
    peft = pytest.importorskip("peft")
    prepare([corpus], tokenizer_from=str(base))
    result = train(None, None, {"block_size": 24}, dict(steps=4, batch_size=4, eval_interval=2, eval_iters=1,
                                                         sample_tokens=0, log_interval=1),
                   init_from=str(base), lora=LoraConfig(base_dtype="fp32", dropout=0.0), device="cpu",
                   precision="fp32", compile="off")
    ids = [5, 17, 42, 7, 99, 3, 250, 11] * 3  # past the window of 8
    merged, _, _ = load_bladegpt(result.run_dir / "best.safetensors")
    ours = logits_of(merged, ids)
    assert (ours - logits_of(load_pretrained(str(base)).model, ids)).abs().max() > 1e-3  # the adapters learnt
    assert invoke("export", workdir / "adapter", "--format", "peft").exit_code == 0
    config = json.loads((workdir / "adapter" / "adapter_config.json").read_text())
    assert config["target_modules"] == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
    with safe_open(str(workdir / "adapter" / "adapter_model.safetensors"), "pt") as f:
        assert "base_model.model.model.layers.5.mlp.gate_proj.lora_A.weight" in f.keys()
    on_base = peft.PeftModel.from_pretrained(transformers.AutoModelForCausalLM.from_pretrained(base),
                                             workdir / "adapter").eval()
    torch.testing.assert_close(logits_of(on_base, ids), ours, atol=1e-4, rtol=0)
    assert invoke("export", workdir / "merged", "--format", "hf").exit_code == 0
    hf = transformers.AutoModelForCausalLM.from_pretrained(workdir / "merged")
    torch.testing.assert_close(logits_of(hf, ids), ours, atol=1e-4, rtol=0)


def test_a_full_fine_tune_of_gemma3_trains_samples_and_exports(base, corpus, workdir):
    prepare([corpus], tokenizer_from=str(base))
    result = train(None, None, {"block_size": 24}, dict(steps=4, batch_size=4, eval_interval=2, eval_iters=1,
                                                         sample_tokens=0, log_interval=1),
                   init_from=str(base), device="cpu", precision="fp32", compile="off")
    assert result.model.config.arch == "gemma3" and result.model.config.sliding_layers == (0, 1, 3, 4)
    recorded = json.loads((result.run_dir / "run.json").read_text())["train"]["lr"]  # Gemma's own measured lr
    assert recorded == pytest.approx(FINETUNE_LR_BY_ARCH["gemma3"][0] * 640 / result.model.config.n_embd)
    best, _, _ = load_bladegpt(result.run_dir / "best.safetensors")
    ids = [5, 17, 42, 7, 99, 3, 250, 11] * 3
    assert (logits_of(best, ids) - logits_of(load_pretrained(str(base)).model, ids)).abs().max() > 1e-3
    for precision in ("fp32", "int8"):
        sampled = invoke("sample", "The hunter", "--max-new-tokens", "12", "--seed", "1", "--precision", precision)
        assert sampled.exit_code == 0 and "The hunter" in sampled.output, sampled.output
    assert invoke("export", workdir / "hf", "--format", "hf").exit_code == 0
    theirs = transformers.AutoModelForCausalLM.from_pretrained(workdir / "hf")
    torch.testing.assert_close(logits_of(theirs, ids), logits_of(best, ids), atol=1e-4, rtol=0)
