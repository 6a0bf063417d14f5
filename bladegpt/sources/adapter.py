"""A llama.cpp LoRA adapter (a GGUF of general.type "adapter"; what an ollama model's ADAPTER layer holds),
merged into its base's weights so the model is the one llama.cpp and ollama serve.

Format (llama.cpp convert_lora_to_gguf.py, src/llama-adapter.cpp, llama-graph.cpp build_lora_mm): keys
general.architecture (the base's), adapter.type "lora", adapter.lora.alpha; for a base tensor
`blk.0.attn_q.weight`, the pair `blk.0.attn_q.weight.lora_a` (r, in) and `.lora_b` (out, r), in the base's
GGUF names and row order (arch llama's q/k rows are permuted in lora_b, as in the base). llama.cpp computes
W x + s B (A x) with s = alpha / r, or s = 1 where alpha is 0, times a per-run factor that is not in the
file (llama.cpp's --lora-scaled; ollama's runner applies every adapter at 1.0, ApplyLoraFromFile(..., 1.0,
...)); merged, W + s B A is the same model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from bladegpt.errors import SourceError
from bladegpt.sources.gguf import dequantize, metadata, open_gguf

SUFFIXES = (".lora_a", ".lora_b")


@dataclass
class Lora:
    path: Path
    alpha: float
    pairs: dict[str, tuple[torch.Tensor, torch.Tensor]]  # base tensor name -> (A (r, in), B (out, r)), fp32

    @property
    def rank(self) -> int:
        return max((a.shape[0] for a, _ in self.pairs.values()), default=0)

    def merged(self, name: str, w: torch.Tensor) -> torch.Tensor:
        """The base tensor `name` (out, in), fp32, with this adapter's product added: W + s B A."""
        if name not in self.pairs:
            return w
        a, b = self.pairs[name]
        scale = self.alpha / a.shape[0] if self.alpha else 1.0
        return w + scale * (b @ a)

    def describe(self) -> str:
        name = self.path.name[:19] if self.path.name.startswith("sha256-") else self.path.name  # an ollama blob
        return f"LoRA adapter {name} (rank {self.rank}, alpha {self.alpha:g}, {len(self.pairs)} matrices)"


def read_lora(path: Path, base_arch: str, base_tensors: dict, where: str) -> Lora:
    """The adapter of `path`, checked against its base as llama.cpp checks it (arch, every pair whole, every
    target a base tensor of the right shape); whatever it holds that cannot be merged is refused by name.
    `base_tensors`: the base's GGUF tensors by name (gguf ReaderTensor)."""
    reader = open_gguf(path)
    meta = metadata(reader, skip=("tokenizer.",))
    fix = "recreate the model with an adapter converted for its base (llama.cpp's convert_lora_to_gguf.py)"
    kind, adapter_type = meta.get("general.type"), meta.get("adapter.type")
    if kind != "adapter" or adapter_type != "lora":
        raise SourceError(f"{where}'s adapter layer {path} is not a LoRA adapter (general.type {kind!r}, adapter.type "
                          f"{adapter_type!r}); BladeGPT merges llama.cpp LoRA adapters only: {fix}.")
    if meta.get("general.architecture") != base_arch:
        raise SourceError(f"{where}'s adapter {path} is for arch {meta.get('general.architecture')!r}, its base is "
                          f"{base_arch!r} (llama.cpp refuses it too): {fix}.")
    if meta.get("adapter.alora.invocation_tokens"):
        raise SourceError(f"{where}'s adapter {path} is an activated LoRA (aLoRA), which applies only after its "
                          "invocation tokens; BladeGPT merges plain LoRA adapters only: start from another model.")
    halves: dict[str, dict[str, torch.Tensor]] = {}
    for tensor in reader.tensors:
        if not tensor.name.endswith(SUFFIXES):
            raise SourceError(f"{where}'s adapter {path} holds {tensor.name}, which is not a LoRA pair's half (llama.cpp "
                              "ignores norm weights in adapters, and BladeGPT will not drop them silently): "
                              f"{fix}, without it.")
        target, half = tensor.name.rsplit(".", 1)
        halves.setdefault(target, {})[half] = dequantize(tensor)
    pairs = {}
    for target, parts in halves.items():
        if set(parts) != {"lora_a", "lora_b"}:
            raise SourceError(f"{where}'s adapter {path} has {target}.{next(iter(parts))} without its other half; "
                              f"it is damaged: {fix}.")
        if target == "token_embd.weight":
            raise SourceError(f"{where}'s adapter {path} adapts the token embedding, which BladeGPT does not merge; "
                              f"{fix}, without it.")
        base = base_tensors.get(target)
        if base is None:
            raise SourceError(f"{where}'s adapter {path} adapts {target}, which its base does not have (another base "
                              f"model?): {fix}.")
        a, b = parts["lora_a"], parts["lora_b"]
        out, inner = (int(d) for d in reversed(base.shape.tolist()))
        if a.ndim != 2 or b.ndim != 2 or a.shape[1] != inner or b.shape[0] != out or a.shape[0] != b.shape[1]:
            raise SourceError(f"{where}'s adapter {path} does not fit its base: {target} is ({out}, {inner}), its pair "
                              f"B {tuple(b.shape)} A {tuple(a.shape)} (another base model?): {fix}.")
        pairs[target] = (a.float(), b.float())
    alpha = float(meta.get("adapter.lora.alpha") or 0.0)
    return Lora(path, alpha, pairs)


def read_loras(reader, meta: dict, adapters, where: str) -> tuple[Lora, ...]:
    """The adapters of the model, each checked against its tensors."""
    tensors = {t.name: t for t in reader.tensors}
    return tuple(read_lora(Path(a), meta.get("general.architecture"), tensors, where) for a in adapters)
