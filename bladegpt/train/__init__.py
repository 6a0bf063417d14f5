"""Start or resume a training run: its dataset, its folder and how it computes; then the Trainer runs it."""

from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from bladegpt import runs
from bladegpt.checkpoint import read_info, recover_training
from bladegpt.config import (
    DEFAULT_PRESET,
    FINETUNE_BLOCK,
    ConfigError,
    ModelConfig,
    TrainConfig,
    finetune_config,
    PRESETS,
    SCRATCH_BUDGET_S,
    from_preset,
    padded_vocab,
    sized_model,
    sized_to_text,
)
from bladegpt.data.dataset import DataError, TokenData, latest_dataset
from bladegpt.data.prepare import default_out_dir
from bladegpt.train.distributed import Distributed, init_distributed
from bladegpt.encoding import utf8_name
from bladegpt.errors import UserError
from bladegpt.files import temp_path
from bladegpt.lora import LoraConfig
from bladegpt.train.memory import GB, fit_micro_batch, memory_budget
from bladegpt.model import GPT
from bladegpt.train.runbook import describe_resume, resume_changes
from bladegpt.runtime import (
    COMPILE_MODES,
    DeviceError,
    Runtime,
    choose_attention,
    choose_precision,
    resolve_device,
    set_matmul_precision,
)
from bladegpt.train.signals import StopSignals
from bladegpt.train.tracker import FOLDERS as TRACKER_FOLDERS, check_tracker, open_tracker
from bladegpt.train.trainer import Reporter, Trainer, TrainResult

RUNTIME_FLAGS = ("device", "precision", "attention", "compile")
CHECKPOINTS = (runs.LAST, runs.STATE, runs.BEST)
RUN_FILES = {runs.RUN_FILE, runs.METRICS, runs.LOCK}  # what a run folder holds before its first checkpoint


