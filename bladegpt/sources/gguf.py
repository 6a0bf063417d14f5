"""Reading a GGUF file (llama.cpp's format; ollama's and LM Studio's stores hold them): its config, its
weights dequantized to fp32 one tensor at a time, and its tokenizer.

Arches: llama, qwen2, qwen3 (the Llama block) and gpt2 (BladeGPT's own exports). llama.cpp's converter
stores arch llama's q and k rows permuted for its interleaved RoPE (conversion/llama.py `permute`);
they are put back in transformers' half-split order here (transformers' `_reverse_permute_weights`),
with n_kv_head for k. Llama 3's frequency scaling travels as `rope_freqs.weight`, one factor per pair.
Facts and sources: shared/research/llama-family.md §2-4.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from bladegpt.config import ModelConfig
from bladegpt.errors import ConfigError, SourceError, TokenizerError
from bladegpt.sources.base import Pretrained, build_model, size
from bladegpt.model import rope_frequencies
from bladegpt.tokenizer.hf import HFTokenizer
from bladegpt.sources.hf import llama_state_dict

ARCHES = ("llama", "qwen2", "qwen3", "gpt2")
# GGUF tensor names -> transformers' (llama family); q/k/v and gate/up are joined by hf.llama_state_dict.
LLAMA_NAMES = {
    "attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm", "ffn_norm": "post_attention_layernorm", "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}
# GGUF names -> BladeGPT's (arch gpt2, as export/gguf.py writes them).
GPT2_NAMES = {"attn_norm": "ln_1", "attn_qkv": "attn.c_attn", "attn_output": "attn.c_proj", "ffn_norm": "ln_2",
              "ffn_up": "mlp.c_fc", "ffn_down": "mlp.c_proj"}
# Llama 3.1/3.2's llama3 scaling band (config.json's low/high_freq_factor, original_max_position_embeddings):
# rope_freqs.weight holds only the resulting factors; these rebuild parameters that give exactly them.
LLAMA3_BAND = {"low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}


def open_gguf(path: Path):
    import gguf

    try:
        return gguf.GGUFReader(str(path))
    except Exception as e:  # a short, damaged or non-GGUF file raises whatever the reader hits first
        raise SourceError(f"{path} is not a readable GGUF file ({type(e).__name__}: {e}); it may be truncated or "
                          "damaged: fetch it again.") from None


def metadata(reader, skip: tuple[str, ...] = ()) -> dict:
    """Every key/value of the file as plain Python values (str, int, float, bool, lists of them); strings
    that are not UTF-8 (a damaged vocabulary) are read with U+FFFD, never raised on."""
    from gguf import GGUFValueType

    meta = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or (skip and key.startswith(skip)):
            continue
        kind = field.types[0] if field.types else None
        if kind == GGUFValueType.ARRAY:
            values = [field.parts[i] for i in field.data]
            if field.types[-1] == GGUFValueType.STRING:
                meta[key] = [bytes(v).decode("utf-8", errors="replace") for v in values]
            else:
                meta[key] = [x for v in values for x in v.tolist()]
        elif kind == GGUFValueType.STRING:
            meta[key] = bytes(field.parts[-1]).decode("utf-8", errors="replace")
        elif kind is not None:
            meta[key] = field.parts[-1].tolist()[0]
    return meta


def read_metadata(path: Path) -> dict:
    """A GGUF file's key/values (metadata); SourceError (one line) when it is not a readable GGUF file."""
    return metadata(open_gguf(Path(path)))


