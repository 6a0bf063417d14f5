"""Weight-only int8 and int4 for generation: a quarter or an eighth of fp32's bytes for every weight a
decode step reads.

A one-token step multiplies one row by every weight of the model: it is bound by how fast memory
delivers the weights, not by arithmetic (SmolLM2-135M decodes at ~6 GB/s of fp32 weights on a 2-core
EPYC). Int8 weights with one fp32 scale per output channel (symmetric absmax, gpt-fast's
WeightOnlyInt8QuantHandler and torchao's int8_weight_only) read 4x fewer bytes; activations stay in
floating point, so only the weights are rounded: each to within half its channel's step, max|w| / 254.
Int4 weights (`quantize(model, "int4")`) keep a scale and a zero for every 32 weights of a row (asymmetric
min/max: llama.cpp's Q4_1 block, torchao's int4_weight_only layout), through PyTorch's packed CPU kernel:
half int8's bytes, each weight within half its group's step, (max - min) / 30. Int8 (`quantize(model, "int8")`)
keeps a layer in int4 where its weights are already on its 4-bit grid, as a Q4_1 GGUF's are, and int4 holds them at least
as closely as int8 does, measured: half the bytes for no loss against int8. Weights a fine-tune moved off that grid
stay int8, however small the move: int4 would round them back onto it, undoing what was trained.
"""

from __future__ import annotations

import math
import platform
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from bladegpt.generate.fbgemm import DYNAMIC_MARGIN, dynamic_available, dynamic_int8_mm, dynamic_pack
from bladegpt.runtime import cached, cpu_model

# Rows past which the packed int8 kernel loses to dequantizing the weight once and running the float
# matmul: on a 2-core EPYC (AVX2) the kernel is 1.5x faster than fp32 at 16 rows, 2.5x slower at 64
# (a 576 x 3,072 weight; 1.4x and 2.5x for the 576 x 49,152 head). Decode steps are 1-16 rows;
# prompts (prefill) are longer.
PACKED_MAX_ROWS = 16
QUANTIZED = ("int8", "int4")  # the weight-only precisions quantize() makes
# The input width (K) PyTorch's packed int8 kernel needs a multiple of, by the CPU kernel it dispatches to
# (aten/src/ATen/native/cpu/int8mm_kernel.cpp): the AVX512 one (AMX Xeons, AVX512-BF16 CPUs) reads 16
# values of a row at a time with aligned loads (_mm256_load_si256 of bf16, _mm_load_si128 of int8), the AVX2
# and ARM NEON ones 8; the scalar one any width. PyTorch checks none of it: another width reads past each
# row and dies with SIGSEGV (measured on an AVX512-BF16 EPYC: widths 24, 36, 40, 72, 100 at 4 rows).
INT8_WIDTH_MULTIPLE = {"AVX512": 16, "AVX2": 8, "DEFAULT": 1}
INT8_ALIGN = 64  # bytes: the activations' start, for the aligned loads (PyTorch allocates on 64)


def int8_refusal(in_features: int, capability: str | None = None) -> str | None:
    """Why PyTorch's packed int8 kernel cannot take rows `in_features` wide on this CPU (`capability`:
    torch.backends.cpu.get_cpu_capability()'s, e.g. "AVX512"), in words naming the width; None if it can.
    A kind whose kernel is not known here (VSX, ZVECTOR, SVE) is held to the widest known, 16."""
    capability = capability or torch.backends.cpu.get_cpu_capability()
    multiple = INT8_WIDTH_MULTIPLE.get(capability, 16)
    if capability == "DEFAULT" and platform.machine().lower() in ("arm64", "aarch64"):
        multiple = 8  # ARM's NEON kernel is compiled in whatever the capability says
    if in_features % multiple == 0:
        return None
    return (f"PyTorch's packed int8 kernel ({capability}) reads {multiple} values at a time: it "
            f"would crash the process on an input width of {in_features}, not a multiple of {multiple}")