@dataclass
class Plan:
    """What a run will train, on what, and how: read from the flags, or from the run being resumed."""

    model_cfg: ModelConfig
    train_cfg: TrainConfig
    data: TokenData
    runtime: dict  # device, precision, attention, compile: the run's own or the flags'
    run_dir: Path | None = None
    saved_runtime: dict = field(default_factory=dict)
    saved_train: TrainConfig | None = None  # a resumed run's settings before this resume's flags
    initial: dict | None = None  # weights to start from (--init-from), already cropped to the block
    origin: str | None = None  # what they are, for the start of the run
    notes: list[str] = field(default_factory=list)  # choices made for the user, printed at the start
    budget_s: float | None = None  # a default run longer than this is cut to it once its speed is measured
    model: GPT | None = None  # the model itself, built here (a LoRA run's frozen base with its adapters)


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

    `init_from` starts from a pretrained model (see pretrained.py) instead of random weights.
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
    with StopSignals() as signals:
        try:
            if resume:
                if init_from is not None:
                    raise ConfigError("--resume continues a run from its own checkpoint; drop --init-from.")
                if lora is not None:
                    raise ConfigError("--resume continues a run with its own adapters (or none); drop --lora "
                                      "and the --lora-* flags.")
                plan = _resume_plan(run, data, model_overrides, train_overrides, requested)
                run_dir = plan.run_dir
                if ddp.main:
                    lock = runs.RunLock(run_dir)
                    recover_training(run_dir)
            elif init_from is not None:
                plan = _finetune_plan(init_from, data, preset, model_overrides, train_overrides, requested, lora)
            else:
                if lora is not None:
                    raise ConfigError("--lora trains adapters on a pretrained model; add --init-from SOURCE "
                                      "(a model from the hub, a .gguf file, ollama:NAME or a run), or drop --lora.")
                plan = _new_plan(data, preset, model_overrides, train_overrides, requested)
            dev = _device(ddp, plan, requested)
            if not resume:
                if ddp.main:
                    run_dir, created = _claim_run_dir(run, plan.data.folder)
                    lock = runs.RunLock(run_dir)
                    _check_unused(run_dir)
                    record = {
                        "dataset": str(plan.data.folder.resolve()), "dataset_fingerprint": plan.data.fingerprint,
                        "preset": preset, "init_from": init_from,  # neither: the default, sized to the text
                        "origin": plan.origin, "model": plan.model_cfg.to_dict(), "train": plan.train_cfg.to_dict(),
                        "chat_frame": plan.data.meta.get("chat_frame"),  # how chat writes the talk (frames.py)
                    }
                    if plan.model is not None and getattr(plan.model, "lora", None) is not None:
                        record["lora"] = plan.model.lora.to_dict()
                    runs.write_run(run_dir, record)
                run_dir = Path(ddp.broadcast(str(run_dir) if run_dir else None))
            prec = choose_precision(dev, plan.runtime["precision"])
            set_matmul_precision(dev, allow_tf32=True)  # TF32 matmuls on Ampere+ GPUs; no-op elsewhere
            shape = plan.model_cfg.attention_shape(plan.train_cfg.micro_batch)
            attn = ddp.broadcast(choose_attention(dev, prec, shape, plan.runtime["attention"]))
            trainer = Trainer(plan.model_cfg, plan.train_cfg, plan.data, run_dir, Runtime(dev, prec, attn, False),
                              plan.runtime["compile"], ddp, reporter, signals, model=plan.model)
            plan.model = None
            if resume:
                _resume(trainer, plan, requested, reporter)
                if ddp.main:
                    _record_resume(trainer, plan, reporter)
            elif plan.initial is not None:
                trainer.model.load_state_dict(plan.initial)
                plan.initial = None  # copied into the model: let the source's tensors go (0.5 GB for GPT-2)
            if not resume and plan.origin is not None:
                reporter.message(f"Starting from {plan.origin}.")
            if plan.notes:
                reporter.message("Sized to the text (each flag overrides its choice):\n" +
                                 "\n".join(f"  {note}" for note in plan.notes))
            if ddp.main and tracker is not None:
                settings = {**runs.read_run(run_dir), "runtime": trainer.runtime_record()}
                tracking = trainer.metrics.tracker = open_tracker(tracker, run_dir, settings, trainer.step,
                                                                  reporter.message)
            if plan.budget_s is not None:
                trainer.budget(plan.budget_s, lambda cfg: record and runs.write_run(run_dir, {**record, "train": cfg.to_dict()}))
            result = trainer.run()
            finished = True
            return result
        finally:
            if tracking is not None:
                tracking.close(failed=not finished)
            if lock is not None:
                _remove_if_unused(run_dir, created)
                lock.release()
            if ddp.world > 1 and dist.is_initialized():
                # Leave together: a gloo rank whose peer closed its sockets first can abort (CI saw a
                # SIGABRT once). Not after an error, where the other rank may never come.
                if finished:
                    dist.barrier()
                dist.destroy_process_group()


def _new_plan(data, preset, model_overrides, train_overrides, requested) -> Plan:
    """A run from scratch: a named preset as it is, or with no --preset the default sized to the text."""
    data_dir = Path(data) if data is not None else latest_dataset()
    token_data = TokenData(data_dir)
    notes, budget = [], None
    if preset is None:
        model_overrides, notes = sized_model(model_overrides, token_data.train_bytes)
        model_cfg, _ = from_preset(DEFAULT_PRESET, model_overrides)
        base = PRESETS[DEFAULT_PRESET].train
        batch = (train_overrides or {}).get("batch_size") or base["batch_size"]
        train, sized = sized_to_text(train_overrides, len(token_data.splits["train"]), len(token_data.splits["val"]),
                                     batch * model_cfg.block_size, base, token_data.train_bytes)
        notes += sized
        given = {k for k, v in (train_overrides or {}).items() if v is not None}
        budget = None if given & {"steps", "time_budget_s"} else SCRATCH_BUDGET_S
        model_cfg, train_cfg = from_preset(DEFAULT_PRESET, model_overrides, train)
    else:
        model_cfg, train_cfg = from_preset(preset, model_overrides, train_overrides)
    token_data.check_fits(model_cfg.block_size)
    model_cfg.vocab_size = padded_vocab(token_data.tokenizer.vocab_size)
    return Plan(model_cfg, train_cfg, token_data, {k: v or "auto" for k, v in requested.items()}, notes=notes,
                budget_s=budget)


