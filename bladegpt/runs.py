"""The runs folder: where each training run keeps its checkpoints and metrics, and which is latest."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from bladegpt.errors import UserError
from bladegpt.files import atomic_write_text

RUNS_DIR = Path("runs")
RUN_FILE = "run.json"
BEST = "best.safetensors"
LAST = "last.safetensors"
STATE = "state.safetensors"
METRICS = "metrics.jsonl"
LOCK = ".lock"


def new_run_dir(name: str, root: Path = RUNS_DIR) -> Path:
    """runs/NAME-1, runs/NAME-2, ...: the first free one, so no run overwrites another.

    mkdir is atomic: two processes starting at once never get the same folder.
    """
    root.mkdir(parents=True, exist_ok=True)
    while True:
        taken = [int(m.group(1)) for p in root.iterdir() if (m := re.fullmatch(rf"{re.escape(name)}-(\d+)", p.name))]
        path = root / f"{name}-{max(taken, default=0) + 1}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue  # another process took it between our look and our mkdir


class RunLock:
    """An exclusive lock on a run folder while a process trains in it.

    flock is released by the kernel when the process dies, however it dies: no stale locks.
    """

    def __init__(self, run_dir: Path):
        import fcntl

        self.path = Path(run_dir) / LOCK
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self.fd, 32, 0).decode(errors="replace").strip() or "another process"
            os.close(self.fd)
            raise UserError(f"{run_dir} is in use: pid {holder} is training in it; wait for it to finish "
                            "or stop it, or train into another --run.") from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, str(os.getpid()).encode(), 0)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing drops the flock; the file stays, harmless
            self.fd = None


def read_run(run_dir: Path) -> dict:
    """run.json of a run folder, checked enough that resuming from it cannot fail obscurely."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"No run folder at {run_dir}; check the path (runs live in {RUNS_DIR}/), "
                        "or leave out --run to resume the latest run.")
    path = run_dir / RUN_FILE
    if not path.is_file():
        raise UserError(f"{run_dir} is not a training run (no {RUN_FILE}); point --run at a folder under {RUNS_DIR}/.")
    try:
        saved = json.loads(path.read_text())
        if not (isinstance(saved, dict) and isinstance(saved["dataset"], str)
                and isinstance(saved["model"], dict) and isinstance(saved["train"], dict)):
            raise TypeError("missing or wrong-typed fields")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise UserError(f"{path} is damaged ({e}); it cannot be resumed: start a new run, "
                        "or restore the file from a backup.") from None
    return saved


def write_run(run_dir: Path, record: dict) -> None:
    atomic_write_text(Path(run_dir) / RUN_FILE, json.dumps(record, indent=2))


def cut_metrics(run_dir: Path, step: int) -> None:
    """Keep only the metric lines up to `step`: after a crash, the resumed run writes the rest again."""
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):
            continue  # a line cut short by the crash
    atomic_write_text(path, "".join(line + "\n" for line in kept))


def latest_run(root: Path = RUNS_DIR) -> Path:
    """The run whose checkpoint was written last."""
    checkpoints = sorted(Path(root).glob(f"*/{LAST}"), key=lambda p: p.stat().st_mtime)
    if not checkpoints:
        raise UserError("No trained model found; run `bladegpt train` first (after `bladegpt prepare`).")
    return checkpoints[-1].parent


def resolve_checkpoint(checkpoint: Path | None, root: Path = RUNS_DIR) -> Path:
    """A checkpoint file from a file, a run folder, or (None) the latest run's best."""
    if checkpoint is None:
        run = latest_run(root)
        return run / BEST if (run / BEST).is_file() else run / LAST
    checkpoint = Path(checkpoint)
    if checkpoint.is_dir():
        for name in (BEST, LAST):
            if (checkpoint / name).is_file():
                return checkpoint / name
        raise UserError(f"{checkpoint} holds no checkpoint; point at a run folder under {root}/ or a .safetensors file.")
    if not checkpoint.is_file():
        raise UserError(f"No checkpoint at {checkpoint}; check the path, or leave it out to use the latest run.")
    return checkpoint