def int4_refusal(in_features: int, out_features: int) -> str | None:
    """Why PyTorch's int4 CPU kernel cannot take this (out, in) weight, naming the width; None if it can.
    _convert_weight_to_int4pack_for_cpu refuses (RuntimeError) outputs not a multiple of 16; a row is cut
    into groups of INT4_GROUP (every CPU kind: the kernel reads the activations one value at a time)."""
    if out_features % 16:
        return f"PyTorch's int4 kernel wants an output width that is a multiple of 16, not {out_features}"
    if in_features % INT4_GROUP:
        return f"int4 groups of {INT4_GROUP} do not divide an input width of {in_features}"
    return None


def _aligned(x: torch.Tensor) -> torch.Tensor:
    """x contiguous and starting on INT8_ALIGN bytes, as the packed int8 kernel's aligned loads need."""
    x = x.contiguous()
    return x if x.data_ptr() % INT8_ALIGN == 0 else x.clone()


@torch.library.custom_op("bladegpt::int8_weight_mm", mutates_args=())
def int8_weight_mm(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """(rows, in) bf16 @ int8 (out, in)^T * bf16 scale (out,) -> (rows, out) bf16, by PyTorch's packed CPU
    kernel. An opaque op to torch.compile: inductor's own lowering of the kernel (torch 2.13) fails on an
    input it has fused (a LoweringException), so compiled decode steps call the kernel through this.
    Eager steps call the kernel directly."""
    return torch._weight_int8pack_mm(_aligned(x), weight, scale)


@int8_weight_mm.register_fake
def _(x, weight, scale):
    return x.new_empty(x.shape[0], weight.shape[0])


class Int8Linear(nn.Module):
    """y = x W^T * scale (+ b): W int8 (out, in), scale fp32 (out,). On CPU through PyTorch's packed
    weight-only kernel (`torch._weight_int8pack_mm`, which wants bf16 activations and computes in fp32
    accumulators) where it takes the input width (`refusal` None, int8_refusal), or through fbgemm's (fbgemm.py,
    `dynamic`) where choose_int8_kernels gave it that one; else, on another device or for a prompt's many rows,
    W is dequantized to x's dtype for the matmul. A row's result never depends on the rows beside it, so a
    text decoded in a batch (`sample --num-samples`, `serve`) is the one it is alone: one kernel for every row
    count, and decode batches past PACKED_MAX_ROWS rows through the packed kernel in turns."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        weight = linear.weight.detach().float()
        scale = weight.abs().amax(dim=1).clamp(min=torch.finfo(torch.float32).tiny) / 127  # (out,)
        self.register_buffer("weight", (weight / scale[:, None]).round().clamp(-127, 127).to(torch.int8))
        self.register_buffer("scale", scale)
        self.register_buffer("scale_bf16", scale.to(torch.bfloat16), persistent=False)  # the packed kernel's, cast once
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.refusal = int8_refusal(self.in_features)  # this machine's CPU, wherever the layer is now
        self.error = rms(self.dequantized(torch.float32), weight)  # how far from the weights it was made of
        self.dynamic = None  # fbgemm's packed copy of the weight, where choose_int8_kernels measured it faster

    def dequantized(self, dtype: torch.dtype) -> torch.Tensor:
        """W as floats (out, in): what this layer multiplies by."""
        return (self.weight.to(torch.float32) * self.scale[:, None]).to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // self.in_features
        cpu, compiling = x.device.type == "cpu", torch.compiler.is_compiling()
        decoding = x.dim() == 3 and x.size(1) == 1  # one new token a row
        if cpu and not compiling and self.dynamic is not None:  # fbgemm: fast at any row count
            y = dynamic_int8_mm(x.reshape(rows, self.in_features).float(), self.dynamic)
            y = y.to(x.dtype).view(*x.shape[:-1], self.out_features)
        elif cpu and self.refusal is None and (rows <= PACKED_MAX_ROWS or decoding):
            flat = x.reshape(rows, self.in_features).to(torch.bfloat16)
            # The custom op only where torch.compile traces: eager, its dispatch cost ~30 us a call (8% of a step)
            if compiling:
                y = int8_weight_mm(flat, self.weight, self.scale_bf16)
            else:
                y = torch.cat([torch._weight_int8pack_mm(_aligned(part), self.weight, self.scale_bf16)
                               for part in flat.split(PACKED_MAX_ROWS)])
            y = y.to(x.dtype).view(*x.shape[:-1], self.out_features)
        else:
            y = F.linear(x, self.weight.to(x.dtype)) * self.scale.to(x.dtype)
        return y if self.bias is None else y + self.bias.to(y.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 weights"


def _best_of(run: Callable[[], object], repeats: int = 5) -> float:
    run()
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


_CHOSEN: dict[tuple[int, int, int], bool] = {}  # (out, in, threads) -> fbgemm's kernel


def choose_int8_kernels(model: nn.Module) -> None:
    """Give each CPU Int8Linear fbgemm's kernel (fbgemm.py) where it measures DYNAMIC_MARGIN faster than the packed
    one at 1 or at 8 rows and no slower at the other (random input, best of 5), and where the packed kernel cannot
    take the layer's width (which else dequantizes its weights). One kernel for every row count: the two round
    differently, so a kernel chosen by rows would make a text batched with others differ from itself alone
    (measured: SmolLM2's head at 2 threads, fbgemm at 8 rows only, moved a logit by 0.09). Measured once a machine,
    layer shape, thread count and PyTorch (remembered in the cache folder): a choice that flipped between runs
    (GPT-2's 2,304 x 768 at one row measured 1.39x; in one of six fresh runs under the margin) would change the
    text `sample --seed` promises to repeat."""
    if not dynamic_available():
        return
    for layer in model.modules():
        if not isinstance(layer, Int8Linear) or layer.weight.device.type != "cpu":
            continue
        key = (layer.out_features, layer.in_features, torch.get_num_threads())
        if key not in _CHOSEN:
            _CHOSEN[key] = layer.refusal is not None or _fbgemm_faster(layer)
        layer.dynamic = dynamic_pack(layer.weight, layer.scale) if _CHOSEN[key] else None


def _fbgemm_faster(layer: Int8Linear) -> bool:
    """Whether fbgemm's kernel measures DYNAMIC_MARGIN faster than the packed one for this layer's shape at 1 or
    8 decode rows and no slower at the other (this machine's measurement cache holds the speed-ups)."""
    def measure() -> list[float]:
        packed, speedups, gen = dynamic_pack(layer.weight, layer.scale), [], torch.Generator().manual_seed(0)
        with torch.inference_mode():
            for rows in (1, 8):
                x = torch.randn(rows, 1, layer.in_features, generator=gen)  # decode rows; never the global stream
                layer.dynamic = None
                speedups.append(_best_of(lambda: layer(x)) / _best_of(lambda: dynamic_int8_mm(x[:, 0], packed)))
        return speedups

    shape = f"{layer.out_features}x{layer.in_features}"
    speedups = cached(f"int8-kernels-v2|{cpu_model()}|{torch.get_num_threads()}|{torch.__version__}|{shape}", measure)
    return min(speedups) >= 1 and max(speedups) >= DYNAMIC_MARGIN


@torch.library.custom_op("bladegpt::int4_weight_mm", mutates_args=())
def int4_weight_mm(x: torch.Tensor, weight: torch.Tensor, scales_zeros: torch.Tensor) -> torch.Tensor:
    """(rows, in) bf16 @ packed int4 (out, in / 2) -> (rows, out) bf16 by PyTorch's CPU kernel, opaque
    to torch.compile as int8_weight_mm is."""
    return torch._weight_int4pack_mm_for_cpu(x, weight, INT4_GROUP, scales_zeros)


@int4_weight_mm.register_fake
def _(x, weight, scales_zeros):
    return x.new_empty(x.shape[0], weight.shape[0])


INT4_GROUP = 32  # weights a scale and zero cover: llama.cpp's Q4_1 block (a Q4_1 GGUF's weights come back exactly)


class Int4Linear(nn.Module):
    """y = x W^T (+ b), W in 4 bits: each group of INT4_GROUP weights of a row is zero + (q - 8) * scale
    with q in 0..15, scale = (max - min) / 15 and zero = min + 8 * scale (so min and max are exact). On CPU
    only (`torch._weight_int4pack_mm_for_cpu`, bf16 activations and scales, fp32 accumulators), for any number
    of rows: unlike the int8 kernel it stays within 1.2x of the fp32 matmul at 512 rows (a 576 x 1,536 weight,
    one thread of an AVX512-BF16 EPYC). The kernel wants out % 16 == 0 and in % INT4_GROUP == 0 (int4_refusal)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        out, k = linear.weight.shape
        groups, lo, scale, q = _int4_grid(linear.weight)
        scales_zeros = torch.stack([scale, lo + 8 * scale], dim=-1).to(torch.bfloat16)  # (out, groups, 2)
        self.on_grid = _on_grid(groups, lo, scale, q)
        s, z = scales_zeros.float().unbind(-1)
        self.error = rms(q.sub(8).mul_(s[..., None]).add_(z[..., None]), groups)  # as Int8Linear's
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.view(out, k).to(torch.int32), 1)
        self.register_buffer("weight", packed)
        self.register_buffer("scales_zeros", scales_zeros.transpose(0, 1).contiguous())  # (groups, out, 2): the kernel's
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        self.in_features, self.out_features = k, out

    def dequantized(self, dtype: torch.dtype) -> torch.Tensor:
        """W as floats (out, in): the kernel's product with the identity, computed as the kernel does."""
        eye = torch.eye(self.in_features, dtype=torch.bfloat16, device=self.weight.device)
        return torch._weight_int4pack_mm_for_cpu(eye, self.weight, INT4_GROUP, self.scales_zeros).t().to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features).to(torch.bfloat16)
        if torch.compiler.is_compiling():  # as Int8Linear: the custom op only where torch.compile traces
            y = int4_weight_mm(flat, self.weight, self.scales_zeros)
        else:
            y = torch._weight_int4pack_mm_for_cpu(flat, self.weight, INT4_GROUP, self.scales_zeros)
        y = y.to(x.dtype).view(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias.to(y.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int4 weights in groups of {INT4_GROUP}"


def _int4_grid(weight: torch.Tensor):
    """A weight (out, in) in groups of INT4_GROUP (out, groups, INT4_GROUP), fp32; each group's min (out, groups),
    step (max - min) / 15, and its weights' steps above the min, rounded, 0..15."""
    out, k = weight.shape
    groups = weight.detach().float().view(out, k // INT4_GROUP, INT4_GROUP)
    lo, hi = groups.amin(-1), groups.amax(-1)
    scale = ((hi - lo) / 15).clamp(min=torch.finfo(torch.float32).tiny)
    return groups, lo, scale, groups.sub(lo[..., None]).div_(scale[..., None]).round_().clamp_(0, 15)


def _on_grid(groups: torch.Tensor, lo: torch.Tensor, scale: torch.Tensor, q: torch.Tensor) -> bool:
    """Whether every weight is already on its group's 4-bit grid, as a Q4_1 file's are (to float32's rounding
    of its d * q + m): int8 may keep such a layer in int4; a fine-tune's, moved off the grid by any amount, not
    (int4 would round it back, undoing the training)."""
    off = q.mul(scale[..., None]).add_(lo[..., None]).sub_(groups).abs_().amax(-1)  # (out, groups), fp32
    return bool((off <= 1e-3 * scale).all())


def rms(quantized: torch.Tensor, weight: torch.Tensor) -> float:
    """Root mean square of a weight's rounding error, without a temporary of the weight's size: what decides int8
    or int4 for a layer in quantize()."""
    return float(F.mse_loss(quantized, weight).sqrt())


def int8_available(device: torch.device) -> bool:
    """Whether this PyTorch runs weight-only int8 on the device (the packed CPU kernel, or the dequantizing path)."""
    return device.type != "cpu" or hasattr(torch, "_weight_int8pack_mm")


def int4_available(device: torch.device) -> bool:
    """Whether this PyTorch runs weight-only int4 on the device (its packed CPU kernel; CPU only here)."""
    return device.type == "cpu" and hasattr(torch, "_weight_int4pack_mm_for_cpu")


def quantize(model: nn.Module, precision: str = "int8", say: Callable[[str], None] = lambda line: None,
             fbgemm: bool = True) -> nn.Module:
    """Replace every nn.Linear of `model` in place with an Int8Linear, or an Int4Linear where the int4
    kernel takes its shape (generation only: no gradients). "int8" takes int4 too, for a layer the int4 kernel
    takes on this CPU whose weights are on its 4-bit grid and which it rounds no further than int8 would (rms
    error): a Q4_1 GGUF's, untouched (3.3-3.8x closer than int8 for SmolLM2-135M's, at half the bytes); a
    fine-tune's stay int8 (each kept in int4 is said). Embeddings stay as they are: a lookup reads one row a token. A head tied to the embedding gets its own quantized copy; the
    embedding keeps the float weights. Layers a kernel cannot take are said, one line a reason, through `say`.
    `fbgemm` False: no layer takes fbgemm's kernel, whose packing of each weight costs more than it saves over a
    short text (Gemma 3's 640 x 262,144 head: ~1.9 s to pack, ~0.9 s saved over 60 tokens; 2-core AMD EPYC)."""
    if precision not in QUANTIZED:
        raise ValueError(f"precision must be one of {QUANTIZED}, got {precision!r}")
    fallbacks: dict[str, list[str]] = {}  # what a layer runs instead, and why -> its names
    for prefix, module in list(model.named_modules()):
        for name, child in list(module.named_children()):
            if not isinstance(child, nn.Linear):
                continue
            path = f"{prefix}.{name}" if prefix else name
            why = int4_refusal(child.in_features, child.out_features) if precision == "int4" else None
            if why:
                fallbacks.setdefault(f"int8 weights, not int4: {why}", []).append(path)
            layer = (Int4Linear if precision == "int4" and why is None else Int8Linear)(child).to(child.weight.device)
            if precision == "int8" and int4_available(child.weight.device) and not int4_refusal(
                    child.in_features, child.out_features) and _on_grid(*_int4_grid(child.weight[:1])):
                # (the first row off the grid settles it: a fine-tune's layers are not made in int4 to be dropped)
                four = Int4Linear(child)
                if four.on_grid and four.error <= layer.error:
                    layer = four
                    fallbacks.setdefault("int4 weights, not int8: theirs are already 4-bit (a Q4_1 file's, untouched), "
                                         "which int4 holds closer in half the bytes", []).append(path)
            setattr(module, name, layer)
    if fbgemm:
        choose_int8_kernels(model)
    for path, layer in model.named_modules():  # fbgemm's kernel, where taken, loses nothing: not said
        if isinstance(layer, Int8Linear) and layer.weight.device.type == "cpu" and layer.refusal and layer.dynamic is None:
            fallbacks.setdefault(f"dequantized int8 weights (slower): {layer.refusal}", []).append(path)
    for why, paths in fallbacks.items():
        shown = ", ".join(paths[:2]) + (f" and {len(paths) - 2} more" if len(paths) > 2 else "")
        say(f"{len(paths)} layer(s) ({shown}) run {why}.")
    return model


def packed_refusal(model: nn.Module) -> str | None:
    """Why int8 decoding of `model` cannot run every layer through a quantized kernel (the first layer's
    reason: a width the packed kernel cannot take, where fbgemm's is missing), or None: what decode_precision
    skips its int8 candidate for."""
    if dynamic_available():
        return None
    for module in model.modules():
        if isinstance(module, nn.Linear) and module.weight.device.type == "cpu":
            why = int8_refusal(module.in_features)
            if why:
                return why
    return None
