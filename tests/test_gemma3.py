"""Gemma 3 as configuration (issue #40): tiny random Gemma 3 models built by transformers compute the same logits
in BladeGPT from a Hugging Face folder and from a GGUF file written as llama.cpp writes it, past the sliding
window; every cache (generation's, the compiled step's static one, the server's rows) keeps the window."""

import dataclasses
import json

import pytest
import torch

from bladegpt.errors import SourceError
from bladegpt.generate.engine import KVCache, StaticKVCache, generate, generate_batch, generate_reference
from bladegpt.sources import hf_model
from bladegpt.sources.gguf import gguf_model
from bladegpt.sources.base import build_model
from tests.families import GEMMA3_FAMILIES, logits_of, tiny_family, write_gguf

transformers = pytest.importorskip("transformers")
IDS = [5, 17, 250, 3, 99, 100, 7, 7, 7, 42, 300, 1, 0, 64, 128, 255] * 3  # 48 positions, the window is 8


@pytest.fixture
def gemma(tmp_path):
    tiny_family("gemma3").save_pretrained(tmp_path)
    return hf_model(tmp_path)[0]


@pytest.mark.parametrize("family", sorted(GEMMA3_FAMILIES))
def test_a_hf_folder_computes_what_transformers_computes(tmp_path, family):
    source = tiny_family(family)
    source.save_pretrained(tmp_path)
    model, name, _ = hf_model(tmp_path)
    assert name == "Gemma 3" and model.config.arch == "gemma3" and model.config.sliding_window == 8
    torch.testing.assert_close(logits_of(model, IDS), logits_of(source, IDS), atol=1e-4, rtol=0)
    model.set_attention("manual")
    torch.testing.assert_close(logits_of(model, IDS), logits_of(source, IDS), atol=1e-4, rtol=0)


@pytest.mark.parametrize("family", sorted(GEMMA3_FAMILIES))
def test_chunked_attention_trains_what_transformers_computes(tmp_path, family):
    """Its sliding layers through the chunked kernel's window, its global ones causal: the logits of a window
    longer than the sliding one (8), and a training step's gradients equal to SDPA's (fp64)."""
    source = tiny_family(family)
    source.save_pretrained(tmp_path)
    model = hf_model(tmp_path)[0]
    model.set_attention("chunked")
    torch.testing.assert_close(logits_of(model, IDS), logits_of(source, IDS), atol=1e-4, rtol=0)
    model = model.double().train()
    idx = torch.tensor([IDS])
    grads = {}
    for impl in ("sdpa", "chunked"):
        model.set_attention(impl)
        model.zero_grad()
        model(idx, idx)[1].backward()
        grads[impl] = [p.grad.clone() for p in model.parameters()]
    for a, b in zip(grads["sdpa"], grads["chunked"]):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-8)


def test_the_window_the_local_base_and_the_norms_each_change_the_logits(gemma):
    """The comparison above would not pass with any of them dropped: each is seen in the logits."""
    ids = IDS[:20]
    theirs = logits_of(gemma, ids)
    state = gemma.state_dict()
    for change in (dict(sliding_layers=()), dict(rope_local_theta=None), dict(query_pre_attn_scalar=None),
                   dict(scale_embeddings=False)):
        other = build_model(dataclasses.replace(gemma.config, **change), state, "test")
        assert (logits_of(other, ids) - theirs).abs().max() > 1e-2, change
    # Gemma's RMSNorm scales by 1 + w: BladeGPT holds 1 + w, as llama.cpp's GGUF does
    w = tiny_family("gemma3").model.layers[0].pre_feedforward_layernorm.weight
    torch.testing.assert_close(state["transformer.h.0.ln_2.weight"], 1 + w.detach())


