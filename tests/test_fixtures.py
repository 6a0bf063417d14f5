"""Files written by an earlier BladeGPT (a57ec7e, before the package was laid out by stages) still load, resume
and sample: a dataset, a full run, a LoRA run, and HF and GGUF exports (tests/fixtures/a57ec7e/MAKE.sh)."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from bladegpt.checkpoint import load_checkpoint
from bladegpt.data.dataset import TokenData
from bladegpt.sources import load_pretrained
from tests.safety import invoke

FIXTURES = Path(__file__).parent / "fixtures" / "a57ec7e"
WRITTEN_IN = "/tmp/fx"  # the folder MAKE.sh ran in, recorded in run.json
LORA_BASE = Path("/tmp/bladegpt-fixture-a57ec7e/base.safetensors")  # the LoRA run's base, by absolute path
EXPECTED = json.loads((FIXTURES / "expected.json").read_text())  # what a57ec7e itself did with these files
IDS = [5, 17, 42, 7, 99, 3, 250, 11]


@pytest.fixture
def old(workdir) -> Path:
    """The files copied to a temp folder, their run.json pointing there."""
    root = workdir / "old"
    shutil.copytree(FIXTURES, root)
    for run_json in root.glob("runs/*/run.json"):
        run_json.write_text(run_json.read_text().replace(f'"{WRITTEN_IN}/', f'"{root}/'))
    if not LORA_BASE.is_file() or LORA_BASE.read_bytes() != (FIXTURES / "base.safetensors").read_bytes():
        LORA_BASE.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(FIXTURES / "base.safetensors", LORA_BASE)
    return root


def test_dataset_loads(old):
    data = TokenData(old / "datasets" / "tales")
    assert (len(data.splits["train"]), len(data.splits["val"])) == (1123, 123)
    assert data.fingerprint == data.meta["fingerprint"]
    line = "The hunter lit the lamp at dusk."
    assert data.tokenizer.decode(data.tokenizer.encode(line)) == line
    assert data.tokenizer.encode(line) == EXPECTED["encoded"]


@pytest.mark.parametrize("run", ["full", "lora"])
def test_run_resumes_and_samples(old, run):
    run_dir = old / "runs" / run
    resumed = invoke("train", "--resume", "--run", run_dir, "--steps", "5")
    assert resumed.exit_code == 0, resumed.output
    last = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["step"] == 5 and last["val_loss"] == pytest.approx(EXPECTED[run]["val_loss"], abs=1e-4)
    sampled = invoke("sample", "The hunter", "--checkpoint", run_dir, "--max-new-tokens", "8", "--temperature", "0",
                     "--no-copy-check", "--repetition-penalty", "1")  # the text a57ec7e wrote, before the penalty was on
    assert sampled.exit_code == 0, sampled.output
    assert EXPECTED[run]["sample"] in sampled.output


@pytest.mark.parametrize("export", ["hf", "tiny.gguf"])
def test_export_loads_as_the_run(old, export):
    run, _, _ = load_checkpoint(old / "runs" / "full" / "best.safetensors")
    exported = load_pretrained(str(old / "exports" / export))
    ids = torch.tensor([IDS])
    with torch.no_grad():
        torch.testing.assert_close(exported.model.eval()(ids)[0], run.eval()(ids)[0], atol=1e-5, rtol=0)
    assert exported.tokenizer.encode("The hunter lit the lamp at dusk.") == EXPECTED["encoded"]
