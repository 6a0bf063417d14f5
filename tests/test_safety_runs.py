"""Runs survive crashes, signals, NaNs and each other: issue #12, items 3, 4, 6, 7, 8 and 11."""

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from bladegpt import runs
from bladegpt.checkpoint import load_checkpoint
from bladegpt.data.prepare import prepare
from bladegpt.errors import UserError, TrainingDiverged
from bladegpt.train import train
from bladegpt.train.trainer import Reporter, Trainer
from tests.conftest import TINY_MODEL, TINY_TRAIN
from tests.safety import REPO, TINY_CLI, assert_one_line_error, cli, invoke, mounted, poison_weights_at

EXACT = dict(device="cpu", precision="fp32", attention="manual", compile="off")
SCHEDULE = {**TINY_TRAIN, "steps": 30, "eval_interval": 10}

CRASH_AT_RENAME = f"""
import os, signal, sys
real, count = os.replace, 0
def replace(src, dst):
    global count
    if str(dst).startswith(sys.argv[2]):
        count += 1
        if count == int(sys.argv[3]):
            os.kill(os.getpid(), signal.SIGKILL)
    real(src, dst)
os.replace = replace
from bladegpt.train import train
train(sys.argv[1], "nano", {TINY_MODEL!r}, {SCHEDULE!r}, run=sys.argv[2], **{EXACT!r})
"""


def val_losses(history):
    return {r["step"]: r["val_loss"] for r in history if "val_loss" in r}


@pytest.mark.slow
def test_a_kill_at_any_write_leaves_a_run_that_resumes_exactly(corpus, workdir):
    """Renames in the run folder: 1 run.json; then per evaluation state, last, best. Kill before each
    of the first seven (2-3 and 5-6 are the state/last pairs), resume, and get the uninterrupted curve."""
    data = prepare([corpus], tokenizer="char").out_dir
    whole = train(data, "nano", TINY_MODEL, SCHEDULE, run=workdir / "runs" / "whole", **EXACT)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for point in range(1, 8):
        run_dir = workdir / "runs" / f"crash-{point}"
        done = subprocess.run([sys.executable, "-c", CRASH_AT_RENAME, str(data), str(run_dir), str(point)],
                              cwd=workdir, env=env, timeout=300)
        assert done.returncode == -signal.SIGKILL, point
        if point <= 2:  # killed before the first checkpoint: nothing to resume, and the folder takes a new run
            with pytest.raises(UserError, match="no checkpoint|not a training run"):
                train(resume=True, run=run_dir, compile="off")
            resumed = train(data, "nano", TINY_MODEL, SCHEDULE, run=run_dir, **EXACT)
        else:
            resumed = train(resume=True, run=run_dir)
        assert resumed.step == 30, point
        metrics = [json.loads(line) for line in (run_dir / runs.METRICS).read_text().splitlines()]
        assert val_losses(metrics) == pytest.approx(val_losses(whole.history), abs=1e-6), point
        steps = [(r["step"], "val_loss" in r) for r in metrics]
        assert len(steps) == len(set(steps)), f"duplicate metric lines after resuming from kill {point}"
        assert not list(run_dir.glob(".*.tmp")), point


class Recorder(Reporter):
    def __init__(self, stop_at=None):
        self.messages, self.runtime, self.stop_at = [], None, stop_at

    def start(self, info):
        self.runtime = info["runtime"]

    def message(self, text):
        self.messages.append(text)

    def log(self, record):
        if record["step"] == self.stop_at:
            os.kill(os.getpid(), signal.SIGINT)


def test_resume_keeps_the_runs_own_runtime_choices(corpus, workdir):
    prepare([corpus], tokenizer="char")
    precision = "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"
    chosen = dict(device="cpu", precision=precision, attention="manual", compile="off")
    model = {**TINY_MODEL, "dropout": 0.1}
    whole = train(None, "nano", model, SCHEDULE, **chosen)
    cut = train(None, "nano", model, SCHEDULE, reporter=Recorder(stop_at=15), **chosen)
    assert cut.interrupted and cut.step == 15
    quiet = Recorder()
    resumed = train(resume=True, run=cut.run_dir, reporter=quiet)  # no runtime flags: the run's own
    assert f"{precision} · manual attention · eager" in quiet.runtime
    assert not [m for m in quiet.messages if "Resuming with" in m], quiet.messages
    assert val_losses(resumed.history) == val_losses([r for r in whole.history if r["step"] > 15])

    told = Recorder()
    train(resume=True, run=cut.run_dir, train_overrides={"steps": 40}, attention="sdpa", reporter=told)
    assert "sdpa attention" in told.runtime
    assert any("--attention sdpa where the run used manual" in m for m in told.messages), told.messages


def test_sigterm_saves_and_the_run_folder_is_locked_while_training(corpus, workdir):
    prepare([corpus], tokenizer="char")
    proc = cli("train", *TINY_CLI, "--steps", "100000", "--eval-interval", "5", "--log-interval", "1",
               "--run", "runs/held", cwd=workdir)
    held = workdir / "runs" / "held"
    deadline = time.time() + 120
    while not (held / runs.LAST).exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[0]
    assert_one_line_error(invoke("train", *TINY_CLI, "--steps", "5", "--run", held), "in use", str(proc.pid))
    assert_one_line_error(invoke("train", "--resume", "--run", held), "in use")
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Interrupted at step" in output and "Traceback" not in output, output
    step = load_checkpoint(held / runs.LAST)[2]["step"]
    resumed = train(resume=True, run=held, train_overrides={"steps": step + 3})
    assert resumed.step == step + 3


