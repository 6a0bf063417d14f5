"""The training loop: the step (gradient accumulation, DDP), the loop around it, evaluations and checkpoints
when due, its own state saved and loaded for an exact resume. It composes the parts that keep their own
state: Evaluator (evaluate.py), Pacer (pacing.py), Throughput and MetricsLog (runbook.py)."""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch

from bladegpt import runs
from bladegpt.checkpoint import best_stager, training_snapshot
from bladegpt.config import ModelConfig, TrainConfig, plural
from bladegpt.data.dataset import TokenData, stream_seed
from bladegpt.errors import ConfigError, TrainingDiverged
from bladegpt.model import GPT
from bladegpt.runtime import Runtime, compile_available, synchronize
from bladegpt.train.distributed import Distributed
from bladegpt.train.ema import WeightAverage
from bladegpt.train.evaluate import Evaluator
from bladegpt.train.optim import lr_at, make_optimizers, schedule_progress, set_lr
from bladegpt.train.pacing import Pacer
from bladegpt.train.runbook import EarlyStopping, MetricsLog, Phases, Throughput, eval_record, train_record
from bladegpt.train.saver import BackgroundSaver, copy_room, snapshot_bytes
from bladegpt.train.signals import StopSignals


class Reporter:
    """What the trainer tells the user; the CLI passes a live display, tests a quiet one."""

    def start(self, info: dict) -> None: ...
    def message(self, text: str) -> None: ...
    def log(self, record: dict) -> None: ...
    def eval(self, record: dict, sample: str | None) -> None: ...
    def base(self, voice: dict, sample: str | None) -> None: ...  # the base model's voice report (sample: measured now)
    def close(self) -> None: ...


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    best_val_loss: float | None
    elapsed_s: float
    interrupted: bool = False
    stopped_early: bool = False  # val loss stopped improving for `patience` evaluations
    history: list[dict] = field(default_factory=list)
    model: GPT | None = None
    phases: dict[str, list[float]] = field(default_factory=dict)  # wall seconds by phase (runbook.Phases)


def target_weights(data: TokenData, starts: torch.Tensor, T: int, world: int, context_weight: float = 0.0) -> torch.Tensor:
    """What each micro-batch's mean loss (accum,) is multiplied by on a masked dataset, so that the step's
    gradient is the mean over every target of the global batch, each target weighing the same whichever
    micro-batch holds it (transformers' num_items_in_batch, after its gradient-accumulation fix of 2024):
    targets in the micro-batch / targets in the global batch, times the processes (DDP averages ranks); a
    context token counts context_weight of a target. A micro-batch with no target weighs 0, and a global
    batch with none is a step with zero gradient, never a NaN. Every rank counts the whole global batch
    itself (it draws it whole): no communication."""
    mask = data.masks["train"]
    counts = torch.stack([torch.stack([mask[i + 1 : i + 1 + T].sum() for i in ix.tolist()]).sum()
                          for ix in starts]).double()
    if context_weight > 0:
        counts = counts + context_weight * (starts.size(1) * T - counts)
    return (counts * world / counts.sum().clamp(min=1e-12)).float()


def accumulate(loss: torch.Tensor, weights: torch.Tensor | None, index: int, local_accum: int) -> torch.Tensor:
    """Backpropagate micro-batch `index`'s mean loss: 1/local_accum of it (every token a target), or its weight
    (target_weights); returns what the step's summed loss adds, so that the logged loss is per target."""
    if weights is None:
        (loss / local_accum).backward()
        return loss.detach()
    (loss * weights[index]).backward()
    return loss.detach() * weights[index] * local_accum


def micro_batch(data: TokenData, cfg, ix: torch.Tensor, T: int, index: int, device: torch.device):
    """Inputs, targets and their loss weights (or None) (B, T) of the windows starting at ix, on `device`;
    unigram noise, where the run has it, drawn from (seed, `index`: the micro-batch's number in the run), so
    that a resume draws the same."""
    x, y, weights = data.batch("train", ix, T, cfg.context_weight)
    if cfg.token_noise:
        gen = torch.Generator().manual_seed(stream_seed(cfg.seed, "token-noise", index))
        x = data.unigram_noise(x, cfg.token_noise, gen)
    return tuple(None if t is None else t.to(device, non_blocking=True) for t in (x, y, weights))


