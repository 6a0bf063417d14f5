"""The runs folder: where each training run keeps its checkpoints and metrics, which is latest, and a run
folder's life (claimed, locked, left empty when a start dies before its first checkpoint)."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import time
from pathlib import Path

from bladegpt import strictjson
from bladegpt.encoding import utf8_name
from bladegpt.errors import ConfigError, UserError
from bladegpt.files import atomic_write_text, temp_path

RUNS_DIR = Path("runs")
RUN_FILE = "run.json"
BEST = "best.safetensors"
LAST = "last.safetensors"
STATE = "state.safetensors"
METRICS = "metrics.jsonl"
LOCK = ".lock"
CHECKPOINTS = (LAST, STATE, BEST)
RUN_FILES = {RUN_FILE, METRICS, LOCK}  # what a run folder holds before its first checkpoint
TRACKER_FOLDERS = ("tensorboard", "wandb")  # what the trackers write inside a run folder


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


READER_HOLD_S = 0.5  # `bladegpt runs` holds a run's lock for milliseconds, to look: a start waits that out


class RunLock:
    """An exclusive lock on a run folder while a process trains in it.

    flock is released by the kernel when the process dies, however it dies: no stale locks.
    """

    def __init__(self, run_dir: Path):
        import fcntl

        self.path = Path(run_dir) / LOCK
        if self.path.is_symlink():
            raise UserError(f"{self.path} is a link, not BladeGPT's lock file (its pid would be written through "
                            "it): move it away, then train again.")
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        deadline = time.monotonic() + READER_HOLD_S
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() < deadline:
                    time.sleep(0.05)  # a reader's look, soon over
                    continue
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


def claim_run_dir(run: Path | None, data_dir: Path) -> tuple[Path, bool]:
    """The folder a new run trains in, and whether this call made it."""
    if run is None:
        return new_run_dir(utf8_name(data_dir.name)), True
    run_dir = Path(run)
    if (run_dir.exists() or run_dir.is_symlink()) and not run_dir.is_dir():  # a file, or a link to nothing
        raise ConfigError(f"--run {run_dir} is a {'file' if run_dir.exists() else 'link to nothing'}; give --run a folder name.")
    if run_dir.is_dir():
        ours = RUN_FILES | set(CHECKPOINTS) | set(TRACKER_FOLDERS)
        ours |= {temp_path(Path(name)).name for name in ours}  # a crash may leave a staged copy
        entries = list(run_dir.iterdir())
        if links := [p for p in entries if p.is_symlink() and p.name in ours]:
            raise ConfigError(f"{links[0]} is a link, not a file BladeGPT wrote (a write would go through it); "
                              "move it away, or give --run a new folder name.")
        if not {p.name for p in entries} <= ours:
            raise ConfigError(f"{run_dir} exists and is not a run folder; give --run a new folder name "
                              "(BladeGPT never writes into folders it did not make).")
        return run_dir, False
    run_dir.mkdir(parents=True)
    return run_dir, True


def check_unused(run_dir: Path) -> None:
    """Checked under the lock: a run folder with a checkpoint belongs to its run."""
    if any((run_dir / name).exists() for name in CHECKPOINTS):
        raise ConfigError(f"{run_dir} already holds a run; pick another --run, or add --resume to continue it.")
    remove_started(run_dir)  # from a start that died before its first checkpoint


def remove_started(run_dir: Path) -> None:
    """What a start writes before its first checkpoint: the metrics and the trackers' folders."""
    (run_dir / METRICS).unlink(missing_ok=True)
    for name in TRACKER_FOLDERS:
        if (run_dir / name).is_dir():
            shutil.rmtree(run_dir / name)


def remove_if_unused(run_dir: Path, created: bool) -> None:
    """A run that stopped before its first checkpoint leaves nothing behind (only what it wrote is removed)."""
    if any((run_dir / name).exists() for name in CHECKPOINTS):
        return
    remove_started(run_dir)
    for name in RUN_FILES:
        (run_dir / name).unlink(missing_ok=True)
    if created and not any(run_dir.iterdir()):
        run_dir.rmdir()


