"""Model and training configuration: the schema (dataclasses, validation, named presets, the --block grammar);
the recipes that size a run to its text are train/recipes.py."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields

from bladegpt.errors import ConfigError


# The default against loops (issue #41, docs/benchmarks/voice-report.md): on a SmolLM2-135M fine-tune on officer_k,
# 24 seeds, 1.1 took the samples looping (over 10% of their word 4-grams repeated) from 9 to 0 and their style
# distance from the held-out text from 1.06 to 0.76 (a from-scratch witcher model: 1.02 to 0.83), copying nothing;
# llama.cpp's DRY at 0.8 did less (2 looping, 1.00). 1 turns it off. The default of `sample` and of a run's
# evaluation samples, what was measured; not of chat or serve, whose frames repeat their own turn-ending tokens
# (a closing quote, a blank line) every turn, which a penalty over the whole conversation would push down.
REPETITION_PENALTY = 1.1


# Below this many bytes of training text the default model is narrower and shallower, and its
# vocabulary at most tokenizer/bpe.py's SMALL_TEXT_VOCAB: on officer_k (59 KB) and witcher (140 KB) 4 layers x 192
# followed mini's val curve step for step (officer_k: 2.331 vs 2.330 bpb at step 231) at 2.3x its
# speed: a small text is data-bound, not model-bound (docs/benchmarks.md).
SMALL_TEXT_BYTES = 250_000

ACTIVATIONS = ("gelu", "gelu_tanh", "swiglu", "geglu", "relu2")
GATED = ("swiglu", "geglu")  # the MLPs whose first matmul gives a gate and an up projection
NORMS = ("layernorm", "rmsnorm")
POSITIONS = ("learned", "rope")
# The families a model can compute, as configuration: gpt2 is GPT-2's block (BladeGPT's own models
# too); llama, qwen2 and qwen3 are the Llama block (RMSNorm, RoPE, SwiGLU, grouped heads), qwen2 with
# q/k/v biases, qwen3 with per-head q/k RMSNorm; gemma3 is Gemma 3's (sandwich norms, GeGLU, scaled embeddings,
# sliding-window layers with a RoPE base of their own). The name says which exports a model takes.
ARCHS = ("gpt2", "llama", "qwen2", "qwen3", "gemma3")

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
    # MLP), "geglu" (tanh-GELU-gated MLP, Gemma's), "relu2" (ReLU², relu(x)^2: So et al. 2021, modded-nanogpt)
    layer_norm_eps: float = 1e-5  # the norm's epsilon, LayerNorm's or RMSNorm's
    arch: str = "gpt2"
    norm: str = "layernorm"  # or "rmsnorm" (Zhang & Sennrich 2019; computed in fp32, as Llama)
    positions: str = "learned"  # or "rope" (Su et al. 2021, HF's half-split layout)
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None  # Llama 3's {"rope_type": "llama3", "factor", "low_freq_factor", ...}, or
    # {"rope_type": "linear", "factor"} (positions divided by factor: Gemma 3 4B and up, on its full-attention layers)
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
    sandwich_norm: bool = False  # a norm on the attention's and the MLP's outputs too, before the residual add (Gemma 2/3)
    scale_embeddings: bool = False  # token embeddings times sqrt(n_embd), in the weights' dtype (Gemma)
    query_pre_attn_scalar: int | None = None  # attention scores scaled by its -1/2 power (Gemma); None: head_dim
    sliding_window: int | None = None  # keys a sliding layer's query sees, itself included (Gemma 3: 512)
    sliding_layers: tuple[int, ...] = ()  # the layers attending over sliding_window only (Gemma 3: 5 of every 6)
    rope_local_theta: float | None = None  # RoPE base of the sliding layers, unscaled (Gemma 3's rope_local_base_freq)

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
        self.sliding_layers = tuple(self.sliding_layers)  # a list once read back from JSON
        if self.sliding_layers and not (self.sliding_window and self.sliding_window >= 1):
            raise ConfigError(f"sliding layers need a sliding_window of at least 1 token, got {self.sliding_window}.")
        if any(not 0 <= i < self.n_layer for i in self.sliding_layers):
            raise ConfigError(f"sliding_layers must be layer numbers below n_layer ({self.n_layer}), "
                              f"got {list(self.sliding_layers)}.")
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
    # On a speaker's dataset (prepare --speaker): what a context token's loss counts for beside a target's 1
    # (0: the speaker's lines alone are trained, as TRL's completion-only loss; OpenAI's prompt_loss_weight)
    context_weight: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0
    eval_interval: int = 250
    # Under --time with no --eval-interval: how many evaluations the budget gets; the interval is set from
    # the timed first steps (train/pacing.py's Pacer.pace), since the steps the clock allows are not known before.
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
        if self.warmup_steps < 0:  # a negative one started the cosine part-way down, without a word
            raise ConfigError(f"--warmup-steps must be 0 (none) or a number of steps, got {self.warmup_steps}.")
        if self.sample_tokens < 0:
            raise ConfigError(f"--sample-tokens must be 0 (no sample) or a number of tokens, got {self.sample_tokens}.")
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
        if not 0 <= self.context_weight <= 1:  # also refuses NaN
            raise ConfigError(f"--context-weight must be in [0, 1] (0: the speaker's lines only), got {self.context_weight}.")
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
