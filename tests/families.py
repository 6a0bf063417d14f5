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


# Gemma 3: a window of 8 (the test ids reach past it), layers 0, 1, 3, 4 sliding and 2, 5 global (the pattern 3:
# 2 local, 1 global), a RoPE base for each kind, query_pre_attn_scalar apart from head_dim, grouped heads; the
# soft-capped one caps its logits (Gemma 2's final_logit_softcapping, which Gemma3TextConfig keeps).
GEMMA3 = dict(num_attention_heads=4, num_key_value_heads=2, head_dim=32, sliding_window=8, query_pre_attn_scalar=24,
              layer_types=["sliding_attention", "sliding_attention", "full_attention"] * 2,
              rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 100000.0},
                               "sliding_attention": {"rope_type": "default", "rope_theta": 1000.0}})
GEMMA3_FAMILIES = {
    "gemma3": ("Gemma3Text", dict(GEMMA3, num_hidden_layers=6)),
    # What llama.cpp's gemma3 computes from a GGUF, which holds neither pattern, local base nor query scalar:
    # 5 sliding layers to 1 global, the local base 10,000, scores scaled by head_dim.
    "gemma3-llamacpp": ("Gemma3Text", dict(GEMMA3, num_hidden_layers=6, query_pre_attn_scalar=32, layer_types=None,
                                           rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 100000.0},
                                                            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}})),
    "gemma3-softcap-linear": ("Gemma3Text", dict(GEMMA3, num_hidden_layers=6, final_logit_softcapping=5.0,
                                                 rope_parameters={**GEMMA3["rope_parameters"], "full_attention": {
                                                     "rope_type": "linear", "factor": 4.0, "rope_theta": 100000.0}})),
}
TORCH_CLASSES = {"Gemma3Text": "Gemma3"}  # Gemma3TextConfig's model is Gemma3ForCausalLM


def tiny_family(name: str, seed: int = 0, vocab: int = 320):
    """A 2-layer random model of the family, every weight random (norms and biases too, so a dropped or
    misplaced one shows in the logits)."""
    import transformers

    cls, kwargs = {**FAMILIES, **GEMMA3_FAMILIES}[name]
    config = getattr(transformers, f"{cls}Config")(vocab_size=vocab, hidden_size=64, intermediate_size=96,
                                                     **{"num_hidden_layers": 2, **kwargs}, max_position_embeddings=64,
                                                     rms_norm_eps=1e-5)
    torch.manual_seed(seed)
    model = getattr(transformers, f"{TORCH_CLASSES.get(cls, cls)}ForCausalLM")(config).eval()
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if pname.endswith("norm.weight") or pname.endswith("layernorm.weight"):
                p.copy_((0 if cls == "Gemma3Text" else 1) + 0.3 * torch.randn_like(p))  # Gemma's scale 1 + w
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


GEMMA3_GGUF_NAMES = {"post_attention_layernorm": "post_attention_norm", "pre_feedforward_layernorm": "ffn_norm",
                     "post_feedforward_layernorm": "post_ffw_norm"}


def write_gguf(model, path, dtype: str = "f32", tokenizer=None, split_max_tensors: int = 0) -> None:
    """The model as llama.cpp's converter writes it; `tokenizer` (a callable taking the writer) adds a
    vocabulary, else a plain byte-level one of the right size is written. With `split_max_tensors`, in
    parts of that many tensors as gguf-split writes them (path-00001-of-0000N.gguf, split.* keys)."""
    import gguf

    cfg = model.config
    arch = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "gemma3_text": "gemma3"}[cfg.model_type]
    gemma = arch == "gemma3"
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
    writer.add_rope_freq_base(cfg.rope_parameters["full_attention"]["rope_theta"] if gemma
                              else cfg.rope_parameters["rope_theta"])
    if gemma:  # llama.cpp's Gemma3Model.set_gguf_parameters
        writer.add_sliding_window(cfg.sliding_window)
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
    names = {**GGUF_NAMES, **GEMMA3_GGUF_NAMES} if gemma else GGUF_NAMES
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
            out = f"blk.{i}.{names[module]}.{kind}"
            if arch == "llama" and module in ("self_attn.q_proj", "self_attn.k_proj"):
                w = permute(w, heads if module == "self_attn.q_proj" else kv)
        if gemma and name.endswith("norm.weight"):
            w = w + 1  # llama.cpp's Gemma3Model.norm_shift: Gemma3RMSNorm scales by 1 + w
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