def _finetune_plan(source, data, preset, model_overrides, train_overrides, requested, lora=None) -> Plan:
    """The model and its tokenizer come from the source; the context may shrink, dropout may be set. With
    `lora` the source stays frozen (its block matrices in lora.base_dtype) under trained adapters."""
    from bladegpt.sources import load_pretrained

    overrides = {k: v for k, v in (model_overrides or {}).items() if v is not None}
    shape = sorted(set(overrides) - {"block_size", "dropout"})
    if shape or preset is not None:
        given = ", ".join(f"--{k.replace('_', '-')}" for k in shape) or "--preset"
        raise ConfigError(f"--init-from takes the model's shape from {source}; drop {given} "
                          "(--block-size may shrink the context, --dropout may be set).")
    data_dir = Path(data) if data is not None else latest_dataset()
    token_data = TokenData(data_dir)  # before loading weights: a mismatch should not wait for them
    matrices = torch.float32
    if lora is not None:  # a frozen base in bf16 is loaded so, never whole in fp32
        from bladegpt.lora import BASE_DTYPES

        matrices = BASE_DTYPES[lora.base_dtype]
    pretrained = load_pretrained(source, matrices)
    if token_data.tokenizer.to_dict() != pretrained.tokenizer.to_dict():
        files = token_data.meta.get("sources") or ["FILE"]
        raise DataError(f"{data_dir} was encoded with another tokenizer than {source}'s; encode the text with "
                        f"its tokenizer: `bladegpt prepare {' '.join(files)} --tokenizer-from {source}` (it writes "
                        f"{default_out_dir(files, source)}), then train again.")
    source_cfg = pretrained.model.config
    shortest = min(len(tokens) for tokens in token_data.splits.values())
    fitting = 2 ** max(4, (shortest - 2).bit_length() - 1)  # the default context shrinks to fit a small split
    block = overrides["block_size"] if "block_size" in overrides else min(source_cfg.block_size, FINETUNE_BLOCK, fitting)
    if block < 1:
        raise ConfigError(f"--block-size must be between 1 and {source_cfg.block_size} (the source's context), "
                          f"got {block}.")
    if block > source_cfg.block_size:
        raise ConfigError(f"--block-size {block} is longer than {source}'s context ({source_cfg.block_size}); "
                          f"use at most {source_cfg.block_size}.")
    context = source_cfg.context_length or source_cfg.block_size if source_cfg.positions == "rope" else None
    model_cfg = dataclasses.replace(source_cfg, block_size=block, dropout=overrides.get("dropout", 0.0),
                                    context_length=context)
    token_data.check_fits(block)
    train_cfg, notes = finetune_config(train_overrides, model_cfg.n_embd, len(token_data.splits["train"]),
                                       len(token_data.splits["val"]), block)
    if "block_size" not in overrides and block < min(source_cfg.block_size, FINETUNE_BLOCK):
        notes.insert(0, f"--block-size {block}: the text's {shortest:,}-token split is too short for {FINETUNE_BLOCK}")
    train_cfg, fitted = _fit_memory(train_cfg, model_cfg, lora, train_overrides, requested["device"] or "auto")
    notes += fitted
    initial = pretrained.model.state_dict()
    runtime = {k: v or "auto" for k, v in requested.items()}
    given = {k for k, v in (train_overrides or {}).items() if v is not None}
    budget = None if given & {"steps", "time_budget_s"} else SCRATCH_BUDGET_S  # a big text: cut, and said so
    if lora is not None:
        pretrained.model = None  # its tensors live on in `initial` alone, which _lora_plan empties
        plan = _lora_plan(lora, source, pretrained.description, initial, model_cfg, train_cfg, token_data, runtime,
                          train_overrides)
        plan.notes, plan.budget_s = notes, budget
        return plan
    if "transformer.wpe.weight" in initial:  # learned positions: crop the context (nanoGPT's crop_block_size)
        initial["transformer.wpe.weight"] = initial["transformer.wpe.weight"][:block]
    return Plan(model_cfg, train_cfg, token_data, runtime, initial=initial, origin=pretrained.description, notes=notes,
                budget_s=budget)


