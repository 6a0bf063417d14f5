"""Model and training configuration: dataclasses, named presets, validation."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields

from bladegpt.errors import UserError


class ConfigError(UserError, ValueError):
    """A setting the user chose cannot work; the message says which and what to do."""


# prepare's BPE vocabulary unless --vocab-size says otherwise: this for big texts, smaller for small
# ones (tokenizer.bpe_vocab_size).
DEFAULT_BPE_VOCAB = 4096
SMALL_TEXT_VOCAB = 3072
# Below this many bytes of training text the default model is narrower and shallower, and its
# vocabulary at most SMALL_TEXT_VOCAB: on officer_k (59 KB) and witcher (140 KB) 4 layers x 192
# followed mini's val curve step for step (officer_k: 2.331 vs 2.330 bpb at step 231) at 2.3x its
# speed: a small text is data-bound, not model-bound (docs/benchmarks.md).
SMALL_TEXT_BYTES = 250_000

ACTIVATIONS = ("gelu", "gelu_tanh", "swiglu", "relu2")
NORMS = ("layernorm", "rmsnorm")
POSITIONS = ("learned", "rope")
# The families a model can compute, as configuration: gpt2 is GPT-2's block (BladeGPT's own models
# too); llama, qwen2 and qwen3 are the Llama block (RMSNorm, RoPE, SwiGLU, grouped heads), qwen2 with
# q/k/v biases, qwen3 with per-head q/k RMSNorm. The name says which exports a model takes.
ARCHS = ("gpt2", "llama", "qwen2", "qwen3")

# The parts of GPT-2's block a from-scratch model may change (issue #26), as ModelConfig settings; `train
# --block` joins them with "+" (rope+rmsnorm) or names a whole block. Sources and measured effects:
# shared/research/finetune.md §3.3; what they do on BladeGPT's texts: docs/benchmarks.md.
BLOCK_CHANGES = {
    "rope": dict(positions="rope"),
    "rmsnorm": dict(norm="rmsnorm"),
    "qk-norm": dict(qk_norm=True),
    "swiglu": dict(activation="swiglu"),
    "relu2": dict(activation="relu2"),
    "zero-init": dict(zero_init=True),
    "softcap": dict(logit_softcap=15.0),  # modded-nanogpt's 15 (2025-01-04_SoftCap)
}
# "modern" is the bundle that exports (as qwen3), and the default from scratch (SCRATCH_BLOCK): it learnt
# officer_k 0.016 and 0.050 bpb better than GPT-2's block (two seeds) and witcher 0.005 and 0.039, at 1.0-1.2x
# the time a step side by side, reaching GPT-2's best sooner in each run (docs/benchmarks.md). Alone on
# officer_k only RMSNorm and the soft-cap gained more than 0.01; with the soft-cap the bundle learnt 0.017
# and 0.011 more, but no export family computes a soft-cap.
BLOCKS = {"gpt2": (), "modern": ("rope", "rmsnorm", "qk-norm", "swiglu", "zero-init")}


def block_settings(spec: str, n_embd: int) -> dict:
    """ModelConfig settings for `--block` (names in BLOCKS or BLOCK_CHANGES joined with "+"). A block the Llama
    family computes (RoPE, RMSNorm, SwiGLU, no soft-cap or ReLU²) is labelled llama, or qwen3 with QK-norm,
    so it exports as one; SwiGLU's width is 8/3 of n_embd (Llama's: GPT-2's MLP parameter count)."""
    names = tuple(n for part in spec.split("+") for n in BLOCKS.get(part, (part,)))  # modern+softcap: the bundle and one more
    unknown = [n for n in names if n not in BLOCK_CHANGES]
    if unknown:
        raise ConfigError(f"--block: unknown {unknown[0]!r}; use {' or '.join(BLOCKS)}, or changes joined with +: "
                          f"{', '.join(BLOCK_CHANGES)}.")
    if {"swiglu", "relu2"} <= set(names):
        raise ConfigError("--block: swiglu and relu2 are both MLP activations; choose one.")
    settings = {k: v for n in names for k, v in BLOCK_CHANGES[n].items()}
    if settings.get("activation") == "swiglu":
        settings["intermediate_size"] = max(64, round(8 * n_embd / 3 / 64) * 64)
    if {"rope", "rmsnorm", "swiglu"} <= set(names) and "softcap" not in names:
        settings["arch"] = "qwen3" if "qk-norm" in names else "llama"
    return settings