@pytest.mark.parametrize("dtype", ["f32", "q8_0"])
def test_a_gguf_file_computes_what_transformers_computes(tmp_path, dtype):
    source = tiny_family("gemma3-llamacpp")
    write_gguf(source, tmp_path / "m.gguf", dtype)
    model, _, _ = gguf_model(tmp_path / "m.gguf")
    cfg = model.config
    assert (cfg.sliding_layers, cfg.rope_local_theta, cfg.query_pre_attn_scalar) == ((0, 1, 2, 3, 4), 10000.0, 32.0)
    tolerance = 1e-4 if dtype == "f32" else 2e-2  # Q8_0 rounds each weight to 8 bits in blocks of 32
    torch.testing.assert_close(logits_of(model, IDS), logits_of(source, IDS), atol=tolerance, rtol=0)


@pytest.mark.parametrize("static", [False, True], ids=["dynamic", "static"])
def test_decoding_a_token_at_a_time_equals_the_full_forward_beyond_the_window(gemma, static):
    cache = StaticKVCache(6, 40, 1) if static else KVCache(6, 40)
    full = logits_of(gemma, IDS[:36])[0]
    steps = []
    with torch.no_grad():
        for token in IDS[:36]:
            cache.seat(1, torch.device("cpu"))
            steps.append(gemma(torch.tensor([[token]]), kv_cache=cache)[0][0, -1])
            cache.advance(1)
    torch.testing.assert_close(torch.stack(steps), full, atol=1e-5, rtol=0)


def test_generation_with_either_cache_equals_the_reference_as_the_context_slides(gemma):
    gemma.config.block_size = 32  # the context slides within 40 new tokens, and is 4 windows long
    gemma.reset_buffers()
    fast = list(generate(gemma, IDS[:10], 40, 320, temperature=0))
    assert fast == generate_reference(gemma, IDS[:10], 40, 320, temperature=0)

    def run(decode):
        gens = [torch.Generator().manual_seed(i) for i in range(2)]
        return torch.stack(list(generate_batch(gemma, IDS[:10], 40, 320, gens, temperature=0.8, decode=decode))).tolist()

    assert run(gemma) == run(None)  # a static cache stepped eagerly: its masks are the compiled step's


def test_the_servers_rows_keep_the_window(gemma):
    from bladegpt.generate.settings import SampleSettings
    from tests.test_batcher import run_steps
    from bladegpt.serve.batcher import Batcher

    batcher = Batcher(gemma, 320, stop_ids=(), max_rows=4, max_waiting=4)
    asks = {0: (IDS[:3], SampleSettings(max_new_tokens=30, seed=1)),
            2: (IDS[:20], SampleSettings(max_new_tokens=20, seed=2, temperature=0))}
    out: dict[int, list] = {}
    run_steps(batcher, asks, out, 40)
    for prompt, settings in asks.values():
        alone = list(generate(gemma, prompt, settings.max_new_tokens, 320,
                              torch.Generator().manual_seed(settings.seed), **settings.knobs()))
        assert out[settings.seed] == [*alone, "length"]


@pytest.mark.slow
def test_the_compiled_static_cache_step_keeps_the_window(gemma):
    from bladegpt.generate.engine import compile_decode

    gemma.config.block_size = 24
    gemma.reset_buffers()

    def run(decode):
        gens = [torch.Generator().manual_seed(i) for i in range(2)]
        return torch.stack(list(generate_batch(gemma, IDS[:10], 30, 320, gens, temperature=0.8, decode=decode))).tolist()

    assert run(compile_decode(gemma)) == run(None)


@pytest.mark.parametrize("change, said", [
    (dict(attn_logit_softcapping=50.0), "soft-capped attention scores"),
    (dict(use_bidirectional_attention=True), "bidirectional attention"),
    (dict(hidden_activation="silu"), "the activation 'silu'"),
    (dict(rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1e6},
                           "sliding_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}}),
     "scales RoPE on its sliding layers"),
    (dict(model_type="gemma3"), "multimodal"),
])
def test_what_gemma3_computes_otherwise_is_refused_by_name(tmp_path, change, said):
    tiny_family("gemma3").save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, **change}))
    with pytest.raises(SourceError, match=said):
        hf_model(tmp_path)
