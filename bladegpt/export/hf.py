"""A transformers folder out, the inverse of sources/hf.py's reading: GPT-2's GPT2LMHeadModel, the Llama
family's LlamaForCausalLM, Qwen2ForCausalLM or Qwen3ForCausalLM, or Gemma3ForCausalLM (names, layout,
config.json); the tokenizer as the files transformers reads.

config.json carries the 4.x keys (`rope_theta`, `rope_scaling` with `rope_type`), which transformers 4.x
reads as they are and 5.x standardizes into `rope_parameters` (shared/research/llama-family.md §1.3).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from bladegpt import strictjson
from bladegpt.files import atomic_write
from bladegpt.model import GPT
from bladegpt.tokenizer import GPT2_EOT, CharTokenizer, Tokenizer
from bladegpt.tokenizer.bytelevel import bpe_merges, spell

HF_ACTIVATIONS = {"gelu": "gelu", "gelu_tanh": "gelu_new"}  # ModelConfig.activation -> transformers' name
HF_ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM",
                    "gemma3": "Gemma3ForCausalLM"}
# Gemma 3's norms by transformers' names (its post_attention_layernorm is the attention output's); each weight
# is saved as the w of Gemma3RMSNorm's 1 + w.
GEMMA3_NORMS = {"ln_1": "input_layernorm", "ln_1_post": "post_attention_layernorm", "ln_2": "pre_feedforward_layernorm",
                "ln_2_post": "post_feedforward_layernorm"}


def llama_hf_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """transformers' names: c_attn split into q/k/v_proj (and their biases), c_fc into gate/up_proj; fp32
    copies (safetensors refuses tensors that share memory, which the splits would)."""
    cfg = model.config
    sd = model.state_dict()
    q, kv = cfg.n_head * cfg.head_dim, cfg.kv_heads * cfg.head_dim
    shift = 1.0 if cfg.arch == "gemma3" else 0.0  # BladeGPT holds Gemma's 1 + w (model.RMSNorm)
    out = {"model.embed_tokens.weight": sd["transformer.wte.weight"],
           "model.norm.weight": sd["transformer.ln_f.weight"] - shift}
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = sd["lm_head.weight"]
    norms = GEMMA3_NORMS if cfg.arch == "gemma3" else {"ln_1": "input_layernorm", "ln_2": "post_attention_layernorm"}
    for i in range(cfg.n_layer):
        ours, theirs = f"transformer.h.{i}.", f"model.layers.{i}."
        for norm, name in norms.items():
            out[f"{theirs}{name}.weight"] = sd[f"{ours}{norm}.weight"] - shift
        for kind in ("weight", "bias"):
            if ours + "attn.c_attn." + kind in sd:
                for name, part in zip("qkv", sd[ours + "attn.c_attn." + kind].split((q, kv, kv))):
                    out[f"{theirs}self_attn.{name}_proj.{kind}"] = part
        out[theirs + "self_attn.o_proj.weight"] = sd[ours + "attn.c_proj.weight"]
        if cfg.qk_norm:
            out[theirs + "self_attn.q_norm.weight"] = sd[ours + "attn.q_norm.weight"] - shift
            out[theirs + "self_attn.k_norm.weight"] = sd[ours + "attn.k_norm.weight"] - shift
        gate, up = sd[ours + "mlp.c_fc.weight"].chunk(2)
        out[theirs + "mlp.gate_proj.weight"], out[theirs + "mlp.up_proj.weight"] = gate, up
        out[theirs + "mlp.down_proj.weight"] = sd[ours + "mlp.c_proj.weight"]
    return {k: v.detach().float().contiguous().clone() for k, v in out.items()}


def llama_hf_config(model: GPT, bos: int | None, eos: int | list[int] | None) -> dict:
    """config.json of the transformers model computing what `model` computes."""
    cfg = model.config
    config = {
        "architectures": [HF_ARCHITECTURES[cfg.arch]],
        "model_type": cfg.arch,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.n_embd,
        "intermediate_size": cfg.mlp_size,
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.context_length or cfg.block_size,
        "rms_norm_eps": cfg.layer_norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": cfg.rope_scaling,
        "tie_word_embeddings": cfg.tie_embeddings,
        "attention_dropout": 0.0,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "torch_dtype": "float32",
    }
    if cfg.arch == "llama":
        config.update(attention_bias=False, mlp_bias=False)
    elif cfg.arch == "gemma3":
        del config["hidden_act"]
        config.update(model_type="gemma3_text", hidden_activation="gelu_pytorch_tanh", attention_bias=False,
                      query_pre_attn_scalar=cfg.query_pre_attn_scalar or cfg.head_dim,
                      sliding_window=cfg.sliding_window, rope_local_base_freq=cfg.rope_local_theta or cfg.rope_theta,
                      layer_types=["sliding_attention" if i in cfg.sliding_layers else "full_attention"
                                   for i in range(cfg.n_layer)],
                      final_logit_softcapping=cfg.logit_softcap, attn_logit_softcapping=None)
    else:
        config.update(use_sliding_window=False, sliding_window=None, max_window_layers=cfg.n_layer)
    return config


def write_pretrained_tokenizer(out, tokenizer, max_length: int) -> None:
    """A pretrained model's tokenizer (kind hf) back as the files transformers reads: its tokenizer.json
    (with a template adding bos where the model expects one and the file had none, as Llama 3's), and
    tokenizer_config.json naming bos/eos and carrying the chat template."""
    from tokenizers import processors

    rust = tokenizer.tokenizer
    if tokenizer.add_bos and rust.post_processor is None:
        bos = rust.id_to_token(tokenizer.bos_id)
        rust = type(rust).from_str(rust.to_str())
        rust.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                             special_tokens=[(bos, tokenizer.bos_id)])
    (out / "tokenizer.json").write_text(rust.to_str(), encoding="utf-8")
    name = lambda i: None if i is None else rust.id_to_token(i)  # noqa: E731
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": max_length,
              "clean_up_tokenization_spaces": False, "bos_token": name(tokenizer.bos_id),
              "eos_token": name(tokenizer.eos_id), "add_bos_token": tokenizer.add_bos}
    if tokenizer.chat_template:
        config["chat_template"] = tokenizer.chat_template
    (out / "tokenizer_config.json").write_text(strictjson.dumps(config, indent=2), encoding="utf-8")


def hf_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """GPT2LMHeadModel's names and layout: Conv1D weights are (in, out), so transpose Linear's."""
    cfg = model.config
    sd = model.state_dict()
    out = {"transformer.wte.weight": sd["transformer.wte.weight"], "transformer.wpe.weight": sd["transformer.wpe.weight"]}
    for name, tensor in sd.items():
        if not name.startswith("transformer.h.") and not name.startswith("transformer.ln_f"):
            continue
        if name.endswith((".c_attn.weight", ".c_proj.weight", ".c_fc.weight")):
            tensor = tensor.t()
        out[name] = tensor
    if not cfg.bias:  # GPT-2 has biases everywhere: zeros are exactly a model without them
        for name in list(out):
            if name.endswith(".weight") and ("ln_" in name or ".c_" in name):
                bias = name[: -len("weight")] + "bias"
                width = out[name].shape[-1] if ".c_" in name else out[name].shape[0]
                out[bias] = torch.zeros(width)
    return {k: v.detach().float().contiguous().clone() for k, v in out.items()}


def eos_value(stop_ids: tuple[int, ...]) -> int | list[int] | None:
    """`eos_token_id` as transformers reads it (config.json, generation_config.json): the one id, or the list
    generate() stops at any of (as Llama 3.1's and Qwen2.5-Instruct's files write it)."""
    return list(stop_ids) if len(stop_ids) > 1 else stop_ids[0] if stop_ids else None


def hf_config(model: GPT, stop_ids: tuple[int, ...]) -> dict:
    """config.json of GPT2LMHeadModel computing what `model` computes; bos is the first stop id, as GPT-2's."""
    cfg = model.config
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.block_size,
        "n_ctx": cfg.block_size,
        "n_embd": cfg.n_embd,
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "n_inner": None,
        "activation_function": HF_ACTIVATIONS[cfg.activation],
        "resid_pdrop": cfg.dropout,
        "embd_pdrop": cfg.dropout,
        "attn_pdrop": cfg.dropout,
        "layer_norm_epsilon": cfg.layer_norm_eps,
        "initializer_range": 0.02,
        "tie_word_embeddings": True,
        "bos_token_id": stop_ids[0] if stop_ids else None,
        "eos_token_id": eos_value(stop_ids),
        "torch_dtype": "float32",
    }


