"""Finding a Hugging Face model folder: a local folder, the hub cache, or a download (online only).

A source that looks like a path (a separator of either kind, a drive letter, a leading `.` or `~`)
is a path: a missing one is answered as a missing path, never sent to the hub.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from bladegpt.errors import SourceError

# The names users know, and the hub repos that hold them (files fetched under either name sit in
# different cache folders, so both are looked up).
GPT2_REPOS = {
    "gpt2": ("openai-community/gpt2", "gpt2"),
    "gpt2-medium": ("openai-community/gpt2-medium", "gpt2-medium"),
    "gpt2-large": ("openai-community/gpt2-large", "gpt2-large"),
    "gpt2-xl": ("openai-community/gpt2-xl", "gpt2-xl"),
    "distilgpt2": ("distilbert/distilgpt2", "distilgpt2"),
}
TOKENIZER_FILES = ["vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "generation_config.json"]
WEIGHT_FILES = ["model.safetensors", "model.safetensors.index.json", "model-*.safetensors"]
PICKLE_FILES = ["pytorch_model.bin", "pytorch_model.bin.index.json", "pytorch_model-*.bin"]  # older repos' only
# A hub repo id: a name, or owner/name, of letters, digits, '-', '_' and '.' (huggingface_hub's rule).
REPO_ID = re.compile(r"^(?:[\w\-.]{1,96}/)?[\w\-.]{1,96}$")


def looks_like_path(source: str) -> bool:
    """A path, not a hub id: a backslash, a drive letter, a leading '.', '~' or '/', two or more '/',
    or a file name's suffix."""
    return ("\\" in source or re.match(r"^[A-Za-z]:", source) is not None or source.startswith((".", "~", "/"))
            or source.count("/") > 1 or source.endswith((".safetensors", ".gguf", ".bin", ".json")))


def _cache_dir() -> Path:
    """Where huggingface_hub keeps downloads, read from the environment now (not at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def _offline() -> bool:
    return any(os.environ.get(v, "").upper() in ("1", "ON", "YES", "TRUE") for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def weight_files(folder: Path) -> list[Path]:
    """The folder's weight files: one safetensors file, or the shards its index names; else the same in
    the pickle format (pytorch_model.bin, or pytorch_model-0000N-of-0000M.bin and its index), read with
    weights_only."""
    import json

    for index, single in (("model.safetensors.index.json", "model.safetensors"),
                          ("pytorch_model.bin.index.json", "pytorch_model.bin")):
        index = folder / index
        if index.is_file():
            try:
                shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (OSError, ValueError, KeyError, AttributeError, TypeError) as e:
                raise SourceError(f"{index} cannot be read ({e}); download the model again.") from None
            missing = [name for name in shards if not (folder / name).is_file()]
            if missing:
                raise SourceError(f"{folder} lacks {len(missing)} of the {len(shards)} weight shards {index.name} "
                                  f"names ({missing[0]}...); download the model again.")
            return [folder / name for name in shards]
        if (folder / single).is_file():
            return [folder / single]
    return []


def hf_folder(source: str, weights: bool) -> Path:
    """A local folder holding SOURCE's config (and weights): the folder itself, else the hub cache,
    else a download (online only, with a progress bar)."""
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise SourceError(f"{path} is neither a BladeGPT run nor a Hugging Face model folder (no config.json); "
                              "point at a run folder, a .safetensors checkpoint, a .gguf file, or a folder with "
                              "config.json and its weights.")
        return path
    if looks_like_path(source) or (path.parent != Path(".") and path.parent.is_dir()):  # runs/missing: a path
        raise SourceError(f"No such file or folder: {source}; check the path.")
    if not REPO_ID.match(source) or ".." in source or source.endswith((".", "-")):
        raise SourceError(f"{source!r} is neither an existing file or folder nor a Hugging Face repo id "
                          "(owner/name); check the spelling.")
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError
    except ImportError:
        raise SourceError("Loading from the Hugging Face hub needs huggingface_hub: pip install huggingface_hub.") from None
    repos = GPT2_REPOS.get(source, (source,))
    wanted = ["config.json", *TOKENIZER_FILES] + (WEIGHT_FILES if weights else [])
    for repo in repos:
        try:
            folder = Path(snapshot_download(repo, cache_dir=_cache_dir(), local_files_only=True,
                                            allow_patterns=wanted + (PICKLE_FILES if weights else [])))
        except (LocalEntryNotFoundError, ValueError):
            continue
        if (folder / "config.json").is_file() and (not weights or weight_files(folder)):
            return folder
    if _offline():
        raise SourceError(f"{source} is not in the Hugging Face cache ({_cache_dir()}) and HF_HUB_OFFLINE is set: "
                          f"download it on a connected machine (`hf download {repos[0]}`) and copy the cache here, "
                          "or pass a local folder or .gguf file instead.")
    try:
        folder = Path(snapshot_download(repos[0], cache_dir=_cache_dir(), allow_patterns=wanted))
        if weights and not weight_files(folder):  # older repos have only the pickle format
            folder = Path(snapshot_download(repos[0], cache_dir=_cache_dir(), allow_patterns=PICKLE_FILES))
    except RepositoryNotFoundError:
        raise SourceError(f"No model named {source} on the Hugging Face hub (or it is private); check the name, "
                          "e.g. gpt2 or HuggingFaceTB/SmolLM2-135M.") from None
    except (HfHubHTTPError, OSError) as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]  # the library's first line says what failed
        raise SourceError(f"Could not download {source} ({reason}); check the connection, or download it on a "
                          "connected machine and give its folder in place of the name.") from None
    if not (folder / "config.json").is_file() or (weights and not weight_files(folder)):
        raise SourceError(f"{source} on the hub has no config.json and model weights; it is not a model BladeGPT reads.")
    return folder
