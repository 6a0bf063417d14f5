"""Reading a Hugging Face model folder: config.json to a ModelConfig, the weights to BladeGPT's names.

GPT-2 is imported as it is: tanh GELU, biases everywhere, LayerNorm eps 1e-5, vocabulary 50257. The
Llama family (Llama 2/3.x, SmolLM/SmolLM2, Mistral; Qwen2/2.5; Qwen3) and Gemma 3's text model as
transformers' LlamaModel, Qwen2Model, Qwen3Model and Gemma3TextModel compute them (tests compare logits
with transformers within 1e-4). Weights are read with safetensors, or `torch.load(weights_only=True)`:
never unpickled.
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
SUPPORTED = "gpt2, llama (Llama 2/3.x, SmolLM, SmolLM2, Mistral), qwen2 (Qwen2, Qwen2.5), qwen3 and gemma3"


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
        if kind == "gemma3_text":
            return gemma3_config(folder, cfg, vocab_rows)
    except (KeyError, TypeError, ConfigError) as e:
        raise SourceError(f"{folder / 'config.json'} is missing or has a bad value ({e}); download the model again.") from None
    if kind == "gemma3":
        raise SourceError(f"{folder} holds Gemma 3's multimodal model (Gemma3ForConditionalGeneration), whose weights "
                          "BladeGPT does not read; start from a text-only Gemma 3 (gemma3_text: 270M, 1B) or its GGUF file.")
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
    """None for plain RoPE, the factor for "linear", Llama 3's parameters for "llama3"; any other scaling is refused."""
    if not scaling:
        return None
    kind = scaling.get("rope_type") or scaling.get("type")
    if kind in (None, "default"):
        return None
    if kind == "linear":
        return {"rope_type": "linear", "factor": float(scaling["factor"])}
    if kind != "llama3":
        raise SourceError(f"{where} uses {kind!r} RoPE scaling, which BladeGPT does not compute (it computes plain "
                          "RoPE, linear scaling and Llama 3's llama3 scaling); start from another model.")
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