def padded_vocab(n: int, multiple: int = 64) -> int:
    """Round the vocabulary up: matmuls run faster on multiples of 64 (nanoGPT's 50304). At least one
    row is always spare: never a target, training teaches the model never to predict it, and a GGUF
    export gives that row to the end-of-text token llama.cpp needs (export/gguf.py)."""
    return (n + multiple) // multiple * multiple


@dataclass
class ModelConfig:
    """One decoder-only transformer, GPT-2's or the Llama family's, as data (litgpt's way): every field
    is saved with a checkpoint, and a field missing from an old checkpoint means GPT-2's block."""

    vocab_size: int = 50304  # GPT-2's 50257 padded up to a multiple of 64
    block_size: int = 256
    n_layer: int = 6
    n_head: int = 6
    n_embd: int = 384
    dropout: float = 0.0
    bias: bool = False  # GPT-2 has biases in every Linear and LayerNorm; our own models train without
    activation: str = "gelu"  # "gelu" (exact, erf), "gelu_tanh" (GPT-2's, HF's "gelu_new"), "swiglu" (SiLU-gated
    # MLP), "relu2" (ReLU², relu(x)^2: So et al. 2021, modded-nanogpt)
    layer_norm_eps: float = 1e-5  # the norm's epsilon, LayerNorm's or RMSNorm's
    arch: str = "gpt2"
    norm: str = "layernorm"  # or "rmsnorm" (Zhang & Sennrich 2019; computed in fp32, as Llama)
    positions: str = "learned"  # or "rope" (Su et al. 2021, HF's half-split layout)
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None  # Llama 3's {"rope_type": "llama3", "factor", "low_freq_factor", ...}
    n_kv_head: int | None = None  # grouped-query attention (Ainslie et al. 2023); None: as many as n_head
    head_size: int | None = None  # None: n_embd // n_head; Qwen3 sets its own (128 at 1024 / 16 heads)
    intermediate_size: int | None = None  # the MLP's width; None: 4 * n_embd
    qkv_bias: bool = False  # biases on q, k, v only (Qwen2)
    qk_norm: bool = False  # RMSNorm over each head's q and k before RoPE (Qwen3)
    tie_embeddings: bool = True  # the output head is the token embedding (GPT-2, SmolLM2, Llama 3.2)
    context_length: int | None = None  # RoPE: the longest context the weights learned, kept when a fine-tune
    # trains on a shorter block_size, so exports offer the source's context; None: block_size
    zero_init: bool = False  # the residual output projections (c_proj) start at zero (modded-nanogpt, nanochat)
    logit_softcap: float | None = None  # logits = cap * tanh(logits / cap) (Gemma 2; modded-nanogpt's 15)

    def __post_init__(self) -> None:
        for name, value, allowed in (("activation", self.activation, ACTIVATIONS), ("norm", self.norm, NORMS),
                                     ("positions", self.positions, POSITIONS), ("arch", self.arch, ARCHS)):
            if value not in allowed:
                raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {value!r}.")
        if not 0 < self.layer_norm_eps < 1:
            raise ConfigError(f"layer_norm_eps must be a small positive number, got {self.layer_norm_eps}.")
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "kv_heads", "head_dim", "mlp_size"):
            if getattr(self, name) < 1:
                flag = f" (--{name.replace('_', '-')})" if name in ("block_size", "n_layer", "n_head", "n_embd") else ""
                raise ConfigError(f"{name}{flag} must be at least 1, got {getattr(self, name)}.")
        if self.head_size is None and self.n_embd % self.n_head:
            raise ConfigError(
                f"n_embd ({self.n_embd}) must be a multiple of n_head ({self.n_head}); "
                "change --n-embd or --n-head."
            )
        if self.n_head % self.kv_heads:
            raise ConfigError(f"n_head ({self.n_head}) must be a multiple of n_kv_head ({self.kv_heads}).")
        if self.positions == "rope" and self.head_dim % 2:
            raise ConfigError(f"RoPE needs an even head size, got {self.head_dim}.")
        if not 0.0 <= self.dropout < 1.0:  # also refuses NaN
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}.")
        if self.logit_softcap is not None and not 0 < self.logit_softcap < math.inf:
            raise ConfigError(f"logit_softcap must be a positive number or None (no cap), got {self.logit_softcap}.")

    @property
    def head_dim(self) -> int:
        return self.head_size or self.n_embd // self.n_head

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def mlp_size(self) -> int:
        return self.intermediate_size or 4 * self.n_embd

    def attention_shape(self, batch: int) -> tuple[int, int, int, int]:
        """(B, nh, T, hs) of one forward pass over `batch` sequences: what attention is timed at."""
        return (batch, self.n_head, self.block_size, self.head_dim)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


