"""Shared fixtures: a temp working folder, a small corpus, tiny configs."""

import os
import random
from pathlib import Path

import pytest

SHAKESPEARE = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare.txt"

TINY_MODEL = dict(n_layer=2, n_head=2, n_embd=32, block_size=16)
TINY_TRAIN = dict(batch_size=4, steps=30, warmup_steps=5, eval_interval=10, eval_iters=2, log_interval=5,
                  sample_tokens=0, lr=3e-3)


@pytest.fixture(autouse=True, scope="session")
def _measurement_cache(tmp_path_factory):
    os.environ["BLADEGPT_CACHE"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """Run in an empty folder: datasets/ and runs/ land there."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def corpus_text(n_lines: int = 400, seed: int = 0) -> str:
    """Varied, learnable text: short sentences from a small grammar."""
    rng = random.Random(seed)
    who = ["The hunter", "A tired witch", "The innkeeper", "Old Marta", "The ferryman", "A young knight"]
    did = ["counted the coins", "sharpened the blade", "watched the road", "poured the ale", "lit the lamp"]
    when = ["before dawn", "at dusk", "in the rain", "by the river", "after the bell"]
    lines = [f"{rng.choice(who)} {rng.choice(did)} {rng.choice(when)}." for _ in range(n_lines)]
    return "\n".join(lines) + "\n"


@pytest.fixture
def corpus(workdir) -> Path:
    path = workdir / "tales.txt"
    path.write_text(corpus_text())
    return path
