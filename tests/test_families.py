"""The Llama family as configuration (issue #22): tiny random Llama, Qwen2 and Qwen3 models built by
transformers compute the same logits in BladeGPT, read from a Hugging Face folder and from a GGUF file
written as llama.cpp writes it."""

import pytest
import torch

from bladegpt.config import ModelConfig
from bladegpt.generate.engine import generate, generate_reference
from bladegpt.model import GPT, rope_frequencies
from bladegpt.sources import hf_model
from bladegpt.errors import SourceError
from bladegpt.sources.gguf import gguf_model, unpermute
from tests.families import FAMILIES, LLAMA3, logits_of, permute, tiny_family, write_gguf

transformers = pytest.importorskip("transformers")
IDS = [5, 17, 250, 3, 99, 100, 7, 7, 7, 42, 300, 1, 0, 64, 128, 255] * 3  # 48 positions


@pytest.mark.parametrize("family", FAMILIES)
def test_a_hf_folder_computes_what_transformers_computes(tmp_path, family):
    source = tiny_family(family)
    source.save_pretrained(tmp_path)
    model, _, _ = hf_model(tmp_path)
    assert model.config.vocab_size == 320 and model.config.positions == "rope" and model.config.norm == "rmsnorm"
    torch.testing.assert_close(logits_of(model, IDS), logits_of(source, IDS), atol=1e-4, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dtype", ["f32", "q8_0"])
def test_a_gguf_file_computes_what_transformers_computes(tmp_path, family, dtype):
    source = tiny_family(family)
    write_gguf(source, tmp_path / "m.gguf", dtype)
    model, meta, _ = gguf_model(tmp_path / "m.gguf")
    cfg = source.config
    assert (model.config.tie_embeddings, model.config.kv_heads, model.config.head_dim) == (
        cfg.tie_word_embeddings, cfg.num_key_value_heads, getattr(cfg, "head_dim", None) or 16)
    # Q8_0 rounds each weight to 8 bits in blocks of 32: the logits drift by about 1e-3 on this tiny model.
    tolerance = 1e-4 if dtype == "f32" else 2e-2
    torch.testing.assert_close(logits_of(model, IDS), logits_of(source, IDS), atol=tolerance, rtol=0)


def test_llama_rope_rows_round_trip_through_llama_cpp_permutation():
    w = torch.randn(3 * 64, 20)  # SmolLM2's k: 3 kv heads of 64
    assert torch.equal(unpermute(torch.from_numpy(permute(w.numpy(), 3)), 3), w)
    assert not torch.equal(unpermute(torch.from_numpy(permute(w.numpy(), 3)), 6), w)  # the heads must be k's


def test_llama3_frequencies_are_transformers():
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    config = transformers.LlamaConfig(hidden_size=2048, num_attention_heads=32, head_dim=64,
                                      rope_parameters={**LLAMA3, "rope_theta": 500000.0})
    theirs, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    ours = rope_frequencies(ModelConfig(n_embd=2048, n_head=32, positions="rope", rope_theta=500000.0,
                                        rope_scaling=LLAMA3))
    torch.testing.assert_close(ours, theirs.float())
    plain = rope_frequencies(ModelConfig(n_embd=2048, n_head=32, positions="rope", rope_theta=500000.0))
    assert (ours != plain).sum() > 10  # the scaling changes most of the pairs


@pytest.mark.parametrize("family", ["llama-gqa-tied", "qwen3-qknorm"])
def test_greedy_generation_with_the_cache_equals_the_reference(tmp_path, family):
    tiny_family(family).save_pretrained(tmp_path)
    model, _, _ = hf_model(tmp_path)
    model.config.block_size = 32  # the window slides within 40 new tokens
    model.reset_buffers()
    fast = list(generate(model, IDS[:10], 40, 320, temperature=0))
    assert fast == generate_reference(model, IDS[:10], 40, 320, temperature=0)


def test_manual_attention_with_grouped_heads_equals_sdpa(tmp_path):
    tiny_family("llama-gqa-tied").save_pretrained(tmp_path)
    model, _, _ = hf_model(tmp_path)
    sdpa = logits_of(model, IDS)
    model.set_attention("manual")
    torch.testing.assert_close(logits_of(model, IDS), sdpa, atol=1e-5, rtol=0)


def test_a_llama_block_from_scratch_trains(tmp_path):
    config = ModelConfig(vocab_size=64, block_size=16, n_layer=2, n_head=4, n_embd=32, arch="llama", norm="rmsnorm",
                         positions="rope", activation="swiglu", n_kv_head=2, intermediate_size=48)
    torch.manual_seed(0)
    model = GPT(config)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    x = torch.randint(0, 64, (4, 16))
    losses = []
    for _ in range(20):
        _, loss = model(x, x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 1.0  # nats: it learns the batch


@pytest.mark.parametrize("change, message", [
    ({"model_type": "mixtral"}, "holds a mixtral model"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "'yarn' RoPE scaling"),
    ({"hidden_act": "gelu"}, "the activation 'gelu'"),
    ({"num_local_experts": 8}, "mixture of experts"),
])
def test_what_is_not_computed_is_one_line(tmp_path, change, message):
    import json

    tiny_family("llama-gqa-tied").save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg.pop("rope_parameters", None) if "rope_scaling" in change else None
    (tmp_path / "config.json").write_text(json.dumps({**cfg, **change}))
    with pytest.raises(SourceError, match=message) as e:
        hf_model(tmp_path)
    assert "\n" not in str(e.value)


def test_a_sliding_window_bounds_the_context(tmp_path):
    import json

    tiny_family("llama-gqa-tied").save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "model_type": "mistral", "sliding_window": 32}))
    model, family, _ = hf_model(tmp_path)
    assert family == "Mistral" and model.config.block_size == 32
