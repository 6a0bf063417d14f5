"""Reading a GGUF file (llama.cpp's format; ollama's and LM Studio's stores hold them), or a model gguf-split
cut into parts (`<prefix>-00001-of-0000N.gguf`, keys split.no / split.count / split.tensors.count: every
key in the first part, the tensors spread over all): its config, its weights dequantized to fp32 one
tensor at a time (with any LoRA adapters merged, adapter.py), and its tokenizer.

Arches: llama, qwen2, qwen3 (the Llama block), gemma3 and gpt2 (BladeGPT's own exports). llama.cpp's converter
stores arch llama's q and k rows permuted for its interleaved RoPE (conversion/llama.py `permute`);
they are put back in transformers' half-split order here (transformers' `_reverse_permute_weights`),
with n_kv_head for k. Llama 3's frequency scaling travels as `rope_freqs.weight`, one factor per pair.
Gemma 3's norms are stored as the 1 + w they scale by (llama.cpp's Gemma3Model.norm_shift), as BladeGPT holds them.
Facts and sources: shared/research/llama-family.md §2-4.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import torch

from bladegpt.config import ModelConfig
from bladegpt.errors import ConfigError, SourceError, TokenizerError
from bladegpt.sources.base import build_model, check_vocabulary
from bladegpt.model import rope_frequencies
from bladegpt.tokenizer.hf import HFTokenizer
from bladegpt.sources.hf import llama_state_dict

ARCHES = ("llama", "qwen2", "qwen3", "gemma3", "gpt2")
# GGUF tensor names -> transformers' (llama family); q/k/v and gate/up are joined by hf.llama_state_dict.
LLAMA_NAMES = {
    "attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm", "ffn_norm": "post_attention_layernorm", "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}
# Gemma 3's four norms a block (llama.cpp's gguf-py tensor_mapping): ffn_norm is the MLP input's, as in Llama.
GEMMA3_NAMES = {**LLAMA_NAMES, "post_attention_norm": "post_attention_layernorm",
                "ffn_norm": "pre_feedforward_layernorm", "post_ffw_norm": "post_feedforward_layernorm"}
# What llama.cpp's gemma3 fixes where the file says nothing (src/llama-model.cpp, LLM_ARCH_GEMMA3): one global
# layer in every 6, the sliding layers' RoPE base.
GEMMA3_PATTERN, GEMMA3_LOCAL_THETA = 6, 10_000.0
# GGUF names -> BladeGPT's (arch gpt2, as export/gguf.py writes them).
GPT2_NAMES = {"attn_norm": "ln_1", "attn_qkv": "attn.c_attn", "attn_output": "attn.c_proj", "ffn_norm": "ln_2",
              "ffn_up": "mlp.c_fc", "ffn_down": "mlp.c_proj"}
# Llama 3.1/3.2's llama3 scaling band (config.json's low/high_freq_factor, original_max_position_embeddings):
# rope_freqs.weight holds only the resulting factors; these rebuild parameters that give exactly them.
LLAMA3_BAND = {"low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}


def open_gguf(path: Path):
    try:
        return _reader_class()(str(path))
    except Exception as e:  # a short, damaged or non-GGUF file raises whatever the reader hits first
        raise SourceError(f"{path} is not a readable GGUF file ({type(e).__name__}: {e}); it may be truncated or "
                          "damaged: fetch it again.") from None


@cache
def _reader_class():
    """gguf's GGUFReader, its small reads taken from a plain ndarray view of the mapped file: numpy.memmap's
    slicing costs more than the read, and a parse makes ~200k of them (SmolLM2's 98k vocabulary strings and
    merges), 3x the time (16 s against 5.4 s on a loaded 2-core EPYC). The same fields and tensors."""
    import gguf

    class Reader(gguf.GGUFReader):
        def _get(self, offset, dtype, count=1, override_order=None):
            plain = self.__dict__.get("_plain")
            if plain is None:
                plain = self._plain = self.data.view(np.ndarray)
            count = int(count)
            arr = plain[offset:offset + np.dtype(dtype).itemsize * count].view(dtype=dtype)[:count]
            return arr.view(arr.dtype.newbyteorder(self.byte_order if override_order is None else override_order))

    return Reader


@dataclass
class Parts:
    """A GGUF model as one reader: the first file's key/values, every file's tensors (gguf-split's parts)."""
    fields: dict
    tensors: list
    files: list[Path]


def split_names(path: Path, count: int) -> list[Path]:
    """The names of a split model's parts, from its first part's: llama.cpp's llama_split_path,
    `<prefix>-00001-of-00003.gguf`."""
    prefix = path.name[: -len(f"-00001-of-{count:05d}.gguf")]
    return [path.with_name(f"{prefix}-{i:05d}-of-{count:05d}.gguf") for i in range(1, count + 1)]


def open_model(path: Path) -> Parts:
    """A GGUF model from its file, or from the first of its gguf-split parts (split.no 0 of split.count):
    all parts are read, as llama.cpp reads them; a missing or mismatched part is one line naming it."""
    first = open_gguf(path)
    meta = metadata(first, only=("split.",))
    count = int(meta.get("split.count", 1))
    if count <= 1:
        return Parts(first.fields, list(first.tensors), [path])
    number = int(meta.get("split.no", 0))
    suffix = f"-{number + 1:05d}-of-{count:05d}.gguf"
    if not path.name.endswith(suffix):
        raise SourceError(f"{path} is part {number + 1} of a model split in {count} parts, but its name does not end "
                          f"in {suffix}, by which llama.cpp and BladeGPT find the other parts; give the parts back "
                          "their names.")
    if number != 0:
        first = path.with_name(path.name.removesuffix(suffix) + f"-00001-of-{count:05d}.gguf")
        raise SourceError(f"{path} is part {number + 1} of a model split in {count} parts; pass its first part, "
                          f"{first}: the others are read from beside it.")
    files = split_names(path, count)
    tensors = list(first.tensors)
    for i, part in enumerate(files[1:], start=1):
        if not part.is_file():
            raise SourceError(f"{path} is the first of {count} parts of a split model, and part {i + 1}, {part}, "
                              "is missing; put it beside the first (download it again).")
        reader = open_gguf(part)
        got = metadata(reader, only=("split.",))
        if (got.get("split.no"), got.get("split.count")) != (i, count):
            raise SourceError(f"{part} is not part {i + 1} of {count} of {path.name}'s model (its split keys say "
                              f"part {int(got.get('split.no', 0)) + 1} of {got.get('split.count', 1)}); download "
                              "the parts again.")
        tensors += reader.tensors
    expected = meta.get("split.tensors.count")
    if expected is not None and expected != len(tensors):
        raise SourceError(f"{path}'s {count} parts hold {len(tensors)} tensors, not the {expected} its split keys "
                          "name; a part is damaged or from another model: download the parts again.")
    return Parts(first.fields, tensors, files)


def metadata(reader, skip: tuple[str, ...] = (), only: tuple[str, ...] = ()) -> dict:
    """Every key/value of the file as plain Python values (str, int, float, bool, lists of them); strings
    that are not UTF-8 (a damaged vocabulary) are read with U+FFFD, never raised on."""
    from gguf import GGUFValueType

    meta = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or (skip and key.startswith(skip)) or (only and not key.startswith(only)):
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
                          "SmolLM2, Mistral), qwen2, qwen3, gemma3 and gpt2 architectures.")
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
        if window and arch != "gemma3":
            block = min(block, window)  # attention over at most `window` tokens is full causal attention
        scaling = meta.get(f"{arch}.rope.scaling.type", "none")
        if scaling not in ("none", None, "linear"):
            raise SourceError(f"{where} uses {scaling!r} RoPE scaling, which BladeGPT does not compute; start from "
                              "another model.")
        head_dim = (meta.get(f"{arch}.attention.key_length") or meta.get(f"{arch}.rope.dimension_count")
                    or n_embd // heads)
        rope_freqs = tensors.get("rope_freqs.weight")
        theta = float(_get(meta, f"{arch}.rope.freq_base", 10000.0, required=False))
        if scaling == "linear":
            rope_scaling = {"rope_type": "linear", "factor": float(_get(meta, f"{arch}.rope.scaling.factor"))}
        else:
            rope_scaling = None if rope_freqs is None else llama3_scaling(dequantize(rope_freqs), theta, head_dim, where)
        gemma = gemma3_settings(meta, layers, window, heads, n_embd, head_dim) if arch == "gemma3" else {}
        return ModelConfig(
            vocab_size=vocab, block_size=block, n_layer=layers, n_head=heads, n_embd=n_embd, bias=False,
            activation="geglu" if gemma else "swiglu",
            layer_norm_eps=_get(meta, f"{arch}.attention.layer_norm_rms_epsilon", 1e-6, required=False),
            arch=arch, norm="rmsnorm", positions="rope", rope_theta=theta, rope_scaling=rope_scaling,
            n_kv_head=kv, head_size=head_dim if head_dim * heads != n_embd else None,
            intermediate_size=_get(meta, f"{arch}.feed_forward_length"), qkv_bias="blk.0.attn_q.bias" in tensors,
            qk_norm="blk.0.attn_q_norm.weight" in tensors, tie_embeddings="output.weight" not in tensors, **gemma,
        )
    except ConfigError as e:
        raise SourceError(f"{where} has metadata BladeGPT cannot use ({e}); fetch the file again.") from None


def gemma3_settings(meta: dict, layers: int, window: int | None, heads: int, n_embd: int, head_dim: int) -> dict:
    """Gemma 3's parts of a ModelConfig as llama.cpp's gemma3 reads a file: the window's pattern (a period or one
    bool a layer, sliding_window_pattern) and the sliding layers' base (rope.freq_base_swa) where the file has them,
    else its fixed ones; scores scaled by head_dim, by n_embd / n_head for the 62-layer 27B (llama.cpp's
    f_attention_scale, after gemma_pytorch's config); the final soft-cap where it is set."""
    pattern = meta.get("gemma3.attention.sliding_window_pattern", GEMMA3_PATTERN)
    sliding = pattern if isinstance(pattern, list) else [(i + 1) % pattern != 0 for i in range(layers)]
    return dict(sandwich_norm=True, scale_embeddings=True, sliding_window=window,
                sliding_layers=tuple(i for i, local in enumerate(sliding) if local) if window else (),
                rope_local_theta=float(meta.get("gemma3.rope.freq_base_swa", GEMMA3_LOCAL_THETA)),
                query_pre_attn_scalar=n_embd // heads if layers == 62 else head_dim,
                logit_softcap=meta.get("gemma3.final_logit_softcapping"))


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


def weights(reader, loras: tuple = ()) -> Iterator[tuple[str, torch.Tensor]]:
    """The file's tensors by GGUF name, fp32, one at a time, each with its adapters' products merged."""
    for tensor in reader.tensors:
        w = dequantize(tensor)
        for lora in loras:
            w = lora.merged(tensor.name, w)
        yield tensor.name, w


def llama_tensors(reader, config: ModelConfig, loras: tuple = ()) -> Iterator[tuple[str, torch.Tensor]]:
    """The file's tensors under transformers' names, fp32, q/k un-permuted for arch llama."""
    top = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
           "output.weight": "lm_head.weight"}
    names = GEMMA3_NAMES if config.arch == "gemma3" else LLAMA_NAMES
    for name, w in weights(reader, loras):
        if name == "rope_freqs.weight":
            continue
        if name in top:
            yield top[name], w
        elif name.startswith("blk."):
            _, i, part, kind = name.split(".")
            if config.arch == "llama" and part in ("attn_q", "attn_k"):
                w = unpermute(w, config.n_head if part == "attn_q" else config.kv_heads)
            yield f"model.layers.{i}.{names.get(part, part)}.{kind}", w
        else:
            yield name, w


