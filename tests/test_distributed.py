"""Two ranks with gloo on CPU, through torchrun: same curve as one process, same weights everywhere.

Pinned to the CPU in fp32, so a GPU machine runs the same comparison (bf16 would blur it).
"""

import json
import os
import shlex
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
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # rank 0 has its GPU, but must not wait in init for rank 1
    with pytest.raises(ConfigError, match="more processes on this machine than it has GPUs"):
        distributed.init_distributed(distributed.Distributed(0, 0, 2), "auto")


def test_the_first_rank_of_a_job_to_stop_is_counted_in_torchruns_store(monkeypatch):
    from torch.distributed import TCPStore

    from bladegpt.train.distributed import first_to_stop

    store = TCPStore("127.0.0.1", 0, is_master=True)  # torchrun's agent hosts one for the job
    for name, value in {"WORLD_SIZE": "2", "RANK": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(store.port),
                        "TORCHELASTIC_USE_AGENT_STORE": "True", "TORCHELASTIC_RESTART_COUNT": "0"}.items():
        monkeypatch.setenv(name, value)
    count = first_to_stop.__wrapped__  # uncached: each call is another rank stopping
    assert count() is True and count() is False
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")  # torchrun --max-restarts started the job again
    assert count() is True
    monkeypatch.delenv("TORCHELASTIC_USE_AGENT_STORE")  # ranks started without torchrun's agent: rank 0 speaks
    assert count() is False
    monkeypatch.setenv("RANK", "0")
    assert count() is True


def _torchrun_rank(monkeypatch, first: bool) -> None:
    """This process as a rank of a 2-process torchrun job, the first of it to stop or not."""
    from bladegpt.train import distributed

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0" if first else "1")
    monkeypatch.setattr(distributed, "first_to_stop", lambda: first)


@pytest.mark.parametrize("first", [True, False])
def test_under_torchrun_only_the_first_rank_to_stop_says_why(monkeypatch, capsys, first):
    """Every rank hits a mistake in the command; a rank whose collective broke because a peer left stops too:
    the first to stop says it once, the others exit non-zero without a word or a traceback."""
    import typer

    from bladegpt.cli.app import friendly
    from bladegpt.errors import DataError

    _torchrun_rank(monkeypatch, first)
    reasons = [DataError("No dataset at nope; check the path."), KeyboardInterrupt(),
               RuntimeError("[pair.cc:553] Connection closed by peer")]
    for reason in reasons:
        @friendly
        def command():
            raise reason

        if first and isinstance(reason, RuntimeError):
            with pytest.raises(RuntimeError):  # the first to stop on something not the user's: a bug, its traceback
                command()
            continue
        with pytest.raises(typer.Exit) as stopped:
            command()
        assert stopped.value.exit_code == (130 if isinstance(reason, KeyboardInterrupt) else 1)
    shown = capsys.readouterr()
    assert shown.out == ""
    assert shown.err == ("Error: No dataset at nope; check the path.\nStopped.\n" if first else "")


@pytest.mark.parametrize("first", [True, False])
def test_under_torchrun_a_command_line_mistake_is_said_once(monkeypatch, capsys, first):
    from bladegpt.cli import main

    _torchrun_rank(monkeypatch, first)
    monkeypatch.setattr(sys, "argv", ["bladegpt", "train", "--steps", "abc"])
    with pytest.raises(SystemExit) as stopped:
        main()
    assert stopped.value.code == 2
    shown = capsys.readouterr().err
    assert ("Invalid value for '--steps'" in shown) == first and (shown == "") != first
    monkeypatch.setattr(sys, "argv", ["bladegpt", "--version"])
    with pytest.raises(SystemExit) as stopped:
        main()
    assert stopped.value.code == 0 and "bladegpt" in capsys.readouterr().out


def _torchrun_reads(command: str) -> list[str]:
    """The arguments torchrun (this torch's own parser) hands `-m bladegpt`; SystemExit where it stops first."""
    import shlex

    from torch.distributed.run import get_args_parser

    words = shlex.split(command)
    assert words[0] == "torchrun", command
    args = get_args_parser().parse_args(words[1:])
    assert args.module and args.training_script == "bladegpt", command
    script = list(args.training_script_args)
    return script[1:] if script[:1] == ["--"] else script  # a Python whose argparse keeps the `--`


def _documented_torchrun_commands() -> list[str]:
    """Every torchrun command the docs and the help show, continuation lines joined."""
    import re

    texts = [p.read_text() for p in (REPO / "docs").rglob("*.md")] + [(REPO / "bladegpt" / "__main__.py").read_text()]
    joined = [re.sub(r"\\\n\s*", "", text) for text in texts]
    return [line.strip() for text in joined for line in text.splitlines() if line.strip().startswith("torchrun --")]


