"""`train --tracker`: the records metrics.jsonl gets, the run's settings and its samples, sent to the
experiment tracker people already keep open (TensorBoard, as litgpt; Weights & Biases, as nanoGPT and
nanochat). Each is an optional extra, imported only when asked for. A tracker never stops a run: one
that cannot start, or fails later, is reported in one line and training goes on without it."""

from __future__ import annotations

import json
import math
import os
import secrets
from collections.abc import Callable
from pathlib import Path

from bladegpt.errors import ConfigError

TRACKERS = ("tensorboard", "wandb")
NAMES = {"tensorboard": "TensorBoard", "wandb": "W&B"}
TRAIN_TAGS = {"loss": "train/loss", "lr": "train/lr", "tok_per_s": "train/tok_per_s", "mfu": "train/mfu",
              "elapsed": "time/elapsed_s"}
EVAL_TAGS = {"val_loss": "val/loss", "val_bpb": "val/bpb", "copied": "sample/copied", "longest_copy": "sample/longest_copy",
             "loops": "sample/loops", "style": "sample/style_distance", "elapsed": "time/elapsed_s"}
WANDB_ID = "bladegpt-run-id"  # in the run's wandb/ folder: a resumed run goes on in the same W&B run


def scalars(record: dict) -> dict[str, float]:
    """A metrics.jsonl record as tracker tags. An eval record gives its val_* fields, the copy meter and the
    voice report (its train fields repeat the last train record's); null (non-finite) and non-numeric values are
    left out, and fields this version does not know keep their own names under train/ or val/."""
    evaluation = "val_loss" in record
    tags = EVAL_TAGS if evaluation else TRAIN_TAGS
    out = {}
    for key, value in record.items():
        if key == "step" or isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            continue
        if evaluation and key in TRAIN_TAGS and key not in EVAL_TAGS:
            continue
        out[tags.get(key, f"{'val' if evaluation else 'train'}/{key.removeprefix('val_')}")] = float(value)
    return out


class Tracker:
    """One tracker's connection; subclasses send scalars and text. Any error it raises turns it off
    with one line through `say`, so a run never stops for its tracker."""
    name = "tracker"

    def __init__(self, say: Callable[[str], None]):
        self.say, self.live = say, True
        self.logged: dict[str, int] = {}  # tag -> the last step it was sent at: a tag is sent once a step

    def log(self, record: dict) -> None:
        step = record.get("step")
        if not isinstance(step, int) or isinstance(step, bool):
            return
        values = {tag: v for tag, v in scalars(record).items() if self.logged.get(tag) != step}
        if values:
            self.logged.update(dict.fromkeys(values, step))
            self._guard(self._scalars, step, values)

    def text(self, step: int, sample: str) -> None:
        self._guard(self._text, step, sample)

    def close(self, failed: bool = False) -> None:
        self._guard(self._close, failed)
        self.live = False

    def _guard(self, send: Callable, *args) -> None:
        if not self.live:
            return
        try:
            send(*args)
        except Exception as e:  # whatever a tracker raises, the run goes on
            self.live = False
            self.say(f"{NAMES[self.name]} stopped working ({_one_line(e)}); training goes on without it.")

    def _scalars(self, step: int, values: dict[str, float]) -> None: ...
    def _text(self, step: int, sample: str) -> None: ...
    def _close(self, failed: bool) -> None: ...


class TensorBoard(Tracker):
    """Event files in RUN/tensorboard/: `tensorboard --logdir runs` shows every run by its folder."""
    name = "tensorboard"

    def __init__(self, run_dir: Path, settings: dict, start_step: int, say: Callable[[str], None]):
        super().__init__(say)
        from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

        # A resumed run may log steps again that a crash lost; purge_step hides the old ones past it.
        self.writer = SummaryWriter(str(Path(run_dir) / "tensorboard"), purge_step=start_step + 1 if start_step else None)
        self.writer.add_text("settings", _code(json.dumps(settings, indent=2)), start_step)
        self.writer.flush()
        say(f"Logging to TensorBoard: tensorboard --logdir {Path(run_dir).parent}")

    def _scalars(self, step: int, values: dict[str, float]) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def _text(self, step: int, sample: str) -> None:
        self.writer.add_text("sample", _code(sample), step)
        self.writer.flush()  # at each evaluation, so the board is current while the run trains

    def _close(self, failed: bool) -> None:
        self.writer.close()


class WandB(Tracker):
    """A W&B run named after the run folder, in project $WANDB_PROJECT (default bladegpt); with
    WANDB_MODE=offline it is written to RUN/wandb/ only, for `wandb sync` later."""
    name = "wandb"

    def __init__(self, run_dir: Path, settings: dict, start_step: int, say: Callable[[str], None]):
        super().__init__(say)
        import wandb

        id_file = Path(run_dir) / "wandb" / WANDB_ID
        run_id = id_file.read_text().strip() if id_file.is_file() else secrets.token_hex(4)  # W&B's own length
        self.wandb = wandb
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "bladegpt"), name=Path(run_dir).name,
                              id=run_id, resume="allow", dir=str(run_dir), config=settings, allow_val_change=True,
                              settings=wandb.Settings(console="off", silent=True))  # the training display keeps the terminal
        id_file.write_text(run_id)
        self.rows: list[list] = []
        say(f"Logging to W&B offline; upload it later with `wandb sync {Path(self.run.dir).parent}`."
            if self.run.offline else f"Logging to W&B: {self.run.url}")

    def _scalars(self, step: int, values: dict[str, float]) -> None:
        self.run.log(values, step=step)

    def _text(self, step: int, sample: str) -> None:
        self.rows.append([step, sample])
        self.run.log({"samples": self.wandb.Table(columns=["step", "sample"], data=self.rows)}, step=step)

    def _close(self, failed: bool) -> None:
        self.run.finish(exit_code=1 if failed else 0)


def _one_line(e: Exception) -> str:
    """A tracker's error, however many lines it spans, as one."""
    return " ".join(f"{type(e).__name__}: {e}".split())


def _code(text: str) -> str:
    """Text as a markdown code block, as TensorBoard renders text: line breaks and spaces kept."""
    return "\n".join("    " + line for line in text.splitlines())


def check_tracker(kind: str | None) -> None:
    """A misspelt --tracker is the user's to fix before the run starts."""
    if kind is not None and kind not in TRACKERS:
        raise ConfigError(f"Unknown --tracker '{kind}'; choose {' or '.join(TRACKERS)}.")


def open_tracker(kind: str | None, run_dir: Path, settings: dict, start_step: int,
                 say: Callable[[str], None]) -> Tracker | None:
    """The tracker asked for, started; None if none was asked for, or if it cannot start (said in one line)."""
    if kind is None:
        return None
    extra = f"pip install 'bladegpt[{kind}]'"
    try:
        return (TensorBoard if kind == "tensorboard" else WandB)(run_dir, settings, start_step, say)
    except ImportError as e:
        say(f"--tracker {kind} needs the {e.name or kind} package, which is not installed ({extra}); "
            "training goes on without it.")
    except Exception as e:  # a tracker never stops a run: no login, no network, an unwritable folder
        say(f"{NAMES[kind]} could not start ({_one_line(e)}); training goes on without it.")
    return None
