"""What a new run will train, on what, and how: from scratch (a preset, or the default sized to the text), a
fine-tune of a pretrained model, or LoRA adapters on one; the device it computes on."""

from __future__ import annotations

import dataclasses
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import torch

from bladegpt.config import DEFAULT_PRESET, PRESETS, ModelConfig, TrainConfig, from_preset, padded_vocab
from bladegpt.data.dataset import TokenData, latest_dataset
from bladegpt.data.prepare import default_out_dir
from bladegpt.errors import ConfigError, DataError, DeviceError
from bladegpt.lora import BASE_DTYPES, LoraConfig, attach, fingerprint, trainable
from bladegpt.model import GPT
from bladegpt.runtime import resolve_device
from bladegpt.sources import base_source, load_pretrained
from bladegpt.sources.base import crop_positions, shaped
from bladegpt.train.distributed import Distributed, init_distributed
from bladegpt.train.memory import GB, fit_micro_batch, memory_budget
from bladegpt.train.recipes import (FINETUNE_BLOCK, SCRATCH_BUDGET_S, finetune_config, sized_model, sized_to_text,
                                    speaker_weighted)

RUNTIME_FLAGS = ("device", "precision", "attention", "compile")


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


def check_context_weight(token_data: TokenData, train_overrides: dict | None) -> None:
    """--context-weight weighs a speaker's context against their lines: refused, in a line, on a dataset that
    has no such context (every token already a target)."""
    weight = (train_overrides or {}).get("context_weight")
    if weight is not None and "train" not in token_data.masks:
        raise ConfigError(f"--context-weight weighs the other speakers' lines against a speaker's, but every token of "
                          f"{token_data.folder} is a target; prepare the text with --speaker NAME, or drop --context-weight.")


def speaker_of(token_data: TokenData) -> str | None:
    """Whose lines a dataset's training targets are (prepare --speaker), or None where every token is one."""
    if "train" not in token_data.masks:
        return None
    return (token_data.meta.get("speaker") or {}).get("name") or "the speaker"


def new_plan(data, preset, model_overrides, train_overrides, requested) -> Plan:
    """A run from scratch: a named preset as it is, or with no --preset the default sized to the text."""
    data_dir = Path(data) if data is not None else latest_dataset()
    token_data = TokenData(data_dir)
    check_context_weight(token_data, train_overrides)
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
    train_cfg, weighted = speaker_weighted(train_cfg, train_overrides, speaker_of(token_data))
    notes += weighted
    return Plan(model_cfg, train_cfg, token_data, {k: v or "auto" for k, v in requested.items()}, notes=notes,
                budget_s=budget)


def finetune_plan(source, data, preset, model_overrides, train_overrides, requested, lora=None) -> Plan:
    """The model and its tokenizer come from the source; the context may shrink, dropout may be set. With
    `lora` the source stays frozen (its block matrices in lora.base_dtype) under trained adapters."""
    overrides = {k: v for k, v in (model_overrides or {}).items() if v is not None}
    shape = sorted(set(overrides) - {"block_size", "dropout"})
    if shape or preset is not None:
        given = ", ".join(f"--{k.replace('_', '-')}" for k in shape) or "--preset"
        raise ConfigError(f"--init-from takes the model's shape from {source}; drop {given} "
                          "(--block-size may shrink the context, --dropout may be set).")
    data_dir = Path(data) if data is not None else latest_dataset()
    token_data = TokenData(data_dir)  # before loading weights: a mismatch should not wait for them
    check_context_weight(token_data, train_overrides)
    matrices = torch.float32
    if lora is not None:  # a frozen base in bf16 is loaded so, never whole in fp32
        matrices = BASE_DTYPES[lora.base_dtype]
    pretrained = load_pretrained(source, matrices)
    if token_data.tokenizer.to_dict() != pretrained.tokenizer.to_dict():
        files = token_data.meta.get("sources") or ["FILE"]
        raise DataError(f"{data_dir} was encoded with another tokenizer than {source}'s; encode the text with "
                        f"its tokenizer: `{shlex.join(['bladegpt', 'prepare', *files, '--tokenizer-from', source])}` "
                        f"(it writes {default_out_dir(files, source)}), then train again.")
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
                                       len(token_data.splits["val"]), block, lora=lora is not None,
                                       arch=model_cfg.arch)
    if "block_size" not in overrides and block < min(source_cfg.block_size, FINETUNE_BLOCK):
        notes.insert(0, f"--block-size {block}: the text's {shortest:,}-token split is too short for {FINETUNE_BLOCK}")
    train_cfg, weighted = speaker_weighted(train_cfg, train_overrides, speaker_of(token_data))
    notes += weighted
    train_cfg, fitted = fit_memory(train_cfg, model_cfg, lora, train_overrides, requested["device"] or "auto")
    notes += fitted
    initial = pretrained.model.state_dict()
    runtime = {k: v or "auto" for k, v in requested.items()}
    given = {k for k, v in (train_overrides or {}).items() if v is not None}
    budget = None if given & {"steps", "time_budget_s"} else SCRATCH_BUDGET_S  # a big text: cut, and said so
    if lora is not None:
        pretrained.model = None  # its tensors live on in `initial` alone, which lora_plan empties
        plan = lora_plan(lora, source, pretrained.description, initial, model_cfg, train_cfg, token_data, runtime)
        plan.notes, plan.budget_s = notes, budget
        return plan
    return Plan(model_cfg, train_cfg, token_data, runtime, initial=crop_positions(initial, block), origin=pretrained.description, notes=notes,
                budget_s=budget)


def fit_memory(train_cfg: TrainConfig, model_cfg: ModelConfig, lora: LoraConfig | None, train_overrides: dict | None,
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


def lora_plan(lora, source, origin, state, model_cfg, train_cfg, token_data, runtime) -> Plan:
    """A LoRA run: the source's own tensors become the frozen base (no second copy), the adapters start at
    zero (the recipe chose LoRA's lr)."""
    lora = dataclasses.replace(lora, base=base_source(source), base_fingerprint=fingerprint(state))
    model = shaped(state, model_cfg, origin)
    state.clear()  # the model holds the only references: attach frees each fp32 matrix as its bf16 copy arrives
    attach(model, lora, torch.Generator().manual_seed(train_cfg.seed))
    total = sum(p.numel() for p in model.parameters())
    origin += (f"; LoRA {lora.describe()}: {trainable(model) / 1e6:.2f}M trained parameters "
               f"({100 * trainable(model) / total:.1f}%)")
    return Plan(model_cfg, train_cfg, token_data, runtime, origin=origin, model=model)


def device_for(ddp: Distributed, plan: Plan, requested: dict):
    """This process's device (its own GPU under torchrun); a resumed run's device this machine lacks is one line
    naming --device cpu."""
    try:
        return init_distributed(ddp, plan.runtime["device"])
    except DeviceError:
        if requested["device"] is not None or plan.run_dir is None:
            raise
        raise DeviceError(f"{plan.run_dir} trained on {plan.runtime['device']}, which this machine does not have; "
                          "add --device cpu (or auto) to continue it here.") from None