def unpermute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """llama.cpp's q/k row order (pairs adjacent, for its interleaved RoPE) back to transformers' half-split:
    rows (n, hs/2, 2) -> (n, 2, hs/2) per head."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def dequantize(tensor) -> torch.Tensor:
    """One tensor as fp32 (out, in): F32, F16, BF16 and every block type the gguf package dequantizes
    (Q4_0 ... Q8_0, the K-quants, IQ types)."""
    from gguf import GGMLQuantizationType, quants

    kind = GGMLQuantizationType(tensor.tensor_type)
    raw = tensor.data.view(np.ndarray)  # a plain view of the mapped file: numpy's memmap slicing cost 11 s on SmolLM2
    shape = tuple(int(d) for d in reversed(tensor.shape.tolist()))  # GGUF lists dims innermost first
    try:
        if kind == GGMLQuantizationType.F32:
            data = raw
        elif kind == GGMLQuantizationType.F16:
            data = raw.astype(np.float32)
        else:
            data = quants.dequantize(raw, kind)
    except NotImplementedError:
        raise SourceError(f"The GGUF tensor {tensor.name} is stored as {kind.name}, which the gguf package cannot "
                          "dequantize; convert the model to another type (llama-quantize ... Q8_0).") from None
    data = np.ascontiguousarray(data.reshape(shape))
    return torch.from_numpy(data if data.flags.writeable else data.copy())  # F32 is a view of the mapped file


def _get(meta: dict, key: str, default=None, required: bool = True):
    if key in meta:
        return meta[key]
    if default is None and required:
        raise SourceError(f"The GGUF file has no {key}; it is incomplete or not a language model: fetch it again.")
    return default


def gguf_config(meta: dict, reader, where: str) -> ModelConfig:
    """BladeGPT's config from the file's metadata; the vocabulary from the embedding's rows, not from metadata."""
    arch = meta.get("general.architecture")
    if arch not in ARCHES:
        raise SourceError(f"{where} is a {arch or 'unknown'} model; BladeGPT starts from GGUF files of the llama (Llama, "
                          "SmolLM2, Mistral), qwen2, qwen3 and gpt2 architectures.")
    tensors = {t.name: t for t in reader.tensors}
    if "token_embd.weight" not in tensors:
        raise SourceError(f"{where} has no token_embd.weight; it is incomplete or not a language model: fetch it again.")
    vocab, n_embd = (int(d) for d in reversed(tensors["token_embd.weight"].shape.tolist()))
    if _get(meta, f"{arch}.expert_count", 0, required=False):
        raise SourceError(f"{where} is a mixture-of-experts model, which BladeGPT does not compute; start from a dense one.")
    heads = _get(meta, f"{arch}.attention.head_count")
    kv = _get(meta, f"{arch}.attention.head_count_kv", heads, required=False)
    if isinstance(heads, list) or isinstance(kv, list):
        raise SourceError(f"{where} has a different number of heads per layer, which BladeGPT does not compute.")
    layers = _get(meta, f"{arch}.block_count")
    block = _get(meta, f"{arch}.context_length", 2048, required=False)
    try:
        if arch == "gpt2":
            return ModelConfig(vocab_size=vocab, block_size=block, n_layer=layers, n_head=heads, n_embd=n_embd,
                               bias=True, activation="gelu_tanh",  # what llama.cpp computes for gpt2
                               layer_norm_eps=_get(meta, "gpt2.attention.layer_norm_epsilon", 1e-5, required=False))
        window = meta.get(f"{arch}.attention.sliding_window")
        if window:
            block = min(block, window)  # attention over at most `window` tokens is full causal attention
        scaling = meta.get(f"{arch}.rope.scaling.type", "none")
        if scaling not in ("none", None):
            raise SourceError(f"{where} uses {scaling!r} RoPE scaling, which BladeGPT does not compute; start from "
                              "another model.")
        head_dim = (meta.get(f"{arch}.attention.key_length") or meta.get(f"{arch}.rope.dimension_count")
                    or n_embd // heads)
        rope_freqs = tensors.get("rope_freqs.weight")
        theta = float(_get(meta, f"{arch}.rope.freq_base", 10000.0, required=False))
        return ModelConfig(
            vocab_size=vocab, block_size=block, n_layer=layers, n_head=heads, n_embd=n_embd, bias=False,
            activation="swiglu", layer_norm_eps=_get(meta, f"{arch}.attention.layer_norm_rms_epsilon", 1e-6, required=False),
            arch=arch, norm="rmsnorm", positions="rope", rope_theta=theta,
            rope_scaling=None if rope_freqs is None else llama3_scaling(dequantize(rope_freqs), theta, head_dim, where),
            n_kv_head=kv, head_size=head_dim if head_dim * heads != n_embd else None,
            intermediate_size=_get(meta, f"{arch}.feed_forward_length"), qkv_bias=f"blk.0.attn_q.bias" in tensors,
            qk_norm="blk.0.attn_q_norm.weight" in tensors, tie_embeddings="output.weight" not in tensors,
        )
    except ConfigError as e:
        raise SourceError(f"{where} has metadata BladeGPT cannot use ({e}); fetch the file again.") from None


def llama3_scaling(factors: torch.Tensor, theta: float, head_dim: int, where: str) -> dict:
    """Llama 3's rope_scaling from llama.cpp's rope_freqs (the divisor of each pair's frequency): the factor
    is the largest divisor, the band Llama 3.1/3.2's; refused unless it gives back every factor."""
    scaling = {"rope_type": "llama3", "factor": float(factors.max()), **LLAMA3_BAND}
    plain = ModelConfig(n_head=1, n_embd=head_dim, positions="rope", rope_theta=theta)
    expected = rope_frequencies(plain) / rope_frequencies(ModelConfig(n_head=1, n_embd=head_dim, positions="rope",
                                                                      rope_theta=theta, rope_scaling=scaling))
    if factors.shape != expected.shape or not torch.allclose(factors.float(), expected, rtol=1e-3):
        raise SourceError(f"{where} scales RoPE's frequencies (rope_freqs) otherwise than Llama 3.1/3.2 do, which "
                          "BladeGPT does not compute; start from another model.")
    return scaling


def llama_tensors(reader, config: ModelConfig) -> Iterator[tuple[str, torch.Tensor]]:
    """The file's tensors under transformers' names, fp32, q/k un-permuted for arch llama."""
    for tensor in reader.tensors:
        name = tensor.name
        if name == "rope_freqs.weight":
            continue
        if name == "token_embd.weight":
            yield "model.embed_tokens.weight", dequantize(tensor)
        elif name == "output_norm.weight":
            yield "model.norm.weight", dequantize(tensor)
        elif name == "output.weight":
            yield "lm_head.weight", dequantize(tensor)
        elif name.startswith("blk."):
            _, i, part, kind = name.split(".")
            w = dequantize(tensor)
            if config.arch == "llama" and part in ("attn_q", "attn_k"):
                w = unpermute(w, config.n_head if part == "attn_q" else config.kv_heads)
            yield f"model.layers.{i}.{LLAMA_NAMES.get(part, part)}.{kind}", w
        else:
            yield name, dequantize(tensor)


def gpt2_state_dict(reader, config: ModelConfig) -> dict[str, torch.Tensor]:
    top = {"token_embd.weight": "transformer.wte.weight", "position_embd.weight": "transformer.wpe.weight",
           "output_norm.weight": "transformer.ln_f.weight", "output_norm.bias": "transformer.ln_f.bias",
           "output.weight": "lm_head.weight"}
    state = {}
    for tensor in reader.tensors:
        name = tensor.name
        if name in top:
            state[top[name]] = dequantize(tensor)
        elif name.startswith("blk."):
            _, i, part, kind = name.split(".")
            state[f"transformer.h.{i}.{GPT2_NAMES.get(part, part)}.{kind}"] = dequantize(tensor)
        else:
            state[name] = dequantize(tensor)
    state.setdefault("lm_head.weight", state.get("transformer.wte.weight"))
    return state


def quantization(reader) -> str:
    """The file's tensor types by share of weights, e.g. 'Q4_1 93%, Q8_0 7%'."""
    from gguf import GGMLQuantizationType

    counts: dict[str, int] = {}
    for t in reader.tensors:
        kind = GGMLQuantizationType(t.tensor_type).name
        counts[kind] = counts.get(kind, 0) + int(t.n_elements)
    total = sum(counts.values())
    top = [kv for kv in sorted(counts.items(), key=lambda kv: -kv[1])[:3] if kv[1] >= 0.005 * total]
    return ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in top)


