"""The Llama family back out (issue #24): tiny random Llama, Qwen2 and Qwen3 models, trained by nobody,
exported to Hugging Face folders and GGUF files; transformers loads both with the same logits, the
tokenizer reads text as BladeGPT does, and BladeGPT reads its own GGUF back exactly."""

import pytest
import torch

from bladegpt.checkpoint import save_checkpoint
from bladegpt.export import export
from bladegpt.tokenizer.hf import HFTokenizer
from bladegpt.sources import load_pretrained
from tests.families import FAMILIES, logits_of, tiny_family

transformers = pytest.importorskip("transformers")
from tests.test_hf_tokenizer import build_folder  # noqa: E402  (needs transformers)

TEXT = "The hunter counted 1234 coins, twice.\n\n  Then: <|im_start|>user said café 😀"


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return HFTokenizer.from_folder(build_folder(tmp_path_factory.mktemp("tok") / "smollm", "smollm"))


def checkpoint(family, tokenizer, folder):
    """A BladeGPT checkpoint of the family's tiny model with a SmolLM2-like tokenizer."""
    source = tiny_family(family, vocab=(tokenizer.vocab_size + 63) // 64 * 64)
    source.save_pretrained(folder / "source")
    from bladegpt.sources import hf_model

    model, _, _ = hf_model(folder / "source")
    save_checkpoint(folder / "model.safetensors", model, tokenizer, step=0)
    return model


@pytest.mark.parametrize("family", FAMILIES)
def test_hf_export_loads_in_transformers_with_equal_logits(tmp_path, tokenizer, family):
    model = checkpoint(family, tokenizer, tmp_path)
    out = export(tmp_path / "hf", tmp_path / "model.safetensors", format="hf")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ids = tokenizer.encode(TEXT)
    torch.testing.assert_close(logits_of(theirs, ids), logits_of(model, ids), atol=1e-4, rtol=0)
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    assert hf_tok.encode(TEXT, add_special_tokens=False) == ids
    assert hf_tok.eos_token_id == tokenizer.eos_id and hf_tok.chat_template == tokenizer.chat_template


@pytest.mark.parametrize("family", FAMILIES)
# Drift measured on these models (max |logit| difference): f16 2.7e-4, bf16 2.7e-3, q8_0 7.3e-3, q4_1 0.10,
# q4_0 0.14; f32 is exact.
@pytest.mark.parametrize("dtype, tolerance", [("f32", 1e-4), ("f16", 2e-3), ("bf16", 1e-2), ("q8_0", 3e-2),
                                              ("q4_1", 0.4), ("q4_0", 0.5)])
def test_gguf_export_loads_in_transformers_and_comes_back(tmp_path, tokenizer, family, dtype, tolerance):
    import gguf

    model = checkpoint(family, tokenizer, tmp_path)
    warned = []
    out = export(tmp_path / "voice.gguf", tmp_path / "model.safetensors", format="gguf", dtype=dtype, warn=warned.append)
    assert any("much of what it learnt" in line for line in warned) == dtype.startswith("q4")
    fields = gguf.GGUFReader(out).fields
    arch = model.config.arch
    assert fields["general.architecture"].contents() == arch
    assert fields[f"{arch}.attention.head_count_kv"].contents() == model.config.kv_heads
    assert fields["tokenizer.ggml.pre"].contents() == "smollm"
    assert fields["tokenizer.ggml.eos_token_id"].contents() == tokenizer.eos_id
    assert "<|im_start|>" in fields["tokenizer.chat_template"].contents()
    names = {t.name for t in gguf.GGUFReader(out).tensors}
    assert ("output.weight" in names) == (not model.config.tie_embeddings)
    ids = tokenizer.encode(TEXT)
    assert fields[f"{arch}.attention.key_length"].contents() == model.config.head_dim
    # transformers reads a qwen3 GGUF's head size from Qwen3Config's default (128), not from the file's
    # key_length (shared/research/llama-family.md §7.10): this tiny model's 32 would not load there.
    if arch != "qwen3":
        theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="voice.gguf", dtype=torch.float32)
        torch.testing.assert_close(logits_of(theirs.eval(), ids), logits_of(model, ids), atol=tolerance, rtol=0)
    back = load_pretrained(str(out))
    assert back.tokenizer.encode(TEXT) == ids
    torch.testing.assert_close(logits_of(back.model, ids), logits_of(model, ids), atol=1e-5 if dtype == "f32" else tolerance,
                               rtol=0)


def test_llama3_scaling_travels_as_rope_freqs(tmp_path, tokenizer):
    model = checkpoint("llama-mha-untied-llama3", tokenizer, tmp_path)
    export(tmp_path / "voice.gguf", tmp_path / "model.safetensors", format="gguf", dtype="f32")
    back = load_pretrained(str(tmp_path / "voice.gguf")).model
    assert back.config.rope_scaling == model.config.rope_scaling
    hf = export(tmp_path / "hf", tmp_path / "model.safetensors", format="hf")
    import json

    assert json.loads((hf / "config.json").read_text())["rope_scaling"]["rope_type"] == "llama3"


def test_added_tokens_flags_gguf_cannot_hold_are_named_in_one_line(tmp_path):
    """GGUF holds a token type and no lstrip/rstrip/single_word/normalized (llama.cpp#15842): the ids llama.cpp gives
    the text around such a token differ, and export says which tokens in one line instead of changing them silently."""
    import json

    folder = build_folder(tmp_path / "tok", "smollm")
    plain = HFTokenizer.from_folder(folder)
    spec = json.loads((folder / "tokenizer.json").read_text())
    for token in spec["added_tokens"]:
        token.update(lstrip=token["content"] == "<|im_start|>", rstrip=token["content"] == "<|im_end|>")
    (folder / "tokenizer.json").write_text(json.dumps(spec))
    flagged = HFTokenizer.from_folder(folder)
    assert flagged.encode(" <|im_start|>hi<|im_end|> x") != plain.encode(" <|im_start|>hi<|im_end|> x")  # it matters
    for n, (tok, expected) in enumerate(((plain, []), (flagged, ["<|im_start|> (lstrip)", "<|im_end|> (rstrip)"]))):
        checkpoint("llama-gqa-tied", tok, tmp_path / str(n))
        said = []
        export(tmp_path / f"{n}.gguf", tmp_path / str(n) / "model.safetensors", format="gguf", warn=said.append)
        assert [line for line in said if "GGUF keeps no" in line] == ([] if not expected else [
            "GGUF keeps no lstrip, rstrip, single_word or normalized flag of an added token, so llama.cpp encodes the "
            f"text around 2 of them to other ids than BladeGPT does: {'; '.join(expected)}."])
