"""Where a pretrained model comes from: one front door for `train --init-from` and `prepare --tokenizer-from`.

- a BladeGPT run or checkpoint;
- a GGUF file (llama.cpp, LM Studio; arch llama, qwen2, qwen3 or gpt2), or the first of its split parts: gguf.py;
- `ollama:NAME[:TAG]`, the model layer of ollama's local store with its ADAPTER layers merged: ollama.py,
  adapter.py;
- a Hugging Face folder or repo id (GPT-2, Llama, Qwen2, Qwen3), the cache first: hub.py finds it, hf.py reads it.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import torch

from bladegpt.checkpoint import load_checkpoint, read_adapters, read_metadata
from bladegpt.config import ModelConfig
from bladegpt.errors import CheckpointError, SourceError, TokenizerError, UserError
from bladegpt.files import is_gguf
from bladegpt.lora import BASE_DTYPES, LoraConfig, attach, fingerprint, load_adapters, merge
from bladegpt.model import GPT
from bladegpt.runs import BEST, LAST, RUN_FILE, resolve_checkpoint
from bladegpt.sources.base import Pretrained, build_model, check_vocabulary, shaped, size
from bladegpt.sources.hub import GPT2_REPOS, hf_folder
from bladegpt.tokenizer import TiktokenTokenizer, Tokenizer, tokenizer_from_dict
from bladegpt.sources.ollama import ollama_blob, ollama_layers, ollama_unused
from bladegpt.sources.adapter import read_loras
from bladegpt.sources.gguf import gguf_model, gguf_tokenizer, metadata, open_model, quantization
from bladegpt.sources.gpt2 import is_gpt2_tokenizer
from bladegpt.tokenizer.hf import HFTokenizer
from bladegpt.sources import hf

FAMILY_NAMES = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2", "qwen3": "Qwen3", "gemma3_text": "Gemma 3"}

__all__ = ["Pretrained", "load_bladegpt", "load_lora_base", "load_pretrained", "load_tokenizer_from"]


def is_bladegpt(source: str) -> bool:
    path = Path(source)
    if path.is_file():
        return path.suffix != ".gguf" and not is_gguf(path)
    return (path / RUN_FILE).is_file() or (path / LAST).is_file() or (path / BEST).is_file()


def gguf_path(source: str) -> Path | None:
    """The GGUF file SOURCE names (a path, or an ollama: model), or None when it names none."""
    if source.startswith("ollama:"):
        return ollama_blob(source.removeprefix("ollama:"))
    path = Path(source).expanduser()
    if path.is_file() and is_gguf(path):
        return path
    if source.endswith(".gguf"):
        if not path.is_file():
            raise SourceError(f"{source} is a folder, not a .gguf file; name the file in it." if path.is_dir() else
                              f"No such file: {source}; check the path.")
        raise SourceError(f"{source} is not a GGUF file (it does not start with 'GGUF'); it may be damaged or "
                          "still downloading: fetch it again.")
    return None


def ollama_adapters(source: str) -> list[Path]:
    """The adapter blobs of an ollama: source (its Modelfile's ADAPTER layers); none for any other source."""
    if not source.startswith("ollama:"):
        return []
    return ollama_layers(source.removeprefix("ollama:"))[1]


def load_pretrained(source: str, matrices: torch.dtype = torch.float32) -> Pretrained:
    """The model and tokenizer of SOURCE: a BladeGPT checkpoint or run, a GGUF file, an ollama model, a
    Hugging Face folder, or a hub name. Errors are SourceError (one line). A Llama-family model from a GGUF
    file or a Hugging Face folder keeps its blocks' weight matrices in `matrices` (a LoRA run's bf16 base)."""
    if is_bladegpt(source):
        path = resolve_checkpoint(Path(source))
        model, tokenizer, info = load_bladegpt(path)
        step = f", step {info['step']}" if "step" in info else ""
        return Pretrained(model, tokenizer, f"BladeGPT {size(model)} from {path}{step}")
    gguf_file = gguf_path(source)
    if gguf_file is not None:
        return load_gguf(gguf_file, source, matrices, tuple(ollama_adapters(source)))
    folder = hf_folder(source, weights=True)
    tokenizer = checked_folder_tokenizer(folder)  # before the weights: a mismatch should not wait for them
    model, family, cfg = hf_model(folder, matrices)
    return Pretrained(model, tokenizer, f"{family} {size(model)} from {folder} ({_dtype(cfg)} weights)")


def load_gguf(path: Path, source: str, matrices: torch.dtype = torch.float32, adapters: tuple = ()):
    """A Pretrained from a GGUF file (or the first of its split parts, or an ollama: model, whose blob `path`
    is, with its `adapters` blobs merged): parsed once, the tokenizer and adapters read first, so what
    BladeGPT cannot use is said before the weights are read."""
    where = source if source.startswith("ollama:") else str(path)
    reader = open_model(path)
    meta = metadata(reader)
    tokenizer = gguf_tokenizer(path, meta, reader, where=where)
    loras = read_loras(reader, meta, adapters, where)
    model, _, _ = gguf_model(path, where, reader, meta, matrices, loras)
    # named as the user knows it: the file's name (a split model's without its part number), or ollama's name;
    # the metadata's general.basename/size_label/finetune read badly ('smollm2 135M 8k-lc100k-mix1-ep2')
    file = reader.files[0].name  # a GGUF is known by its magic: 'MODEL.GGUF' is one too
    stem = (file[:-5] if file.lower().endswith(".gguf") else file).removesuffix(f"-00001-of-{len(reader.files):05d}")
    name = source.removeprefix("ollama:") if source.startswith("ollama:") else stem
    mb = math.ceil(sum(f.stat().st_size for f in reader.files) / 1e6)
    parts = f" in {len(reader.files)} parts" if len(reader.files) > 1 else ""
    origin = f" ({path})" if source.startswith("ollama:") else ""
    merged = "".join(f", with {lora.describe()} merged" for lora in loras)
    unused = ollama_unused(source.removeprefix("ollama:")) if source.startswith("ollama:") else []
    left = "".join(f"; {what} is not used: BladeGPT reads and writes text only" for what in unused)
    return Pretrained(model, tokenizer, f"{name}: {model.config.arch} {size(model)} from {where}{origin}, "
                                        f"{mb:,} MB GGUF{parts}, {quantization(reader)}{merged}{left}")


def load_bladegpt(path: Path, attention: str = "sdpa") -> tuple[GPT, Tokenizer, dict]:
    """A BladeGPT checkpoint's model (on CPU, eval mode), its tokenizer and info. A LoRA checkpoint's model is
    its base, loaded from where the run found it (any source: the recursion lives here), with the adapters
    merged in."""
    metadata = read_metadata(path)
    if "lora" not in metadata:
        return load_checkpoint(path, attention)
    lora, config, tokenizer, tensors, info = read_adapters(path, metadata)
    base = load_lora_base(lora, config, str(path), exact=True)
    model = attach(base, dataclasses.replace(lora, base_dtype="fp32"))
    try:
        load_adapters(model, tensors)
    except RuntimeError as e:
        raise CheckpointError(f"{path} is damaged ({e}); use another checkpoint or train again.") from None
    model = merge(model)
    model.set_attention(attention)
    return model.eval(), tokenizer, info


def load_lora_base(cfg: LoraConfig, config: ModelConfig, where: str, exact: bool = False) -> GPT:
    """The base model cfg's adapters were trained on, shaped as `config` (the run's context and dropout); a
    CheckpointError (one line) when it cannot be loaded, or its weights are no longer the ones trained on.

    `exact` loads it at the precision its source holds (fp32 after dequantizing), for a merge: training's bf16
    copy of the matrices is rounded (0.155 in the logits measured on SmolLM2-135M against peft on the base)."""
    trained_in = BASE_DTYPES[cfg.base_dtype]
    try:
        pretrained = load_pretrained(cfg.base, torch.float32 if exact else trained_in)
    except UserError as e:
        raise CheckpointError(f"{where} holds LoRA adapters for the base model {cfg.base}, which cannot be loaded: "
                              f"{e}") from None
    state = pretrained.model.state_dict()
    # The run hashed the base as it loaded it: its matrices in trained_in (a Llama-family file) or fp32 (the others).
    if cfg.base_fingerprint not in (fingerprint(state), fingerprint(state, trained_in)):
        raise CheckpointError(f"{where} holds LoRA adapters for {cfg.base}, whose weights have changed since "
                              "(another fingerprint), and adapters fit only the weights they learned on: put the "
                              "original model back there, or train again from this one.")
    return shaped(state, config, where)


def base_source(source: str) -> str:
    """Where a LoRA run's base is found again: a path made absolute (runs move between folders), else the name
    as given."""
    path = Path(source).expanduser()
    return str(path.resolve()) if not source.startswith("ollama:") and path.exists() else source


def hf_model(folder: Path, matrices: torch.dtype = torch.float32) -> tuple[GPT, str, dict]:
    """The model of a Hugging Face folder, its family's name, and its config.json."""
    cfg = hf.read_config(folder)
    if cfg.get("model_type") == "gpt2":
        config = hf.model_config(folder, cfg)
        return build_model(config, hf.gpt2_state_dict(hf.read_tensors(folder)), str(folder)), "GPT-2", cfg
    config = hf.model_config(folder, cfg, hf.embedding_rows(folder))
    state = hf.llama_state_dict(hf.read_tensors(folder), config, matrices)
    return build_model(config, state, str(folder)), FAMILY_NAMES[cfg["model_type"]], cfg


def load_tokenizer_from(source: str) -> Tokenizer:
    """SOURCE's tokenizer, without loading (or downloading) its weights."""
    if is_bladegpt(source):
        path = resolve_checkpoint(Path(source))
        try:
            return tokenizer_from_dict(json.loads(read_metadata(path)["tokenizer"]))
        except (KeyError, json.JSONDecodeError, TokenizerError) as e:
            raise CheckpointError(f"{path} is damaged ({e}); use another checkpoint.") from None
    gguf_file = gguf_path(source)
    if gguf_file is not None:
        where = source if source.startswith("ollama:") else str(gguf_file)
        reader = open_model(gguf_file)
        meta = metadata(reader)
        tokenizer = gguf_tokenizer(gguf_file, meta, reader, where)
        read_loras(reader, meta, ollama_adapters(source), where)  # an adapter that cannot be merged: said now
        return tokenizer
    if source in GPT2_REPOS:
        return TiktokenTokenizer.gpt2()  # GPT-2's own BPE ships with BladeGPT, verified by hash
    return checked_folder_tokenizer(hf_folder(source, weights=False))


def checked_folder_tokenizer(folder: Path) -> Tokenizer:
    """A Hugging Face folder's tokenizer, refused where it has more ids than the model's embedding has rows
    (read from the weights' header where they are there, else config.json's vocab_size)."""
    config = hf.model_config(folder, hf.read_config(folder), hf.embedding_rows(folder))
    tokenizer = folder_tokenizer(folder, config)
    check_vocabulary(tokenizer, config.vocab_size, str(folder))
    return tokenizer


def folder_tokenizer(folder: Path, config: ModelConfig) -> Tokenizer:
    """GPT-2's BPE (tiktoken) where the folder's tokenizer is GPT-2's, or it has none and GPT-2's vocabulary
    size; otherwise the folder's own tokenizer.json through Hugging Face's tokenizers."""
    present = [name for name in ("vocab.json", "merges.txt", "tokenizer.json") if (folder / name).is_file()]
    if config.arch == "gpt2" and ((not present and config.vocab_size == 50257) or (present and is_gpt2_tokenizer(folder))):
        return TiktokenTokenizer.gpt2()

    try:
        return HFTokenizer.from_folder(folder)
    except TokenizerError as e:
        raise SourceError(str(e)) from None


def _dtype(cfg: dict) -> str:
    return str(cfg.get("torch_dtype") or cfg.get("dtype") or "fp32").replace("float32", "fp32").replace("bfloat16", "bf16")