OPTIMIZERS = ("adamw", "muon")
MAX_SEED = 2**63 - 1  # torch seeds are 64-bit; the trainer adds the rank and 1 to it


def check_seed(seed: int) -> None:
    if not 0 <= seed <= MAX_SEED - 1024:
        raise ConfigError(f"--seed must be between 0 and {MAX_SEED - 1024}, got {seed}.")


CLOCK_STEPS = 10**9  # `--time` without `--steps`: the clock ends the run, not the step count


SAMPLINGS = ("random", "epochs")


def plural(n: int, noun: str) -> str:
    """'1 step', '2 steps': a count in words a person would write."""
    return f"{n:,} {noun}" if n == 1 else f"{n:,} {noun}s"


def by_the_clock(chosen: dict) -> bool:
    """Whether the user's train settings let a --time budget alone end the run."""
    return "time_budget_s" in chosen and chosen.get("steps", CLOCK_STEPS) >= CLOCK_STEPS


@dataclass
class TrainConfig:
    steps: int = 2000
    time_budget_s: float | None = None  # when set, the schedule follows the clock
    batch_size: int = 32  # sequences per optimizer step, over all micro-batches and processes
    accum: int = 1  # micro-batches each step's batch is split into: same result, less memory
    lr: float = 1e-3
    optimizer: str = "adamw"  # or "muon": Muon for the blocks' matrices, AdamW for the rest
    muon_lr: float = 0.05  # Muon's peak lr (Keller Jordan's scale); the schedule scales it with lr
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 100
    weight_decay: float = 0.1
    sampling: str = "random"  # "random" windows (nanoGPT's) or "epochs": each pass reads every window once
    ema: float = 0.0  # decay of an average of the weights that is evaluated and kept as best; 0 = off
    token_noise: float = 0.0  # share of input tokens replaced by draws from the text's unigram frequencies
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0
    eval_interval: int = 250
    # Under --time with no --eval-interval: how many evaluations the budget gets; the interval is set from
    # the timed first steps (trainer.pace_evaluations), since the steps the clock allows are not known before.
    evals_in_budget: int | None = None
    # Under --time with no --warmup-steps: warmup is this share of the steps the clock allows, set from the
    # same timing (a preset's 100 steps of warmup would be the whole of a one-minute run).
    warmup_share: float | None = None
    eval_iters: int = 20
    patience: int = 3  # stop after this many evaluations without a better val loss; 0 = never
    log_interval: int = 10
    sample_tokens: int = 120  # printed at each eval so the voice can be watched; 0 = off
    seed: int = 1337
    activation_checkpointing: bool = False  # recompute each block's activations in backward: less memory

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "accum", "eval_interval", "eval_iters", "log_interval"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}.")
        if self.patience < 0:
            raise ConfigError(f"--patience must be 0 (off) or a number of evaluations, got {self.patience}.")
        if self.batch_size % self.accum:
            options = ", ".join(str(n) for n in range(1, self.batch_size + 1) if self.batch_size % n == 0)
            raise ConfigError(
                f"--accum {self.accum} does not divide the batch of {plural(self.batch_size, 'sequence')}; "
                f"use an --accum that does ({options}) or a --batch-size that --accum divides."
            )
        if not (0 < self.lr < math.inf and 0 < self.muon_lr < math.inf):
            raise ConfigError(f"learning rates must be positive, got lr {self.lr} and muon_lr {self.muon_lr}.")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"Unknown optimizer {self.optimizer!r}; use one of: {', '.join(OPTIMIZERS)}.")
        if not 0 <= self.min_lr_ratio <= 1:  # also refuses NaN
            raise ConfigError(f"--min-lr-ratio must be in [0, 1] (1 keeps the lr constant), got {self.min_lr_ratio}.")
        if not 0 <= self.weight_decay < math.inf:
            raise ConfigError(f"--weight-decay must be 0 or a positive number, e.g. 0.1, got {self.weight_decay}.")
        if self.sampling not in SAMPLINGS:
            raise ConfigError(f"Unknown --sampling {self.sampling!r}; use one of: {', '.join(SAMPLINGS)}.")
        if not 0 <= self.token_noise < 1:  # also refuses NaN
            raise ConfigError(f"--token-noise must be a share of the input tokens in [0, 1), e.g. 0.1, got {self.token_noise}.")
        if not (self.ema == 0 or 0 < self.ema < 1):
            raise ConfigError(f"--ema must be 0 (off) or a decay between 0 and 1, e.g. 0.95, got {self.ema}.")
        if self.time_budget_s is not None and not (0 < self.time_budget_s < math.inf):
            raise ConfigError("--time must be a positive, finite duration, e.g. --time 10m.")
        check_seed(self.seed)

    @property
    def micro_batch(self) -> int:
        """Sequences per forward pass: the step's batch split `accum` ways."""
        return self.batch_size // self.accum

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class Preset:
    description: str
    model: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)


