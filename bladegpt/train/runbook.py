"""What a run writes down as it trains: its metrics file, early stopping's record of the best, its throughput
and MFU."""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from bladegpt import strictjson
from bladegpt.config import ModelConfig
from bladegpt.model import flops_per_token
from bladegpt.runs import METRICS
from bladegpt.runtime import peak_flops, raise_cpu_peak
from bladegpt.train.tracker import Tracker


@dataclass
class Phases:
    """Where a run's wall time went: seconds of each timed piece by phase, in order (`bench --wall-time` prints
    them; a phase's first piece apart from the rest shows what a compile or a first measurement cost)."""

    seconds: dict[str, list[float]] = field(default_factory=dict)

    def add(self, phase: str, seconds: float) -> float:
        """Record `seconds` under `phase`; returns them."""
        self.seconds.setdefault(phase, []).append(seconds)
        return seconds

    def call(self, phase: str, fn, *args):
        """fn(*args), its seconds added to `phase`."""
        with self.timed(phase):
            return fn(*args)

    @contextmanager
    def timed(self, phase: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(phase, time.perf_counter() - start)


@dataclass
class EarlyStopping:
    """The best val loss so far and how many evaluations have passed without beating it."""

    patience: int  # evaluations without a better val loss before stopping; 0 = never
    best_val: float | None = None
    best_step: int = 0
    stale_evals: int = 0

    def observe(self, val_loss: float, step: int) -> bool:
        """Record an evaluation; True when it is the best so far."""
        if self.best_val is None or val_loss < self.best_val:
            self.best_val, self.best_step, self.stale_evals = val_loss, step, 0
            return True
        self.stale_evals += 1
        return False

    @property
    def stop(self) -> bool:
        return self.patience > 0 and self.stale_evals >= self.patience

    def state(self) -> dict:
        return {"best_val": self.best_val, "best_step": self.best_step, "stale_evals": self.stale_evals}

    def load(self, state: dict) -> None:
        self.best_val = state["best_val"]
        self.best_step, self.stale_evals = state.get("best_step", 0), state.get("stale_evals", 0)


class MetricsLog:
    """metrics.jsonl: one JSON line per log or evaluation, written by the main process only, which
    also hands each record, and each evaluation's sample, to the run's tracker (train --tracker)."""

    def __init__(self, run_dir: Path, main: bool):
        self.path, self.main = Path(run_dir) / METRICS, main
        self.tracker: Tracker | None = None  # attached by launch.train on the main process

    def write(self, record: dict) -> None:
        if self.main:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(strictjson.dumps(record) + "\n")
            if self.tracker is not None:
                self.tracker.log(record)

    def sample(self, step: int, text: str | None) -> None:
        if self.tracker is not None and text:
            self.tracker.text(step, text)


def train_record(step: int, loss: float, lr: float, tok_per_s: float, mfu: float, elapsed: float) -> dict:
    return {"step": step, "loss": round(loss, 5), "lr": lr, "tok_per_s": round(tok_per_s, 1),
            "mfu": round(mfu, 5) if math.isfinite(mfu) else None, "elapsed": round(elapsed, 3)}


def eval_record(step: int, loss: float | None, lr: float, tok_per_s: float | None, val_loss: float, val_bpb: float,
                elapsed: float, copying: dict | None = None, voice: dict | None = None) -> dict:
    """An evaluation's line; `loss` and `tok_per_s` repeat the last train line's, null before the first (a run
    shorter than --log-interval measured neither, and 0 would read as a measurement); `copying` adds the copy
    meter's `copied` (share of the sample's 50-character spans found verbatim in the training text, 0 to 1) and
    `longest_copy` (characters) where it ran; `voice` the sample's `loops` (share of its word 4-grams repeated,
    0 to 1) and `style` (Burrows's Delta from the held-out text), generate/voice.py."""
    return {"step": step, "loss": round(loss, 5) if loss is not None else None, "lr": lr,
            "tok_per_s": round(tok_per_s, 1) if tok_per_s is not None else None,
            "val_loss": round(val_loss, 5), "val_bpb": round(val_bpb, 5),
            "elapsed": round(elapsed, 3), **(copying or {}), **(voice or {})}


class Throughput:
    """Tokens a second over the steps since the last log, and the MFU they make: the model's FLOPs a token
    (model.flops_per_token) against the device's peak (runtime.peak_flops, measured and cached; a CPU that
    beats it has it measured again once a run, and never below what ran)."""

    def __init__(self, model_cfg: ModelConfig, n_params: int, tokens_per_step: int, device: torch.device, world: int):
        self.tokens_per_step = tokens_per_step
        self.flops_per_step = flops_per_token(model_cfg, n_params) * tokens_per_step
        self.peak = peak_flops(device)
        self.peak_remeasured = False
        self.cpu_alone = device.type == "cpu" and world == 1
        self.tokens, self.seconds = 0, 0.0  # since the last record
        self.tok_per_s: float | None = None  # none measured before the first record

    def add(self, seconds: float) -> None:
        """One more step, which took `seconds`."""
        self.tokens += self.tokens_per_step
        self.seconds += seconds

    def record(self) -> tuple[float, float]:
        """(tokens a second, MFU) since the last record."""
        self.tok_per_s = self.tokens / self.seconds
        flops = self.tok_per_s * self.flops_per_step / self.tokens_per_step
        if flops > self.peak and self.cpu_alone:  # the cached peak read low
            self.peak = flops if self.peak_remeasured else raise_cpu_peak(flops)
            self.peak_remeasured = True
        self.tokens, self.seconds = 0, 0.0
        return self.tok_per_s, flops / self.peak
