"""The runs folder: where each training run keeps its checkpoints and metrics, and which is latest."""

from __future__ import annotations

import re
from pathlib import Path

from bladegpt.errors import UserError

RUNS_DIR = Path("runs")
RUN_FILE = "run.json"
BEST = "best.safetensors"
LAST = "last.safetensors"
STATE = "state.safetensors"
METRICS = "metrics.jsonl"


def new_run_dir(name: str, root: Path = RUNS_DIR) -> Path:
    """runs/NAME-1, runs/NAME-2, ...: the first free one, so no run overwrites another."""
    root.mkdir(parents=True, exist_ok=True)
    taken = [int(m.group(1)) for p in root.iterdir() if (m := re.fullmatch(rf"{re.escape(name)}-(\d+)", p.name))]
    path = root / f"{name}-{max(taken, default=0) + 1}"
    path.mkdir()
    return path


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
