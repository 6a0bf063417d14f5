"""The training loop: schedule, gradient accumulation, evaluation, checkpoints, exact resume, DDP."""

from __future__ import annotations

import json
import math
import os
import signal
import statistics
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from bladegpt import runs
from bladegpt.checkpoint import load_checkpoint, load_train_state, save_checkpoint, save_train_state
from bladegpt.config import ConfigError, ModelConfig, TrainConfig, from_preset
from bladegpt.data import TokenData, latest_dataset
from bladegpt.engine import generate, prompt_ids
from bladegpt.model import GPT, flops_per_token
from bladegpt.optim import lr_at, make_optimizers, set_lr
from bladegpt.runtime import (
    COMPILE_MODES,
    Runtime,
    choose_attention,
    choose_precision,
    compile_available,
    peak_flops,
    resolve_device,
    set_matmul_precision,
    synchronize,
)

# First-compile cost we assume before deciding to compile (measured: 25-30 s on a 2-core CPU).
COMPILE_COST_S = {"cpu": 30.0, "cuda": 45.0}
# The step-time saving we count on from compiling; measured ~1.2x on CPU, so be conservative.
COMPILE_GAIN = 0.15
PROBE_STEPS = 6  # eager steps timed before "auto" decides whether compiling pays


def padded_vocab(n: int, multiple: int = 64) -> int:
    """Round the vocabulary up: matmuls run faster on multiples of 64 (nanoGPT's 50304)."""
    return (n + multiple - 1) // multiple * multiple


@dataclass
class Distributed:
    """This process's place in a torchrun job (world 1 when run alone)."""

    rank: int = 0
    local_rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> Distributed:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world == 1:
            return cls()
        return cls(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0")), world)

    def mean(self, value: float) -> float:
        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(t)
        return float(t) / self.world

    def all_sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            dist.all_reduce(t)
        return t

    def broadcast(self, obj):
        if self.world == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]