def _claim(root):
    return [runs.new_run_dir("race", root).name for _ in range(25)]


def test_new_run_folders_are_race_free(tmp_path):
    with ProcessPoolExecutor(4) as pool:
        names = [name for batch in pool.map(_claim, [tmp_path] * 4) for name in batch]
    assert len(names) == len(set(names)) == 100


def test_a_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(corpus, workdir, monkeypatch):
    prepare([corpus], tokenizer="char")
    poison_weights_at(monkeypatch, 12)
    with pytest.raises(TrainingDiverged, match="NaN or infinite by step 15.*last good checkpoint.*lower --lr"):
        train(None, "nano", TINY_MODEL, SCHEDULE, compile="off")
    run_dir = workdir / "runs" / "tales-1"
    for line in (run_dir / runs.METRICS).read_text().splitlines():  # strict JSON: no bare NaN
        json.loads(line, parse_constant=lambda c: pytest.fail(f"{c} in metrics.jsonl"))
    model, _, info = load_checkpoint(run_dir / runs.LAST)
    assert info["step"] == 10 and all(torch.isfinite(p).all() for p in model.parameters())
    result = invoke("train", *TINY_CLI, "--steps", "30", "--eval-interval", "10", "--log-interval", "5")
    assert_one_line_error(result, "NaN or infinite", during_training=True)


def test_a_run_that_fails_to_start_leaves_no_folder(corpus, workdir, monkeypatch):
    prepare([corpus], tokenizer="char")
    assert_one_line_error(invoke("train", *TINY_CLI, "--attention", "fast"), "Unknown attention")
    monkeypatch.setattr("bladegpt.train.choose_attention", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt))
    result = invoke("train", *TINY_CLI)
    assert result.exit_code == 130 and "Traceback" not in result.output
    assert not (workdir / "runs").exists() or not list((workdir / "runs").iterdir())


def test_resume_mistakes_are_one_line(corpus, workdir):
    data = prepare([corpus], tokenizer="char").out_dir
    assert invoke("train", *TINY_CLI, "--time", "2s").exit_code == 0
    assert_one_line_error(invoke("train", "--resume", "--steps", "50"), "finished", "longer --time")
    other = prepare([corpus], tokenizer="bpe", out_dir=workdir / "other").out_dir
    assert_one_line_error(invoke("train", "--resume", "--time", "1m", "--data", other), "(it holds other tokens)")
    assert_one_line_error(invoke("train", "--resume", "--run", "runs/nowhere"), "No run folder at runs/nowhere")
    run_file = workdir / "runs" / "tales-1" / runs.RUN_FILE
    saved = run_file.read_text()
    for damage in ["{garbled", json.dumps({"dataset": 3}), json.dumps({**json.loads(saved), "model": {"n_layer": "six"}})]:
        run_file.write_text(damage)
        assert_one_line_error(invoke("train", "--resume", "--time", "1m"), "runs/tales-1")
    run_file.unlink()
    assert_one_line_error(invoke("train", "--resume", "--run", run_file.parent), "not a training run")
    (workdir / "afile").write_text("mine")
    assert_one_line_error(invoke("train", *TINY_CLI, "--run", "afile"), "is a file")
    assert (workdir / "afile").read_text() == "mine"


def test_a_run_whose_dataset_moved_resumes_with_data(corpus, workdir):
    data = prepare([corpus], tokenizer="char").out_dir
    assert invoke("train", *TINY_CLI, "--steps", "4", "--eval-interval", "2").exit_code == 0
    moved = data.rename(workdir / "elsewhere")
    assert_one_line_error(invoke("train", "--resume", "--steps", "6"), "If it moved", "--data NEW")
    result = invoke("train", "--resume", "--steps", "6", "--data", "elsewhere")
    assert result.exit_code == 0, result.output
    assert "Resuming on elsewhere, the same tokens" in result.output.replace("\n", " ")
    run = workdir / "runs" / "tales-1"
    assert runs.read_run(run)["dataset"] == str(moved.resolve())
    assert invoke("train", "--resume", "--steps", "8").exit_code == 0  # found at its new place from now on
    assert runs.summarize(run)["step"] == 8


def test_a_checkpoint_claiming_an_absurd_shape_fails_at_once(corpus, workdir):
    prepare([corpus], tokenizer="char")
    path = train(None, "nano", TINY_MODEL, {**TINY_TRAIN, "steps": 10}, compile="off").run_dir / runs.BEST
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    config = json.loads(metadata["config"])
    save_file(load_file(str(path)), str(path), metadata={**metadata, "config": json.dumps({**config, "n_layer": 10**6})})
    started = time.perf_counter()
    assert_one_line_error(invoke("sample", "The", "--checkpoint", path), "damaged", "1000000 layers")
    assert time.perf_counter() - started < 10


def test_a_full_disk_while_saving_is_one_line_and_keeps_the_last_checkpoint(corpus, workdir):
    data = prepare([corpus], tokenizer="char").out_dir
    probe = train(data, "nano", TINY_MODEL, {**SCHEDULE, "steps": 10}, compile="off", run=workdir / "probe")
    one_save = sum(p.stat().st_size for p in probe.run_dir.iterdir())
    room = workdir / "small"
    with mounted(room, "-o", f"size={one_save + one_save // 2 + 8192}"):
        result = invoke("train", "--data", data, *TINY_CLI, "--steps", "30", "--eval-interval", "10",
                        "--run", room / "run")
        assert_one_line_error(result, "Could not save a checkpoint", "previous one is kept", during_training=True)
        assert load_checkpoint(room / "run" / runs.LAST)[2]["step"] == 10
        assert not list((room / "run").glob(".*.tmp"))