def _fit_memory(train_cfg: TrainConfig, model_cfg: ModelConfig, lora: LoraConfig | None, train_overrides: dict | None,
                device: str) -> tuple[TrainConfig, list[str]]:
    """The fine-tune's micro-batch (--accum) and activation checkpointing sized to this machine's memory from
    the model's shape (memory.py), the step's batch kept; the user's --accum or --activation-checkpointing
    stays as given. Returns the settings and the line saying what was chosen (none when both were given)."""
    given = {k for k, v in (train_overrides or {}).items() if v is not None}
    if {"accum", "activation_checkpointing"} <= given:
        return train_cfg, []
    device = resolve_device(device)
    budget = memory_budget(device)
    fit = fit_micro_batch(model_cfg, train_cfg.batch_size, model_cfg.block_size, budget, lora,
                          train_cfg.accum if "accum" in given else None,
                          train_cfg.activation_checkpointing if "activation_checkpointing" in given else None)
    train_cfg = dataclasses.replace(train_cfg, accum=fit.accum, activation_checkpointing=fit.checkpointing)
    flags = f"--accum {fit.accum}" + (" --activation-checkpointing (a third more compute)" if fit.checkpointing else "")
    share = "the GPU's free memory" if device.type == "cuda" else "a third of this machine's, at most what is free"
    room = f"{fit.estimate / GB:.1f} GB estimated at its peak, within the {fit.budget / GB:.1f} GB a run may use ({share})"
    if fit.estimate > fit.budget:
        room = (f"{fit.estimate / GB:.1f} GB estimated at its peak, more than the {fit.budget / GB:.1f} GB a run may use "
                f"({share}): it may swap or be stopped; {'a smaller model' if lora else '--lora or a smaller model'} "
                "needs less")
    return train_cfg, [f"{flags}: {train_cfg.micro_batch} x {model_cfg.block_size:,} tokens a forward pass, {room}"]


def _lora_plan(lora, source, origin, state, model_cfg, train_cfg, token_data, runtime, train_overrides) -> Plan:
    """A LoRA run: the source's own tensors become the frozen base (no second copy), the adapters start at
    zero, and the lr is LoRA's unless given."""
    from bladegpt.lora import LR_SCALE, attach, base_source, fingerprint, shaped, trainable

    lora = dataclasses.replace(lora, base=base_source(source), base_fingerprint=fingerprint(state))
    model = shaped(state, model_cfg, origin)
    state.clear()  # the model holds the only references: attach frees each fp32 matrix as its bf16 copy arrives
    attach(model, lora, torch.Generator().manual_seed(train_cfg.seed))
    total = sum(p.numel() for p in model.parameters())
    origin += (f"; LoRA {lora.describe()}: {trainable(model) / 1e6:.2f}M trained parameters "
               f"({100 * trainable(model) / total:.1f}%)")
    if (train_overrides or {}).get("lr") is None:
        train_cfg = dataclasses.replace(train_cfg, lr=train_cfg.lr * LR_SCALE)
        origin += f", at lr {train_cfg.lr:.2g} (about {LR_SCALE}x a full fine-tune's, as LoRA learns best; --lr overrides)"
    return Plan(model_cfg, train_cfg, token_data, runtime, origin=origin, model=model)


