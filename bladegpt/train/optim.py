"""Optimizers and the learning-rate schedule: AdamW as GPT-2 trained, or Muon for the hidden matrices."""

from __future__ import annotations

import math

import torch

from bladegpt.config import TrainConfig
from bladegpt.model import GPT


def lr_at(step: int, cfg: TrainConfig, progress: float) -> float:
    """Linear warmup, then cosine decay to lr * min_lr_ratio as progress goes 0 -> 1."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(max(progress, 0.0), 1.0)
    min_lr = cfg.lr * cfg.min_lr_ratio
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - min_lr)


def schedule_progress(cfg: TrainConfig, step: int, elapsed: float) -> float:
    """How far through the schedule `step` is (0 -> 1 past warmup): by steps, or by the clock under a
    time budget (`elapsed` wall seconds)."""
    if cfg.time_budget_s is not None:
        return elapsed / cfg.time_budget_s
    return (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)


def set_lr(optimizers: list[torch.optim.Optimizer], cfg: TrainConfig, lr: float) -> None:
    """The schedule's lr for AdamW; Muon follows the same curve from its own peak, cfg.muon_lr."""
    for optimizer in optimizers:
        peak = cfg.muon_lr if isinstance(optimizer, Muon) else cfg.lr
        for group in optimizer.param_groups:
            group["lr"] = lr * (peak / cfg.lr)  # exactly the schedule's lr for AdamW


def orthogonalize(g: torch.Tensor, coefficients: tuple[float, float, float], steps: int, eps: float,
                  dtype: torch.dtype) -> torch.Tensor:
    """Newton-Schulz iteration towards the nearest semi-orthogonal matrix, as torch.optim.Muon's."""
    a, b, c = coefficients
    x = g.to(dtype)
    tall = g.size(0) > g.size(1)
    if tall:
        x = x.T
    x = x / x.norm().clamp(min=eps)  # spectral norm at most 1
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if tall else x


class Muon(torch.optim.Muon):
    """PyTorch's Muon, with the Newton-Schulz iteration in a dtype chosen per device.

    torch.optim.Muon always iterates in bf16: right on GPUs and AMX CPUs, but a CPU that emulates
    bf16 spent 50 ms of a 115 ms step there (fp32: 2.5x faster). Same update, same state, same
    defaults; only Keller Jordan's original lr adjustment (adjust_lr_fn=None).
    """

    def __init__(self, params, ns_dtype: torch.dtype = torch.bfloat16, **kwargs):
        super().__init__(params, **kwargs)
        self.ns_dtype = ns_dtype

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - group["momentum"])
                update = p.grad.lerp(buf, group["momentum"]) if group["nesterov"] else buf
                update = orthogonalize(update, group["ns_coefficients"], group["ns_steps"], group["eps"], self.ns_dtype)
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(update.to(p.dtype), alpha=-group["lr"] * max(1.0, p.size(0) / p.size(1)) ** 0.5)


def make_optimizers(
    model: GPT, cfg: TrainConfig, device: torch.device, precision: str = "fp32"
) -> list[torch.optim.Optimizer]:
    """AdamW for everything (matrices and embeddings decay, biases and LayerNorm gains do not); with
    cfg.optimizer == "muon", the blocks' weight matrices go to Muon instead, iterating in the
    precision the runtime found fast on this device."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    hidden = [p for n, p in named if cfg.optimizer == "muon" and p.dim() == 2 and n.startswith("transformer.h.")]
    taken = {id(p) for p in hidden}
    rest = [p for _, p in named if id(p) not in taken]
    groups = [
        {"params": [p for p in rest if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in rest if p.dim() < 2], "weight_decay": 0.0},
    ]
    fused = {"fused": True} if device.type in ("cuda", "cpu") else {}
    optimizers: list[torch.optim.Optimizer] = [
        torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), **fused)
    ]
    if hidden:
        # Orthogonalised momentum (Keller Jordan's Muon): the same loss in fewer steps. Its lr is
        # Keller's scale (adjust_lr_fn=None), about ten times AdamW's.
        ns_dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        optimizers.append(Muon(hidden, ns_dtype=ns_dtype, lr=cfg.muon_lr, weight_decay=cfg.weight_decay))
    return optimizers
