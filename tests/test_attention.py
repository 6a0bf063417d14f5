"""Chunked attention (bladegpt/attention.py) against PyTorch's SDPA: the same outputs and gradients in fp64, for
grouped and full heads, lengths that are not a multiple of the chunk, and a scale of the model's own; in the
model, a training step's loss and gradients under each implementation."""

import json

import pytest
import torch
import torch.nn.functional as F

from bladegpt import attention, runtime
from bladegpt.attention import attend, chunked_attention
from bladegpt.config import ModelConfig
from bladegpt.data.prepare import prepare
from bladegpt.errors import DeviceError
from bladegpt.model import GPT
from bladegpt.train import train
from tests.conftest import TINY_MODEL, TINY_TRAIN


def qkv(B, nh, nkv, T, hs, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    make = lambda heads: (torch.randn(B, heads, T, hs, generator=g, dtype=dtype) * 2).requires_grad_()
    return make(nh), make(nkv), make(nkv)


def result_and_grads(fn, q, k, v, dout):
    for t in (q, k, v):
        t.grad = None
    out = fn(q, k, v)
    out.backward(dout)
    return [out.detach(), *(t.grad.clone() for t in (q, k, v))]


@pytest.mark.parametrize("B, nh, nkv, T, hs, scale", [
    (2, 4, 2, 300, 16, None),  # grouped heads; three chunks, the last one short
    (1, 6, 1, 129, 8, 0.3),  # one kv head (multi-query), a chunk of one query, Gemma's own scale
    (3, 2, 2, 5, 8, None),  # full heads, shorter than one chunk
])
def test_chunked_equals_sdpa_forward_and_backward_in_fp64(B, nh, nkv, T, hs, scale):
    q, k, v = qkv(B, nh, nkv, T, hs)
    dout = torch.randn(B, nh, T, hs, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ours = result_and_grads(lambda *a: chunked_attention(*a, scale=scale), q, k, v, dout)
    sdpa = lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=nh != nkv)
    reference = result_and_grads(sdpa, q, k, v, dout)
    for name, a, b in zip(("out", "dq", "dk", "dv"), ours, reference):
        assert torch.allclose(a, b, atol=1e-12, rtol=1e-10), name


def test_chunked_under_bf16_autocast_is_no_further_from_fp64_than_manual_attention():
    q, k, v = qkv(1, 4, 2, 260, 32)
    exact = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    with torch.autocast("cpu", torch.bfloat16):
        ours = chunked_attention(q.float(), k.float(), v.float())
        manual = attend(q.float(), k.float(), v.float(), "manual", 0.0)
    assert ours.dtype == torch.bfloat16
    ours_err, manual_err = (ours.double() - exact).abs(), (manual.double() - exact).abs()
    assert ours_err.max() <= manual_err.max() and ours_err.mean() <= manual_err.mean()


def test_attend_sends_what_chunked_does_not_take_to_sdpa(monkeypatch):
    calls = []
    monkeypatch.setattr(attention, "chunked_attention", lambda *a, **kw: calls.append("chunked"))
    q, k, v = qkv(1, 2, 2, 6, 4)
    attend(q, k, v, "chunked", 0.0)
    assert calls == ["chunked"]
    mask = torch.ones(6, 6, dtype=torch.bool).tril()
    for args in [(0.1, None), (0.0, mask)]:  # dropout, an explicit mask: sdpa, the same result as sdpa
        torch.manual_seed(3)
        a = attend(q, k, v, "chunked", *args)
        torch.manual_seed(3)
        assert torch.equal(a, attend(q, k, v, "sdpa", *args))
    decode = attend(q[:, :, -1:], k, v, "chunked", 0.0)  # one new query over a cache
    assert torch.equal(decode, attend(q[:, :, -1:], k, v, "sdpa", 0.0))
    assert calls == ["chunked"]


def test_a_training_step_under_chunked_attention_equals_sdpa():
    cfg = ModelConfig(vocab_size=64, block_size=160, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, norm="rmsnorm",
                      positions="rope", activation="swiglu")
    torch.manual_seed(0)
    model = GPT(cfg).double()
    idx = torch.randint(0, 64, (2, 160))
    grads = {}
    for impl in ("sdpa", "chunked"):
        model.set_attention(impl)
        model.zero_grad()
        _, loss = model(idx, idx)
        loss.backward()
        grads[impl] = [loss.detach(), *(p.grad.clone() for p in model.parameters())]
    for a, b in zip(grads["sdpa"], grads["chunked"]):
        assert torch.allclose(a, b, atol=1e-10)


@pytest.mark.parametrize("T, window", [(300, 100), (260, 128), (200, 1), (90, 512)])
def test_chunked_with_a_sliding_window_equals_sdpa_with_the_window_mask(T, window):
    q, k, v = qkv(1, 4, 1, T, 8)
    dout = torch.randn(1, 4, T, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    ours = result_and_grads(lambda *a: chunked_attention(*a, scale=0.2, window=window), q, k, v, dout)
    mask = attention.window_mask(torch.arange(T), T, window)
    sdpa = lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.2, enable_gqa=True)
    for name, a, b in zip(("out", "dq", "dk", "dv"), ours, result_and_grads(sdpa, q, k, v, dout)):
        assert torch.allclose(a, b, atol=1e-12, rtol=1e-10), name

def test_a_model_with_dropout_never_trains_with_chunked(tmp_path, monkeypatch):
    """chunked cannot drop (attend() sends such a step to sdpa): auto picks among manual and sdpa only, and
    --attention chunked with --dropout is one line naming both, not a run that says chunked and trains with sdpa."""
    monkeypatch.setenv("BLADEGPT_CACHE", str(tmp_path))
    timed = []
    monkeypatch.setattr(runtime, "_time_attention", lambda device, precision, impl, shape: timed.append(impl) or
                        {"manual": 2.0, "sdpa": 3.0, "chunked": 1.0}[impl])
    cpu, shape = torch.device("cpu"), (2, 4, 512, 32)
    assert runtime.choose_attention(cpu, "fp32", shape) == "chunked"
    assert runtime.choose_attention(cpu, "fp32", shape, "auto", 0.2) == "manual"  # measured apart, not the above
    assert timed == ["manual", "sdpa", "chunked", "manual", "sdpa"]
    keys = [key for key in json.loads((tmp_path / "measurements.json").read_text()) if key.startswith("attention")]
    assert [runtime._retake_attention(key) for key in sorted(keys, key=len)] == ["chunked", "manual"]  # bench --remeasure
    with pytest.raises(DeviceError, match="--attention chunked computes attention without dropout, and this model has "
                                          r"--dropout 0.2; use --attention sdpa or manual, or --dropout 0\."):
        runtime.choose_attention(cpu, "fp32", shape, "chunked", 0.2)
    assert runtime.choose_attention(cpu, "fp32", shape, "chunked", 0.0) == "chunked"


def test_train_with_dropout_and_chunked_is_refused_and_writes_nothing(corpus, workdir):
    prepare([corpus], tokenizer="char")
    with pytest.raises(DeviceError, match="--attention chunked computes attention without dropout"):
        train(None, "nano", {**TINY_MODEL, "dropout": 0.1}, TINY_TRAIN, attention="chunked", compile="off")
    assert not (workdir / "runs").exists() or not any((workdir / "runs").iterdir())


def test_chunked_keeps_nothing_of_size_t_by_t_for_backward():
    """The point of chunked: the backward pass computes each chunk's probabilities again, so what autograd keeps
    is q, k and v (manual attention keeps its T x T probabilities)."""
    T = 512
    q, k, v = qkv(1, 4, 2, T, 8, dtype=torch.float32)
    for impl, most in (("chunked", 4 * T * 8), ("manual", 4 * T * T)):
        kept = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: kept.append(t.numel()) or t, lambda t: t):
            attend(q, k, v, impl, 0.0)
        assert max(kept) == most, impl


def test_a_backward_called_under_autocast_keeps_fp32_attention_in_fp32():
    q, k, v = (t.float().detach().requires_grad_() for t in qkv(1, 2, 2, 140, 8))
    chunked_attention(q, k, v).sum().backward()
    outside = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    out = chunked_attention(q, k, v)
    with torch.autocast("cpu", torch.bfloat16):
        out.sum().backward()
    assert all(torch.equal(t.grad, g) for t, g in zip((q, k, v), outside))
