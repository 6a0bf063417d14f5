"""Causal attention three ways, one chosen per machine and shape by measurement (runtime.choose_attention):
`manual` (softmax(q k^T / sqrt(hs)) v in plain ops, as nanoGPT writes it), `sdpa` (PyTorch's
scaled_dot_product_attention: flash attention where the device has it), and `chunked`, below. Pure: no I/O.

`chunked` is for training on a CPU, where PyTorch's flash kernel runs far from the matmul peak: causal
attention computed CHUNK queries at a time, each chunk over only the keys it can see (the upper triangle of
the score matrix is never computed: at T = 1,024 that is 56% of the full matrix's work, against the 50% of
the triangle), every product a batched matmul at the CPU's matmul rate. Nothing of size T x T is kept for the
backward pass: it computes each chunk's probabilities again from q, k and v (flash attention's recomputation,
Dao et al. 2022, done a chunk, not a tile, at a time), so its memory is that of flash attention plus one
chunk's scores. Grouped-query heads read their kv head without copying it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

ATTENTION_IMPLS = ("manual", "sdpa", "chunked")
# Queries a chunk: at SmolLM2-135M's training shape (1 x 9 heads x 1,024 x 64, 3 kv heads, bf16 autocast) the
# forward and backward took 0.84 s for 30 layers at 128 (2 threads of an AMD EPYC), 0.85 s at 64, 1.04 s at
# 192, against flash attention's 1.26 s: a chunk's scores stay in the cache (docs/benchmarks/finetune.md).
CHUNK = 128


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, impl: str, dropout_p: float,
           mask: torch.Tensor | None = None, scale: float | None = None, window: int | None = None,
           pos: torch.Tensor | None = None) -> torch.Tensor:
    """Causal attention of T new queries (B, nh, T, hs) over S >= T keys (B, nkv, S, hs), the last T of
    which are theirs; or, where a (T, S) mask is given (a static cache), over the keys it allows; with a
    sliding `window`, over the `window` positions up to each query's, at `pos` (window_mask; in place of the
    cache's mask). Scores are scaled by `scale`, else 1 / sqrt(hs). With fewer kv heads than query heads
    (GQA), query head h reads kv head h // (nh / nkv). `chunked` takes the plain causal case without
    dropout (a training step, a prompt on an empty cache: key slot s holds position s); anything else goes
    to `sdpa`."""
    T, S = q.size(-2), k.size(-2)
    if impl == "chunked":
        if mask is None and T == S and dropout_p == 0:
            return chunked_attention(q, k, v, scale, window)
        impl = "sdpa"
    if window is not None:
        mask = window_mask(pos, S, window)
    gqa = k.size(1) != q.size(1)
    if impl == "sdpa" and mask is None and T == S:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True, scale=scale, enable_gqa=gqa)
    if mask is None and T > 1:
        mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(S - T)
    if impl == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=scale, enable_gqa=gqa)
    if gqa:
        k = k.repeat_interleave(q.size(1) // k.size(1), dim=1)
        v = v.repeat_interleave(q.size(1) // v.size(1), dim=1)
    att = (q @ k.transpose(-2, -1)) * (scale or 1.0 / math.sqrt(k.size(-1)))  # (B, nh, T, S)
    if mask is not None:
        att = att.masked_fill(~mask, float("-inf"))
    att = F.softmax(att, dim=-1)
    if dropout_p > 0:
        att = F.dropout(att, p=dropout_p)
    return att @ v  # (B, nh, T, hs)


def window_mask(pos: torch.Tensor, S: int, window: int) -> torch.Tensor:
    """Which of S keys each query at `pos` (T,) or (B, T) sees in a sliding-window layer: the `window`
    positions up to its own (transformers' sliding_window_overlay on a causal mask), as (T, S) or
    (B, 1, T, S). Key slot s holds position s, as it does without a cache and in engine.py's caches."""
    behind = pos[..., None] - torch.arange(S, device=pos.device)  # (..., T, S): how far back each key is
    mask = (behind >= 0) & (behind < window)
    return mask if pos.dim() == 1 else mask[:, None]  # the same for every head


def chunked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None,
                      window: int | None = None) -> torch.Tensor:
    """Causal self-attention of q (B, nh, T, hs) over k, v (B, nkv, T, hs), nh a multiple of nkv, computed
    CHUNK queries at a time (the module's docstring); with a `window`, each query sees only the `window`
    positions up to its own (a sliding-window layer: Gemma 3's), and a chunk reads only the keys its queries
    see. In the autocast dtype where autocast is on (scores and probabilities rounded to it before each
    matmul, as `manual` under autocast; the softmax computed in fp32), else in q's. Returns (B, nh, T, hs)."""
    dtype = torch.get_autocast_dtype(q.device.type) if torch.is_autocast_enabled(q.device.type) else q.dtype
    scale = scale or 1.0 / math.sqrt(q.size(-1))
    with torch.autocast(q.device.type, enabled=False):
        return _ChunkedCausal.apply(q.to(dtype), k.to(dtype), v.to(dtype), scale, window)