def write_hf_model(out: Path, model: GPT, tokenizer: Tokenizer) -> None:
    """config.json, generation_config.json and model.safetensors of GPT2LMHeadModel, or of the Llama
    family's class for a Llama-family model."""
    cfg = model.config
    stops = tokenizer.stop_ids  # generate() stops where BladeGPT's sampling stops
    eos, pad = eos_value(stops), stops[0] if stops else None
    if cfg.arch != "gpt2":
        config, state = llama_hf_config(model, tokenizer.bos_id, eos), llama_hf_state_dict(model)
        generation = {"bos_token_id": tokenizer.bos_id, "eos_token_id": eos, "pad_token_id": pad}
        if tokenizer.vocab_size < cfg.vocab_size:
            generation["suppress_tokens"] = list(range(tokenizer.vocab_size, cfg.vocab_size))
        (out / "config.json").write_text(strictjson.dumps(config, indent=2), encoding="utf-8")
        (out / "generation_config.json").write_text(strictjson.dumps(generation, indent=2), encoding="utf-8")
        atomic_write(out / "model.safetensors", lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))
        return
    (out / "config.json").write_text(strictjson.dumps(hf_config(model, stops), indent=2), encoding="utf-8")
    # Ids past the tokenizer's vocabulary are padding for speed: never generate them.
    generation = {"suppress_tokens": list(range(tokenizer.vocab_size, cfg.vocab_size)),
                  "bos_token_id": pad, "eos_token_id": eos, "pad_token_id": pad}
    (out / "generation_config.json").write_text(strictjson.dumps(generation, indent=2), encoding="utf-8")
    atomic_write(out / "model.safetensors", lambda tmp: save_file(hf_state_dict(model), tmp, metadata={"format": "pt"}))