PRESETS: dict[str, Preset] = {
    "nano": Preset(
        "nanoGPT's CPU shape: 4 layers, 128 wide, block 64, 2000 steps; 1-2 minutes on a laptop CPU.",
        model=dict(n_layer=4, n_head=4, n_embd=128, block_size=64),
        train=dict(batch_size=12, lr=1e-3, steps=2000, warmup_steps=100),
    ),
    "mini": Preset(
        "The default: 6 layers, 256 wide, block 128, 250 steps; about 5 minutes on a 2-core CPU.",
        # Sized for a ~150 KB corpus: on witcher.txt val loss bottoms out near step 200-250
        # (~1M tokens, ~20 passes over the text); more steps only memorise it. Dropout 0.1
        # helped val loss a little but cost 40% more time per step on a CPU.
        model=dict(n_layer=6, n_head=4, n_embd=256, block_size=128),
        train=dict(batch_size=32, lr=1.5e-3, steps=250, warmup_steps=25, eval_interval=50),
    ),
    "small": Preset(
        "nanoGPT's Shakespeare GPU shape: 6 layers, 384 wide, block 256, dropout 0.2.",
        model=dict(n_layer=6, n_head=6, n_embd=384, block_size=256, dropout=0.2),
        train=dict(batch_size=64, lr=1e-3, steps=5000, warmup_steps=100),
    ),
    "gpt2": Preset(
        "GPT-2 124M: 12 layers, 768 wide, block 1024; wants a GPU.",
        model=dict(n_layer=12, n_head=12, n_embd=768, block_size=1024),
        train=dict(batch_size=16, lr=6e-4, steps=5000, warmup_steps=200, beta2=0.95),
    ),
}
DEFAULT_PRESET = "mini"

