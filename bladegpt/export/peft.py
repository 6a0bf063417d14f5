"""A LoRA run's adapters as peft writes them: adapter_model.safetensors + adapter_config.json, by Hugging Face's
module names, which peft loads onto the transformers model of the base, vLLM serves, and llama.cpp's
convert_lora_to_gguf.py converts.

BladeGPT fuses q;k;v into c_attn and SwiGLU's gate;up into c_fc, each with one adapter. (alpha/r) B A on a fused
matrix is exactly one adapter per projection with the same A and B's rows split: B A = [B_q; B_k; B_v] A.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from bladegpt import strictjson
from bladegpt.checkpoint import read_adapters
from bladegpt.files import atomic_write

FILES = {"adapter_model.safetensors", "adapter_config.json"}
PREFIX = "base_model.model."  # peft's names: the PeftModel wrapping the transformers model


def peft_modules(config, target: str) -> list[tuple[str, int, int]]:
    """The Hugging Face modules (name under a layer, first row, last row) one BladeGPT target splits into."""
    if config.arch == "gpt2":  # GPT2LMHeadModel keeps GPT-2's fused names
        rows = {"attn.c_attn": 3 * config.n_embd, "attn.c_proj": config.n_embd, "mlp.c_fc": config.mlp_size,
                "mlp.c_proj": config.n_embd}[target]
        return [(target, 0, rows)]
    q, kv, ff = config.n_head * config.head_dim, config.kv_heads * config.head_dim, config.mlp_size
    return {"attn.c_attn": [("self_attn.q_proj", 0, q), ("self_attn.k_proj", q, q + kv),
                            ("self_attn.v_proj", q + kv, q + 2 * kv)],
            "attn.c_proj": [("self_attn.o_proj", 0, config.n_embd)],
            "mlp.c_fc": [("mlp.gate_proj", 0, ff), ("mlp.up_proj", ff, 2 * ff)],
            "mlp.c_proj": [("mlp.down_proj", 0, config.n_embd)]}[target]


def peft_state_dict(lora, config, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """BladeGPT's adapter tensors under peft's names, fused adapters split; fp32 copies."""
    layers = "transformer.h" if config.arch == "gpt2" else "model.layers"
    out = {}
    for i in range(config.n_layer):
        for target in lora.targets:
            a, b = tensors[f"transformer.h.{i}.{target}.lora_A"], tensors[f"transformer.h.{i}.{target}.lora_B"]
            for module, start, stop in peft_modules(config, target):
                name = f"{PREFIX}{layers}.{i}.{module}"
                out[f"{name}.lora_A.weight"] = a.float().clone()
                out[f"{name}.lora_B.weight"] = b[start:stop].float().clone()
    return out


def peft_config(lora, config) -> dict:
    """adapter_config.json: peft's LoraConfig fields (peft's checkpoint guide asks for as many as possible)."""
    modules = sorted({module.split(".")[-1] for target in lora.targets for module, _, _ in peft_modules(config, target)})
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": lora.base,
        "r": lora.rank,
        "lora_alpha": lora.alpha,
        "lora_dropout": lora.dropout,
        "target_modules": modules,
        "bias": "none",
        "fan_in_fan_out": config.arch == "gpt2",  # GPT-2's Conv1D stores weights (in, out)
        "use_rslora": False,
        "use_dora": False,
        "modules_to_save": None,
        "init_lora_weights": True,
        "inference_mode": True,
        "layers_to_transform": None,
        "rank_pattern": {},
        "alpha_pattern": {},
    }


def write_peft(out: Path, checkpoint: Path) -> None:
    """Write `checkpoint`'s adapters into the folder `out` (made by the caller)."""
    lora, config, _, tensors, _ = read_adapters(checkpoint)
    state = peft_state_dict(lora, config, tensors)
    (out / "adapter_config.json").write_text(strictjson.dumps(peft_config(lora, config), indent=2), encoding="utf-8")
    atomic_write(out / "adapter_model.safetensors", lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))
