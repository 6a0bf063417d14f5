"""How much memory a training step takes, estimated from the model's shape, and how much this machine has.

A fine-tune sizes its micro-batch with these (launch.py): SmolLM2-1.7B with LoRA at its recipe's 1,024 tokens a
forward pass peaked at 10.1 GB, past what a laptop can give it. The estimate follows what this code keeps alive
in a step (model.py, lora.py, loss.py), in fp32 (bf16 autocast keeps less); against measured peak RSS of SmolLM2-1.7B's
shape with LoRA, a whole `train` process: 10.37 GB estimated at 1 x 1,024 tokens, 10.05 measured; 6.10 at 1 x 256,
6.01 measured; with activation checkpointing 5.36 at 1 x 1,024, 5.83 measured (the block recomputed in backward).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from bladegpt.config import GATED
from bladegpt.loss import chunk_rows
from bladegpt.lora import BASE_DTYPES

GB = 1e9
PROCESS_BYTES = 0.7 * GB  # Python, torch, the tokenizer and the data, before any weights (measured ~0.6 GB)
MEMORY_SHARE = 1 / 3  # of the machine's memory a run plans to use: 8 GB of a 24 GB laptop (issue #36)


@dataclass
class Fit:
    """A micro-batch the memory allows: `accum` micro-batches a step, activation checkpointing or not."""
    accum: int
    checkpointing: bool
    estimate: float  # bytes at the step's peak
    budget: float  # bytes this run allows itself


def machine_memory() -> tuple[float, float]:
    """(total, available) bytes of this machine's memory, from /proc/meminfo (Linux), else os.sysconf."""
    try:
        fields = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line)
        total = int(fields["MemTotal"].split()[0]) * 1024
        return total, int(fields.get("MemAvailable", fields["MemTotal"]).split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        page = os.sysconf("SC_PAGE_SIZE")
        return page * os.sysconf("SC_PHYS_PAGES"), page * os.sysconf("SC_AVPHYS_PAGES")


def memory_budget(device=None) -> float:
    """Bytes a training run plans to use: on a CUDA `device` (torch.device) the GPU's free memory, else
    MEMORY_SHARE of the machine's, and never more than is available."""
    if device is not None and device.type == "cuda":
        import torch

        return float(torch.cuda.mem_get_info(device)[0])
    total, available = machine_memory()
    return min(total * MEMORY_SHARE, available)


def layer_activations(cfg) -> int:
    """fp32 values one block keeps a token for its backward pass: the norms' inputs and outputs (two norms, four
    with Gemma's sandwich norms), q, k, v and attention's output (SDPA keeps them), the MLP's fused gate;up, its
    activation and product, and each linear's input (nn.Linear keeps it for the weight's gradient; a LoRA linear
    keeps its dropped-out copy)."""
    C, q, kv, F = cfg.n_embd, cfg.n_head * cfg.head_dim, cfg.kv_heads * cfg.head_dim, cfg.mlp_size
    mlp = 3 * F if cfg.activation in GATED else F  # gate;up and silu(gate), or the activation's input
    norms = (8 if cfg.sandwich_norm else 4) * C
    return norms + (C + q + C + F) + (2 * q + 2 * kv) + mlp


def training_bytes(cfg, tokens: int, lora=None, checkpointing: bool = False) -> float:
    """Estimated peak bytes of a training step over `tokens` tokens a forward pass (micro-batch x context) of a
    model shaped `cfg` (ModelConfig): weights (a LoRA base's block matrices in its base dtype), gradients and
    AdamW's two moments for what trains, the activations kept for backward (each block's input alone with
    `checkpointing`, plus one block recomputed), the chunked loss, and the process itself."""
    C, L, V = cfg.n_embd, cfg.n_layer, cfg.vocab_size
    q, kv, F = cfg.n_head * cfg.head_dim, cfg.kv_heads * cfg.head_dim, cfg.mlp_size
    fc = 2 * F if cfg.activation in GATED else F
    linears = {"attn.c_attn": (C, q + 2 * kv), "attn.c_proj": (q, C), "mlp.c_fc": (C, fc), "mlp.c_proj": (F, C)}
    embeddings = V * C * (1 if cfg.tie_embeddings else 2) + (cfg.block_size * C if cfg.positions == "learned" else 0)
    blocks = L * sum(n_in * n_out for n_in, n_out in linears.values())
    if lora is not None:
        base = BASE_DTYPES[lora.base_dtype].itemsize
        adapters = L * lora.rank * sum(n_in + n_out for t, (n_in, n_out) in linears.items() if t in lora.targets)
        weights = 4 * embeddings + base * blocks + 16 * adapters  # adapters: weight, gradient, two moments, fp32
    else:
        weights = 16 * (embeddings + blocks)
    per_layer = 4 * tokens * layer_activations(cfg)
    kept = 4 * tokens * C * L + per_layer if checkpointing else per_layer * L
    stream = 4 * tokens * C * 4  # the embedding's output, ln_f's, the hidden states' gradient and a residual
    loss_chunk = 3 * chunk_rows(V) * V * 4  # loss.py's chunk of logits, its softmax and their gradient, in fp32
    return PROCESS_BYTES + weights + kept + per_layer + stream + loss_chunk


def fit_micro_batch(cfg, batch: int, context: int, budget: float, lora=None, accum: int | None = None,
                    checkpointing: bool | None = None) -> Fit:
    """The largest micro-batch (fewest accumulation steps, dividing `batch`) whose step fits in `budget`
    bytes, without activation checkpointing if it fits so, else with it; a user's `accum` or
    `checkpointing` stays as given. Where nothing fits: one sequence a pass, checkpointing on (the least)."""
    accums = [accum] if accum else [n for n in range(1, batch + 1) if batch % n == 0]
    modes = [checkpointing] if checkpointing is not None else [False, True]
    for mode in modes:
        for n in accums:
            estimate = training_bytes(cfg, batch // n * context, lora, mode)
            if estimate <= budget:
                return Fit(n, mode, estimate, budget)
    n, mode = accums[-1], modes[-1]
    return Fit(n, mode, training_bytes(cfg, batch // n * context, lora, mode), budget)
