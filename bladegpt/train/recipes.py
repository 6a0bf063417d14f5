"""The recipes: a run sized to its text when the user leaves a setting to BladeGPT. From scratch, the model's
shape and dropout (sized_model) and the steps, evaluations and regularisation (sized_to_text); from a
pretrained model, the fine-tune recipe (finetune_config). Each returns the settings, the user's flags winning
over every one, and a line per choice made for the user, to print. Every number is measured in
docs/benchmarks.md."""

from __future__ import annotations

import dataclasses
import math

from bladegpt.config import CLOCK_STEPS, SMALL_TEXT_BYTES, TrainConfig, plural
from bladegpt.lora import LR_SCALE
from bladegpt.train.pacing import MIN_EVAL_INTERVAL


def by_the_clock(chosen: dict) -> bool:
    """Whether the user's train settings let a --time budget alone end the run."""
    return "time_budget_s" in chosen and chosen.get("steps", CLOCK_STEPS) >= CLOCK_STEPS


# Fine-tuning from --init-from, measured on SmolLM2-135M: one pass at 1,024 tokens of context, four evaluations,
# the best kept (docs/benchmarks.md "The fine-tune recipe"; peers in shared/research/finetune.md). A text whose
# split is shorter gets the longest power-of-two context that fits, and a batch of FINETUNE_TOKENS a step.
FINETUNE_BLOCK = 1024
FINETUNE_TOKENS = 1024  # tokens a step: batch = FINETUNE_TOKENS // context
FINETUNE_PASSES = 1.0
FINETUNE_EVALS = 4
FINETUNE_WIDTH = 576  # the width the lr was measured at (SmolLM2-135M); wider models get lr * 576 / width
# A family whose measured lr is not the width rule's, as (lr, the width it was measured at). Gemma 3 270M: the
# rule's 1.2e-4 read officer_k worse than zero-shot after 8 steps (1.215 against 1.153), 3e-5 better at every
# evaluation (1.100 at step 8) (docs/benchmarks/finetune.md "Gemma 3 270M").
FINETUNE_LR_BY_ARCH = {"gemma3": (3e-5, 640)}
# Windows in epochs: random windows read about 63% of the text in a pass (docs/benchmarks.md "The fine-tune recipe").
FINETUNE = dict(lr=1.33e-4, warmup_steps=2, min_lr_ratio=1.0, weight_decay=0.0, beta2=0.95, patience=3,
                sampling="epochs")


