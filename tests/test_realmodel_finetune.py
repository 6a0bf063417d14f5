"""The real model fine-tuned (issues #22 and #24): a few steps on officer_k from SmolLM2-135M-Instruct's
GGUF lower its val loss, and the voice exports to GGUF and reads back with the same greedy text."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from bladegpt.generate.engine import generate
from bladegpt.sources import load_pretrained
from tests.realmodel import smollm2_gguf
from tests.safety import invoke

pytestmark = pytest.mark.slow
OFFICER_K = Path(__file__).resolve().parents[1] / "corpora" / "officer_k.txt"


@pytest.fixture(scope="module")
def smollm2():
    path = smollm2_gguf()
    return path, load_pretrained(str(path))


def val_loss(model, dataset: Path, block: int = 128) -> float:
    """Mean next-token loss (nats) over the val split read whole, back to back."""
    meta = json.loads((dataset / "meta.json").read_text())
    tokens = torch.from_numpy(np.fromfile(dataset / "val.bin", dtype=meta.get("dtype", "uint16")).astype(np.int64))
    n = (len(tokens) - 1) // block
    x = tokens[: n * block].view(n, block)
    y = tokens[1 : n * block + 1].view(n, block)
    with torch.no_grad():
        return float(model(x, y)[1])


def test_a_few_fine_tuning_steps_lower_officer_k_val_loss(smollm2, workdir):
    path, pretrained = smollm2
    assert invoke("prepare", OFFICER_K, "--tokenizer-from", path).exit_code == 0
    dataset = next((workdir / "datasets").iterdir())
    before = val_loss(pretrained.model, dataset)
    result = invoke("train", "--init-from", path, "--steps", "4", "--block-size", "128", "--batch-size", "4",
                    "--eval-interval", "4", "--eval-iters", "2", "--sample-tokens", "0")
    assert result.exit_code == 0, result.output
    from bladegpt.checkpoint import load_checkpoint

    model, _, _ = load_checkpoint(next((workdir / "runs").iterdir()) / "last.safetensors")
    after = val_loss(model, dataset)
    assert math.isfinite(after) and after < before - 0.01, (before, after)
    # issue #24: the fine-tuned voice exports to GGUF and reads back with the same greedy text. (That
    # transformers reads our Llama-family GGUF exports is tested on tiny models, test_export_llama.py;
    # loading a 135M GGUF in transformers again here cost CI about a minute.)
    out = workdir / "voice.gguf"
    assert invoke("export", out, "--format", "gguf", "--dtype", "f32").exit_code == 0
    again = load_pretrained(str(out))
    prompt = pretrained.tokenizer.encode("I close the door.")
    assert again.tokenizer.encode("I close the door.") == prompt
    expected = list(generate(model, prompt, 20, pretrained.tokenizer.vocab_size, temperature=0))
    assert list(generate(again.model, prompt, 20, again.tokenizer.vocab_size, temperature=0)) == expected
