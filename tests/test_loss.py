"""The chunked linear cross-entropy equals the plain one: values and gradients (issue #23)."""

import pytest
import torch
import torch.nn.functional as F

from bladegpt import loss as chunked
from bladegpt.config import ModelConfig
from bladegpt.loss import linear_cross_entropy, softcapped
from bladegpt.model import GPT


def plain(h, w, targets, cap=None, reduction="mean"):
    return F.cross_entropy(softcapped((h @ w.t()).float(), cap), targets, ignore_index=-1, reduction=reduction)


def inputs(n=37, c=16, v=101, seed=0):
    gen = torch.Generator().manual_seed(seed)
    h = torch.randn(n, c, generator=gen, requires_grad=True)
    w = torch.randn(v, c, generator=gen, requires_grad=True)
    targets = torch.randint(0, v, (n,), generator=gen)
    targets[::5] = -1  # ignored positions
    return h, w, targets


@pytest.mark.parametrize("cap", [None, 3.0])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_equals_plain_cross_entropy_values_and_gradients(monkeypatch, cap, reduction):
    monkeypatch.setattr(chunked, "CHUNK_ELEMENTS", 7 * 101)  # 7 rows a chunk: several chunks and a short last one
    monkeypatch.setattr(chunked, "MIN_CHUNK_ROWS", 1)
    h, w, targets = inputs()
    expected = plain(h, w, targets, cap, reduction)
    gh, gw = torch.autograd.grad(expected * 1.7, (h, w))
    h2, w2 = h.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    got = linear_cross_entropy(h2, w2, targets, cap, reduction)
    (got * 1.7).backward()
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(h2.grad, gh, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(w2.grad, gw, atol=1e-5, rtol=1e-5)
    with torch.no_grad():  # evaluation: no gradients computed, same value
        torch.testing.assert_close(linear_cross_entropy(h, w, targets, cap, reduction), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cap", [None, 3.0])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_weights_make_it_the_weighted_cross_entropy(monkeypatch, cap, reduction):
    """sum(w * nll) / sum(w) over counted rows (a speaker's context at --context-weight), values and gradients."""
    monkeypatch.setattr(chunked, "CHUNK_ELEMENTS", 7 * 101)
    monkeypatch.setattr(chunked, "MIN_CHUNK_ROWS", 1)
    h, w, targets = inputs()
    weights = torch.where(torch.arange(len(targets)) % 3 == 0, 1.0, 0.25)
    nll = plain(h, w, targets, cap, "none")
    expected = (nll * weights).sum() / (reduction == "sum" or weights[targets != -1].sum())
    gh, gw = torch.autograd.grad(expected * 1.7, (h, w))
    h2, w2 = h.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    got = linear_cross_entropy(h2, w2, targets, cap, reduction, weights=weights)
    (got * 1.7).backward()
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(h2.grad, gh, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(w2.grad, gw, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(linear_cross_entropy(h, w, targets, cap, reduction, weights), expected,
                                   atol=1e-5, rtol=1e-5)
    ones = linear_cross_entropy(h.detach(), w.detach(), targets, cap, reduction, torch.ones(len(targets)))
    torch.testing.assert_close(ones, plain(h.detach(), w.detach(), targets, cap, reduction))


def test_only_the_gradients_asked_for():
    h, w, targets = inputs()
    w.requires_grad_(False)  # a frozen head (LoRA): no (V, C) gradient is computed
    linear_cross_entropy(h, w, targets).backward()
    assert h.grad is not None and w.grad is None


def test_under_bf16_autocast_it_matches_the_plain_loss_at_bf16_precision():
    h, w, targets = inputs(n=64, c=32, v=300)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = plain(h, w, targets)
        gh, gw = torch.autograd.grad(expected, (h, w))
        got = linear_cross_entropy(h, w, targets)
        ch, cw = torch.autograd.grad(got, (h, w))
    assert ch.dtype == h.dtype and cw.dtype == w.dtype
    torch.testing.assert_close(got, expected, atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(ch, gh, atol=2e-3, rtol=5e-2)
    torch.testing.assert_close(cw, gw, atol=2e-3, rtol=5e-2)


def test_the_model_trains_on_it_as_on_the_plain_loss():
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=64, block_size=8, n_layer=2, n_head=2, n_embd=16))
    idx, y = torch.randint(0, 64, (3, 8)), torch.randint(0, 64, (3, 8))
    _, loss = model(idx, y)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    logits, _ = model(idx)
    F.cross_entropy(logits.flatten(0, 1), y.flatten()).backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, atol=1e-5, rtol=1e-5, msg=name)
