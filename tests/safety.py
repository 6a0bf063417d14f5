"""Helpers for the data-safety tests: one-line errors, read-only and tiny filesystems, a CLI in a subprocess."""

import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bladegpt.cli import app

REPO = Path(__file__).resolve().parents[1]
TINY_CLI = ["--preset", "nano", "--n-layer", "2", "--n-head", "2", "--n-embd", "32", "--block-size", "16",
            "--batch-size", "4", "--eval-iters", "2", "--sample-tokens", "0", "--compile", "off"]


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def assert_one_line_error(result, *fragments: str, during_training: bool = False) -> str:
    """Exit code 1, no traceback, and one line naming the problem: the only output, or, for a failure
    `during_training`, the last line after the training display's."""
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exception  # not an uncaught error (a traceback)
    if during_training:
        lines = lines[-1:]
        assert sum(line.startswith("Error:") for line in result.output.splitlines()) == 1, result.output
    assert len(lines) == 1 and lines[0].startswith("Error:"), result.output
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


@contextmanager
def mounted(target: Path, *options: str, source: str = "tmpfs", fstype: str | None = "tmpfs"):
    """Mount something at target for the test, or skip with the reason (needs root and mount rights)."""
    target.mkdir(parents=True, exist_ok=True)
    cmd = ["mount", *(["-t", fstype] if fstype else []), *options, source, str(target)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount here ({' '.join(cmd)}: {done.stderr.strip() or done.returncode})")
    try:
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], check=False)


@contextmanager
def read_only(folder: Path):
    """`folder` made read-only by a read-only bind mount over itself (root ignores file modes)."""
    with mounted(folder, "--bind", "-o", "ro", source=str(folder), fstype=None):
        subprocess.run(["mount", "-o", "remount,ro,bind", str(folder)], check=False)
        probe = folder / ".probe"
        try:
            probe.write_text("x")
        except OSError:
            yield folder
            return
        probe.unlink()
        pytest.skip("a read-only bind mount is writable here")


def cli(*args, cwd: Path, timeout: float = 300, **popen) -> subprocess.Popen:
    """`bladegpt ARGS` as a real process (signals, kills and locks need one)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "bladegpt", *map(str, args)], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


def poison_weights_at(monkeypatch, step: int) -> None:
    """Fill a weight with NaN just before training step `step`: the loss turns NaN from there on."""
    import torch

    from bladegpt.train.trainer import Trainer

    real_step = Trainer.train_step

    def poisoned(self):
        if self.step == step:
            with torch.no_grad():
                next(self.model.parameters()).fill_(float("nan"))
        return real_step(self)

    monkeypatch.setattr(Trainer, "train_step", poisoned)