class Trainer:
    """One training run, fresh or resumed: build it, load_state_dict (a resume), run()."""

    def __init__(
        self,
        model_cfg: ModelConfig,
        train_cfg: TrainConfig,
        data: TokenData,
        run_dir: Path,
        runtime: Runtime,
        compile_mode: str,
        ddp: Distributed,
        reporter: Reporter,
        signals: StopSignals | None = None,
        model: GPT | None = None, loading: bool = False,
    ):
        self.model_cfg, self.cfg, self.data, self.run_dir = model_cfg, train_cfg, data, run_dir
        self.runtime, self.compile_mode, self.ddp, self.reporter = runtime, compile_mode, ddp, reporter
        self.signals = signals or StopSignals()
        self.device = runtime.device
        if train_cfg.accum % ddp.world:
            raise ConfigError(
                f"--accum {train_cfg.accum} must be divisible by the number of processes ({ddp.world}); "
                f"use --accum {max(ddp.world, train_cfg.accum // ddp.world * ddp.world)}."
            )
        self.local_accum = train_cfg.accum // ddp.world
        torch.manual_seed(train_cfg.seed)
        if model is None:  # `loading`: the caller loads every weight next (a fine-tune's start, a resume): no init
            model = GPT.uninitialized(model_cfg, runtime.attention) if loading else GPT(model_cfg, attention=runtime.attention)
        else:  # built by the caller (a LoRA run's frozen base and adapters): only its trainable tensors train
            model.set_attention(runtime.attention)
        self.model = model.to(self.device)
        self.model.activation_checkpointing = train_cfg.activation_checkpointing
        self.optimizers = make_optimizers(self.model, train_cfg, self.device, runtime.precision)
        self.average = WeightAverage(self.model, train_cfg.ema) if train_cfg.ema else None
        self.batch_gen = torch.Generator().manual_seed(train_cfg.seed)
        torch.manual_seed(train_cfg.seed + ddp.rank)  # dropout differs across ranks
        self.step = 0
        self.elapsed = 0.0  # wall seconds of training so far, over all resumes
        self.early = EarlyStopping(train_cfg.patience)
        self.pacer = Pacer(train_cfg, ddp, reporter.message)
        self.evaluator = Evaluator(data, model_cfg, train_cfg, runtime, ddp, reporter.message)
        self.metrics = MetricsLog(run_dir, ddp.main)
        self.saver = BackgroundSaver(run_dir, copy_room(self.model, model_cfg, train_cfg, self.device))
        self.last_loss: float | None = None
        self.lr, self.phases = train_cfg.lr, Phases()  # train() hands in its own, with the plan's seconds
        self.stop_requested = False
        self.finite = torch.ones((), dtype=torch.bool, device=self.device)  # no NaN/inf loss since the last check
        self.throughput = Throughput(model_cfg, self.model.num_params(), train_cfg.batch_size * model_cfg.block_size,
                                     self.device, ddp.world)
        self.forward_model = self.model  # what the step calls: the model, or DDP's wrapper of it
        if ddp.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.forward_model = DistributedDataParallel(self.model, device_ids=ids)

    # -- state -------------------------------------------------------------------------------

    def runtime_record(self) -> dict:
        """How this run computes, saved so that --resume continues it the same way."""
        device = self.device.type if self.ddp.world > 1 else str(self.device)  # ranks pick their own GPU
        compiled = "on" if self.runtime.compile else self.compile_mode  # "auto" until it has decided
        return {"device": device, "precision": self.runtime.precision, "attention": self.runtime.attention,
                "compile": compiled}

    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict]:
        """What --resume needs beside the weights and the optimizers: (tensors: the random streams and the
        weight average; info: the step, the clock, early stopping's record, the runtime)."""
        tensors = {"rng.cpu": torch.get_rng_state(), "rng.batches": self.batch_gen.get_state()}
        if self.device.type == "cuda":
            tensors["rng.cuda"] = torch.cuda.get_rng_state(self.device)
        if self.average is not None:
            tensors.update(self.average.state())
        info = {"step": self.step, "elapsed": self.elapsed, "last_loss": self.last_loss, **self.early.state(),
                "runtime": self.runtime_record()}
        return tensors, info

    def load_state_dict(self, weights: dict[str, torch.Tensor] | None, opt_states: list[dict],
                        tensors: dict[str, torch.Tensor], info: dict) -> None:
        """Continue from a saved state (resume.py reads it and checks it against the checkpoint): the weights
        (None: a LoRA run's adapters, already restored), the optimizers, the random streams, the clock."""
        if weights is not None:
            self.model.load_state_dict(weights)
        for optimizer, opt_state in zip(self.optimizers, opt_states):
            optimizer.load_state_dict(opt_state)
        torch.set_rng_state(tensors["rng.cpu"])
        if self.device.type == "cuda" and "rng.cuda" in tensors:
            torch.cuda.set_rng_state(tensors["rng.cuda"], self.device)
        self.batch_gen.set_state(tensors["rng.batches"])
        if self.average is not None and not self.average.load(tensors):  # a resume keeps --ema, so it was saved
            raise ConfigError(f"{self.run_dir / runs.STATE} holds no average of the weights that --ema "
                              f"{self.cfg.ema:g} needs; the state is damaged: start a new run.")
        self.step, self.elapsed = info["step"], info["elapsed"]
        self.last_loss = info["last_loss"]
        self.early.load(info)

    def save(self, best_val: float | None = None) -> None:
        """Copy state and last now (and best, where this evaluation improved), and write the copies in the
        background as one commit (checkpoint.py); where memory has no room for a copy, write them here and now."""
        if not self.ddp.main:
            return
        self.phases.call("saves: waiting for the write before", self.saver.wait)  # one write in flight at most
        tensors, info = self.state_dict()
        staging = self.saver.staging(snapshot_bytes(self.model, self.optimizers, self.average is not None))
        best = None
        if best_val is not None:
            with self.phases.timed("saves: best"), self.evaluated_weights():
                best = self.best_stager(best_val, staging)
        with self.phases.timed("saves: last + state"):
            write = self.saver.copied(training_snapshot(self.run_dir, self.model, self.data.tokenizer, self.optimizers,
                                                        tensors, info, staging, best), staging)
        self.saver.submit([write])

    def best_stager(self, val_loss: float, staging: dict | None):
        """best.safetensors: under --ema the average's (applied now); else last's weights and info: a link."""
        if self.average is None:
            return best_stager(self.run_dir)
        buffers = None if staging is None else staging.setdefault("best", {})
        return best_stager(self.run_dir, self.model, self.data.tokenizer, buffers, step=self.step, val_loss=val_loss)

    # -- pieces ------------------------------------------------------------------------------

    def progress(self) -> float:
        """How far through the schedule: by steps, or by the clock under a time budget."""
        return schedule_progress(self.cfg, self.step, self.elapsed)

    def done(self) -> bool:
        if self.early.stop:
            return True
        if self.cfg.time_budget_s is not None and self.elapsed >= self.cfg.time_budget_s:
            return True
        return self.step >= self.cfg.steps

    def train_step(self) -> torch.Tensor:
        """One optimizer step on `batch_size` sequences, as `accum` micro-batches; returns the summed loss."""
        cfg, T = self.cfg, self.model_cfg.block_size
        lr = lr_at(self.step, cfg, self.progress())
        set_lr(self.optimizers, cfg, lr)
        # Every rank draws the whole global batch and keeps its share, so the data seen does
        # not depend on the number of processes, and one generator state resumes any of them.
        if cfg.sampling == "epochs":
            first = self.step * cfg.batch_size
            starts = self.data.epoch_starts("train", first, cfg.batch_size, T, cfg.seed).view(cfg.accum, cfg.micro_batch)
        else:
            starts = self.data.random_starts("train", (cfg.accum, cfg.micro_batch), T, self.batch_gen)
        mine = starts[self.ddp.rank * self.local_accum : (self.ddp.rank + 1) * self.local_accum]
        masked = "train" in self.data.masks
        weights = target_weights(self.data, starts, T, self.ddp.world, cfg.context_weight) if masked else None
        total = torch.zeros((), device=self.device)
        for micro, ix in enumerate(mine):
            index = self.step * cfg.accum + self.ddp.rank * self.local_accum + micro
            x, y, token_weights = micro_batch(self.data, cfg, ix, T, index, self.device)
            if self.ddp.world > 1:  # all-reduce gradients only after the last micro-batch
                self.forward_model.require_backward_grad_sync = micro == self.local_accum - 1
            with self.runtime.autocast():
                _, loss = self.forward_model(x, y, weights=token_weights)
            total += accumulate(loss, weights, self.ddp.rank * self.local_accum + micro, self.local_accum)
        self.finite &= torch.isfinite(total)  # checked where the loop syncs anyway (logs, saves)
        if cfg.grad_clip > 0:
            self.finite &= torch.isfinite(torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip))
        for optimizer in self.optimizers:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        if self.average is not None:
            self.average.update()
        self.step += 1
        self.lr = lr
        return total

    def check_finite(self, *values: float) -> None:
        """Stop, saving nothing, once a loss or gradient is NaN or infinite on any rank: the weights
        are ruined, and the checkpoints on disk are the last good ones."""
        bad = not bool(self.finite) or not all(math.isfinite(v) for v in values)
        if not self.ddp.mean(float(bad)) > 0:
            return
        self.saver.join()  # the write in flight is the last good checkpoint
        kept = (f"the last good checkpoint ({self.run_dir / runs.LAST}) is kept"
                if (self.run_dir / runs.LAST).exists() else "no checkpoint had been saved yet")
        raise TrainingDiverged(
            f"The loss became NaN or infinite by step {self.step}, so training stopped; {kept}. "
            f"Try a lower --lr (this run's is {self.cfg.lr:g})"
            + (" or --precision fp32." if self.runtime.precision == "bf16" else ".")
        )

    def compile(self) -> None:
        """torch.compile the blocks now (the Pacer decided it pays, or --compile on)."""
        self.reporter.message("Compiling the model with torch.compile (the first steps take a while)...")
        self.model.compile_blocks()
        self.runtime.compile = True

    def evaluated_weights(self):
        """The weights evaluated, sampled and kept as best: the average under --ema, else the trained ones."""
        return self.average.applied() if self.average is not None else nullcontext()

    # -- the loop ----------------------------------------------------------------------------

    def run(self) -> TrainResult:
        history: list[dict] = []
        self.reporter.start(
            {
                "run_dir": str(self.run_dir),
                "runtime": self.runtime.describe(),
                "params": self.model.num_params(),
                "optimizer": " + ".join(type(o).__name__ for o in reversed(self.optimizers)),  # "Muon + AdamW"
                "tokens_per_step": self.throughput.tokens_per_step,
                "step": self.step,
                "steps": self.cfg.steps,
                "time_budget_s": self.cfg.time_budget_s,
                "train_tokens": len(self.data.splits["train"]),
                "world": self.ddp.world,
            }
        )
        if self.average is not None:
            self.reporter.message(f"Evaluating an average of the weights (--ema {self.cfg.ema:g}, about the last "
                                  f"{plural(round(1 / (1 - self.cfg.ema)), 'step')}): val loss, samples and best.safetensors "
                                  "are the average's; the train loss is the weights'.")
        usable_compile, why_not = compile_available(self.device)
        if self.compile_mode == "on" and not usable_compile:
            raise ConfigError(f"--compile on cannot work here: {why_not}; use --compile off.")
        if not usable_compile:
            self.compile_mode = "off"
        if self.compile_mode == "on" and not self.runtime.compile:
            self.compile()
        self.signals.graceful = True  # from here a stop finishes the step and saves
        try:
            while not self.done() and not self.stopping():
                t0 = time.perf_counter()
                total = self.train_step()
                synchronize(self.device)
                dt = self.phases.add(f"steps, {'compiled' if self.runtime.compile else 'eager'}", time.perf_counter() - t0)
                if self.step % self.cfg.log_interval == 0:
                    self.last_loss = self.ddp.mean(float(total) / self.local_accum)
                    self.check_finite(self.last_loss)
                self.elapsed += dt
                self.throughput.add(dt)
                self.cfg, decide = self.pacer.timed(self.cfg, dt, self.step, self.elapsed)
                if decide and self.compile_mode == "auto" and not self.runtime.compile:
                    if self.pacer.compile_pays(self.cfg, self.step, self.elapsed, self.device.type):
                        self.compile()
                    else:
                        self.compile_mode = "off"  # decided: a resumed run does not ask again
                if self.step % self.cfg.log_interval == 0:
                    tok_per_s, mfu = self.throughput.record()
                    record = train_record(self.step, self.last_loss, self.lr, tok_per_s, mfu, self.elapsed)
                    self.metrics.write(record)
                    self.reporter.log(record)
                    history.append(record)
                if self.pacer.eval_due(self.cfg, self.step) or self.done():
                    history.append(self.eval_and_save())
            if self.stop_requested:
                self.check_finite()
                self.save()
            with self.phases.timed("saves: waiting for the last write"):
                self.saver.wait()  # the run reports only what is on disk
            if self.stop_requested:
                self.reporter.message(
                    f"Interrupted at step {self.step}; saved {self.run_dir / runs.LAST}. "
                    f"Continue with `{self.ddp.command(['train', '--resume', '--run', str(self.run_dir)])}`."
                )
        finally:
            self.saver.join()  # an error or a second Ctrl-C: the write in flight still finishes, whole
            self.signals.graceful = False
            self.reporter.close()
        early = self.early
        if early.stop:
            self.reporter.message(
                f"Stopped early at step {self.step}: val loss has not improved for {early.stale_evals} evaluations "
                f"(--patience {early.patience}); the best, {early.best_val:.4f} at step {early.best_step}, is in "
                f"{self.run_dir / runs.BEST}."
            )
        return TrainResult(self.run_dir, self.step, early.best_val, self.elapsed, interrupted=self.stop_requested,
                           stopped_early=early.stop, history=history, model=self.model, phases=self.phases.seconds)

    def stopping(self) -> bool:
        """Ctrl-C or SIGTERM seen here, or on any rank: all ranks stop after the same step."""
        self.stop_requested = self.signals.requested
        if self.ddp.world > 1:
            self.stop_requested = self.ddp.mean(float(self.stop_requested)) > 0
        return self.stop_requested

    def eval_and_save(self) -> dict:
        """Evaluate (loss, sample, copy check), save last and state, and best when it improved; then let the
        pacer plan the next evaluations from what this one took."""
        t0 = time.perf_counter()
        with self.evaluated_weights():
            val_loss, val_bpb = self.phases.call("evaluations: val loss", self.evaluator.loss_and_bpb, self.model)
            self.check_finite(val_loss)
            sampled = self.pacer.sample_due(self.phases.seconds.get("evaluations: samples"), self.done())
            sample = self.phases.call("evaluations: samples", self.evaluator.sample, self.model) if sampled else None
        improved = self.early.observe(val_loss, self.step)
        self.elapsed += (took := time.perf_counter() - t0)  # evaluation is part of the run's wall time
        record = eval_record(self.step, self.last_loss, self.lr, self.throughput.tok_per_s, val_loss, val_bpb,
                             self.elapsed, self.evaluator.copied(sample), self.evaluator.voice(sample))
        self.metrics.write(record)
        self.metrics.sample(self.step, sample)
        self.save(val_loss if improved else None)  # state, last and best as one commit: a crash at any write resumes
        self.reporter.eval(record, sample)
        self.cfg = self.pacer.evaluated(self.cfg, took, self.step, self.elapsed)
        return record