def _resume_plan(run, data, model_overrides, train_overrides, requested) -> Plan:
    if data is not None:
        raise ConfigError("--resume continues a run on its own dataset; drop --data, or start a new run on the other one.")
    if any(v is not None for v in (model_overrides or {}).values()):
        raise ConfigError("--resume continues a run with its own model shape; drop the model flags or start a new run.")
    try:
        run_dir = Path(run) if run is not None else runs.latest_run()
    except UserError:
        raise UserError(f"Nothing to resume: no run in {runs.RUNS_DIR}/ has a checkpoint yet; start one with "
                        "`bladegpt train` (or name another with --run).") from None
    saved = runs.read_run(run_dir)
    if not (run_dir / runs.STATE).is_file():
        raise ConfigError(f"{run_dir} has no checkpoint to resume (it stopped before its first save); "
                          "start a new run with `bladegpt train`.")
    state = read_info(run_dir / runs.STATE)
    given = {k: v for k, v in (train_overrides or {}).items() if v is not None}
    try:
        model_cfg = ModelConfig.from_dict(saved["model"])
        saved_train = TrainConfig.from_dict(saved["train"])
        train_cfg = TrainConfig.from_dict({**saved["train"], **given})
    except TypeError as e:
        raise ConfigError(f"{run_dir / runs.RUN_FILE} has settings this version cannot read ({e}); "
                          "start a new run.") from None
    if given.get("seed", saved_train.seed) != saved_train.seed:
        raise ConfigError(f"--resume continues {run_dir}'s own random streams (seed {saved_train.seed}); drop --seed, "
                          "or start a new run with it.")
    for name, what in (("ema", "its evaluations and best checkpoint measure"), ("sampling", "its windows follow"),
                       ("optimizer", "its saved optimizer state belongs to")):
        if given.get(name, getattr(saved_train, name)) != getattr(saved_train, name):
            flag = f"--{name} {getattr(saved_train, name)}"
            raise ConfigError(f"--resume keeps {run_dir}'s {flag}, which {what}; drop --{name}, or start a new run "
                              "with it.")
    data_dir = Path(saved["dataset"])
    try:
        token_data = TokenData(data_dir)
    except DataError as e:
        raise DataError(f"The dataset {run_dir} trained on cannot be used: {e}") from None
    recorded = saved.get("dataset_fingerprint")
    if recorded and recorded != token_data.fingerprint:
        raise DataError(f"{data_dir} is not the data {run_dir} trained on (it was prepared again since); "
                        "resuming would continue on other text: start a new run on it instead.")
    if token_data.tokenizer.vocab_size > model_cfg.vocab_size:  # the model is the run's own (GPT-2's is unpadded)
        raise DataError(f"{data_dir}'s vocabulary no longer fits {run_dir}'s model; start a new run on it.")
    saved_runtime = state.get("runtime", {})
    runtime = {k: requested[k] or saved_runtime.get(k) or "auto" for k in RUNTIME_FLAGS}
    model = None
    if saved.get("lora"):  # the base again, checked against its fingerprint, with adapters to restore into
        from bladegpt.lora import attach, load_base

        lora = LoraConfig.from_dict(saved["lora"])
        model = attach(load_base(lora, model_cfg, str(run_dir)), lora)
    return Plan(model_cfg, train_cfg, token_data, runtime, run_dir, saved_runtime, saved_train=saved_train,
                model=model)


def _device(ddp: Distributed, plan: Plan, requested: dict):
    try:
        return init_distributed(ddp, plan.runtime["device"])
    except DeviceError:
        if requested["device"] is not None or plan.run_dir is None:
            raise
        raise DeviceError(f"{plan.run_dir} trained on {plan.runtime['device']}, which this machine does not have; "
                          "add --device cpu (or auto) to continue it here.") from None


