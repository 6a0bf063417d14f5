"""Where a pretrained model comes from: one front door for `train --init-from` and `prepare --tokenizer-from`.

- a BladeGPT run or checkpoint;
- a GGUF file (llama.cpp, LM Studio; arch llama, qwen2, qwen3 or gpt2), or the first of its split parts: gguf.py;
- `ollama:NAME[:TAG]`, the model layer of ollama's local store with its ADAPTER layers merged: ollama.py,
  adapter.py;
- a Hugging Face folder or repo id (GPT-2, Llama, Qwen2, Qwen3), the cache first: hub.py finds it, hf.py reads it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from bladegpt.config import ModelConfig
from bladegpt.model import GPT
from bladegpt.runs import BEST, LAST, RUN_FILE, resolve_checkpoint
from bladegpt.sources.hub import GPT2_REPOS, SourceError, hf_folder
from bladegpt.tokenizer import TiktokenTokenizer, Tokenizer

FAMILY_NAMES = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2", "qwen3": "Qwen3"}

__all__ = ["Pretrained", "SourceError", "load_pretrained", "load_tokenizer_from", "build_model"]


@dataclass
class Pretrained:
    model: GPT  # on the CPU, in fp32
    tokenizer: Tokenizer
    description: str  # what was loaded and from where, its size and quantization, for the start of a run


def is_bladegpt(source: str) -> bool:
    path = Path(source)
    if path.is_file():
        return path.suffix != ".gguf" and not is_gguf(path)
    return (path / RUN_FILE).is_file() or (path / LAST).is_file() or (path / BEST).is_file()


def is_gguf(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"GGUF"
    except OSError:
        return False


def gguf_path(source: str) -> Path | None:
    """The GGUF file SOURCE names (a path, or an ollama: model), or None when it names none."""
    if source.startswith("ollama:"):
        from bladegpt.sources.ollama import ollama_blob

        return ollama_blob(source.removeprefix("ollama:"))
    path = Path(source).expanduser()
    if path.is_file() and is_gguf(path):
        return path
    if source.endswith(".gguf"):
        if not path.is_file():
            raise SourceError(f"No such file: {source}; check the path.")
        raise SourceError(f"{source} is not a GGUF file (it does not start with 'GGUF'); it may be damaged or "
                          "still downloading: fetch it again.")
    return None


def ollama_adapters(source: str) -> list[Path]:
    """The adapter blobs of an ollama: source (its Modelfile's ADAPTER layers); none for any other source."""
    if not source.startswith("ollama:"):
        return []
    from bladegpt.sources.ollama import ollama_layers

    return ollama_layers(source.removeprefix("ollama:"))[1]


def check_vocabulary(tokenizer: Tokenizer, rows: int, where: str) -> None:
    """A tokenizer whose ids the model's embedding cannot all look up is refused in one line, here rather
    than as an index error at the first batch that holds such an id."""
    if tokenizer.vocab_size > rows:
        raise SourceError(f"{where}'s tokenizer has {tokenizer.vocab_size:,} ids but its model's token embedding "
                          f"only {rows:,} rows, so ids from {rows:,} on have no embedding: the tokenizer is not this "
                          "model's (or its files are damaged); download the model again, whole.")


def build_model(config: ModelConfig, state: dict[str, torch.Tensor], where: str) -> GPT:
    """A model holding `state` (BladeGPT's names, fp32) without a second copy: built on the meta device,
    then the tensors assigned; every name and shape must fit."""
    if not config.tie_embeddings and state.get("lm_head.weight") is None:
        raise SourceError(f"{where} has an output layer of its own (tie_word_embeddings: false) but its weights hold "
                          "no lm_head.weight; they are incomplete: download the model again (were the head meant to "
                          "be the embedding, its config.json would say tie_word_embeddings: true).")
    with torch.device("meta"):  # no random init of weights about to be replaced
        model = GPT(config)
    try:
        model.load_state_dict(state, assign=True)  # strict: every name and shape
    except RuntimeError as e:
        first = str(e).splitlines()[1].strip() if "\n" in str(e) else str(e)
        raise SourceError(f"{where}'s weights do not fit its configuration ({first}); download the model again.") from None
    model.tie_weights()
    model.reset_buffers()
    return model.eval()


def load_pretrained(source: str, matrices: torch.dtype = torch.float32) -> Pretrained:
    """The model and tokenizer of SOURCE: a BladeGPT checkpoint or run, a GGUF file, an ollama model, a
    Hugging Face folder, or a hub name. Errors are SourceError (one line). A Llama-family model from a GGUF
    file or a Hugging Face folder keeps its blocks' weight matrices in `matrices` (a LoRA run's bf16 base)."""
    from bladegpt.checkpoint import load_checkpoint

    if is_bladegpt(source):
        path = resolve_checkpoint(Path(source))
        model, tokenizer, info = load_checkpoint(path)
        step = f", step {info['step']}" if "step" in info else ""
        return Pretrained(model, tokenizer, f"BladeGPT {size(model)} from {path}{step}")
    gguf_file = gguf_path(source)
    if gguf_file is not None:
        from bladegpt.sources.gguf import load_gguf

        return load_gguf(gguf_file, source, matrices, tuple(ollama_adapters(source)))
    folder = hf_folder(source, weights=True)
    tokenizer = checked_folder_tokenizer(folder)  # before the weights: a mismatch should not wait for them
    model, family, cfg = hf_model(folder, matrices)
    return Pretrained(model, tokenizer, f"{family} {size(model)} from {folder} ({_dtype(cfg)} weights)")


def hf_model(folder: Path, matrices: torch.dtype = torch.float32) -> tuple[GPT, str, dict]:
    """The model of a Hugging Face folder, its family's name, and its config.json."""
    from bladegpt.sources import hf

    cfg = hf.read_config(folder)
    if cfg.get("model_type") == "gpt2":
        config = hf.model_config(folder, cfg)
        return build_model(config, hf.gpt2_state_dict(hf.read_tensors(folder)), str(folder)), "GPT-2", cfg
    config = hf.model_config(folder, cfg, hf.embedding_rows(folder))
    state = hf.llama_state_dict(hf.read_tensors(folder), config, matrices)
    return build_model(config, state, str(folder)), FAMILY_NAMES[cfg["model_type"]], cfg


def load_tokenizer_from(source: str) -> Tokenizer:
    """SOURCE's tokenizer, without loading (or downloading) its weights."""
    from bladegpt.checkpoint import CheckpointError, read_metadata
    from bladegpt.tokenizer import TokenizerError, tokenizer_from_dict

    if is_bladegpt(source):
        path = resolve_checkpoint(Path(source))
        try:
            return tokenizer_from_dict(json.loads(read_metadata(path)["tokenizer"]))
        except (KeyError, json.JSONDecodeError, TokenizerError) as e:
            raise CheckpointError(f"{path} is damaged ({e}); use another checkpoint.") from None
    gguf_file = gguf_path(source)
    if gguf_file is not None:
        from bladegpt.sources.gguf import gguf_tokenizer

        return gguf_tokenizer(gguf_file, adapters=tuple(ollama_adapters(source)),
                              where=source if source.startswith("ollama:") else None)
    if source in GPT2_REPOS:
        return TiktokenTokenizer.gpt2()  # GPT-2's own BPE ships with BladeGPT, verified by hash
    return checked_folder_tokenizer(hf_folder(source, weights=False))


def checked_folder_tokenizer(folder: Path) -> Tokenizer:
    """A Hugging Face folder's tokenizer, refused where it has more ids than the model's embedding has rows
    (read from the weights' header where they are there, else config.json's vocab_size)."""
    from bladegpt.sources import hf

    config = hf.model_config(folder, hf.read_config(folder), hf.embedding_rows(folder))
    tokenizer = folder_tokenizer(folder, config)
    check_vocabulary(tokenizer, config.vocab_size, str(folder))
    return tokenizer


def folder_tokenizer(folder: Path, config: ModelConfig) -> Tokenizer:
    """GPT-2's BPE (tiktoken) where the folder's tokenizer is GPT-2's, or it has none and GPT-2's vocabulary
    size; otherwise the folder's own tokenizer.json through Hugging Face's tokenizers."""
    from bladegpt.sources.gpt2 import is_gpt2_tokenizer

    present = [name for name in ("vocab.json", "merges.txt", "tokenizer.json") if (folder / name).is_file()]
    if config.arch == "gpt2" and ((not present and config.vocab_size == 50257) or (present and is_gpt2_tokenizer(folder))):
        return TiktokenTokenizer.gpt2()
    from bladegpt.tokenizer.hf import HFTokenizer
    from bladegpt.tokenizer import TokenizerError

    try:
        return HFTokenizer.from_folder(folder)
    except TokenizerError as e:
        raise SourceError(str(e)) from None


def size(model: GPT) -> str:
    n = model.num_params(non_embedding=False)
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.0f}M"


def _dtype(cfg: dict) -> str:
    return str(cfg.get("torch_dtype") or cfg.get("dtype") or "fp32").replace("float32", "fp32").replace("bfloat16", "bf16")