# Fine-tuning from --init-from, chosen by measurement on SmolLM2-135M (docs/benchmarks.md, "The
# fine-tune recipe"). Peers range from 2e-5 (TRL) to SmolLM2's own 1e-3 SFT and 1-5 passes
# (../shared/research/finetune.md); on a 60 KB text the model starts copying within two or three passes,
# so the recipe takes FINETUNE_PASSES passes, evaluates FINETUNE_EVALS times and keeps the best (early
# stopping ends a run that has turned). Context decides a good part of the number: SmolLM2 reads officer_k
# at 1.32 bpb with 256 tokens of context, 1.27 with 512 and 1.22 with 1,024; fine-tuned with 1,024 tokens a
# step at a constant 1.33e-4 (seed 1), 4 x 256 stopped at 1.174, 2 x 512 at 1.150 (step 20, 1.2 passes),
# 1 x 1,024 at 1.136 (step 12, 0.7 passes, then 1.140, 1.164): one pass with four evaluations keeps that
# best and ends sooner. (A cosine from 1e-4 reached 1.138 where the constant 1.33e-4 reached 1.131 at
# 2 x 512, seed 1337; from 4e-4, 1.207 at step 8, then worse.) Attention's cost at 1,024 is still small
# beside the weights' (+26% FLOPs a token at SmolLM2-135M's width). A text whose split is shorter gets the
# longest power-of-two context that fits, and a batch that keeps FINETUNE_TOKENS tokens a step.
FINETUNE_BLOCK = 1024
FINETUNE_TOKENS = 1024  # tokens a step: batch = FINETUNE_TOKENS // context
FINETUNE_PASSES = 1.0
FINETUNE_EVALS = 4
FINETUNE_WIDTH = 576  # the width the lr was measured at (SmolLM2-135M); wider models get lr * 576 / width
# Windows in epochs: one pass of random windows (nanoGPT's get_batch, with replacement) reads about 63% of
# the text, some of it twice; an epoch reads all of it once. On officer_k (one pass, seeds 1 and 2) 1.090 and
# 1.084 bpb against random windows' 1.127 and 1.118.
FINETUNE = dict(lr=1.33e-4, warmup_steps=2, min_lr_ratio=1.0, weight_decay=0.0, beta2=0.95, patience=3,
                sampling="epochs")