class Reporter:
    """What the trainer tells the user; the CLI passes a live display, tests a quiet one."""

    def start(self, info: dict) -> None: ...
    def message(self, text: str) -> None: ...
    def log(self, record: dict) -> None: ...
    def eval(self, record: dict, sample: str | None) -> None: ...
    def close(self) -> None: ...


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    best_val_loss: float | None
    elapsed_s: float
    interrupted: bool = False
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
    ):
        self.model_cfg, self.cfg, self.data, self.run_dir = model_cfg, train_cfg, data, run_dir
        self.runtime, self.compile_mode, self.ddp, self.reporter = runtime, compile_mode, ddp, reporter
        self.device = runtime.device
        if train_cfg.accum % ddp.world:
            raise ConfigError(
                f"--accum {train_cfg.accum} must be divisible by the number of processes ({ddp.world}); "
                f"use --accum {max(ddp.world, train_cfg.accum // ddp.world * ddp.world)}."
            )
        self.local_accum = train_cfg.accum // ddp.world
        torch.manual_seed(train_cfg.seed)
        self.model = GPT(model_cfg, attention=runtime.attention).to(self.device)
        self.optimizers = make_optimizers(self.model, train_cfg, self.device, runtime.precision)
        self.batch_gen = torch.Generator().manual_seed(train_cfg.seed)
        torch.manual_seed(train_cfg.seed + ddp.rank)  # dropout differs across ranks
        self.step = 0
        self.elapsed = 0.0  # wall seconds of training so far, over all resumes
        self.best_val: float | None = None
        self.last_loss: float | None = None
        self.tok_per_s = 0.0
        self.lr = train_cfg.lr
        self.stop_requested = False
        self.tokens_per_step = train_cfg.batch_size * model_cfg.block_size
        self.flops_per_step = flops_per_token(model_cfg, self.model.num_params()) * self.tokens_per_step
        self.peak = peak_flops(self.device)
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

    def save(self) -> None:
        """last.safetensors and state.safetensors (the step in both ties them together)."""
        if not self.ddp.main:
            return
        tensors = {"rng.cpu": torch.get_rng_state(), "rng.batches": self.batch_gen.get_state()}
        if self.device.type == "cuda":
            tensors["rng.cuda"] = torch.cuda.get_rng_state(self.device)
        info = {"step": self.step, "elapsed": self.elapsed, "best_val": self.best_val, "last_loss": self.last_loss}
        save_train_state(self.run_dir / runs.STATE, self.optimizers, tensors, info)
        save_checkpoint(self.run_dir / runs.LAST, self.model, self.data.tokenizer, step=self.step, val_loss=self.best_val)

    def restore(self) -> None:
        model, _, info = load_checkpoint(self.run_dir / runs.LAST)
        opt_states, tensors, state = load_train_state(self.run_dir / runs.STATE)
        if info.get("step") != state["step"]:
            raise ConfigError(f"{self.run_dir} has checkpoint and state from different steps; start a new run.")
        self.model.load_state_dict(model.state_dict())
        if len(opt_states) != len(self.optimizers):
            raise ConfigError(f"{self.run_dir}'s state holds {len(opt_states)} optimizers, this run has "
                              f"{len(self.optimizers)}; resume with the run's own settings or start a new run.")
        for optimizer, opt_state in zip(self.optimizers, opt_states):
            optimizer.load_state_dict(opt_state)
        torch.set_rng_state(tensors["rng.cpu"])
        if self.device.type == "cuda" and "rng.cuda" in tensors:
            torch.cuda.set_rng_state(tensors["rng.cuda"], self.device)
        self.batch_gen.set_state(tensors["rng.batches"])
        self.step, self.elapsed = state["step"], state["elapsed"]
        self.best_val, self.last_loss = state["best_val"], state["last_loss"]

    # -- pieces ------------------------------------------------------------------------------

    def progress(self) -> float:
        """How far through the schedule: by steps, or by the clock under a time budget."""
        cfg = self.cfg
        if cfg.time_budget_s is not None:
            return self.elapsed / cfg.time_budget_s
        return (self.step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)

    def done(self) -> bool:
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
        starts = self.data.random_starts("train", (cfg.accum, cfg.micro_batch), T, self.batch_gen)
        mine = starts[self.ddp.rank * self.local_accum : (self.ddp.rank + 1) * self.local_accum]
        total = torch.zeros((), device=self.device)
        for micro, ix in enumerate(mine):
            x, y = self.data.batch("train", ix, T)
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            if self.ddp.world > 1:  # all-reduce gradients only after the last micro-batch
                self.ddp_model.require_backward_grad_sync = micro == self.local_accum - 1
            with self.runtime.autocast():
                _, loss = self.forward_model(x, y)
            total += loss.detach()
            (loss / self.local_accum).backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        for optimizer in self.optimizers:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.lr = lr
        return total

    @torch.no_grad()
    def evaluate(self) -> tuple[float, float]:
        """Validation loss (nats/token) and bits per byte, on the same batches every time."""
        cfg, T = self.cfg, self.model_cfg.block_size
        gen = torch.Generator().manual_seed(cfg.seed + 1)
        # eval_iters batches of batch_size sequences, run as micro-batches: the same sequences whatever --accum is.
        starts = self.data.random_starts("val", (cfg.eval_iters * cfg.accum, cfg.micro_batch), T, gen)
        sums = torch.zeros(3, dtype=torch.float64)  # nats, tokens, bytes
        self.model.eval()
        for i in range(self.ddp.rank, len(starts), self.ddp.world):
            x, y = self.data.batch("val", starts[i], T)
            with self.runtime.autocast():
                logits, _ = self.model(x.to(self.device))
            nats = F.cross_entropy(logits.float().flatten(0, 1), y.to(self.device).flatten(), reduction="sum")
            sums += torch.stack([nats.double().cpu(), torch.tensor(float(y.numel())), self.token_bytes[y].sum()])
        self.model.train()
        nats, tokens, n_bytes = self.ddp.all_sum(sums).tolist()
        return nats / tokens, nats / (math.log(2) * n_bytes)

    def sample(self) -> str | None:
        if not self.ddp.main or self.cfg.sample_tokens <= 0:
            return None
        tok = self.data.tokenizer
        self.model.eval()
        gen = torch.Generator(self.device).manual_seed(self.cfg.seed)
        with self.runtime.autocast():
            ids = list(generate(self.model, prompt_ids(tok, ""), self.cfg.sample_tokens, tok.vocab_size,
                                gen, temperature=0.8, top_k=200))
        self.model.train()
        return tok.decode(ids)

    def write_metrics(self, record: dict) -> None:
        if self.ddp.main:
            with open(self.run_dir / runs.METRICS, "a") as f:
                f.write(json.dumps(record) + "\n")

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
            cost = COMPILE_COST_S.get(self.device.type, 60.0)
            worth = self.ddp.broadcast(remaining * COMPILE_GAIN > cost)
            if not worth:
                self.reporter.message(
                    f"Not compiling: ~{remaining:.0f} s of training left would save ~{remaining * COMPILE_GAIN:.0f} s, "
                    f"less than a ~{cost:.0f} s first compile (force it with --compile on)."
                )
                return
        self.reporter.message("Compiling the model with torch.compile (the first steps take a while)...")
        self.forward_model = torch.compile(self.forward_model)
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
        usable_compile, why_not = compile_available(self.device)
        if self.compile_mode == "on" and not usable_compile:
            raise ConfigError(f"--compile on cannot work here: {why_not}; use --compile off.")
        if not usable_compile:
            self.compile_mode = "off"
        if self.compile_mode == "on":
            self.maybe_compile([])
        probe: list[float] = []
        interval_tokens, interval_time = 0, 0.0
        previous_handler = _catch_ctrl_c(self)
        try:
            while not self.done() and not self.stopping():
                t0 = time.perf_counter()
                total = self.train_step()
                synchronize(self.device)
                dt = time.perf_counter() - t0
                if self.step % cfg.log_interval == 0:
                    self.last_loss = self.ddp.mean(float(total) / self.local_accum)
                self.elapsed += dt
                interval_tokens += self.tokens_per_step
                interval_time += dt
                if len(probe) < PROBE_STEPS and self.compile_mode == "auto":
                    probe.append(dt)
                    if len(probe) == PROBE_STEPS:
                        self.maybe_compile(probe[1:])  # the first step pays for warm-up
                if self.step % cfg.log_interval == 0:
                    self.tok_per_s = interval_tokens / interval_time
                    record = {
                        "step": self.step,
                        "loss": round(self.last_loss, 5),
                        "lr": self.lr,
                        "tok_per_s": round(self.tok_per_s, 1),
                        "mfu": round(self.tok_per_s * self.flops_per_step / self.tokens_per_step / self.peak, 5)
                        if math.isfinite(self.peak) else None,
                        "elapsed": round(self.elapsed, 3),
                    }
                    interval_tokens, interval_time = 0, 0.0
                    self.write_metrics(record)
                    self.reporter.log(record)
                    history.append(record)
                if self.step % cfg.eval_interval == 0 or self.done():
                    history.append(self.eval_and_save())
            if self.stop_requested:
                self.save()
                self.reporter.message(
                    f"Interrupted at step {self.step}; saved {self.run_dir / runs.LAST}. "
                    f"Continue with `bladegpt train --resume --run {self.run_dir}`."
                )
        finally:
            if previous_handler is not None:
                signal.signal(signal.SIGINT, previous_handler)
            self.reporter.close()
        return TrainResult(self.run_dir, self.step, self.best_val, self.elapsed, self.stop_requested, history, self.model)

    def stopping(self) -> bool:
        """Ctrl-C seen here, or on any rank: all ranks stop after the same step."""
        if self.ddp.world > 1:
            self.stop_requested = self.ddp.mean(float(self.stop_requested)) > 0
        return self.stop_requested

    def eval_and_save(self) -> dict:
        t0 = time.perf_counter()
        val_loss, val_bpb = self.evaluate()
        sample = self.sample()
        improved = self.best_val is None or val_loss < self.best_val
        if improved:
            self.best_val = val_loss
        self.elapsed += time.perf_counter() - t0  # evaluation is part of the run's wall time
        record = {
            "step": self.step,
            "loss": round(self.last_loss, 5) if self.last_loss is not None else None,
            "lr": self.lr,
            "tok_per_s": round(self.tok_per_s, 1),
            "val_loss": round(val_loss, 5),
            "val_bpb": round(val_bpb, 5),
            "elapsed": round(self.elapsed, 3),
        }
        self.write_metrics(record)
        self.save()
        if improved and self.ddp.main:
            save_checkpoint(self.run_dir / runs.BEST, self.model, self.data.tokenizer, step=self.step, val_loss=val_loss)
        self.reporter.eval(record, sample)
        return record


