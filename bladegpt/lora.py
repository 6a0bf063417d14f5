"""LoRA (Hu et al. 2021, arXiv 2106.09685): a frozen base model and small trained adapters on the blocks' linears.

Each adapted linear computes W x + b + (alpha / rank) * B A dropout(x), with A (rank, in) Kaiming-uniform and B
(out, rank) zero, as peft initialises them, so training starts exactly at the base model. Only A and B get
gradients and optimizer state; the base's block matrices may sit in bf16 (half the memory) and are cast up to the
input's dtype one matrix at a time for the matmul (this AVX2 CPU has no bf16 matmul units).

A fused linear (c_attn = q;k;v, SwiGLU's c_fc = gate;up) gets one adapter: it is exactly one adapter per projection
sharing A, with B's rows split (export/peft.py writes it so).

Written here rather than with peft's `inject_adapter_in_model`: peft imports transformers (5 s here, on every
`sample` of a LoRA run), its wrapper calls the base layer in the base's dtype (a bf16 base on a CPU without bf16
units wants the cast-up above), it renames the base weights (`.base_layer.weight`) and its low-level API has no
merge or save; the math is a dozen lines. The files written follow peft's layout, and tests load them with peft.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from bladegpt.errors import ConfigError
from bladegpt.model import BLOCK_MATRICES, GPT

TARGETS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")  # every linear of a block
BASE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# Peers' LoRA on small models (shared/research/finetune.md §1.2): rank 16 on all linears (unsloth, axolotl),
# alpha 2 x rank (axolotl, smollm, LLaMA-Factory; Biderman et al. 2024), dropout 0.05 on small data (axolotl,
# litgpt, smollm, smol-course); lr about 10x full fine-tuning's (Schulman et al. 2025, "LoRA Without Regret").
RANK, ALPHA, DROPOUT = 16, 32.0, 0.05
LR_SCALE = 10
FINGERPRINT_VALUES = 4096  # values read from each tensor for the base's fingerprint


@dataclass
class LoraConfig:
    """One run's adapters, saved with each checkpoint: their shape, and the base model they fit."""

    rank: int = RANK
    alpha: float = ALPHA
    dropout: float = DROPOUT
    targets: tuple[str, ...] = TARGETS
    base_dtype: str = "bf16"  # the frozen block matrices: "bf16" (half the memory) or "fp32"
    base: str | None = None  # the --init-from source (a path made absolute)
    base_fingerprint: str | None = None  # of its weights as loaded (fingerprint())

    def __post_init__(self) -> None:
        self.targets = tuple(self.targets)
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ConfigError(f"--lora-rank must be a whole number of at least 1, got {self.rank}; 16 is usual.")
        if not 0 < self.alpha < math.inf:
            raise ConfigError(f"--lora-alpha must be positive, got {self.alpha}; 2 x rank is usual.")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"--lora-dropout must be in [0, 1), got {self.dropout}.")
        unknown = [t for t in self.targets if t not in TARGETS]
        if unknown or not self.targets:
            raise ConfigError(f"--lora-targets takes a comma-separated list of {', '.join(TARGETS)}; "
                              f"got {','.join(self.targets) or 'nothing'}.")
        if self.base_dtype not in BASE_DTYPES:
            raise ConfigError(f"--lora-base-dtype must be one of {', '.join(BASE_DTYPES)}, got {self.base_dtype!r}.")

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "targets": list(self.targets)}

    @classmethod
    def from_dict(cls, data: dict) -> LoraConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def describe(self) -> str:
        return (f"rank {self.rank}, alpha {self.alpha:g}, dropout {self.dropout:g} on "
                f"{', '.join(self.targets)}; base matrices in {self.base_dtype}")


def lora_config(enabled: bool, rank: int | None = None, alpha: float | None = None, dropout: float | None = None,
                targets: str | None = None, base_dtype: str | None = None) -> LoraConfig | None:
    """The --lora flags as a LoraConfig (None without --lora); a --lora-* flag without --lora is a ConfigError."""
    given = {k: v for k, v in dict(rank=rank, alpha=alpha, dropout=dropout, targets=targets,
                                   base_dtype=base_dtype).items() if v is not None}
    if not enabled:
        if given:
            flags = ", ".join(f"--lora-{k.replace('_', '-')}" for k in given)
            raise ConfigError(f"{flags} shape{'s' if len(given) == 1 else ''} LoRA adapters; add --lora "
                              f"(with --init-from) or drop {flags}.")
        return None
    if "targets" in given:
        given["targets"] = tuple(t.strip() for t in given["targets"].split(",") if t.strip())
    if "alpha" not in given and "rank" in given:
        given["alpha"] = 2.0 * given["rank"]  # alpha = 2 x rank unless set
    return LoraConfig(**given)