def finetune_config(overrides: dict | None, n_embd: int, train_tokens: int, val_tokens: int,
                    block_size: int, lora: bool = False, arch: str = "llama") -> tuple[TrainConfig, list[str]]:
    """The fine-tune recipe sized to the text (FINETUNE_PASSES passes, FINETUNE_EVALS evaluations, the lr
    scaled to the model's width from its family's measured one, and LR_SCALE times that for LoRA's adapters);
    returns the settings (the user's flags override each) and a line per choice made for the user, to print."""
    chosen = {k: v for k, v in (overrides or {}).items() if v is not None}
    batch = chosen.get("batch_size", max(1, FINETUNE_TOKENS // block_size))
    tokens_per_step = batch * block_size
    steps = chosen.get("steps") or min(2000, max(10, round(FINETUNE_PASSES * train_tokens / tokens_per_step)))
    base_lr, width = FINETUNE_LR_BY_ARCH.get(arch, (FINETUNE["lr"], FINETUNE_WIDTH))
    lr = base_lr * width / n_embd * (LR_SCALE if lora else 1)
    defaults = {
        **FINETUNE,
        "lr": lr,
        "batch_size": batch,
        "steps": steps,
        "warmup_steps": min(FINETUNE["warmup_steps"], max(1, steps // 10)),
        "eval_interval": max(1, steps // FINETUNE_EVALS),
        "eval_iters": min(20, max(2, math.ceil(val_tokens / tokens_per_step))),
        "sample_tokens": 60,  # a SmolLM2 eval's sample costs more than its loss on a CPU
    }
    cfg = TrainConfig(**{**defaults, **chosen})
    notes = []
    if "steps" not in chosen and "time_budget_s" not in chosen:
        notes.append(f"--steps {steps}: about {FINETUNE_PASSES} passes over the {train_tokens:,} training tokens "
                     f"at {batch} x {block_size} tokens a step")
    if "sampling" not in chosen:
        notes.append(f"--sampling {cfg.sampling}: each pass reads every window of the text once, in a random order")
    if "lr" not in chosen:
        schedule = ("constant" if cfg.min_lr_ratio == 1 else f"cosine to {cfg.min_lr_ratio:g}x")
        notes.append(f"--lr {lr:.2g} ({schedule}, --min-lr-ratio {cfg.min_lr_ratio:g}"
                     + (f"; about {LR_SCALE}x a full fine-tune's, as LoRA learns best" if lora else "")
                     + f"), warmup {plural(cfg.warmup_steps, 'step')}"
                     + (f", --weight-decay {cfg.weight_decay:g}" if "weight_decay" not in chosen else ""))
    if "eval_interval" not in chosen and by_the_clock(chosen):
        cfg.evals_in_budget = FINETUNE_EVALS
        notes.append(f"evaluating {FINETUNE_EVALS} times over the --time budget on {cfg.eval_iters} batches, keeping "
                     f"the best (--patience {cfg.patience})")
    elif "eval_interval" not in chosen:
        notes.append(f"evaluating every {plural(cfg.eval_interval, 'step')} on {cfg.eval_iters} batches, keeping the best "
                     f"(--patience {cfg.patience})")
    return cfg, notes


# Training from scratch with no flags: sized to the text, with dropout, early stopping ends it
# (docs/benchmarks.md "Does the default run fit the text?").
SCRATCH_PASSES = 50
SCRATCH_DROPOUT = 0.2
SCRATCH_BUDGET_S = 10 * 60  # a run that would take longer is cut to this, and says how to get the rest
SCRATCH_EVALS = 15  # evaluations over a run: patience 3 then stops within a fifth of the run past its best
SCRATCH_WARMUP_SHARE = 1 / 20  # of the run's steps (at least 10 where they are planned, at most the preset's)
# Muon for the blocks' matrices, with weight decay 0.3: better than AdamW at 0.1 on every prose text measured, 66 KB to
# 4 MB; worse only on a synthetic Markov text (0.47 bits per byte of entropy) over 600 steps, so not chosen by size
# (docs/benchmarks/scratch-recipe.md "The recipe beyond two texts"; results/recipe_size.txt).
SCRATCH_OPTIMIZER = "muon"
# The block of a from-scratch run with no flags (issue #26): see BLOCKS' comment for the rows.
SCRATCH_BLOCK = "modern"
# Weight decay three times the usual 0.1 (docs/benchmarks.md "Regularisation on the default path"; Kim et al. 2025).
SCRATCH_WEIGHT_DECAY = 0.3
# Unigram noising of the inputs (Xie et al. 2017; TrainConfig.token_noise), under SMALL_TEXT_BYTES only: a bigger
# text is read a few times within the budget, not 50 (docs/benchmarks.md "Unigram noising").
SCRATCH_TOKEN_NOISE = 0.2

# On a speaker's dataset (prepare --speaker), what the other speakers' lines and the action count in the loss beside
# the speaker's own (train --context-weight; OpenAI's prompt_loss_weight): SmolLM2 fine-tuned on the shipped
# screenplay read K's held-out lines best at 0.3 of the weights measured, 0 (his lines alone) worst
# (docs/benchmarks/voices.md "The context's weight").
SPEAKER_CONTEXT_WEIGHT = 0.3

SMALL_TEXT_SHAPE = dict(n_layer=4, n_head=4, n_embd=192)
SHAPE_FLAGS = ("n_layer", "n_head", "n_embd")


def sized_model(overrides: dict | None, train_bytes: int) -> tuple[dict, list[str]]:
    """The default model's dropout and shape from the text's size; returns the model settings (the
    user's flags win: any shape flag keeps the preset's shape for the rest) and a line per choice."""
    chosen = {k: v for k, v in (overrides or {}).items() if v is not None}
    sized, notes = {}, []
    if "dropout" not in chosen:
        sized["dropout"] = SCRATCH_DROPOUT
        notes.append(f"--dropout {SCRATCH_DROPOUT}: a few MB of text or less is memorised without it")
    if "block" not in chosen:
        sized["block"] = SCRATCH_BLOCK
        notes.append(f"--block {SCRATCH_BLOCK}: RoPE, RMSNorm, QK-norm, SwiGLU and zero-initialised projections "
                     "learnt every text measured better than GPT-2's block; it exports as qwen3")
    if train_bytes < SMALL_TEXT_BYTES and not chosen.keys() & set(SHAPE_FLAGS):
        sized.update(SMALL_TEXT_SHAPE)
        notes.append(f"{SMALL_TEXT_SHAPE['n_layer']} layers x {SMALL_TEXT_SHAPE['n_embd']} wide: on a text this "
                     f"small ({train_bytes / 1e3:,.0f} KB) it learns as well as a larger model, faster")
    return {**sized, **chosen}, notes


def sized_to_text(overrides: dict | None, train_tokens: int, val_tokens: int, tokens_per_step: int,
                  preset_train: dict, train_bytes: int) -> tuple[dict, list[str]]:
    """The default run's steps, evaluation cadence and regularisation from the text's size (tokens, and
    `train_bytes` of training text); returns the train settings (the user's flags win over each) and a line
    per choice, to print."""
    chosen = {k: v for k, v in (overrides or {}).items() if v is not None}
    sized, notes = {}, []
    if "steps" not in chosen and "time_budget_s" not in chosen:
        steps = max(100, math.ceil(SCRATCH_PASSES * train_tokens / tokens_per_step))
        sized["steps"] = steps
        sized["warmup_steps"] = min(preset_train.get("warmup_steps", 100), max(10, int(steps * SCRATCH_WARMUP_SHARE)))
        notes.append(f"--steps {steps:,}: about {SCRATCH_PASSES} passes over the {train_tokens:,} training tokens "
                     "(early stopping ends it at its best)")
    elif "warmup_steps" not in chosen and not by_the_clock(chosen):  # --steps N: warm up over its share of N
        warmup = min(preset_train.get("warmup_steps", 100), max(1, int(chosen["steps"] * SCRATCH_WARMUP_SHARE)))
        if warmup < preset_train.get("warmup_steps", 100):
            sized["warmup_steps"] = warmup
            notes.append(f"warmup {plural(warmup, 'step')}: a twentieth of --steps {chosen['steps']:,}")
    if "optimizer" not in chosen:
        sized["optimizer"] = SCRATCH_OPTIMIZER
        notes.append(f"--optimizer {SCRATCH_OPTIMIZER}: Muon for the blocks' matrices learnt every prose text measured "
                     "(66 KB to 4 MB) better than AdamW, in fewer steps")
    if "weight_decay" not in chosen:
        sized["weight_decay"] = SCRATCH_WEIGHT_DECAY
        notes.append(f"--weight-decay {SCRATCH_WEIGHT_DECAY}: a small text learnt better with more than the usual 0.1")
    if "token_noise" not in chosen and train_bytes < SMALL_TEXT_BYTES:  # a bigger text is read a few times, not 50
        sized["token_noise"] = SCRATCH_TOKEN_NOISE
        notes.append(f"--token-noise {SCRATCH_TOKEN_NOISE}: {SCRATCH_TOKEN_NOISE:.0%} of the input tokens replaced by tokens "
                     "drawn from the text (unigram noising), so the model cannot lean on any one of them")
    steps = chosen.get("steps") or sized.get("steps") or preset_train.get("steps", TrainConfig.steps)
    if "eval_interval" not in chosen:
        sized["eval_interval"] = max(MIN_EVAL_INTERVAL, steps // SCRATCH_EVALS)
    if "eval_iters" not in chosen:  # the val split read about once, never re-read 20 times over
        sized["eval_iters"] = min(20, max(2, math.ceil(val_tokens / tokens_per_step)))
    iters = sized.get("eval_iters", chosen.get("eval_iters"))
    if "warmup_steps" not in chosen and by_the_clock(chosen):
        sized["warmup_share"] = SCRATCH_WARMUP_SHARE
    if "eval_interval" not in chosen and by_the_clock(chosen):
        sized["evals_in_budget"] = SCRATCH_EVALS
        notes.append(f"evaluating {SCRATCH_EVALS} times over the --time budget on {iters} batches ({val_tokens:,} val tokens)")
    else:
        notes.append(f"evaluating every {plural(sized.get('eval_interval', chosen.get('eval_interval')), 'step')} on "
                     f"{iters} batches ({val_tokens:,} val tokens)")
    return {**preset_train, **sized, **chosen}, notes


def speaker_weighted(train_cfg: TrainConfig, overrides: dict | None, speaker: str | None) -> tuple[TrainConfig, list[str]]:
    """A speaker's dataset (`speaker` names them; None: every token is a target) trains their context at
    SPEAKER_CONTEXT_WEIGHT unless --context-weight was given; returns the settings and the line saying so."""
    if speaker is None or (overrides or {}).get("context_weight") is not None:
        return train_cfg, []
    note = (f"--context-weight {SPEAKER_CONTEXT_WEIGHT:g}: the other speakers' lines and the action count "
            f"{SPEAKER_CONTEXT_WEIGHT:g} of a target beside {speaker}'s own, which read best in the measurements")
    return dataclasses.replace(train_cfg, context_weight=SPEAKER_CONTEXT_WEIGHT), [note]
