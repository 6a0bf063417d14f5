"""Two ranks with gloo on CPU, through torchrun: same curve as one process, same weights everywhere.

Pinned to the CPU in fp32, so a GPU machine runs the same comparison (bf16 would blur it).
"""

import json
import os
import subprocess
import sys

import pytest
import torch

from bladegpt.checkpoint import load_checkpoint
from bladegpt.data.prepare import prepare
from bladegpt.train import train
from tests.conftest import TINY_MODEL, TINY_TRAIN
from tests.safety import REPO
from tests.test_tracker import board

SETTINGS = {**TINY_TRAIN, "steps": 12, "accum": 4, "eval_interval": 6, "log_interval": 2, "batch_size": 8,
            "token_noise": 0.2}  # each rank noises its share of the batch as one process does the whole

RANK_SCRIPT = f"""
import os, sys, torch
from bladegpt.train import train
result = train(sys.argv[1], "nano", {TINY_MODEL!r}, {SETTINGS!r}, device="cpu", precision="fp32", compile="off", run=sys.argv[2],
               tracker="tensorboard")
flat = torch.cat([p.detach().flatten() for p in result.model.parameters()])
torch.save(flat, f"{{sys.argv[2]}}-rank{{os.environ['RANK']}}.pt")
"""


@pytest.mark.slow
def test_two_ranks_match_one_process(corpus, workdir):
    torchrun = [sys.executable, "-m", "torch.distributed.run"]
    data = prepare([corpus], tokenizer="char").out_dir
    (workdir / "rank.py").write_text(RANK_SCRIPT)
    subprocess.run([*torchrun, "--standalone", "--nproc_per_node=2", "rank.py", str(data), "runs/ddp"],
                   check=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})  # this checkout's code
    single = train(data, "nano", TINY_MODEL, SETTINGS, device="cpu", precision="fp32", compile="off",
                   run=workdir / "runs" / "single")

    ranks = [torch.load(workdir / "runs" / f"ddp-rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert torch.equal(ranks[0], ranks[1])  # DDP keeps every rank's weights identical

    records = [json.loads(line) for line in (workdir / "runs" / "ddp" / "metrics.jsonl").read_text().splitlines()]
    ddp_losses = {r["step"]: r["loss"] for r in records if "val_loss" not in r}
    one_losses = {r["step"]: r["loss"] for r in single.history if "val_loss" not in r}
    assert ddp_losses.keys() == one_losses.keys()
    for step, loss in one_losses.items():
        assert ddp_losses[step] == pytest.approx(loss, abs=2e-3), step
    single_flat = torch.cat([p.detach().flatten() for p in single.model.parameters()])
    assert torch.allclose(ranks[0], single_flat, atol=1e-3)

    [events] = (workdir / "runs" / "ddp" / "tensorboard").iterdir()  # only rank 0 logs to the tracker
    values, _ = board(events.parent)
    assert [s for s, _ in values["train/loss"]] == sorted(ddp_losses)

    model, _, info = load_checkpoint(workdir / "runs" / "ddp" / "last.safetensors")  # loads in one process
    assert info["step"] == 12
    resumed = train(resume=True, run=workdir / "runs" / "ddp", train_overrides={"steps": 14}, device="cpu", compile="off")
    assert resumed.step == 14  # 2 ranks -> 1 rank


def test_accum_must_divide_across_ranks(corpus, monkeypatch):
    from bladegpt.config import ModelConfig, TrainConfig
    from bladegpt.errors import ConfigError
    from bladegpt.data.dataset import TokenData
    from bladegpt.runtime import Runtime
    from bladegpt.train.distributed import Distributed
    from bladegpt.train.trainer import Reporter, Trainer

    data = TokenData(prepare([corpus], tokenizer="char").out_dir)
    with pytest.raises(ConfigError, match="divisible by the number of processes"):
        Trainer(ModelConfig(vocab_size=64, **TINY_MODEL), TrainConfig(batch_size=12, accum=3), data, corpus.parent,
                Runtime(torch.device("cpu"), "fp32", "sdpa", False), "off", Distributed(0, 0, 2), Reporter())


def test_more_ranks_than_gpus_is_one_clear_line(monkeypatch):
    from bladegpt.train import distributed
    from bladegpt.errors import ConfigError

    monkeypatch.setattr(distributed, "resolve_device", lambda name: torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match="more processes on this machine than it has GPUs.*--nproc_per_node=1"):
        distributed.init_distributed(distributed.Distributed(1, 1, 2), "auto")
