"""Reading a Hugging Face model folder: config.json to a ModelConfig, the weights to BladeGPT's names.

GPT-2 is imported as it is: tanh GELU, biases everywhere, LayerNorm eps 1e-5, vocabulary 50257. The
Llama family (Llama 2/3.x, SmolLM/SmolLM2, Mistral; Qwen2/2.5; Qwen3) as transformers' LlamaModel,
Qwen2Model and Qwen3Model compute it (tests compare logits with transformers within 1e-4). Weights are
read with safetensors, or `torch.load(weights_only=True)`: never unpickled.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import torch

from bladegpt.config import ModelConfig
from bladegpt.errors import ConfigError, SourceError
from bladegpt.encoding import openable
from bladegpt.model import BLOCK_MATRICES
from bladegpt.sources.hub import weight_files

HF_ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}
CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")  # GPT-2 stores (in, out)
# config.json's model_type -> BladeGPT's arch. Mistral is the Llama block (its sliding window, where it is
# not shorter than the context, changes nothing).
LLAMA_FAMILY = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}
SUPPORTED = "gpt2, llama (Llama 2/3.x, SmolLM, SmolLM2, Mistral), qwen2 (Qwen2, Qwen2.5) and qwen3"


def read_config(folder: Path) -> dict:
    path = folder / "config.json"
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(cfg, dict):
            raise ValueError("not a JSON object")
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise SourceError(f"{path} cannot be read ({e}); download the model again.") from None
    return cfg


def model_config(folder: Path, cfg: dict, vocab_rows: int | None = None) -> ModelConfig:
    """BladeGPT's config for a config.json; anything we cannot compute exactly is refused in one line."""
    kind = cfg.get("model_type")
    try:
        if kind == "gpt2":
            return gpt2_config(folder, cfg)
        if kind in LLAMA_FAMILY:
            return llama_config(folder, cfg, vocab_rows)
    except (KeyError, TypeError, ConfigError) as e:
        raise SourceError(f"{folder / 'config.json'} is missing or has a bad value ({e}); download the model again.") from None
    raise SourceError(f"{folder} holds a {kind or 'unknown'} model, which BladeGPT does not compute; it starts from "
                      f"{SUPPORTED} models, GGUF files of these, and BladeGPT runs.")


def gpt2_config(folder: Path, cfg: dict) -> ModelConfig:
    n_embd = cfg["n_embd"]
    activation = HF_ACTIVATIONS.get(cfg.get("activation_function", "gelu_new"))
    unsupported = [
        (cfg.get("n_inner") not in (None, 4 * n_embd), f"an MLP width of {cfg.get('n_inner')}"),
        (activation is None, f"the activation {cfg.get('activation_function')!r}"),
        (cfg.get("tie_word_embeddings", True) is False, "an output layer not tied to the embedding"),
        (cfg.get("scale_attn_weights", True) is False, "unscaled attention"),
        (cfg.get("scale_attn_by_inverse_layer_idx", False), "attention scaled by layer"),
    ]
    for bad, what in unsupported:
        if bad:
            raise SourceError(f"{folder} is a GPT-2 variant with {what}, which BladeGPT's model does not compute; "
                              "start from a standard GPT-2 model.")
    return ModelConfig(vocab_size=cfg["vocab_size"], block_size=cfg.get("n_positions") or cfg.get("n_ctx") or 1024,
                       n_layer=cfg["n_layer"], n_head=cfg["n_head"], n_embd=n_embd, dropout=0.0, bias=True,
                       activation=activation, layer_norm_eps=cfg.get("layer_norm_epsilon", 1e-5))


def rope_scaling(scaling: dict | None, where: str) -> dict | None:
    """None for plain RoPE, Llama 3's parameters for "llama3"; any other scaling is refused."""
    if not scaling:
        return None
    kind = scaling.get("rope_type") or scaling.get("type")
    if kind in (None, "default"):
        return None
    if kind != "llama3":
        raise SourceError(f"{where} uses {kind!r} RoPE scaling, which BladeGPT does not compute (it computes plain "
                          "RoPE and Llama 3's llama3 scaling); start from another model.")
    return {"rope_type": "llama3", **{k: float(scaling[k]) for k in ("factor", "low_freq_factor", "high_freq_factor")},
            "original_max_position_embeddings": int(scaling["original_max_position_embeddings"])}