def _catch_ctrl_c(trainer: Trainer):
    """First Ctrl-C: finish the step, save, stop. A second one stops at once."""

    def handler(signum, frame):
        if trainer.stop_requested:
            raise KeyboardInterrupt
        trainer.stop_requested = True

    if threading.current_thread() is not threading.main_thread():
        return None  # signals can only be caught on the main thread
    return signal.signal(signal.SIGINT, handler)


def _init_distributed(ddp: Distributed, device_name: str) -> torch.device:
    device = resolve_device(device_name)
    if ddp.world == 1:
        return device
    if device.type == "cuda":
        if ddp.local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"torchrun started more processes on this machine than it has GPUs ({torch.cuda.device_count()}): "
                f"use --nproc_per_node={torch.cuda.device_count()}, or train on the CPU with --device cpu."
            )
        device = torch.device("cuda", ddp.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return device


def train(
    data: Path | None = None,
    preset: str = "mini",
    model_overrides: dict | None = None,
    train_overrides: dict | None = None,
    device: str = "auto",
    precision: str = "auto",
    attention: str = "auto",
    compile: str = "auto",
    resume: bool = False,
    run: Path | None = None,
    reporter: Reporter | None = None,
) -> TrainResult:
    """Train a GPT on a prepared dataset: a new run in runs/, or `resume` the given (or latest) run."""
    if compile not in COMPILE_MODES:
        raise ConfigError(f"Unknown --compile '{compile}'; choose one of: {', '.join(COMPILE_MODES)}.")
    reporter = reporter or Reporter()
    ddp = Distributed.from_env()
    dev = _init_distributed(ddp, device)
    try:
        if not ddp.main:
            reporter = Reporter()  # only rank 0 speaks
        if resume:
            run_dir = Path(run) if run is not None else runs.latest_run()
            saved = json.loads((run_dir / runs.RUN_FILE).read_text())
            if any(v is not None for v in (model_overrides or {}).values()):
                raise ConfigError("--resume continues a run with its own model shape; drop the model flags or start a new run.")
            model_cfg = ModelConfig.from_dict(saved["model"])
            train_cfg = TrainConfig.from_dict({**saved["train"], **{k: v for k, v in (train_overrides or {}).items() if v is not None}})
            data_dir = Path(saved["dataset"])
        else:
            data_dir = Path(data) if data is not None else latest_dataset()
            model_cfg, train_cfg = from_preset(preset, model_overrides, train_overrides)
        token_data = TokenData(data_dir)
        token_data.check_fits(model_cfg.block_size)
        model_cfg.vocab_size = padded_vocab(token_data.tokenizer.vocab_size)
        if not resume:
            run_dir = None
            if ddp.main:
                run_dir = Path(run) if run is not None else runs.new_run_dir(data_dir.name)
                run_dir.mkdir(parents=True, exist_ok=True)
                if (run_dir / runs.LAST).exists():
                    raise ConfigError(f"{run_dir} already holds a run; pick another --run or add --resume.")
                (run_dir / runs.RUN_FILE).write_text(json.dumps({
                    "dataset": str(data_dir.resolve()), "preset": preset,
                    "model": model_cfg.to_dict(), "train": train_cfg.to_dict(),
                }, indent=2))
            run_dir = Path(ddp.broadcast(str(run_dir) if run_dir else None))
        prec = choose_precision(dev, precision)
        set_matmul_precision(dev, allow_tf32=True)  # TF32 matmuls on Ampere+ GPUs; no-op elsewhere
        shape = model_cfg.attention_shape(train_cfg.micro_batch)
        attn = ddp.broadcast(choose_attention(dev, prec, shape, attention))
        trainer = Trainer(model_cfg, train_cfg, token_data, run_dir, Runtime(dev, prec, attn, False), compile, ddp, reporter)
        if resume:
            trainer.restore()
            if trainer.done():
                raise ConfigError(f"{run_dir} already finished at step {trainer.step}; pass a larger --steps to continue it.")
        return trainer.run()
    finally:
        if ddp.world > 1 and dist.is_initialized():
            dist.destroy_process_group()