def _chunks(T: int, window: int | None):
    """(first query, queries, first key seen, keys end) of each chunk: its queries see keys up to its last
    query, from the first that its first query's window holds."""
    for start in range(0, T, CHUNK):
        n = min(CHUNK, T - start)
        yield start, n, 0 if window is None else max(0, start - window + 1), start + n


class _Masks:
    """The keys each chunk's queries may not see, as (first column, bool mask) over its scores' last columns:
    the keys after each query (the last n columns, a triangle) and, with a window, those it has left behind."""

    def __init__(self, window: int | None, device: torch.device):
        self.window, self.device = window, device
        self.above = torch.ones(CHUNK, CHUNK, dtype=torch.bool, device=device).triu(1)

    def __call__(self, start: int, n: int, lo: int, S: int) -> tuple[int, torch.Tensor]:
        if self.window is None or start + n - 1 - lo < self.window:  # no query has a key out of its window here
            return start - lo, self.above[:n, :n]
        behind = torch.arange(start, start + n, device=self.device)[:, None] - torch.arange(lo, S, device=self.device)
        return 0, (behind < 0) | (behind >= self.window)


def _probabilities(qs: torch.Tensor, k: torch.Tensor, n: int, masked: tuple[int, torch.Tensor]) -> torch.Tensor:
    """softmax over the keys a chunk sees: qs (B, nkv, g*n, hs) the chunk's scaled queries, grouped by kv
    head; k (B, nkv, S', hs) the keys it reads; `masked` (_Masks) the ones each query may not see."""
    B, nkv, rows, _ = qs.shape
    S = k.size(-2)
    scores = (qs @ k.transpose(-2, -1)).view(B, nkv, rows // n, n, S)
    col, mask = masked
    scores[..., col:].masked_fill_(mask, float("-inf"))
    return torch.softmax(scores, dim=-1).view(B, nkv, rows, S)  # in fp32 inside, rounded to the input's dtype


class _ChunkedCausal(torch.autograd.Function):
    """The forward pass keeps q, k and v; the backward computes each chunk's probabilities P again and
    takes dV = P^T dO, dS = softmax'(P, dO V^T), dQ = dS K, dK = dS^T Q chunk by chunk (dK, dV summed in
    fp32 over the chunks that see each key)."""

    @staticmethod
    def forward(ctx, q, k, v, scale, window):
        B, nh, T, hs = q.shape
        nkv = k.size(1)
        g = nh // nkv
        qs = (q * scale).view(B, nkv, g, T, hs)  # query head h = kv head h // g, row h % g of its group
        masks = _Masks(window, q.device)
        out = torch.empty(B, nkv, g, T, hs, dtype=q.dtype, device=q.device)
        for start, n, lo, S in _chunks(T, window):
            qc = qs[:, :, :, start:start + n].reshape(B, nkv, g * n, hs)
            p = _probabilities(qc, k[:, :, lo:S], n, masks(start, n, lo, S))
            out[:, :, :, start:start + n] = (p @ v[:, :, lo:S]).view(B, nkv, g, n, hs)
        ctx.save_for_backward(q, k, v)
        ctx.scale, ctx.window = scale, window
        return out.view(B, nh, T, hs)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        with torch.autocast(grad_out.device.type, enabled=False):  # a backward() called under autocast: as forward
            return _ChunkedCausal._backward(ctx, grad_out)

    @staticmethod
    def _backward(ctx, grad_out):
        q, k, v = ctx.saved_tensors
        B, nh, T, hs = q.shape
        nkv = k.size(1)
        g = nh // nkv
        qs = (q * ctx.scale).view(B, nkv, g, T, hs)
        dout = grad_out.to(q.dtype).reshape(B, nkv, g, T, hs)
        masks = _Masks(ctx.window, q.device)
        dq = torch.empty(B, nkv, g, T, hs, dtype=q.dtype, device=q.device)
        wide = torch.promote_types(q.dtype, torch.float32)  # the sums over chunks: fp32 at least
        dk = torch.zeros(B, nkv, T, hs, dtype=wide, device=q.device)
        dv = torch.zeros(B, nkv, T, hs, dtype=wide, device=q.device)
        for start, n, lo, S in _chunks(T, ctx.window):
            qc = qs[:, :, :, start:start + n].reshape(B, nkv, g * n, hs)
            p = _probabilities(qc, k[:, :, lo:S], n, masks(start, n, lo, S))
            do = dout[:, :, :, start:start + n].reshape(B, nkv, g * n, hs)
            dv[:, :, lo:S] += p.transpose(-2, -1) @ do
            ds = torch._softmax_backward_data(do @ v[:, :, lo:S].transpose(-2, -1), p, -1, p.dtype)
            dq[:, :, :, start:start + n] = (ds @ k[:, :, lo:S]).view(B, nkv, g, n, hs) * ctx.scale
            dk[:, :, lo:S] += ds.transpose(-2, -1) @ qc
        return dq.view(B, nh, T, hs), dk.to(k.dtype), dv.to(v.dtype), None, None
