"""dataset -> checkpoints: train() plans a run (plan.py, resume.py), claims its folder, builds the Trainer
(trainer.py) with the runtime chosen for this machine, runs it and cleans up."""

from __future__ import annotations

import time
from pathlib import Path

import torch.distributed as dist

from bladegpt import runs
from bladegpt.checkpoint import recover_training
from bladegpt.errors import ConfigError
from bladegpt.lora import LoraConfig
from bladegpt.runtime import COMPILE_MODES, Runtime, choose_attention, choose_precision, set_matmul_precision
from bladegpt.train.distributed import Distributed, first_to_stop
from bladegpt.train.plan import device_for, finetune_plan, new_plan
from bladegpt.train.resume import record_resume, restore, resume_plan
from bladegpt.train.runbook import Phases
from bladegpt.train.signals import StopSignals
from bladegpt.train.tracker import check_tracker, open_tracker
from bladegpt.train.trainer import Reporter, Trainer, TrainResult


def train(
    data: Path | None = None,
    preset: str | None = None,
    model_overrides: dict | None = None,
    train_overrides: dict | None = None,
    device: str | None = None,
    precision: str | None = None,
    attention: str | None = None,
    compile: str | None = None,
    resume: bool = False,
    run: Path | None = None,
    reporter: Reporter | None = None,
    init_from: str | None = None,
    tracker: str | None = None,
    lora: LoraConfig | None = None,
) -> TrainResult:
    """Train a GPT on a prepared dataset: a new run in runs/, or `resume` the given (or latest) run.

    `init_from` starts from a pretrained model (sources/) instead of random weights.
    Runtime flags left as None mean: the run's own choice when resuming, else "auto".
    `tracker` (tensorboard or wandb) also sends the run to that tracker, from the main process.
    `lora` trains LoRA adapters on the frozen `init_from` model instead of all its weights (lora.py).
    """
    requested = dict(device=device, precision=precision, attention=attention, compile=compile)
    if compile is not None and compile not in COMPILE_MODES:
        raise ConfigError(f"Unknown --compile '{compile}'; choose one of: {', '.join(COMPILE_MODES)}.")
    check_tracker(tracker)
    ddp = Distributed.from_env()
    reporter = reporter if reporter is not None and ddp.main else Reporter()  # only rank 0 speaks
    lock, run_dir, created, record, tracking = None, None, False, None, None
    finished = False
    phases = Phases()  # the plan's and the build's seconds; the trainer adds its own
    with StopSignals() as signals:
        try:
            if resume:
                if init_from is not None:
                    raise ConfigError("--resume continues a run from its own checkpoint; drop --init-from.")
                if lora is not None:
                    raise ConfigError("--resume continues a run with its own adapters (or none); drop --lora "
                                      "and the --lora-* flags.")
                plan = resume_plan(run, data, model_overrides, train_overrides, requested)
                run_dir = plan.run_dir
                if ddp.main:
                    lock = runs.RunLock(run_dir)
                    if removed := runs.remove_stale_staged(run_dir):  # said; recover_training drops them silently
                        reporter.message(runs.said_removed(run_dir, removed))
                    recover_training(run_dir)
            elif init_from is not None:
                with phases.timed("plan: the source loaded, the dataset read"):
                    plan = finetune_plan(init_from, data, preset, model_overrides, train_overrides, requested, lora)
            else:
                if lora is not None:
                    raise ConfigError("--lora trains adapters on a pretrained model; add --init-from SOURCE "
                                      "(a model from the hub, a .gguf file, ollama:NAME or a run), or drop --lora.")
                with phases.timed("plan: the dataset read, the run sized"):
                    plan = new_plan(data, preset, model_overrides, train_overrides, requested)
            dev = device_for(ddp, plan, requested)
            if not resume:
                if ddp.main:
                    run_dir, created = runs.claim_run_dir(run, plan.data.folder)
                    lock = runs.RunLock(run_dir)
                    runs.check_unused(run_dir)
                    if removed := runs.remove_stale_staged(run_dir):  # a start killed in its first save
                        reporter.message(runs.said_removed(run_dir, removed))
                    record = {
                        "dataset": str(plan.data.folder.resolve()), "dataset_fingerprint": plan.data.fingerprint,
                        "preset": preset, "init_from": init_from,  # neither: the default, sized to the text
                        "origin": plan.origin, "model": plan.model_cfg.to_dict(), "train": plan.train_cfg.to_dict(),
                        "chat_frame": plan.data.meta.get("chat_frame"),  # how chat writes the talk (data/frames.py)
                        "opening": plan.data.meta.get("opening", ""),  # what sample starts from with no prompt
                    }
                    if plan.model is not None and getattr(plan.model, "lora", None) is not None:
                        record["lora"] = plan.model.lora.to_dict()
                    runs.write_run(run_dir, record)
                run_dir = Path(ddp.broadcast(str(run_dir) if run_dir else None))
            built = time.perf_counter()
            prec = choose_precision(dev, plan.runtime["precision"])
            set_matmul_precision(dev, allow_tf32=True)  # TF32 matmuls on Ampere+ GPUs; no-op elsewhere
            shape = plan.model_cfg.attention_shape(plan.train_cfg.micro_batch)
            attn = ddp.broadcast(choose_attention(dev, prec, shape, plan.runtime["attention"], plan.model_cfg.dropout))
            trainer = Trainer(plan.model_cfg, plan.train_cfg, plan.data, run_dir, Runtime(dev, prec, attn, False),
                              plan.runtime["compile"], ddp, reporter, signals, model=plan.model,
                              loading=resume or plan.initial is not None)
            plan.model = None
            if resume:
                restore(trainer, plan, requested, reporter)
                if ddp.main:
                    record_resume(trainer, plan, reporter)
            elif plan.initial is not None:
                trainer.model.load_state_dict(plan.initial)
                plan.initial = None  # copied into the model: let the source's tensors go (0.5 GB for GPT-2)
            phases.add("build: precision, attention, the model, its weights, the optimizers", time.perf_counter() - built)
            trainer.phases = phases
            if not resume and plan.origin is not None:
                reporter.message(f"Starting from {plan.origin}.")
            if ddp.main and not resume and plan.origin is not None:  # what a fine-tune is read against
                record["base_voice"], sample = phases.call("evaluations: the base model's sample",
                                                           trainer.evaluator.measure_base, trainer.model)
                runs.write_run(run_dir, record)
                reporter.base(record["base_voice"], sample)
            elif ddp.main and resume and (base := runs.read_run(run_dir).get("base_voice")):
                reporter.base(base, None)  # later samples' style distance named beside the base's
            if plan.notes:
                reporter.message("Sized to the text (each flag overrides its choice):\n" +
                                 "\n".join(f"  {note}" for note in plan.notes))
            if ddp.main and tracker is not None:
                settings = {**runs.read_run(run_dir), "runtime": trainer.runtime_record()}
                tracking = trainer.metrics.tracker = open_tracker(tracker, run_dir, settings, trainer.step,
                                                                  reporter.message)
            if plan.budget_s is not None:
                trainer.pacer.budget(plan.budget_s, lambda cfg: record and runs.write_run(run_dir, {**record, "train": cfg.to_dict()}))
            result = trainer.run()
            finished = True
            return result
        finally:
            if not finished and ddp.world > 1:
                first_to_stop()  # counted before the group closes: a peer's broken collective comes second
            if tracking is not None:
                tracking.close(failed=not finished)
            if lock is not None:
                runs.remove_if_unused(run_dir, created)
                lock.release()
            if ddp.world > 1 and dist.is_initialized():
                # Leave together: a gloo rank whose peer closed its sockets first can abort (CI saw a
                # SIGABRT once). Not after an error, where the other rank may never come.
                if finished:
                    dist.barrier()
                dist.destroy_process_group()