STAGED = (RUN_FILE, METRICS, STATE, LAST, BEST)  # the run's files written through files.py's staged copies


def remove_stale_staged(run_dir: Path) -> list[str]:
    """Remove the staged copies (files.temp_path's exact names, nothing else) that a killed write left in a run
    folder and no save will commit; returns their names. A staged last or best of the step state.safetensors
    records is the rest of a committed save, left for checkpoint.recover_training to move into place. For a
    caller that holds the run's lock before its own saver exists: every write into a run folder is made under
    it, so none of these is being written."""
    committed = (_saved_info(Path(run_dir) / STATE) or {}).get("step")
    removed = []
    for name in STAGED:
        path = temp_path(Path(run_dir) / name)
        if path.is_symlink() or not path.is_file():
            continue
        if name in (LAST, BEST) and committed is not None and (_saved_info(path) or {}).get("step") == committed:
            continue
        try:
            path.unlink()
        except OSError:
            continue  # a folder it may not change (read-only, another user's): the run's next train says so
        removed.append(path.name)
    return removed


def remove_stale_staged_if_idle(run_dir: Path) -> list[str]:
    """remove_stale_staged for a reader (`bladegpt runs`): only where no process trains in the run, its lock
    held meanwhile so that none starts; a folder without a lock file, or whose run.json is not a run's (another
    tool's folder that has one), is left as it is."""
    import fcntl

    try:
        read_run(run_dir)
        fd = os.open(Path(run_dir) / LOCK, os.O_RDONLY)
    except (UserError, OSError):
        return []
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return remove_stale_staged(run_dir)
    except BlockingIOError:
        return []  # training: its staged copies may be a save in progress
    finally:
        os.close(fd)


def said_removed(run_dir: Path, removed: list[str]) -> str:
    """The one line that says what remove_stale_staged removed."""
    return (f"Removed {', '.join(removed)} from {run_dir}: "
            f"{'a write' if len(removed) == 1 else 'writes'} that a killed process left unfinished.")


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
        saved = json.loads(path.read_text(encoding="utf-8"))
        if not (isinstance(saved, dict) and isinstance(saved["dataset"], str)
                and isinstance(saved["model"], dict) and isinstance(saved["train"], dict)):
            raise TypeError("missing or wrong-typed fields")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise UserError(f"{path} is damaged ({e}); it cannot be resumed: start a new run, "
                        "or restore the file from a backup.") from None
    return saved


def write_run(run_dir: Path, record: dict) -> None:
    atomic_write_text(Path(run_dir) / RUN_FILE, strictjson.dumps(record, indent=2))


def cut_metrics(run_dir: Path, step: int) -> None:
    """Keep only the metric lines up to `step`: after a crash, the resumed run writes the rest again."""
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
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