def finetune_config(overrides: dict | None, n_embd: int, train_tokens: int, val_tokens: int,
                    block_size: int) -> tuple[TrainConfig, list[str]]:
    """The fine-tune recipe sized to the text (FINETUNE_PASSES passes, FINETUNE_EVALS evaluations, the lr
    scaled to the model's width); returns the settings (the user's flags override each) and a line per
    choice made for the user, to print."""
    chosen = {k: v for k, v in (overrides or {}).items() if v is not None}
    batch = chosen.get("batch_size", max(1, FINETUNE_TOKENS // block_size))
    tokens_per_step = batch * block_size
    steps = chosen.get("steps") or min(2000, max(10, round(FINETUNE_PASSES * train_tokens / tokens_per_step)))
    lr = FINETUNE["lr"] * FINETUNE_WIDTH / n_embd
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
        notes.append(f"--lr {lr:.2g} ({schedule}, --min-lr-ratio {cfg.min_lr_ratio:g}), warmup {plural(cfg.warmup_steps, 'step')}"
                     + (f", --weight-decay {cfg.weight_decay:g}" if "weight_decay" not in chosen else ""))
    if "eval_interval" not in chosen and by_the_clock(chosen):
        cfg.evals_in_budget = FINETUNE_EVALS
        notes.append(f"evaluating {FINETUNE_EVALS} times over the --time budget on {cfg.eval_iters} batches, keeping "
                     f"the best (--patience {cfg.patience})")
    elif "eval_interval" not in chosen:
        notes.append(f"evaluating every {plural(cfg.eval_interval, 'step')} on {cfg.eval_iters} batches, keeping the best "
                     f"(--patience {cfg.patience})")
    return cfg, notes


# Training from scratch with no flags: sized to the text (measured, docs/benchmarks.md "Does the
# default run fit the text?"). Without dropout officer_k's val loss bottomed out after ~23 passes
# (2.38 bpb); with dropout 0.2 it was still improving at 53 (2.335); early stopping ends it anyway.
SCRATCH_PASSES = 50
SCRATCH_DROPOUT = 0.2
SCRATCH_BUDGET_S = 10 * 60  # a run that would take longer is cut to this, and says how to get the rest
SCRATCH_EVALS = 15  # evaluations over a run: patience 3 then stops within a fifth of the run past its best
SCRATCH_WARMUP_SHARE = 1 / 20  # of the run's steps (at least 10 where they are planned, at most the preset's)
MIN_EVAL_INTERVAL = 10  # a from-scratch run (or one cut to its time budget) evaluates at most every 10 steps
# Muon for the blocks' matrices: on witcher 1.972 bpb where AdamW reached 2.011 (2,048 ids), 1.921 at
# 3,072 ids; on officer_k 2.148 where AdamW reached 2.139 (within an evaluation's noise), in half the
# steps (docs/benchmarks.md). Beyond those two texts (issue #36; mini's shape, 150 steps, seed 1337,
# results/recipe_size.txt) Muon with weight decay 0.3 against AdamW at 0.1: tinyshakespeare (1.1 MB) 2.417 against
# 2.599, the King James Bible (4.1 MB) 1.898 against 2.020, a Markov text of entropy rate 0.473 (2 MB,
# scripts/markov_text.py) 0.646 against 0.663; on the last the gap was closing (0.08 at step 50).
SCRATCH_OPTIMIZER = "muon"
# The block of a from-scratch run with no flags (issue #26): see BLOCKS' comment for the rows.
SCRATCH_BLOCK = "modern"
# Weight decay three times the usual 0.1 (AdamW's matrices and, decoupled, Muon's): officer_k 2.147 and 2.141
# bpb against 2.158 and 2.153 (seeds 1337, 1), witcher 1.939 and 1.945 against 1.944 and 1.954 (1337, 1); 0.6 no better,
# 1.0 worse (docs/benchmarks.md, "Regularisation on the default path"). Kim et al. 2025 found the best decay
# for data-limited pre-training far above 0.1.
SCRATCH_WEIGHT_DECAY = 0.3
# Unigram noising of the inputs (Xie et al. 2017; TrainConfig.token_noise): a fifth of the input tokens replaced by
# draws from the text. On top of the rest of the default, officer_k 2.090 and 2.081 bpb against 2.147 and 2.141
# (seeds 1337, 1; 0.1: 2.117, 2.099), witcher 1.895 and 1.892 against 1.939 and 1.945 (docs/benchmarks.md, "Unigram
# noising"). Only under SMALL_TEXT_BYTES: a bigger text is read a few times within the time budget, not 50.
SCRATCH_TOKEN_NOISE = 0.2

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
        notes.append(f"--optimizer {SCRATCH_OPTIMIZER}: Muon for the blocks' matrices learnt every text measured "
                     "(66 KB to 4 MB) as well as AdamW alone or better, in fewer steps")
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


def from_preset(
    name: str, model_overrides: dict | None = None, train_overrides: dict | None = None
) -> tuple[ModelConfig, TrainConfig]:
    """Build both configs from a named preset, then apply the user's overrides (None = keep)."""
    if name not in PRESETS:
        raise ConfigError(f"Unknown preset '{name}'; choose one of: {', '.join(PRESETS)}.")
    preset = PRESETS[name]
    model = {**preset.model, **{k: v for k, v in (model_overrides or {}).items() if v is not None}}
    if "block" in model:
        model.update(block_settings(model.pop("block"), model.get("n_embd", ModelConfig.n_embd)))
    train = {**preset.train, **{k: v for k, v in (train_overrides or {}).items() if v is not None}}
    return ModelConfig(**model), TrainConfig(**train)


def parse_duration(text: str) -> float:
    """Seconds from '90', '90s', '10m', '1.5h'."""
    units = {"s": 1, "m": 60, "h": 3600}
    text = text.strip().lower()
    scale = units.get(text[-1:], None)
    number = text[:-1] if scale else text
    try:
        seconds = float(number) * (scale or 1)
    except ValueError:
        raise ConfigError(f"Cannot read the duration '{text}'; write it like 90s, 10m or 1.5h.") from None
    if not 0 < seconds < math.inf:
        raise ConfigError(f"The duration must be positive and finite, got '{text}'; write it like 90s, 10m or 1.5h.")
    return seconds