def gpt2_state_dict(reader, config: ModelConfig, loras: tuple = ()) -> dict[str, torch.Tensor]:
    top = {"token_embd.weight": "transformer.wte.weight", "position_embd.weight": "transformer.wpe.weight",
           "output_norm.weight": "transformer.ln_f.weight", "output_norm.bias": "transformer.ln_f.bias",
           "output.weight": "lm_head.weight"}
    state = {}
    for name, w in weights(reader, loras):
        if name in top:
            state[top[name]] = w
        elif name.startswith("blk."):
            _, i, part, kind = name.split(".")
            state[f"transformer.h.{i}.{GPT2_NAMES.get(part, part)}.{kind}"] = w
        else:
            state[name] = w
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


def embedding_rows(reader) -> int:
    """The token embedding's rows (the model's vocabulary), 0 where the file has no token_embd.weight."""
    for t in reader.tensors:
        if t.name == "token_embd.weight":
            return int(t.shape.tolist()[-1])  # GGUF lists dims innermost first
    return 0


def gguf_tokenizer(path: Path, meta: dict | None = None, reader=None, where: str | None = None):
    """The model's tokenizer, checked against its embedding's rows, so a model that cannot be used is said
    before anything is encoded (its adapters are checked beside it: adapter.read_loras)."""
    where = where or str(path)
    reader = open_model(path) if reader is None else reader
    meta = metadata(reader) if meta is None else meta
    try:
        tokenizer = HFTokenizer.from_gguf(meta)
    except TokenizerError as e:
        raise SourceError(f"{path}: {e}") from None
    if embedding_rows(reader):
        check_vocabulary(tokenizer, embedding_rows(reader), where)
    return tokenizer


def gguf_model(path: Path, where: str | None = None, reader=None, meta: dict | None = None,
               matrices: torch.dtype = torch.float32, loras: tuple = ()):
    """(model, metadata, reader) of a GGUF file (or the first of its split parts), with `loras` merged:
    weights dequantized to fp32 one tensor at a time into a model built on the meta device (the files
    themselves are memory-mapped, never read whole). A reader and metadata already read are reused:
    parsing the file costs seconds (SmolLM2's 98k vocabulary strings)."""
    where = where or str(path)
    if reader is None:
        reader = open_model(path)
    if meta is None:
        meta = metadata(reader)
    config = gguf_config(meta, reader, where)
    if config.arch == "gpt2":
        state = gpt2_state_dict(reader, config, loras)
    else:
        state = llama_state_dict(llama_tensors(reader, config, loras), config, matrices, norms_shifted=True)
    return build_model(config, state, where), meta, reader