def _saved_info(path: Path) -> dict | None:
    """The `info` a checkpoint's metadata holds, read from the safetensors header alone (no torch, no tensors)."""
    try:
        with open(path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            if not 0 < size < 100_000_000:
                return None
            header = json.loads(f.read(size))
        info = json.loads(header.get("__metadata__", {}).get("info", "null"))
    except (OSError, ValueError, AttributeError):
        return None
    return info if isinstance(info, dict) else None


def _running(run_dir: Path) -> bool:
    """Whether a process holds the run's lock (a shared lock cannot be had while training holds it)."""
    import fcntl

    try:
        fd = os.open(run_dir / LOCK, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def _start(saved: dict) -> str:
    """How a run started: from a model, a named preset, or the default sized to its text."""
    if isinstance(saved.get("init_from"), str) and saved["init_from"]:
        lora = saved.get("lora")
        return f"from {Path(saved['init_from']).name}" + (f", LoRA r{lora.get('rank')}" if isinstance(lora, dict) else "")
    if isinstance(saved.get("preset"), str) and saved["preset"]:
        return saved["preset"]
    model = saved.get("model", {})
    return f"sized {model.get('n_layer', '?')}x{model.get('n_embd', '?')}"


SETTINGS = ("preset", "init_from", "lora", "model", "train", "resumes")  # what run.json records of how it trained


def _settings(saved: dict, info: dict) -> dict:
    """How a run trained, as recorded: run.json's settings (an older run's has fewer) and the runtime its state
    saved (device, precision, attention, compile), so that two runs can be told apart by what differed."""
    settings = {name: saved[name] for name in SETTINGS if name in saved}
    if isinstance(info.get("runtime"), dict):
        settings["runtime"] = info["runtime"]
    return settings


def summarize(run_dir: Path) -> dict:
    """One run at a glance: where it started, how far it got, its best val loss, and its state."""
    run_dir = Path(run_dir)
    try:
        saved = read_run(run_dir)
    except UserError:
        saved = {"dataset": "?"}  # damaged: nothing recorded can be read
    train = saved.get("train", {})
    info = _saved_info(run_dir / STATE) or {}
    step = _count(info.get("step")) or 0
    # null (or NaN, from older versions) is no value: such an evaluation is never the best
    evals = [r for r in read_metrics(run_dir) if is_number(r.get("val_loss")) and r["step"] <= step]
    best = min(evals, key=lambda r: r["val_loss"], default=None)
    measured = [r for r in evals if is_number(r.get("copied"))]  # the copy meter on the eval samples
    copying = measured[-1] if measured else {}
    reported = [r for r in evals if "loops" in r]  # the voice report on the eval samples (older runs have none)
    voice = reported[-1] if reported else {}
    base = saved.get("base_voice") if isinstance(saved.get("base_voice"), dict) else {}
    # a value of the wrong kind (a damaged or hand-edited file) reads as not recorded
    steps, budget = _count(train.get("steps")), _number(train.get("time_budget_s"))
    elapsed = _number(info.get("elapsed"))
    patience, stale = _count(train.get("patience")) or 0, _count(info.get("stale_evals")) or 0
    if _running(run_dir):
        state = "running"
    elif not info:
        state = "no checkpoint"
    elif patience and stale >= patience:
        state = "stopped early"
    elif (budget is not None and (elapsed or 0) >= budget) or (budget is None and steps and step >= steps):
        state = "finished"
    else:
        state = "interrupted"
    return {
        "run": str(run_dir),
        "dataset": Path(saved["dataset"]).name,
        "start": _start(saved),
        "step": step,
        "steps": None if budget is not None else steps,
        "time_budget_s": budget,
        "best_val_loss": best["val_loss"] if best else None,
        "best_val_bpb": strictjson.number(best.get("val_bpb")) if best else None,
        "best_step": best["step"] if best else None,
        "elapsed_s": elapsed,
        "state": state,
        "val_bpb": [bpb for r in evals if (bpb := strictjson.number(r.get("val_bpb"))) is not None],
        "copied": copying.get("copied"),
        "longest_copy": _count(copying.get("longest_copy")),
        "loops": strictjson.number(voice.get("loops")),
        "style": strictjson.number(voice.get("style")),
        "base_style": strictjson.number(base.get("style")),
        "settings": _settings(saved, info),
    }


def run_folders(paths: list[Path]) -> list[Path]:
    """The runs named: each path a run folder, or a folder of runs (its runs, oldest first)."""
    found = []
    for path in map(Path, paths):
        if (path / RUN_FILE).is_file():
            found.append(path)
        elif path.is_dir():
            inside = [p for p in path.iterdir() if (p / RUN_FILE).is_file()]
            found += sorted(inside, key=lambda p: (p / RUN_FILE).stat().st_mtime)
        elif path != RUNS_DIR:
            raise UserError(f"No run at {path}; name a run folder (runs/NAME-N) or a folder of runs.")
    return found


def is_number(value) -> bool:
    """A value a chart can place: metrics.jsonl writes a non-finite one as null."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _number(value) -> int | float | None:
    return value if is_number(value) else None


def _count(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def read_metrics(run_dir: Path) -> list[dict]:
    """metrics.jsonl's records, each with an int `step`, in file order. Read tolerantly: a line cut short
    by a crash, or a record of a kind this version does not know, is passed over; values may be null."""
    path = Path(run_dir) / METRICS
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        return []
    records = []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int) and not isinstance(record["step"], bool):
            records.append(record)
    return records
