"""The training loop: schedule, gradient accumulation, evaluation, checkpoints, exact resume, DDP."""

from __future__ import annotations

import math
import statistics
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from bladegpt import runs
from bladegpt.data import copymeter
from bladegpt.checkpoint import load_checkpoint, load_train_state, restore_adapters, save_checkpoint, save_training
from bladegpt.config import ConfigError, ModelConfig, TrainConfig, plural
from bladegpt.data.dataset import TokenData, stream_seed
from bladegpt.train.distributed import Distributed
from bladegpt.train.ema import WeightAverage
from bladegpt.generate.engine import generate, prompt_ids, sample_text
from bladegpt.errors import UserError
from bladegpt.model import GPT, flops_per_token
from bladegpt.train.pacing import compile_pays, duration, fit_to_budget, paced_interval, seconds_per_step
from bladegpt.train.optim import lr_at, make_optimizers, schedule_progress, set_lr
from bladegpt.train.runbook import EarlyStopping, MetricsLog, eval_record, train_record
from bladegpt.runtime import Runtime, autocast, compile_available, peak_flops, raise_cpu_peak, synchronize
from bladegpt.generate.sampler import decode_precision
from bladegpt.train.signals import StopSignals

PROBE_STEPS = 6  # eager steps timed before "auto" decides whether compiling pays
ESTIMATE_STEPS = 3  # steps timed before the run says how long it will take
RETIME_STEPS = 8  # steps timed after the compile decision, to fit a budgeted run again at its settled speed


class Reporter:
    """What the trainer tells the user; the CLI passes a live display, tests a quiet one."""

    def start(self, info: dict) -> None: ...
    def message(self, text: str) -> None: ...
    def log(self, record: dict) -> None: ...
    def eval(self, record: dict, sample: str | None) -> None: ...
    def close(self) -> None: ...


class TrainingDiverged(UserError):
    """The loss went NaN or infinite; the message says what was kept and what to try."""


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