def gemma3_config(folder: Path, cfg: dict, vocab_rows: int | None) -> ModelConfig:
    """Gemma 3's block from transformers' Gemma3TextConfig fields (4.x's rope_theta / rope_local_base_freq /
    sliding_window_pattern or 5.x's rope_parameters / layer_types), with their defaults."""
    where = folder / "config.json"
    refuse = [
        (cfg.get("hidden_activation", "gelu_pytorch_tanh") not in ("gelu_pytorch_tanh", "gelu_tanh"),
         f"the activation {cfg.get('hidden_activation')!r}"),
        (cfg.get("attention_bias"), "biases on the attention's projections"),
        (cfg.get("attn_logit_softcapping") is not None, "soft-capped attention scores"),
        (cfg.get("use_bidirectional_attention"), "bidirectional attention"),
    ]
    for bad, what in refuse:
        if bad:
            raise SourceError(f"{folder} is a gemma3 model with {what}, which BladeGPT does not compute; start from "
                              "another model.")
    layers, heads = cfg.get("num_hidden_layers", 26), cfg.get("num_attention_heads", 8)
    pattern = cfg.get("sliding_window_pattern", 6)
    types = cfg.get("layer_types") or ["full_attention" if (i + 1) % pattern == 0 else "sliding_attention"
                                       for i in range(layers)]
    params = cfg.get("rope_parameters") or {}  # transformers 5: {"full_attention": {...}, "sliding_attention": {...}}
    full, local = params.get("full_attention") or {}, params.get("sliding_attention") or {}
    if rope_scaling(local if local.get("rope_type") else None, f"{where}'s sliding layers"):
        raise SourceError(f"{where} scales RoPE on its sliding layers, which BladeGPT does not compute; start from "
                          "another model.")
    head_dim, n_embd = cfg.get("head_dim", 256), cfg.get("hidden_size", 2304)
    return ModelConfig(
        vocab_size=vocab_rows or cfg.get("vocab_size", 262_208), block_size=cfg.get("max_position_embeddings", 131_072),
        n_layer=layers, n_head=heads, n_embd=n_embd, dropout=0.0, bias=False, activation="geglu",
        layer_norm_eps=cfg.get("rms_norm_eps", 1e-6), arch="gemma3", norm="rmsnorm", positions="rope",
        rope_theta=float(cfg.get("rope_theta") or full.get("rope_theta") or 1_000_000.0),
        rope_scaling=rope_scaling(cfg.get("rope_scaling") or (full if full.get("rope_type") else None), str(where)),
        n_kv_head=cfg.get("num_key_value_heads", 4), head_size=head_dim if head_dim * heads != n_embd else None,
        intermediate_size=cfg.get("intermediate_size", 9216), qk_norm=True,
        tie_embeddings=bool(cfg.get("tie_word_embeddings", True)),
        logit_softcap=cfg.get("final_logit_softcapping"), sandwich_norm=True, scale_embeddings=True,
        query_pre_attn_scalar=int(cfg.get("query_pre_attn_scalar", 256)), sliding_window=cfg.get("sliding_window", 4096),
        sliding_layers=tuple(i for i, kind in enumerate(types) if kind == "sliding_attention"),
        rope_local_theta=float(cfg.get("rope_local_base_freq") or local.get("rope_theta") or 10_000.0),
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
# Gemma 3's four norms a block: its post_attention_layernorm is the attention output's, not the MLP input's.
GEMMA3_NAMES = {**LLAMA_NAMES, "post_attention_layernorm": "ln_1_post", "pre_feedforward_layernorm": "ln_2",
                "post_feedforward_layernorm": "ln_2_post"}
JOINED = {"self_attn.q_proj": ("attn.c_attn", 0, 3), "self_attn.k_proj": ("attn.c_attn", 1, 3),
          "self_attn.v_proj": ("attn.c_attn", 2, 3), "mlp.gate_proj": ("mlp.c_fc", 0, 2), "mlp.up_proj": ("mlp.c_fc", 1, 2)}


def llama_state_dict(tensors, config: ModelConfig, matrices: torch.dtype = torch.float32,
                     norms_shifted: bool = False) -> dict[str, torch.Tensor]:
    """BladeGPT's state dict (fp32) from transformers' Llama/Qwen2/Qwen3/Gemma3 names, given as (name, tensor)
    pairs; q, k, v (and their biases) are stacked into c_attn, gate and up into c_fc, each as soon as
    its parts are in, so no more than one layer's parts are held apart. The blocks' weight matrices are
    kept in `matrices` (bf16 for a LoRA run's frozen base: a 1.7B model never holds its 6.8 GB in fp32).
    Gemma's norms scale by 1 + w: 1 is added to their weights, unless they hold it already (`norms_shifted`:
    GGUF's, as llama.cpp's converter writes them)."""
    ours: dict[str, torch.Tensor] = {}
    parts: dict[str, list] = {}
    names = GEMMA3_NAMES if config.arch == "gemma3" else LLAMA_NAMES
    shift = 1.0 if config.arch == "gemma3" and not norms_shifted else 0.0

    def block_matrix(key: str, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to(matrices) if key.endswith(BLOCK_MATRICES) else tensor

    for name, tensor in tensors:
        tensor = tensor.float()
        if name.endswith("norm.weight"):
            tensor = tensor + shift
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
            elif module in names:
                key = f"transformer.h.{i}.{names[module]}.{kind}"
                ours[key] = block_matrix(key, tensor)
            elif not module.endswith("rotary_emb"):
                ours[f"unexpected.{name}"] = tensor  # load_state_dict names it
        else:
            ours[f"unexpected.{name}"] = tensor
    if config.tie_embeddings:
        ours["lm_head.weight"] = ours.get("transformer.wte.weight")
    return ours