def _claim_run_dir(run: Path | None, data_dir: Path) -> tuple[Path, bool]:
    """The folder a new run trains in, and whether this call made it."""
    if run is None:
        return runs.new_run_dir(utf8_name(data_dir.name)), True
    run_dir = Path(run)
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--run {run_dir} is a file; give --run a folder name.")
    if run_dir.is_dir():
        ours = RUN_FILES | set(CHECKPOINTS) | set(TRACKER_FOLDERS)
        ours |= {temp_path(Path(name)).name for name in ours}  # a crash may leave a staged copy
        if not {p.name for p in run_dir.iterdir()} <= ours:
            raise ConfigError(f"{run_dir} exists and is not a run folder; give --run a new folder name "
                              "(BladeGPT never writes into folders it did not make).")
        return run_dir, False
    run_dir.mkdir(parents=True)
    return run_dir, True


def _check_unused(run_dir: Path) -> None:
    """Checked under the lock: a run folder with a checkpoint belongs to its run."""
    if any((run_dir / name).exists() for name in CHECKPOINTS):
        raise ConfigError(f"{run_dir} already holds a run; pick another --run, or add --resume to continue it.")
    _remove_started(run_dir)  # from a start that died before its first checkpoint


def _remove_started(run_dir: Path) -> None:
    """What a start writes before its first checkpoint: the metrics and the trackers' folders."""
    (run_dir / runs.METRICS).unlink(missing_ok=True)
    for name in TRACKER_FOLDERS:
        if (run_dir / name).is_dir():
            shutil.rmtree(run_dir / name)


def _remove_if_unused(run_dir: Path, created: bool) -> None:
    """A run that stopped before its first checkpoint leaves nothing behind (only what it wrote is removed)."""
    if any((run_dir / name).exists() for name in CHECKPOINTS):
        return
    _remove_started(run_dir)
    for name in RUN_FILES:
        (run_dir / name).unlink(missing_ok=True)
    if created and not any(run_dir.iterdir()):
        run_dir.rmdir()


def _resume(trainer: Trainer, plan: Plan, requested: dict, reporter: Reporter) -> None:
    trainer.restore()
    if trainer.ddp.main:
        runs.cut_metrics(plan.run_dir, trainer.step)
    used = trainer.runtime_record()
    for flag in RUNTIME_FLAGS:
        before = plan.saved_runtime.get(flag)
        if requested[flag] is not None and before is not None and used[flag] != before and before != "auto":
            reporter.message(f"Resuming with --{flag} {used[flag]} where the run used {before}: "
                             "the loss will not follow exactly the curve of an uninterrupted run.")
    if trainer.done():
        cfg = trainer.cfg
        if trainer.early.stop:
            raise UserError(f"{plan.run_dir} stopped early at step {trainer.step} (val loss had not improved for "
                            f"{trainer.early.stale_evals} evaluations); pass a larger --patience, or --patience 0, to continue it.")
        more = ("a longer --time (a run trained by the clock ends by the clock; --steps does not extend it)"
                if cfg.time_budget_s is not None else "a larger --steps")
        raise UserError(f"{plan.run_dir} already finished at step {trainer.step}; pass {more} to continue it.")


def _record_resume(trainer: Trainer, plan: Plan, reporter: Reporter) -> None:
    """Settings a resume changed go into run.json (atomically), with the step they changed at, so that
    run.json, `runs` and the display agree with what was done; one line says what changed."""
    changes = resume_changes(plan.saved_train, trainer.cfg)
    if not changes:
        return
    saved = runs.read_run(plan.run_dir)
    earlier = saved.get("resumes") if isinstance(saved.get("resumes"), list) else []
    history = [*earlier, {"step": trainer.step, "changed": changes}]
    runs.write_run(plan.run_dir, {**saved, "train": trainer.cfg.to_dict(), "resumes": history})
    reporter.message(describe_resume(plan.saved_train, trainer.cfg, trainer.step, trainer.elapsed))