class FrozenLinear(nn.Linear):
    """A frozen nn.Linear whose weight may be stored in a lower precision than it computes in."""

    def __init__(self, base: nn.Linear, dtype: torch.dtype):
        nn.Module.__init__(self)  # the base's tensors, not new ones
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = nn.Parameter(base.weight.detach().to(dtype), requires_grad=False)
        self.bias = None if base.bias is None else nn.Parameter(base.bias.detach(), requires_grad=False)

    def base_forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight.dtype == x.dtype or torch.is_autocast_enabled(x.device.type):
            return F.linear(x, self.weight, self.bias)
        return _CastUpLinear.apply(x, self.weight, self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base_forward(x)

    def merged_weight(self) -> torch.Tensor:
        return self.weight.detach().float()


class LoRALinear(FrozenLinear):
    """y = W x + b + (alpha / rank) * B A dropout(x): W, b frozen; A (rank, in), B (out, rank) trained, in fp32."""

    def __init__(self, base: nn.Linear, cfg: LoraConfig, generator: torch.Generator | None = None):
        super().__init__(base, BASE_DTYPES[cfg.base_dtype])
        self.scaling = cfg.scaling
        self.lora_A = nn.Parameter(torch.empty(cfg.rank, self.in_features, device=self.weight.device))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, cfg.rank, device=self.weight.device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5), generator=generator)  # peft's, and nn.Linear's
        self.lora_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update = F.linear(F.linear(self.lora_dropout(x), self.lora_A.to(x.dtype)), self.lora_B.to(x.dtype))
        return self.base_forward(x) + self.scaling * update

    def merged_weight(self) -> torch.Tensor:
        return self.weight.detach().float() + self.scaling * (self.lora_B.detach().float() @ self.lora_A.detach().float())


class _CastUpLinear(torch.autograd.Function):
    """x W^T + b with a frozen low-precision W cast up to x's dtype; only W itself is kept for the backward
    pass, so the cast copy lives one matmul long instead of the whole step."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(weight)
        return F.linear(x, weight.to(x.dtype), None if bias is None else bias.to(x.dtype))

    @staticmethod
    def backward(ctx, grad):
        (weight,) = ctx.saved_tensors
        return grad @ weight.to(grad.dtype), None, None


def _block_linears(model: GPT):
    """(parent module, attribute, dotted target name) for every linear of every block."""
    for block in model.transformer.h:
        for target in TARGETS:
            parent_name, attr = target.split(".")
            yield getattr(block, parent_name), attr, target


def attach(model: GPT, cfg: LoraConfig, generator: torch.Generator | None = None) -> GPT:
    """Freeze `model` and give it cfg's adapters, in place; the blocks' matrices move to cfg.base_dtype.
    The model remembers cfg (model.lora), which is what checkpoints save with the adapters."""
    for p in model.parameters():
        p.requires_grad_(False)
    dtype = BASE_DTYPES[cfg.base_dtype]
    for parent, attr, target in _block_linears(model):
        base = getattr(parent, attr)
        setattr(parent, attr, LoRALinear(base, cfg, generator) if target in cfg.targets else FrozenLinear(base, dtype))
        del base  # the fp32 matrix goes as its bf16 copy arrives: one model's worth of memory at a time
    model.lora = cfg
    return model


def merge(model: GPT) -> GPT:
    """The plain model that computes what the adapted one does, in place: W + (alpha / rank) B A in fp32
    (what `export` writes, and what `sample` and `chat` run)."""
    for parent, attr, _ in _block_linears(model):
        layer = getattr(parent, attr)
        if not isinstance(layer, FrozenLinear):
            continue
        plain = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None, device="meta")
        plain.weight = nn.Parameter(layer.merged_weight())
        if layer.bias is not None:
            plain.bias = nn.Parameter(layer.bias.detach().float())
        setattr(parent, attr, plain)
    model.requires_grad_(True)
    model.__dict__.pop("lora", None)
    return model


def adapter_state(model: GPT) -> dict[str, torch.Tensor]:
    """The trained tensors alone, by BladeGPT's names (transformer.h.N.attn.c_attn.lora_A ...)."""
    return {name: p.detach().cpu().contiguous() for name, p in model.named_parameters() if ".lora_" in name}


def load_adapters(model: GPT, tensors: dict[str, torch.Tensor]) -> None:
    """Copy saved adapters into an adapted model, in place (the optimizer keeps holding the same tensors);
    a RuntimeError naming the first mismatch when names or shapes differ."""
    params = dict(model.named_parameters())
    expected = {name for name in params if ".lora_" in name}
    if set(tensors) != expected:
        odd = sorted(set(tensors) ^ expected)
        raise RuntimeError(f"its adapters do not fit the model ({odd[0]})")
    with torch.no_grad():
        for name, t in tensors.items():
            if params[name].shape != t.shape:
                raise RuntimeError(f"{name} is {tuple(t.shape)}, the model's {tuple(params[name].shape)}")
            params[name].copy_(t)


def trainable(model: GPT) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def fingerprint(state: dict[str, torch.Tensor], matrices: torch.dtype | None = None) -> str:
    """A short hash of a model's weights as loaded (names, shapes, and FINGERPRINT_VALUES evenly spaced values
    of each tensor): cheap on a 1.7B model, and it changes when the model is retrained, requantized or swapped.
    `matrices` rounds the blocks' matrices' values first: an fp32 load's hash as a load in that dtype has it."""
    digest = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().reshape(-1)
        sample = t[:: max(1, t.numel() // FINGERPRINT_VALUES)][:FINGERPRINT_VALUES]
        if matrices is not None and name.endswith(BLOCK_MATRICES):
            sample = sample.to(matrices)
        digest.update(f"{name}{tuple(state[name].shape)}".encode())
        digest.update(sample.float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]
