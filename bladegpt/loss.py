"""The language-model loss from the final hidden states, a chunk of rows at a time.

A plain `cross_entropy(lm_head(h))` materialises logits for every position: 1,024 tokens x 49,152 ids
is 200 MB in fp32 for SmolLM2, and its softmax, log-softmax and their gradients as much again each.
Here the head's matmul, the softmax and both of the head's gradients run one chunk of rows at a time,
during the forward pass (the fused linear cross-entropy of Liger-Kernel and Apple's Cut Cross-Entropy,
Wijmans et al. 2024): no extra matmul, and the only full-size buffers are the gradients themselves.
"""

from __future__ import annotations

import torch

CHUNK_ELEMENTS = 2**23  # logits per chunk: 32 MB in fp32 (170 rows of SmolLM2's 49,152 ids)
# But at least this many rows: each chunk adds a (V, C) product to the head's gradient, and with few rows those
# products are the step's cost. Gemma 3's 262,144 ids, 256 tokens' loss and gradients (bf16 autocast, one thread,
# a loaded 2-core EPYC): 48.9 s in chunks of 32 rows, 18.7 s of 128, 7.2 s of 256, 5.8 s unchunked. 256 rows of
# 262,144 ids are 268 MB in fp32, less than the head's gradient the loss holds anyway (671 MB).
MIN_CHUNK_ROWS = 256


def chunk_rows(vocab: int) -> int:
    return max(MIN_CHUNK_ROWS, CHUNK_ELEMENTS // vocab)


def softcapped(z: torch.Tensor, cap: float | None) -> torch.Tensor:
    """cap * tanh(z / cap) (Gemma 2, modded-nanogpt's logit soft-cap); z unchanged where cap is None."""
    return z if cap is None else cap * torch.tanh(z / cap)


def _chunk_logits(h: torch.Tensor, weight: torch.Tensor, cap: float | None) -> torch.Tensor:
    """(n, V) fp32 logits of n rows; the matmul runs in the ambient autocast dtype, as lm_head would."""
    return softcapped((h @ weight.t()).float(), cap)


def _row_loss(z: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row negative log-likelihood (n,) and logsumexp (n,); rows whose target is -1 count 0."""
    valid = targets != -1
    lse = torch.logsumexp(z, dim=-1)
    picked = z.gather(1, targets.clamp(min=0)[:, None])[:, 0]
    return torch.where(valid, lse - picked, 0.0), lse


def row_weights(targets: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """What each row (n,) counts for in the loss, fp32: its weight (1 where none is given), 0 where the
    target is -1."""
    valid = (targets != -1).to(torch.float32)
    return valid if weights is None else valid * weights.to(torch.float32)


class _LinearCrossEntropy(torch.autograd.Function):
    """Loss and gradients of cross_entropy(softcap(h @ weight.T), targets) computed chunk by chunk in
    the forward pass; backward only scales them by the incoming gradient."""

    @staticmethod
    def forward(ctx, h, weight, targets, cap, mean, weights):
        n = h.size(0)
        rw = row_weights(targets, weights)  # (n,)
        scale = 1.0 / rw.sum().clamp(min=1e-12) if mean else torch.ones((), dtype=torch.float32)
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.empty_like(h) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        rows = chunk_rows(weight.size(0))
        autocasting = torch.is_autocast_enabled(h.device.type)
        dtype = torch.get_autocast_dtype(h.device.type) if autocasting else weight.dtype
        # The head in the matmuls' dtype once, not once a chunk and a direction (14 casts of SmolLM2's 28M-weight
        # head a step, the bulk of the step's copies beyond transformers' in a profile)
        w = weight.to(dtype)
        for start in range(0, n, rows):
            hc, tc = h[start:start + rows], targets[start:start + rows]
            raw = (hc @ w.t()).float()  # (rows, V), in the ambient autocast dtype as lm_head would
            tanh = torch.tanh(raw / cap) if cap is not None else None
            z = cap * tanh if cap is not None else raw
            wc = rw[start:start + rows]  # (rows,)
            # logsumexp and softmax from one exp over the chunk: e = exp(z - max), lse = max + log(sum e),
            # softmax = e / sum e (torch.logsumexp and a second exp made two; the exp was a tenth of the loss)
            valid = tc != -1
            picked = z.gather(1, tc.clamp(min=0)[:, None])[:, 0]  # (rows,)
            top = z.amax(dim=-1, keepdim=True)  # (rows, 1)
            g = z.sub_(top).exp_()  # z is ours: its memory becomes exp(z - max)
            total_e = g.sum(dim=-1)  # (rows,)
            nll = torch.where(valid, top[:, 0] + total_e.log() - picked, 0.0)
            total += (nll * wc).sum()
            # d loss / d z = (softmax(z) - onehot(target)) * the row's weight, times the mean's 1/sum of weights
            g.mul_((wc * scale / total_e)[:, None])
            g.scatter_add_(1, tc.clamp(min=0)[:, None], -(valid * wc * scale)[:, None])  # compiles without breaks
            if cap is not None:  # d (cap * tanh(u / cap)) / du = 1 - tanh^2 = 1 - (z_capped / cap)^2
                g.mul_(1.0 - tanh.square())
            g = g.to(dtype)
            if need_h:
                grad_h[start:start + rows] = (g @ w).to(h.dtype)  # (rows, C)
            if need_w:
                grad_w += (g.t() @ hc.to(g.dtype)).float()  # (V, C)
        ctx.save_for_backward(grad_h if need_h else None, grad_w if need_w else None)
        ctx.weight_dtype = weight.dtype
        return total * scale

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.saved_tensors
        if grad_h is not None:
            grad_h = grad_h * grad_out.to(grad_h.dtype)
        if grad_w is not None:
            grad_w = (grad_w * grad_out).to(ctx.weight_dtype)
        return grad_h, grad_w, None, None, None, None


def linear_cross_entropy(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, cap: float | None = None,
                         reduction: str = "mean", weights: torch.Tensor | None = None) -> torch.Tensor:
    """cross_entropy(softcap(h @ weight.T), targets, ignore_index=-1) without the full logits.

    h: (N, C) hidden states; weight: (V, C) the output head; targets: (N,) ids, -1 ignored; weights: (N,)
    what each row's loss counts for (None: 1 each), as a weighted cross-entropy. Returns the weighted mean
    over counted rows ("mean": sum of w * nll / sum of w) or the weighted sum ("sum"), in fp32. Equal to the
    plain loss within fp32 rounding, values and gradients (tests/test_loss.py).
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    if torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad):
        return _LinearCrossEntropy.apply(h, weight, targets, cap, reduction == "mean", weights)
    total = torch.zeros((), dtype=torch.float32, device=h.device)
    rw = row_weights(targets, weights)
    rows = chunk_rows(weight.size(0))
    for start in range(0, h.size(0), rows):
        nll = _row_loss(_chunk_logits(h[start:start + rows], weight, cap), targets[start:start + rows])[0]
        total += (nll * rw[start:start + rows]).sum()
    if reduction == "sum":
        return total
    return total / rw.sum().clamp(min=1e-12)
