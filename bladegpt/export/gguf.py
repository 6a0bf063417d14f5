"""GGUF export: one file that llama.cpp, ollama and LM Studio run, for every arch BladeGPT computes (the inverse
of sources/gguf.py). GPT-2's block goes out as llama.cpp's architecture `gpt2`, the Llama family as `llama`,
`qwen2` or `qwen3`, Gemma 3 as `gemma3`, with a pretrained model's own vocabulary (its converter's names, keys
and q/k permutation; Gemma's norms as the 1 + w they scale by, which BladeGPT holds).

Written with `gguf`, llama.cpp's own Python writer, under the names and shapes llama.cpp's graphs
load (src/models/gpt2.cpp). The vocabulary is a byte-level BPE (`tokenizer.ggml.model = gpt2`) for
every BladeGPT tokenizer but a pretrained SentencePiece one (Gemma 3's: `llama`, scored pieces), so the file
splits text into the same ids BladeGPT does:

- GPT-2's BPE: its tokens and merges, pre-tokenizer `gpt-2`, end of text 50256.
- a corpus BPE: tokens and merges rebuilt from tiktoken's ranks; its split is GPT-4's, which llama.cpp
  knows as `llama-bpe`; end of text its own last id.
- characters: one token a character and the end of text, plus the lone bytes and merges that rebuild
  characters of several UTF-8 bytes (so 'é' stays one id).

The end of text is `<|endoftext|>`, a control token at the id BladeGPT trained, so the text
`<|endoftext|>` is that one id here as in BladeGPT. A corpus BPE or char tokenizer saved before
BladeGPT had the token reads that text as characters; its file gets an added `<|endoftext|>` (llama.cpp
needs an end of text, and transformers' GGUF reader adds that very token to any GPT-2-type vocabulary
without it), so there the text is the end of text, and export says so.

Tokens the model has no id for (the added ones) take rows of the model's vocabulary padding (in turn, when
they outnumber it: the file gets as many rows as tokens), which training never targets, so their probability stays near zero: measured 6e-5 a token on witcher's char
model, where an untrained (zero) row gets 2e-3 (docs/benchmarks.md). Models trained since BladeGPT
reserved a padding row always have one; an older model without gets zero rows, and export says so.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from bladegpt.errors import UserError
from bladegpt.model import GPT, rope_frequencies
from bladegpt.sources.gguf import gemma3_settings
from bladegpt.tokenizer import Tokenizer
from bladegpt.tokenizer.hf import UNUSED
from bladegpt.export.gguf_vocab import Vocab, gguf_vocab

DTYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1")  # what the gguf package writes; K-quants: llama-quantize
SOURCE_KEY = "bladegpt.exported_from"  # marks a file BladeGPT wrote: --force may replace only those


def _rows(wte: torch.Tensor, n_own: int, n_tokens: int) -> torch.Tensor:
    """Embedding rows for every GGUF token: the model's own, then padding rows (taken in turn) for the
    added tokens, zeros when the model has no padding."""
    padding = wte[n_own:]
    extra = [padding[i % len(padding)] if len(padding) else torch.zeros_like(wte[0]) for i in range(n_tokens - n_own)]
    return torch.cat([wte[:n_own], *[r[None] for r in extra]]) if extra else wte[:n_own]


def gguf_tensors(model: GPT, vocab: Vocab) -> dict[str, torch.Tensor]:
    """llama.cpp's tensors for this model, as fp32 torch tensors in Linear's (out, in) order
    (gguf reverses the shape, giving ggml the {in, out} its graph multiplies by).

    The head is tied, so no `output.weight`: llama.cpp reuses `token_embd`. GPT-2's graph has
    biases everywhere; a model without them gets zeros, which compute exactly the same."""
    sd = {k: v.detach().float() for k, v in model.state_dict().items()}
    C = model.config.n_embd

    def bias(name: str, width: int) -> torch.Tensor:
        return sd.get(name, torch.zeros(width))

    out = {
        "token_embd.weight": _rows(sd["transformer.wte.weight"], vocab.n_own, len(vocab.tokens)),
        "position_embd.weight": sd["transformer.wpe.weight"],
        "output_norm.weight": sd["transformer.ln_f.weight"],
        "output_norm.bias": bias("transformer.ln_f.bias", C),
    }
    names = {"ln_1": "attn_norm", "attn.c_attn": "attn_qkv", "attn.c_proj": "attn_output",
             "ln_2": "ffn_norm", "mlp.c_fc": "ffn_up", "mlp.c_proj": "ffn_down"}
    for i in range(model.config.n_layer):
        for ours, theirs in names.items():
            weight = sd[f"transformer.h.{i}.{ours}.weight"]
            out[f"blk.{i}.{theirs}.weight"] = weight
            out[f"blk.{i}.{theirs}.bias"] = bias(f"transformer.h.{i}.{ours}.bias", weight.shape[0])
    return {k: v.contiguous() for k, v in out.items()}


def _encode(name: str, tensor: torch.Tensor, dtype: str):
    """The tensor's data and ggml type: 1-D tensors, norms and position embeddings stay f32 (as
    llama.cpp's converter keeps them); matrices take `dtype`, q8_0 falling back to f16 where a row is
    not a multiple of its 32-value block."""
    import gguf

    data = tensor.numpy().astype(np.float32)
    if dtype == "f32" or data.ndim == 1 or name in ("position_embd.weight", "rope_freqs.weight"):
        return data, gguf.GGMLQuantizationType.F32
    if dtype == "f16":
        return data.astype(np.float16), gguf.GGMLQuantizationType.F16
    qtype = gguf.GGMLQuantizationType[dtype.upper()]
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    if data.shape[-1] % block == 0:
        return gguf.quants.quantize(data, qtype), qtype
    return data.astype(np.float16), gguf.GGMLQuantizationType.F16


def write_gguf(path: Path | str, model: GPT, tokenizer: Tokenizer, dtype: str = "f16", name: str = "bladegpt",
               source: str = "") -> None:
    """Write the whole GGUF file at `path` (callers make it atomic)."""
    import gguf

    if dtype not in DTYPES:
        raise UserError(f"Unknown --dtype '{dtype}' for GGUF; choose one of: {', '.join(DTYPES)}.")
    cfg = model.config
    if cfg.arch == "gemma3":
        check_gemma3(cfg)
    vocab = gguf_vocab(tokenizer)
    writer = gguf.GGUFWriter(None, cfg.arch)
    writer.add_name(name)
    writer.add_string(SOURCE_KEY, source)
    if cfg.arch == "gpt2":
        writer.add_block_count(cfg.n_layer)
        writer.add_context_length(cfg.block_size)
        writer.add_embedding_length(cfg.n_embd)
        writer.add_feed_forward_length(4 * cfg.n_embd)
        writer.add_head_count(cfg.n_head)
        writer.add_layer_norm_eps(cfg.layer_norm_eps)
        tensors = gguf_tensors(model, vocab)
    else:
        # llama.cpp wants a token for every row: padding rows left over get [PAD] entries, and added tokens
        # past the padding (a large char vocabulary's byte pieces) get more rows, as GPT-2's path gives them
        rows = max(cfg.vocab_size, len(vocab.tokens))
        vocab.types += [UNUSED] * (rows - len(vocab.tokens))
        vocab.tokens += [f"[PAD{i}]" for i in range(len(vocab.tokens), rows)]
        add_llama_keys(writer, model, rows)
        grow = lambda weight: _rows(weight.detach().float(), vocab.n_own, rows)  # noqa: E731
        head = None if cfg.tie_embeddings else grow(model.lm_head.weight)
        tensors = llama_gguf_tensors(model, grow(model.transformer.wte.weight), head)
    file_types = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                  "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
                  "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0, "q4_1": gguf.LlamaFileType.MOSTLY_Q4_1}
    writer.add_file_type(file_types[dtype])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    if vocab.scores is None:
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(vocab.pre)
        writer.add_token_merges([f"{a} {b}" for a, b in vocab.merges])
    else:  # as llama.cpp's converter writes SentencePiece (_create_vocab_sentencepiece), padding rows scored too
        writer.add_tokenizer_model("llama")
        writer.add_token_scores(vocab.scores + [-1000.0] * (len(vocab.tokens) - len(vocab.scores)))
        writer.add_add_space_prefix(vocab.space_prefix)  # always written: llama.cpp's default is true
        if vocab.unk is not None:
            writer.add_unk_token_id(vocab.unk)
    writer.add_bos_token_id(vocab.eos if vocab.bos is None else vocab.bos)
    writer.add_eos_token_id(vocab.eos)
    for add, token_id in zip((writer.add_eot_token_id, writer.add_eom_token_id), vocab.stops):
        add(token_id)
    writer.add_add_bos_token(vocab.add_bos)
    if vocab.chat_template:
        writer.add_chat_template(vocab.chat_template)
    for tensor_name, tensor in tensors.items():
        data, qtype = _encode(tensor_name, tensor, dtype)
        writer.add_tensor(tensor_name, data, raw_dtype=qtype)
    writer.write_header_to_file(path=Path(path))
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


# -- the Llama family (arch llama, qwen2, qwen3) -------------------------------------------------------------------

# GGUF names of BladeGPT's block parts (llama.cpp's LLAMA/QWEN2/QWEN3/GEMMA3 tensor lists, gguf-py constants.py).
GGUF_NAMES = {"ln_1.weight": "attn_norm.weight", "attn.c_proj.weight": "attn_output.weight",
              "attn.q_norm.weight": "attn_q_norm.weight", "attn.k_norm.weight": "attn_k_norm.weight",
              "ln_2.weight": "ffn_norm.weight", "mlp.c_proj.weight": "ffn_down.weight",
              "ln_1_post.weight": "post_attention_norm.weight", "ln_2_post.weight": "post_ffw_norm.weight"}


def permute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """transformers' half-split q/k rows to llama.cpp's adjacent pairs, per head (its converter's
    LlamaModel.permute, for arch llama only): rows (n, 2, hs/2) -> (n, hs/2, 2)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llama_gguf_tensors(model: GPT, embedding: torch.Tensor, head: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """llama.cpp's tensors for a Llama-family model, fp32 in Linear's (out, in) order; `embedding` (and an untied
    `head`) have one row per GGUF token. No output.weight for a tied head (llama.cpp reuses token_embd); Llama
    3's scaling as rope_freqs.weight, one divisor per frequency pair."""
    cfg = model.config
    sd = {k: v.detach().float() for k, v in model.state_dict().items()}
    q, kv = cfg.n_head * cfg.head_dim, cfg.kv_heads * cfg.head_dim
    out = {"token_embd.weight": embedding, "output_norm.weight": sd["transformer.ln_f.weight"]}
    if not cfg.tie_embeddings:
        out["output.weight"] = sd["lm_head.weight"] if head is None else head
    if cfg.rope_scaling and cfg.rope_scaling["rope_type"] == "llama3":
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


def check_gemma3(cfg) -> None:
    """UserError (one line) for a Gemma 3 that llama.cpp's gemma3 would compute otherwise: a file holds neither
    its window's pattern, its sliding layers' RoPE base nor its query scale, which llama.cpp fixes."""
    fixed = gemma3_settings({}, cfg.n_layer, cfg.sliding_window, cfg.n_head, cfg.n_embd, cfg.head_dim)
    for key in ("sliding_layers", "rope_local_theta", "query_pre_attn_scalar"):
        if fixed[key] != getattr(cfg, key):
            raise UserError(f"This Gemma 3 has {key} {getattr(cfg, key)}, where llama.cpp's gemma3 computes "
                            f"{fixed[key]}, and a GGUF file cannot say otherwise; export --format hf instead.")


def add_llama_keys(writer, model: GPT, n_tokens: int) -> None:
    """The {arch}.* keys llama.cpp's converter writes for these families."""
    import gguf

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
    if cfg.rope_scaling and cfg.rope_scaling["rope_type"] == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(cfg.rope_scaling["factor"])
    if cfg.arch == "gemma3":  # llama.cpp's Gemma3Model.set_gguf_parameters
        writer.add_sliding_window(cfg.sliding_window)
        if cfg.logit_softcap is not None:
            writer.add_final_logit_softcapping(cfg.logit_softcap)


def exported_by_us(path: Path) -> bool:
    """Whether a GGUF file is one BladeGPT exported (so --force may replace it)."""
    try:
        import gguf

        return SOURCE_KEY in gguf.GGUFReader(path).fields
    except Exception:  # not a GGUF file at all, or unreadable: not ours
        return False