class Trainer:
    """One training run, fresh or resumed. Call run()."""

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
        model: GPT | None = None,
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
        if model is None:
            model = GPT(model_cfg, attention=runtime.attention)
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
        self.budget_s: float | None = None  # see budget()
        self.full_steps = train_cfg.steps  # the schedule before any cut to the budget
        self.full_interval = train_cfg.eval_interval  # and its evaluations
        self.next_eval: int | None = None  # under --time with evals_in_budget: see pace_evaluations
        self.eval_s: float | None = None  # the quickest evaluation's seconds (a first one may compile)
        self.recent_steps: list[float] = []  # step seconds since the last evaluation
        self.on_resize = lambda cfg: None
        self.sample_precision: str | None = None
        self.copy_meter: copymeter.Background | None = None  # the eval samples' copy meter, made in the background
        if ddp.main and train_cfg.sample_tokens > 0:
            self.copy_meter = copymeter.Background(lambda: copymeter.for_dataset(data.folder, data.fingerprint))
        self.metrics = MetricsLog(run_dir, ddp.main)
        self.last_loss: float | None = None
        self.tok_per_s = 0.0
        self.lr = train_cfg.lr
        self.stop_requested = False
        self.finite = torch.ones((), dtype=torch.bool, device=self.device)  # no NaN/inf loss since the last check
        self.tokens_per_step = train_cfg.batch_size * model_cfg.block_size
        self.flops_per_step = flops_per_token(model_cfg, self.model.num_params()) * self.tokens_per_step
        self.peak = peak_flops(self.device)
        self.peak_remeasured = False  # see the MFU in the training loop
        lengths = [len(data.tokenizer.token_bytes(i)) for i in range(data.tokenizer.vocab_size)]
        lengths += [0] * (model_cfg.vocab_size - len(lengths))
        self.token_bytes = torch.tensor(lengths, dtype=torch.float64)
        self.forward_model = self.model
        if ddp.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.forward_model = DistributedDataParallel(self.model, device_ids=ids)
        self.ddp_model = self.forward_model

    # -- state -------------------------------------------------------------------------------

    def runtime_record(self) -> dict:
        """How this run computes, saved so that --resume continues it the same way."""
        device = self.device.type if self.ddp.world > 1 else str(self.device)  # ranks pick their own GPU
        compiled = "on" if self.runtime.compile else self.compile_mode  # "auto" until it has decided
        return {"device": device, "precision": self.runtime.precision, "attention": self.runtime.attention,
                "compile": compiled}

    def save(self) -> None:
        """last.safetensors and state.safetensors, committed together (see save_training)."""
        if not self.ddp.main:
            return
        tensors = {"rng.cpu": torch.get_rng_state(), "rng.batches": self.batch_gen.get_state()}
        if self.device.type == "cuda":
            tensors["rng.cuda"] = torch.cuda.get_rng_state(self.device)
        if self.average is not None:
            tensors.update(self.average.state())
        info = {"step": self.step, "elapsed": self.elapsed, "last_loss": self.last_loss, **self.early.state(),
                "runtime": self.runtime_record()}
        with self.saving():
            save_training(self.run_dir, self.model, self.data.tokenizer, self.optimizers, tensors, info)

    def save_best(self, val_loss: float) -> None:
        if self.ddp.main:
            with self.saving():
                save_checkpoint(self.run_dir / runs.BEST, self.model, self.data.tokenizer, step=self.step,
                                val_loss=val_loss)

    @contextmanager
    def saving(self):
        """A full disk or a read-only folder stops the run in one line; what was saved before stays."""
        try:
            yield
        except OSError as e:
            raise UserError(f"Could not save a checkpoint in {self.run_dir} ({e.strerror}); the previous one "
                            "is kept: free space or fix permissions, then `bladegpt train --resume "
                            f"--run {self.run_dir}`.") from None

    def restore(self) -> None:
        if getattr(self.model, "lora", None) is not None:
            info = restore_adapters(self.model, self.run_dir / runs.LAST)
        else:
            model, _, info = load_checkpoint(self.run_dir / runs.LAST)
            self.model.load_state_dict(model.state_dict())
        opt_states, tensors, state = load_train_state(self.run_dir / runs.STATE)
        if info.get("step") != state["step"]:
            raise ConfigError(f"{self.run_dir} has checkpoint and state from different steps; start a new run.")
        if len(opt_states) != len(self.optimizers):
            raise ConfigError(f"{self.run_dir}'s state holds {len(opt_states)} optimizers, this run has "
                              f"{len(self.optimizers)}; resume with the run's own settings or start a new run.")
        for optimizer, opt_state in zip(self.optimizers, opt_states):
            optimizer.load_state_dict(opt_state)
        torch.set_rng_state(tensors["rng.cpu"])
        if self.device.type == "cuda" and "rng.cuda" in tensors:
            torch.cuda.set_rng_state(tensors["rng.cuda"], self.device)
        self.batch_gen.set_state(tensors["rng.batches"])
        if self.average is not None and not self.average.load(tensors):  # a resume keeps --ema, so it was saved
            raise ConfigError(f"{self.run_dir / runs.STATE} holds no average of the weights that --ema "
                              f"{self.cfg.ema:g} needs; the state is damaged: start a new run.")
        self.step, self.elapsed = state["step"], state["elapsed"]
        self.last_loss = state["last_loss"]
        self.early.load(state)

    def pace_evaluations(self, step_s: float, eval_s: float | None = None) -> None:
        """Under --time, size what the plan could not, since it did not know how many steps the clock
        allows: warmup, cfg.warmup_share of them, and cfg.evals_in_budget evaluations spread over them.
        First from the timed first steps, with an evaluation priced at eval_iters/3 steps; the evaluations
        again after each one, from the measured step and evaluation times."""
        cfg = self.cfg
        first = eval_s is None
        if first:
            eval_s = step_s * cfg.eval_iters / 3  # forward passes only, about a third of a step each
        step_s, eval_s = self.ddp.broadcast(step_s), self.ddp.broadcast(eval_s)
        if first:
            expected = int(self.step + max(0.0, cfg.time_budget_s - self.elapsed) / seconds_per_step(cfg, step_s))
        said = []
        if first and cfg.warmup_share:
            cfg.warmup_steps = min(cfg.warmup_steps, max(1, int(expected * cfg.warmup_share)))
            said.append(f"warming up over {plural(cfg.warmup_steps, 'step')}")
        if cfg.evals_in_budget:
            cfg.eval_interval = paced_interval(self.elapsed, cfg.time_budget_s, cfg.evals_in_budget, step_s, eval_s)
            self.next_eval = self.step + cfg.eval_interval
            said.append(f"evaluating about {cfg.evals_in_budget} times as the clock allows, the first after "
                        f"{plural(cfg.eval_interval, 'step')}")  # paced again after each one: the interval moves
        if first:
            self.reporter.message(f"About {plural(expected, 'step')} fit in {duration(cfg.time_budget_s)} here: "
                                  f"{' and '.join(said)}.")

    def eval_due(self) -> bool:
        if self.cfg.evals_in_budget:
            return self.next_eval is not None and self.step >= self.next_eval
        return self.step % self.cfg.eval_interval == 0

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
        total = torch.zeros((), device=self.device)
        for micro, ix in enumerate(mine):
            x, y = self.data.batch("train", ix, T)
            if cfg.token_noise:  # drawn from (seed, step, micro-batch of the global batch): a resume draws the same
                index = self.step * cfg.accum + self.ddp.rank * self.local_accum + micro
                gen = torch.Generator().manual_seed(stream_seed(cfg.seed, "token-noise", index))
                x = self.data.unigram_noise(x, cfg.token_noise, gen)
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            if self.ddp.world > 1:  # all-reduce gradients only after the last micro-batch
                self.ddp_model.require_backward_grad_sync = micro == self.local_accum - 1
            with self.runtime.autocast():
                _, loss = self.forward_model(x, y)
            total += loss.detach()
            (loss / self.local_accum).backward()
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

    @torch.no_grad()
    def evaluate(self) -> tuple[float, float]:
        """Validation loss (nats/token) and bits per byte, on the same batches every time: the whole
        val split, each token once (data.covering_windows), where it fits in eval_iters batches; else that many batches of
        random windows. (Random windows over a small split count some tokens many times and others
        never, by the run's seed: officer_k's best val moved 0.12 bpb between two seeds.)"""
        cfg, T = self.cfg, self.model_cfg.block_size
        whole, skips = self.data.covering_windows("val", T)
        if len(whole) <= cfg.eval_iters * cfg.batch_size:
            starts, skips = whole.split(cfg.micro_batch), skips.split(cfg.micro_batch)
        else:  # eval_iters batches, run as micro-batches: the same sequences whatever --accum is
            gen = torch.Generator().manual_seed(cfg.seed + 1)
            starts = self.data.random_starts("val", (cfg.eval_iters * cfg.accum, cfg.micro_batch), T, gen)
            skips = torch.zeros_like(starts)
        sums = torch.zeros(3, dtype=torch.float64)  # nats, tokens, bytes
        self.model.eval()
        for i in range(self.ddp.rank, len(starts), self.ddp.world):
            x, y = self.data.batch("val", starts[i], T)
            y = y.masked_fill(torch.arange(T) < skips[i][:, None], -1)  # targets an earlier window had
            with self.runtime.autocast():
                _, loss = self.model(x.to(self.device), y.to(self.device))  # the mean over the targets kept
            kept = y >= 0
            nats = loss.double().cpu() * kept.sum()
            sums += torch.stack([nats, kept.sum().double(), self.token_bytes[y[kept]].sum()])
        self.model.train()
        nats, tokens, n_bytes = self.ddp.all_sum(sums).tolist()
        return nats / tokens, nats / (math.log(2) * n_bytes)

    def sample(self) -> str | None:
        if not self.ddp.main or self.cfg.sample_tokens <= 0:
            return None
        tok = self.data.tokenizer
        self.model.eval()
        gen = torch.Generator(self.device).manual_seed(self.cfg.seed)
        if self.sample_precision is None:  # generation's own choice, measured once: bf16 autocast or fp32
            self.sample_precision = decode_precision(self.model, self.device, cast=False)  # (weights never cast)
        with autocast(self.device, self.sample_precision):
            ids = list(generate(self.model, prompt_ids(tok, ""), self.cfg.sample_tokens, tok.vocab_size,
                                gen, temperature=0.8, top_k=200, stop=tok.stop_ids))
        self.model.train()
        return sample_text(ids, tok)

    def copy_check(self, sample: str | None) -> dict:
        """How much of the eval sample is copied from the training text (runbook.eval_record's fields);
        nothing while the meter is still being made, or if it could not be."""
        if not sample or self.copy_meter is None:
            return {}
        index = self.copy_meter.ready()
        if index is None:
            if self.copy_meter.error is not None:
                self.reporter.message(f"No copy meter for the samples: {self.copy_meter.error}")
                self.copy_meter = None
            return {}
        return index.measure([sample]).record()

    def check_finite(self, *values: float) -> None:
        """Stop, saving nothing, once a loss or gradient is NaN or infinite on any rank: the weights
        are ruined, and the checkpoints on disk are the last good ones."""
        bad = not bool(self.finite) or not all(math.isfinite(v) for v in values)
        if not self.ddp.mean(float(bad)) > 0:
            return
        kept = (f"the last good checkpoint ({self.run_dir / runs.LAST}) is kept"
                if (self.run_dir / runs.LAST).exists() else "no checkpoint had been saved yet")
        raise TrainingDiverged(
            f"The loss became NaN or infinite by step {self.step}, so training stopped; {kept}. "
            f"Try a lower --lr (this run's is {self.cfg.lr:g})"
            + (" or --precision fp32." if self.runtime.precision == "bf16" else ".")
        )

    def budget(self, seconds: float, on_resize) -> None:
        """Cut a run whose measured time would pass `seconds` to fit it (the default run, sized to the
        text, on a big text); `on_resize(cfg)` records the new schedule so that --resume follows it."""
        self.budget_s, self.on_resize = seconds, on_resize

    def estimate(self, step_s: float, retimed: bool = False) -> None:
        """The expected time, measured: a run's first steps say what the rest will take. Timed again
        once the compile decision is made (`retimed`), a budgeted run is fitted again, both ways: a
        compiled step, or a machine that was busy for the first steps, gives it back what it cut."""
        cfg, before = self.cfg, self.cfg.steps
        step_s = self.ddp.broadcast(step_s)  # every rank plans with the same numbers
        per_step = seconds_per_step(cfg, step_s)
        if self.budget_s is not None and fit_to_budget(cfg, self.step, self.elapsed, per_step, self.budget_s,
                                                       self.full_steps, self.full_interval):
            self.on_resize(cfg)
            full = self.full_steps
            if cfg.steps == full:
                self.reporter.message(f"Timed again at step {self.step}: all {full:,} steps fit in "
                                      f"{duration(self.budget_s)} after all.")
            else:
                self.reporter.message(
                    f"{'Timed again: a' if retimed else 'A'}ll {full:,} steps would take about "
                    f"{duration((full - self.step) * per_step)} here, so this run trains {cfg.steps:,} (about "
                    f"{duration(self.budget_s)}); for the whole schedule pass --steps {full}.")
        elif retimed:
            return  # nothing changed: the first estimate stands
        if cfg.steps != before or not retimed:
            self.reporter.message(f"{step_s:.2f} s a step here: about {duration((cfg.steps - self.step) * per_step)} "
                                  f"for the {cfg.steps - self.step:,} steps left, evaluations included.")

    def maybe_compile(self, probe_times: list[float]) -> None:
        """Compile now if the measured eager speed says the rest of the run repays the compile."""
        if self.compile_mode == "off" or self.runtime.compile:
            return
        if self.compile_mode == "auto":
            step_s = statistics.median(probe_times)
            if self.cfg.time_budget_s is not None:
                remaining = max(0.0, self.cfg.time_budget_s - self.elapsed)
            else:
                remaining = (self.cfg.steps - self.step) * step_s
            worth, saved, cost = compile_pays(remaining, self.device.type)
            if not self.ddp.broadcast(worth):
                self.compile_mode = "off"  # decided: a resumed run does not ask again
                self.reporter.message(f"Not compiling: ~{remaining:.0f} s of training left would save ~{saved:.0f} s, "
                                      f"less than a ~{cost:.0f} s first compile (force it with --compile on).")
                return
        self.reporter.message("Compiling the model with torch.compile (the first steps take a while)...")
        self.model.compile_blocks()
        self.runtime.compile = True

    # -- the loop ----------------------------------------------------------------------------

    def run(self) -> TrainResult:
        cfg = self.cfg
        history: list[dict] = []
        self.reporter.start(
            {
                "run_dir": str(self.run_dir),
                "runtime": self.runtime.describe(),
                "params": self.model.num_params(),
                "optimizer": " + ".join(type(o).__name__ for o in reversed(self.optimizers)),  # "Muon + AdamW"
                "tokens_per_step": self.tokens_per_step,
                "step": self.step,
                "steps": cfg.steps,
                "time_budget_s": cfg.time_budget_s,
                "train_tokens": len(self.data.splits["train"]),
                "world": self.ddp.world,
            }
        )
        if self.average is not None:
            self.reporter.message(f"Evaluating an average of the weights (--ema {cfg.ema:g}, about the last "
                                  f"{plural(round(1 / (1 - cfg.ema)), 'step')}): val loss, samples and best.safetensors "
                                  "are the average's; the train loss is the weights'.")
        usable_compile, why_not = compile_available(self.device)
        if self.compile_mode == "on" and not usable_compile:
            raise ConfigError(f"--compile on cannot work here: {why_not}; use --compile off.")
        if not usable_compile:
            self.compile_mode = "off"
        if self.compile_mode == "on":
            self.maybe_compile([])
        probe: list[float] = []
        interval_tokens, interval_time = 0, 0.0
        self.signals.graceful = True  # from here a stop finishes the step and saves
        try:
            while not self.done() and not self.stopping():
                t0 = time.perf_counter()
                total = self.train_step()
                synchronize(self.device)
                dt = time.perf_counter() - t0
                if self.step % cfg.log_interval == 0:
                    self.last_loss = self.ddp.mean(float(total) / self.local_accum)
                    self.check_finite(self.last_loss)
                self.elapsed += dt
                interval_tokens += self.tokens_per_step
                interval_time += dt
                self.recent_steps.append(dt)
                if len(probe) < PROBE_STEPS + RETIME_STEPS:
                    probe.append(dt)
                    if len(probe) == ESTIMATE_STEPS and cfg.time_budget_s is None:
                        self.estimate(statistics.median(probe[1:]))  # the first step pays for warm-up
                    elif len(probe) == ESTIMATE_STEPS and (cfg.evals_in_budget or cfg.warmup_share):
                        self.pace_evaluations(statistics.median(probe[1:]))
                    if len(probe) == PROBE_STEPS and self.compile_mode == "auto":
                        self.maybe_compile(probe[1:])
                    if len(probe) == PROBE_STEPS + RETIME_STEPS and self.budget_s is not None:
                        self.estimate(statistics.median(probe[PROBE_STEPS + 1:]), retimed=True)  # past any compile
                if self.step % cfg.log_interval == 0:
                    self.tok_per_s = interval_tokens / interval_time
                    flops = self.tok_per_s * self.flops_per_step / self.tokens_per_step
                    if flops > self.peak and self.device.type == "cpu" and self.ddp.world == 1:
                        # the cached peak read low: measured again once a run, and never below what ran
                        self.peak = flops if self.peak_remeasured else raise_cpu_peak(flops)
                        self.peak_remeasured = True
                    mfu = flops / self.peak
                    record = train_record(self.step, self.last_loss, self.lr, self.tok_per_s, mfu, self.elapsed)
                    interval_tokens, interval_time = 0, 0.0
                    self.metrics.write(record)
                    self.reporter.log(record)
                    history.append(record)
                if self.eval_due() or self.done():
                    history.append(self.eval_and_save())
                    if cfg.evals_in_budget and self.next_eval is not None:
                        self.pace_evaluations(statistics.median(self.recent_steps), self.eval_s)
                    self.recent_steps = []
            if self.stop_requested:
                self.check_finite()
                self.save()
                self.reporter.message(
                    f"Interrupted at step {self.step}; saved {self.run_dir / runs.LAST}. "
                    f"Continue with `bladegpt train --resume --run {self.run_dir}`."
                )
        finally:
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
                           stopped_early=early.stop, history=history, model=self.model)

    def stopping(self) -> bool:
        """Ctrl-C or SIGTERM seen here, or on any rank: all ranks stop after the same step."""
        self.stop_requested = self.signals.requested
        if self.ddp.world > 1:
            self.stop_requested = self.ddp.mean(float(self.stop_requested)) > 0
        return self.stop_requested

    @contextmanager
    def evaluated_weights(self):
        """The weights evaluated, sampled and kept as best: the average under --ema, else the trained ones."""
        if self.average is None:
            yield
        else:
            with self.average.applied():
                yield

    def eval_and_save(self) -> dict:
        t0 = time.perf_counter()
        with self.evaluated_weights():
            val_loss, val_bpb = self.evaluate()
            self.check_finite(val_loss)
            sample = self.sample()
        improved = self.early.observe(val_loss, self.step)
        took = time.perf_counter() - t0
        self.eval_s = took if self.eval_s is None else min(self.eval_s, took)
        self.elapsed += took  # evaluation is part of the run's wall time
        record = eval_record(self.step, self.last_loss, self.lr, self.tok_per_s, val_loss, val_bpb, self.elapsed,
                             self.copy_check(sample))
        self.metrics.write(record)
        self.metrics.sample(self.step, sample)
        self.save()  # state and last first, best after: the order a crash at any write resumes from
        if improved:
            with self.evaluated_weights():
                self.save_best(val_loss)
        self.reporter.eval(record, sample)
        return record
