"""The Llama family back out: transformers' LlamaForCausalLM, Qwen2ForCausalLM or Qwen3ForCausalLM (names,
layout, config.json), the inverse of sources/hf.py's reading.

config.json carries the 4.x keys (`rope_theta`, `rope_scaling` with `rope_type`), which transformers 4.x
reads as they are and 5.x standardizes into `rope_parameters` (shared/research/llama-family.md §1.3).
"""

from __future__ import annotations

import torch

from bladegpt.model import GPT

HF_ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}


def llama_hf_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """transformers' names: c_attn split into q/k/v_proj (and their biases), c_fc into gate/up_proj; fp32
    copies (safetensors refuses tensors that share memory, which the splits would)."""
    cfg = model.config
    sd = model.state_dict()
    q, kv = cfg.n_head * cfg.head_dim, cfg.kv_heads * cfg.head_dim
    out = {"model.embed_tokens.weight": sd["transformer.wte.weight"], "model.norm.weight": sd["transformer.ln_f.weight"]}
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = sd["lm_head.weight"]
    for i in range(cfg.n_layer):
        ours, theirs = f"transformer.h.{i}.", f"model.layers.{i}."
        out[theirs + "input_layernorm.weight"] = sd[ours + "ln_1.weight"]
        out[theirs + "post_attention_layernorm.weight"] = sd[ours + "ln_2.weight"]
        for kind in ("weight", "bias"):
            if ours + "attn.c_attn." + kind in sd:
                for name, part in zip("qkv", sd[ours + "attn.c_attn." + kind].split((q, kv, kv))):
                    out[f"{theirs}self_attn.{name}_proj.{kind}"] = part
        out[theirs + "self_attn.o_proj.weight"] = sd[ours + "attn.c_proj.weight"]
        if cfg.qk_norm:
            out[theirs + "self_attn.q_norm.weight"] = sd[ours + "attn.q_norm.weight"]
            out[theirs + "self_attn.k_norm.weight"] = sd[ours + "attn.k_norm.weight"]
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
    else:
        config.update(use_sliding_window=False, sliding_window=None, max_window_layers=cfg.n_layer)
    return config


# -- GGUF ------------------------------------------------------------------------------------------------

# GGUF names of BladeGPT's block parts (llama.cpp's LLAMA/QWEN2/QWEN3 tensor lists, gguf-py constants.py).
GGUF_NAMES = {"ln_1.weight": "attn_norm.weight", "attn.c_proj.weight": "attn_output.weight",
              "attn.q_norm.weight": "attn_q_norm.weight", "attn.k_norm.weight": "attn_k_norm.weight",
              "ln_2.weight": "ffn_norm.weight", "mlp.c_proj.weight": "ffn_down.weight"}


def permute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """transformers' half-split q/k rows to llama.cpp's adjacent pairs, per head (its converter's
    LlamaModel.permute, for arch llama only): rows (n, 2, hs/2) -> (n, hs/2, 2)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llama_gguf_tensors(model: GPT, embedding: torch.Tensor, head: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """llama.cpp's tensors for a Llama-family model, fp32 in Linear's (out, in) order; `embedding` (and an untied
    `head`) have one row per GGUF token. No output.weight for a tied head (llama.cpp reuses token_embd); Llama
    3's scaling as rope_freqs.weight, one divisor per frequency pair."""
    from bladegpt.model import rope_frequencies

    cfg = model.config
    sd = {k: v.detach().float() for k, v in model.state_dict().items()}
    q, kv = cfg.n_head * cfg.head_dim, cfg.kv_heads * cfg.head_dim
    out = {"token_embd.weight": embedding, "output_norm.weight": sd["transformer.ln_f.weight"]}
    if not cfg.tie_embeddings:
        out["output.weight"] = sd["lm_head.weight"] if head is None else head
    if cfg.rope_scaling:
        plain = rope_frequencies(type(cfg)(**{**cfg.to_dict(), "rope_scaling": None}))
        out["rope_freqs.weight"] = plain / rope_frequencies(cfg)
    for i in range(cfg.n_layer):
        ours = f"transformer.h.{i}."
        for kind in ("weight", "bias"):
            if ours + "attn.c_attn." + kind in sd:
                wq, wk, wv = sd[ours + "attn.c_attn." + kind].split((q, kv, kv))
                if cfg.arch == "llama":
                    wq, wk = permute(wq, cfg.n_head), permute(wk, cfg.kv_heads)
                out.update({f"blk.{i}.attn_q.{kind}": wq, f"blk.{i}.attn_k.{kind}": wk, f"blk.{i}.attn_v.{kind}": wv})
        gate, up = sd[ours + "mlp.c_fc.weight"].chunk(2)
        out[f"blk.{i}.ffn_gate.weight"], out[f"blk.{i}.ffn_up.weight"] = gate, up
        for name, theirs in GGUF_NAMES.items():
            if ours + name in sd:
                out[f"blk.{i}.{theirs}"] = sd[ours + name]
    return {k: v.contiguous() for k, v in out.items()}