def llama_config(folder: Path, cfg: dict, vocab_rows: int | None) -> ModelConfig:
    """The Llama block from transformers' LlamaConfig, Qwen2Config or Qwen3Config fields, with their defaults."""
    kind, where = cfg["model_type"], folder / "config.json"
    arch = LLAMA_FAMILY[kind]
    refuse = [
        (cfg.get("hidden_act", "silu") != "silu", f"the activation {cfg.get('hidden_act')!r}"),
        (kind in ("llama", "qwen3") and cfg.get("attention_bias"), "biases on the attention's projections"),
        (cfg.get("mlp_bias"), "biases in the MLP"),
        (cfg.get("partial_rotary_factor", 1.0) != 1.0, "RoPE on part of each head"),
        (cfg.get("num_experts") or cfg.get("num_local_experts"), "a mixture of experts"),
    ]
    for bad, what in refuse:
        if bad:
            raise SourceError(f"{folder} is a {kind} model with {what}, which BladeGPT does not compute; start "
                              "from another model.")
    params = cfg.get("rope_parameters") or {}  # transformers 5 moves rope_theta and rope_scaling here
    scaling = rope_scaling(cfg.get("rope_scaling") or (params if params.get("rope_type") else None), str(where))
    block = cfg.get("max_position_embeddings", 2048)
    window = cfg.get("sliding_window") if (kind == "mistral" or cfg.get("use_sliding_window")) else None
    if window:
        block = min(block, window)  # attention over at most `window` tokens is full causal attention
    heads = cfg["num_attention_heads"]
    head_dim = cfg.get("head_dim") or (128 if kind == "qwen3" else cfg["hidden_size"] // heads)
    return ModelConfig(
        vocab_size=vocab_rows or cfg["vocab_size"], block_size=block, n_layer=cfg["num_hidden_layers"],
        n_head=heads, n_embd=cfg["hidden_size"], dropout=0.0, bias=False, activation="swiglu",
        layer_norm_eps=cfg.get("rms_norm_eps", 1e-6), arch=arch, norm="rmsnorm", positions="rope",
        rope_theta=float(cfg.get("rope_theta") or params.get("rope_theta") or 10000.0), rope_scaling=scaling,
        n_kv_head=cfg.get("num_key_value_heads") or heads,
        head_size=head_dim if head_dim * heads != cfg["hidden_size"] else None,
        intermediate_size=cfg["intermediate_size"], qkv_bias=arch == "qwen2", qk_norm=arch == "qwen3",
        tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
    )


def read_tensors(folder: Path):
    """(name, tensor) for every tensor of the folder's weight files, one at a time (never all in memory twice).
    A safetensors file is opened again for each tensor: the pages of a mapping count as the process's memory until
    it closes, which put SmolLM2-1.7B's 3.4 GB file on top of its loaded copy (a 7.5 GB peak, 4.0 GB loaded)."""
    from safetensors import safe_open

    files = weight_files(folder)
    if not files:
        raise SourceError(f"{folder} has no model.safetensors (or shards) or pytorch_model.bin; download the weights too.")
    for path in files:
        try:
            if path.suffix == ".safetensors":
                with openable(path) as opened:
                    with safe_open(opened, framework="pt") as f:
                        names = list(f.keys())
                    for name in names:
                        with safe_open(opened, framework="pt") as f:
                            tensor = f.get_tensor(name)
                        yield name, tensor
            else:
                mapped = zipfile.is_zipfile(path)  # torch < 1.6's legacy format cannot be memory-mapped
                yield from torch.load(path, map_location="cpu", weights_only=True, mmap=mapped).items()  # tensors only
        except SourceError:
            raise
        except Exception as e:  # a damaged file raises whatever its reader raises
            raise SourceError(f"{path} cannot be read ({type(e).__name__}: {e}); download the model again.") from None


def embedding_rows(folder: Path) -> int | None:
    """The token embedding's rows, read from a safetensors header (fine-tunes add tokens past config's vocab_size)."""
    from safetensors import safe_open

    for path in weight_files(folder):
        if path.suffix != ".safetensors":
            return None
        try:
            with openable(path) as opened, safe_open(opened, framework="pt") as f:
                for name in f.keys():
                    if name.endswith("embed_tokens.weight"):
                        return f.get_slice(name).get_shape()[0]
        except Exception:  # a damaged file: read_tensors names it when the weights are read
            return None
    return None


def gpt2_state_dict(tensors) -> dict[str, torch.Tensor]:
    """BladeGPT's names and layout for either GPT-2 key layout: the hub's own file (no `transformer.`
    prefix, `attn.bias` mask buffers, no lm_head) and what `save_pretrained` writes (prefixed, no buffers)."""
    ours = {}
    for name, tensor in tensors:
        name = name.removeprefix("transformer.")
        if name.endswith((".attn.bias", ".attn.masked_bias")) or name == "lm_head.weight":
            continue  # causal-mask buffers, and the head tied to wte
        if name.endswith(CONV1D):
            tensor = tensor.t()
        ours[f"transformer.{name}"] = tensor.float().contiguous()
    if "transformer.wte.weight" in ours:
        ours["lm_head.weight"] = ours["transformer.wte.weight"]
    return ours


# transformers' Llama names -> BladeGPT's; q/k/v and gate/up are joined into one matrix each (one matmul).
LLAMA_NAMES = {
    "input_layernorm": "ln_1", "post_attention_layernorm": "ln_2", "self_attn.o_proj": "attn.c_proj",
    "self_attn.q_norm": "attn.q_norm", "self_attn.k_norm": "attn.k_norm", "mlp.down_proj": "mlp.c_proj",
}
JOINED = {"self_attn.q_proj": ("attn.c_attn", 0, 3), "self_attn.k_proj": ("attn.c_attn", 1, 3),
          "self_attn.v_proj": ("attn.c_attn", 2, 3), "mlp.gate_proj": ("mlp.c_fc", 0, 2), "mlp.up_proj": ("mlp.c_fc", 1, 2)}


def llama_state_dict(tensors, config: ModelConfig, matrices: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """BladeGPT's state dict (fp32) from transformers' Llama/Qwen2/Qwen3 names, given as (name, tensor)
    pairs; q, k, v (and their biases) are stacked into c_attn, gate and up into c_fc, each as soon as
    its parts are in, so no more than one layer's parts are held apart. The blocks' weight matrices are
    kept in `matrices` (bf16 for a LoRA run's frozen base: a 1.7B model never holds its 6.8 GB in fp32)."""
    ours: dict[str, torch.Tensor] = {}
    parts: dict[str, list] = {}

    def block_matrix(key: str, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to(matrices) if key.endswith(BLOCK_MATRICES) else tensor

    for name, tensor in tensors:
        tensor = tensor.float()
        if name == "lm_head.weight":
            if not config.tie_embeddings:
                ours["lm_head.weight"] = tensor
            continue
        name = name.removeprefix("model.")
        if name == "embed_tokens.weight":
            ours["transformer.wte.weight"] = tensor
        elif name == "norm.weight":
            ours["transformer.ln_f.weight"] = tensor
        elif name.startswith("layers."):
            _, i, rest = name.split(".", 2)
            module, kind = rest.rsplit(".", 1)
            if module in JOINED:
                target, slot, count = JOINED[module]
                key = f"transformer.h.{i}.{target}.{kind}"
                pieces = parts.setdefault(key, [None] * count)
                pieces[slot] = tensor
                if all(p is not None for p in pieces):
                    ours[key] = block_matrix(key, torch.cat(parts.pop(key), dim=0))
            elif module in LLAMA_NAMES:
                key = f"transformer.h.{i}.{LLAMA_NAMES[module]}.{kind}"
                ours[key] = block_matrix(key, tensor)
            elif not module.endswith("rotary_emb"):
                ours[f"unexpected.{name}"] = tensor  # load_state_dict names it
        else:
            ours[f"unexpected.{name}"] = tensor
    if config.tie_embeddings:
        ours["lm_head.weight"] = ours.get("transformer.wte.weight")
    return ours