def gguf_tokenizer(path: Path, meta: dict | None = None):
    if meta is None:
        meta = metadata(open_gguf(path))
    try:
        return HFTokenizer.from_gguf(meta)
    except TokenizerError as e:
        raise SourceError(f"{path}: {e}") from None


def gguf_model(path: Path, where: str | None = None, reader=None, meta: dict | None = None,
               matrices: torch.dtype = torch.float32):
    """(model, metadata, reader) of a GGUF file: weights dequantized to fp32 one tensor at a time into a
    model built on the meta device (the file itself is memory-mapped, never read whole). A reader and
    metadata already read are reused: parsing the file costs seconds (SmolLM2's 98k vocabulary strings)."""
    where = where or str(path)
    if reader is None:
        reader = open_gguf(path)
    if meta is None:
        meta = metadata(reader)
    config = gguf_config(meta, reader, where)
    if config.arch == "gpt2":
        state = gpt2_state_dict(reader, config)
    else:
        state = llama_state_dict(llama_tensors(reader, config), config, matrices)
    return build_model(config, state, where), meta, reader


def load_gguf(path: Path, source: str, matrices: torch.dtype = torch.float32):
    """A Pretrained from a GGUF file (or an ollama: model, whose blob `path` is): the file parsed once, the
    tokenizer built first, so a vocabulary BladeGPT cannot read is said before the weights are read."""
    where = source if source.startswith("ollama:") else str(path)
    reader = open_gguf(path)
    meta = metadata(reader)
    tokenizer = gguf_tokenizer(path, meta)
    model, _, _ = gguf_model(path, where, reader, meta, matrices)
    name = meta.get("general.name") or path.stem
    mb = math.ceil(path.stat().st_size / 1e6)
    origin = f" ({path})" if source.startswith("ollama:") else ""
    return Pretrained(model, tokenizer, f"{name}: {model.config.arch} {size(model)} from {where}{origin}, "
                                        f"{mb:,} MB GGUF, {quantization(reader)}")
