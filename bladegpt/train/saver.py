"""Checkpoints written off the training's critical path, as torch.distributed.checkpoint's async_save writes
them: the state is copied in memory when it is due (a fraction of a second), and a background thread writes
the copy while the next steps train. One write is in flight at most (the next save waits for it), and the run
waits for it before it ends, however it ends; the writes themselves stay atomic (checkpoint.py, files.py)."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

import torch

from bladegpt.errors import UserError
from bladegpt.runs import LAST
from bladegpt.train.distributed import Distributed
from bladegpt.train.memory import machine_memory, memory_budget, training_bytes


def snapshot_bytes(model: torch.nn.Module, optimizers: list[torch.optim.Optimizer], averaged: bool) -> int:
    """Bytes a save's copy holds: the trained weights (a LoRA run's adapters; twice with a weight average:
    best is its own copy), and the optimizers' moments."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    moments = sum(t.numel() * t.element_size() for o in optimizers for s in o.state.values()
                  for t in s.values() if torch.is_tensor(t))
    return weights * (2 if averaged else 1) + moments


def copy_room(model: torch.nn.Module, model_cfg, train_cfg, device: torch.device) -> float | None:
    """Bytes a save's copy may take on a CPU run: what the run's memory budget (memory.memory_budget, the one its
    micro-batch was sized to) leaves above its estimated peak; None on a GPU (the copy goes to host memory).
    The copy buys little on a small machine (about 1 s of the 5 s the saves' cut gave a SmolLM2 run on 2 busy
    cores, the hard-linked best the rest) and costs its bytes all run long: Gemma 3 270M's run peaked at 11.3 GB
    with it, 8.0 GB without (docs/benchmarks/finetune.md, issue #42), so it is made only where the budget has room."""
    if device.type != "cpu":
        return None
    tokens = train_cfg.micro_batch * model_cfg.block_size
    peak = training_bytes(model_cfg, tokens, getattr(model, "lora", None), train_cfg.activation_checkpointing)
    return memory_budget(device) - peak


class BackgroundSaver:
    """Runs one write at a time in a thread; a failed write is raised by the next `wait` as one line."""

    def __init__(self, run_dir: Path, room: float | None = None):
        self.run_dir = run_dir
        self.room = room  # bytes a copy may take (copy_room); None: half the memory available at the first save
        self.thread: threading.Thread | None = None
        self.finished = threading.Event()  # set when the write in flight has ended, written or failed
        self.error: BaseException | None = None
        self.buffers: dict[str, dict[str, torch.Tensor]] = {}  # the copy's, by file: reused save after save

    def staging(self, nbytes: int) -> dict[str, dict[str, torch.Tensor]] | None:
        """Buffers to copy a save of `nbytes` into, or None where they would take more than the run's room or
        half the memory available now: that save is written from the live tensors, in the training thread."""
        if not self.buffers and (nbytes > machine_memory()[1] / 2 or (self.room is not None and nbytes > self.room)):
            return None
        return self.buffers

    def copied(self, write: Callable[[], None], staging: dict | None) -> Callable[[], None] | None:
        """`write` as a write of a copy, for `submit`; where there was no room for a copy (`staging` None), it
        writes the live tensors: it runs here and now, and nothing is left to submit."""
        if staging is not None:
            return write
        self._run(write)
        self.wait()
        return None

    def submit(self, writes: list[Callable[[], None] | None]) -> None:
        """Run the writes, in order, in the background, after the write before them has finished."""
        self.wait()
        writes = [write for write in writes if write is not None]
        if writes:
            self.finished = threading.Event()
            self.thread = threading.Thread(target=self._run, args=(lambda: [write() for write in writes],),
                                           name="bladegpt-save")
            self.thread.start()

    def _run(self, write: Callable[[], None]) -> None:
        try:
            if threading.current_thread() is self.thread and hasattr(os, "setpriority"):
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)  # the steps first (Linux: per thread)
            write()
        except BaseException as e:  # handed to the training thread, which raises it
            self.error = e
        finally:
            self.finished.set()

    def join(self) -> None:
        """Wait until the write in flight is on disk (or failed), raising nothing of its own: for a run already
        ending on an error or Ctrl-C. A Ctrl-C meanwhile is raised once the write is whole: an interrupted
        Thread.join marks the thread stopped (CPython 3.11), and the process would end with the write half done."""
        if self.thread is None:
            return
        interrupted = False
        while True:
            try:
                self.finished.wait()
                self.thread.join()
                break
            except KeyboardInterrupt:
                interrupted = True
        self.thread = None
        if interrupted:
            raise KeyboardInterrupt

    def wait(self) -> None:
        """Wait for the write in flight; a full disk or a read-only folder stops the run in one line (what was
        saved before stays: every file is renamed into place only once it is complete)."""
        self.join()
        error, self.error = self.error, None
        if isinstance(error, OSError):
            again = Distributed.from_env().command(["train", "--resume", "--run", str(self.run_dir)])
            then = (f"the previous one is kept: free space or fix permissions, then `{again}`"
                    if (self.run_dir / LAST).exists() else
                    "none was saved before it: free space or fix permissions, then train again")
            raise UserError(f"Could not save a checkpoint in {self.run_dir} ({error.strerror}); {then}.") from None
        if error is not None:
            raise error