def test_every_documented_torchrun_command_hands_train_its_own_options():
    """torchrun reads --run as its own --run-path and stops ('ambiguous option'); a `--` before train ends its
    options. Each torchrun command shown must reach `bladegpt train` with its --run and the rest whole."""
    import typer.main

    from bladegpt.cli import app

    commands = _documented_torchrun_commands()
    assert len(commands) >= 3 and any("--run" in c for c in commands)
    try:  # the form without `--`: torchrun 2.13 on Python 3.11 stops at --run, before BladeGPT starts
        broken = _torchrun_reads("torchrun --standalone --nproc_per_node=2 -m bladegpt train --run runs/x")
    except SystemExit:
        pass
    else:  # a Python whose argparse does not call it ambiguous: then it must come through whole
        assert broken == ["train", "--run", "runs/x"]
    group = typer.main.get_command(app)
    for command in commands:
        args = _torchrun_reads(command)
        assert args[0] == "train" and args == command.split(" -- ", 1)[1].split(), command
        sub = group.get_command(None, "train")
        params = sub.make_context("train", args[1:]).params  # parsed by train as written
        assert ("--run" in args) == (params["run"] is not None), command


def test_a_job_says_how_to_start_it_again_as_it_was_started(monkeypatch):
    from bladegpt.train.distributed import Distributed

    assert Distributed().command(["train", "--resume", "--run", "runs/x"]) == "bladegpt train --resume --run runs/x"
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    again = Distributed(0, 0, 2).command(["train", "--resume", "--run", "runs/x"])
    assert again == "torchrun --standalone --nproc_per_node=2 -m bladegpt -- train --resume --run runs/x"
    assert _torchrun_reads(again) == ["train", "--resume", "--run", "runs/x"]
    # a run named after a dataset 'my notes' was 'runs/my notes-1' in the line, two words to a shell
    spaced = Distributed(0, 0, 2).command(["train", "--resume", "--run", "runs/my notes-1"])
    assert _torchrun_reads(spaced) == ["train", "--resume", "--run", "runs/my notes-1"]
    assert shlex.split(Distributed().command(["train", "--run", "runs/it's-1"]))[1:] == ["train", "--run", "runs/it's-1"]
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # one of two machines: their rendezvous options are the user's
    assert Distributed(0, 0, 8).command(["train"]).startswith("torchrun YOUR-OPTIONS -m bladegpt -- train")


@pytest.mark.slow
def test_the_documented_torchrun_command_trains_and_resumes_a_named_run_on_two_processes(corpus, workdir):
    """`torchrun ... -m bladegpt -- train --run X`, as the docs show it, for real: 2 ranks, gloo, 3 steps."""
    data = prepare([corpus], tokenizer="char").out_dir
    tiny = ["--data", str(data), "--preset", "nano", "--n-layer", "2", "--n-head", "2", "--n-embd", "32",
            "--block-size", "16", "--batch-size", "4", "--accum", "2", "--eval-iters", "2", "--eval-interval", "3",
            "--sample-tokens", "0", "--compile", "off", "--device", "cpu"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "bladegpt",
                "--", "train"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([*torchrun, *tiny, "--steps", "3", "--run", "runs/named"], capture_output=True, text=True,
                          timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    done = subprocess.run([*torchrun, "--resume", "--run", "runs/named", "--steps", "5"], capture_output=True,
                          text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert load_checkpoint(workdir / "runs" / "named" / "last.safetensors")[2]["step"] == 5
    assert sorted(p.name for p in (workdir / "runs").iterdir()) == ["named"]


@pytest.mark.slow
@pytest.mark.parametrize("mistake", ["every rank: no dataset", "rank 0 alone: the run folder in use"])
def test_a_mistake_under_torchrun_is_one_line_once_and_no_rank_waits(corpus, workdir, mistake):
    """The documented torchrun form on 2 processes: a mistake every rank makes (before the process group), and
    one only rank 0 sees (its run folder's lock, while rank 1 waits in a broadcast), end the job non-zero, with
    the line said once and no rank's traceback. torch 2.13's torchrun raises its own ChildFailedError (a
    traceback and a report) for any process that exits non-zero: that one is the launcher's, the only one."""
    from bladegpt import runs

    data = prepare([corpus], tokenizer="char").out_dir
    tiny = ["--preset", "nano", "--n-layer", "2", "--n-head", "2", "--n-embd", "32", "--block-size", "16",
            "--batch-size", "4", "--accum", "2", "--steps", "3", "--compile", "off", "--device", "cpu"]
    if mistake.startswith("every rank"):
        args, line = ["--data", "nope", *tiny], "No dataset at nope"
    else:
        (workdir / "runs" / "held").mkdir(parents=True)
        holder = runs.RunLock(workdir / "runs" / "held")  # another run trains in it
        args, line = ["--data", str(data), *tiny, "--run", "runs/held"], "runs/held is in use"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "bladegpt",
                "--", "train"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([*torchrun, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=120, env=env)  # a rank left waiting would run into this
    output = done.stdout  # the ranks' and torchrun's lines, in the order written
    assert done.returncode != 0
    said = [text for text in output.splitlines() if text.startswith("Error:")]
    assert len(said) == 1 and line in said[0], output
    assert output.count("Traceback") == 1 and "ChildFailedError" in output.split("Traceback", 1)[1], output
    if mistake.startswith("rank 0"):
        assert [p.name for p in (workdir / "runs" / "held").iterdir()] == [runs.LOCK]  # nothing written into it
        holder.release()