def add_llama_keys(writer, model: GPT, n_tokens: int) -> None:
    """The {arch}.* keys llama.cpp's converter writes for these families."""
    cfg = model.config
    writer.add_context_length(cfg.context_length or cfg.block_size)
    writer.add_embedding_length(cfg.n_embd)
    writer.add_block_count(cfg.n_layer)
    writer.add_feed_forward_length(cfg.mlp_size)
    writer.add_head_count(cfg.n_head)
    writer.add_head_count_kv(cfg.kv_heads)
    writer.add_rope_freq_base(cfg.rope_theta)
    writer.add_rope_dimension_count(cfg.head_dim)
    writer.add_key_length(cfg.head_dim)
    writer.add_value_length(cfg.head_dim)
    writer.add_layer_norm_rms_eps(cfg.layer_norm_eps)
    writer.add_vocab_size(n_tokens)


# llama.cpp's pre-tokenizer names for the splits these models' tokenizer.json files spell (convert_hf_to_gguf
# hashes their output to the same names): Llama 3's and Qwen2's regexes as Hugging Face writes them.
HF_SPLITS = {
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+": "llama-bpe",
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+": "qwen2",
}


def gguf_pre(spec: dict) -> str:
    """The `tokenizer.ggml.pre` name of a tokenizer.json's split, so llama.cpp splits text as the model does;
    UserError (one line) for a split llama.cpp has no name for."""
    from bladegpt.errors import UserError
    from bladegpt.tokenizer.hf import SPLITS

    pre = spec.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [step.get("type") for step in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and steps[1].get("use_regex", True):
        return "smollm"
    if kinds[-1:] == ["ByteLevel"] and set(kinds[:-1]) == {"Split"}:
        regexes = tuple(step["pattern"].get("Regex", "") for step in steps[:-1])
        if len(regexes) == 1 and regexes[0] in HF_SPLITS:
            return HF_SPLITS[regexes[0]]
        for name in ("llama-bpe", "qwen2", "smollm", "gpt-2", "smaug-bpe", "default"):
            if SPLITS[name].regexes == regexes:
                return name
        for name, split in SPLITS.items():
            if split.regexes == regexes:
                return name
    raise UserError("This tokenizer splits text in a way llama.cpp has no name for (tokenizer.ggml.pre), so a GGUF "
                    "file would tokenize differently; export --format hf instead.")


def hf_vocab(tokenizer):
    """A pretrained model's tokenizer (kind hf) as llama.cpp's converter writes it: every id's token,
    CONTROL for special tokens, USER_DEFINED for added ones, UNUSED for padding entries, the merges, the
    split's name, bos, the stop ids (eos, then eot and eom), whether bos is added, the chat template."""
    import json

    from bladegpt.export.gguf import Vocab
    from bladegpt.tokenizer.hf import CONTROL, NORMAL, UNUSED, USER_DEFINED

    spec = json.loads(tokenizer.tokenizer.to_str())
    added = tokenizer.tokenizer.get_added_tokens_decoder()
    tokens, types = [], []
    for i in range(tokenizer.vocab_size):
        token = tokenizer.tokenizer.id_to_token(i)
        tokens.append(token if token is not None else f"[PAD{i}]")
        types.append(UNUSED if token is None or i in tokenizer.unused else CONTROL if i in tokenizer.special_ids
                     else USER_DEFINED if i in added else NORMAL)
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in spec["model"].get("merges", [])]
    stops = tokenizer.stop_ids or (0,)
    return Vocab(tokens, types, merges, gguf_pre(spec), stops[0], tokenizer.vocab_size, bos=tokenizer.bos_id,
                 add_bos=tokenizer.add_bos, chat_template=tokenizer.chat_template, stops=stops[1:3])


STRIP_FLAGS = ("lstrip", "rstrip", "single_word")


def unkept_flags(tokenizer) -> list[str]:
    """A pretrained tokenizer's added tokens whose flags a GGUF file cannot hold, as 'TOKEN (flag, ...)': GGUF
    keeps a token type alone, and llama.cpp sets lstrip/rstrip only for a few models it knows by name
    (llama-vocab.cpp; llama.cpp#15842), so text around these tokens encodes to other ids there. `normalized`
    counts only where the tokenizer has a normalizer (llama.cpp matches added tokens in the raw text)."""
    import json

    normalizes = json.loads(tokenizer.tokenizer.to_str()).get("normalizer") is not None
    unkept = []
    for _, token in sorted(tokenizer.tokenizer.get_added_tokens_decoder().items()):
        flags = [flag for flag in STRIP_FLAGS if getattr(token, flag)] + (["normalized"] if normalizes and
                                                                          token.normalized else [])
        if flags:
            unkept.append(f"{token.content} ({', '.join(flags)})")
    return unkept


def write_pretrained_tokenizer(out, tokenizer, max_length: int) -> None:
    """A pretrained model's tokenizer (kind hf) back as the files transformers reads: its tokenizer.json
    (with a template adding bos where the model expects one and the file had none, as Llama 3's), and
    tokenizer_config.json naming bos/eos and carrying the chat template."""
    from tokenizers import processors

    from bladegpt import strictjson

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