def hf_tokenizer_json(tokenizer: Tokenizer) -> str:
    """A `tokenizers` JSON for any BladeGPT tokenizer: byte-level BPE for the BPEs, one id a character for
    char; `<|endoftext|>` a special token at the id BladeGPT gives it, matched in text before anything else."""
    from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as HFTokenizer

    eot = {} if tokenizer.eot_id is None else {GPT2_EOT: tokenizer.eot_id}
    if isinstance(tokenizer, CharTokenizer):
        vocab = {ch: i for i, ch in enumerate(tokenizer.chars)}
        hf = HFTokenizer(models.WordLevel({**vocab, **eot}, unk_token=None))
        hf.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
        hf.decoder = decoders.Fuse()
    else:
        vocab = {spell(token): rank for token, rank in tokenizer.ranks.items()}
        hf = HFTokenizer(models.BPE({**vocab, **eot}, bpe_merges(tokenizer.ranks), fuse_unk=False, byte_fallback=False))
        hf.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(tokenizer.pattern), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
        hf.decoder = decoders.ByteLevel()
    hf.add_special_tokens([AddedToken(text, special=True) for text in eot])
    return hf.to_str()


def write_hf_tokenizer(out: Path, tokenizer: Tokenizer, max_length: int) -> None:
    if tokenizer.kind == "hf":
        return write_pretrained_tokenizer(out, tokenizer, max_length)
    (out / "tokenizer.json").write_text(hf_tokenizer_json(tokenizer), encoding="utf-8")
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": max_length,
        "clean_up_tokenization_spaces": False,
        "add_prefix_space": False,
    }
    if tokenizer.eot_id is not None:
        config.update(bos_token=GPT2_EOT, eos_token=GPT2_EOT)
    if tokenizer.kind == "gpt2":
        config.update(unk_token=GPT2_EOT)  # as GPT-2's own tokenizer_config
    (out / "tokenizer_config.json").write_text(strictjson.dumps(config, indent=2), encoding="utf-8")
