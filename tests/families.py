"""Tiny random Llama-family models built by transformers, saved as Hugging Face folders and as GGUF files
written the way llama.cpp's converter writes them (conversion/llama.py, conversion/qwen.py): q/k rows
permuted for arch llama, norms and 1-D tensors in F32, no output.weight for a tied head, rope_freqs for
Llama 3's scaling."""

from __future__ import annotations

import math

import numpy as np
import torch

LLAMA3 = {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 8192}

# name -> (transformers class name, config kwargs): grouped and full heads, tied and untied heads, Qwen2's
# biases, Qwen3's q/k norm with a head_dim of its own, Llama 3's rope scaling.
FAMILIES = {
    "llama-gqa-tied": ("Llama", dict(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                                     rope_parameters={"rope_type": "default", "rope_theta": 100000.0})),
    "llama-mha-untied-llama3": ("Llama", dict(num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=False,
                                              rope_parameters={**LLAMA3, "rope_theta": 500000.0})),
    "qwen2-biases": ("Qwen2", dict(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)),
    "qwen3-qknorm": ("Qwen3", dict(num_attention_heads=4, num_key_value_heads=2, head_dim=32, tie_word_embeddings=False)),
}


def tiny_family(name: str, seed: int = 0, vocab: int = 320):
    """A 2-layer random model of the family, every weight random (norms and biases too, so a dropped or
    misplaced one shows in the logits)."""
    import transformers

    cls, kwargs = FAMILIES[name]
    config = getattr(transformers, f"{cls}Config")(vocab_size=vocab, hidden_size=64, intermediate_size=96,
                                                     num_hidden_layers=2, max_position_embeddings=64,
                                                     rms_norm_eps=1e-5, **kwargs)
    torch.manual_seed(seed)
    model = getattr(transformers, f"{cls}ForCausalLM")(config).eval()
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if pname.endswith("norm.weight") or pname.endswith("layernorm.weight"):
                p.copy_(1 + 0.3 * torch.randn_like(p))
            elif pname.endswith(".bias"):
                p.copy_(0.3 * torch.randn_like(p))
    return model


def logits_of(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        out = model(torch.tensor([ids]))
    return (out.logits if hasattr(out, "logits") else out[0]).float()


def permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's LlamaModel.permute: transformers' half-split rows to adjacent pairs, per head."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


GGUF_NAMES = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
              "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "self_attn.q_norm": "attn_q_norm",
              "self_attn.k_norm": "attn_k_norm", "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate",
              "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}


def write_gguf(model, path, dtype: str = "f32", tokenizer=None, split_max_tensors: int = 0) -> None:
    """The model as llama.cpp's converter writes it; `tokenizer` (a callable taking the writer) adds a
    vocabulary, else a plain byte-level one of the right size is written. With `split_max_tensors`, in
    parts of that many tensors as gguf-split writes them (path-00001-of-0000N.gguf, split.* keys)."""
    import gguf

    cfg = model.config
    arch = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}[cfg.model_type]
    writer = gguf.GGUFWriter(str(path), arch, split_max_tensors=split_max_tensors)
    heads, kv = cfg.num_attention_heads, cfg.num_key_value_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    writer.add_name(f"tiny-{arch}")
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv)
    writer.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    qtype = {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16,
             "q8_0": gguf.GGMLQuantizationType.Q8_0}[dtype]
    if tokenizer is not None:
        tokenizer(writer)
    else:
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre("gpt-2")
        writer.add_token_list([f"t{i}" for i in range(cfg.vocab_size)])
        writer.add_token_types([1] * cfg.vocab_size)
    state = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    scaling = cfg.rope_parameters if cfg.rope_parameters.get("rope_type") == "llama3" else None
    if scaling:  # llama.cpp's generate_extra_tensors
        base = 1.0 / (cfg.rope_parameters["rope_theta"] ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
        factors = []
        low_wl = scaling["original_max_position_embeddings"] / scaling["low_freq_factor"]
        high_wl = scaling["original_max_position_embeddings"] / scaling["high_freq_factor"]
        for freq in base:
            wavelen = 2 * math.pi / freq
            if wavelen < high_wl:
                factors.append(1.0)
            elif wavelen > low_wl:
                factors.append(scaling["factor"])
            else:
                s = (scaling["original_max_position_embeddings"] / wavelen - scaling["low_freq_factor"]) / (
                    scaling["high_freq_factor"] - scaling["low_freq_factor"])
                factors.append(1.0 / ((1 - s) / scaling["factor"] + s))
        writer.add_tensor("rope_freqs.weight", np.array(factors, dtype=np.float32))
    for name, w in state.items():
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        if name == "model.embed_tokens.weight":
            out = "token_embd.weight"
        elif name == "model.norm.weight":
            out = "output_norm.weight"
        elif name == "lm_head.weight":
            out = "output.weight"
        else:
            _, _, i, rest = name.split(".", 3)
            module, kind = rest.rsplit(".", 1)
            out = f"blk.{i}.{GGUF_NAMES[module]}.{kind}"
            if arch == "llama" and module in ("self_attn.q_proj", "self_attn.k_proj"):
                w = permute(w, heads if module == "self_attn.q_proj" else kv)
        if w.ndim == 1 or qtype == gguf.GGMLQuantizationType.F32:
            writer.add_tensor(out, w.astype(np.float32))
        elif qtype == gguf.GGMLQuantizationType.F16:
            writer.add_tensor(out, w.astype(np.float16))
        else:
            writer.add_tensor(out, gguf.quants.quantize(w, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
