"""fbgemm's dynamically quantized linear (torch.ops.quantized.linear_dynamic, in PyTorch's x86 builds) for int8
weights, with the input split in two so it keeps ~14 bits.

fbgemm rounds the input to uint8 with one scale and multiplies it by the int8 weights in integer arithmetic
(VNNI's vpdpbusd where the CPU has it): SmolLM2's 576 x 49,152 head at one row 2.1x PyTorch's packed
weight-only kernel (`torch._weight_int8pack_mm`), at 8 rows 3.2x (AMD EPYC, one thread); smaller layers at one
row lose (0.4-0.7x), so quantize.choose_int8_kernels measures. Rounding the input alone, to 7 bits (reduce_range,
fbgemm's default, which cannot overflow on CPUs without VNNI), cost +0.015 nats a token on officer_k at the
head; so the input goes in as two: x1, its 7-bit rounding on the grid fbgemm picks for it (which fbgemm then
keeps exactly), and the remainder x - x1 (within half a step) times a power of two, rounded on that same grid:
both in one call, so the weights are read once. SmolLM2 on officer_k's val split, decoded a token a step as
`sample` does: 1.2187 bits per byte with it, 1.2188 without, 1.2188 in fp32 (docs/benchmarks/generation.md).
"""

from __future__ import annotations

import math
import warnings

import torch

DYNAMIC_FEW_ROWS = 4  # rows up to which a layer takes the kernel measured at one row; above, the one at eight
DYNAMIC_MARGIN = 1.3  # how much faster fbgemm must measure to be taken: a near tie could flip from run to run


def dynamic_available() -> bool:
    """Whether this PyTorch has fbgemm's dynamically quantized linear and what packing it needs (x86 builds do;
    ARM's do not; PyTorch has deprecated its quantized tensors, so a later one may not)."""
    needed = ("_make_per_channel_quantized_tensor", "_choose_qparams_per_tensor", "fake_quantize_per_tensor_affine")
    return ("fbgemm" in torch.backends.quantized.supported_engines and all(hasattr(torch, name) for name in needed)
            and hasattr(torch.ops.quantized, "linear_dynamic") and hasattr(torch.ops.quantized, "linear_prepack"))


def dynamic_pack(weight: torch.Tensor, scale: torch.Tensor):
    """fbgemm's packed copy of int8 weights (out, in) with fp32 scales (out,), one a row, zero points 0."""
    zeros = torch.zeros(len(scale), dtype=torch.long)
    with warnings.catch_warnings():  # quantized tensors are deprecated in PyTorch; this one lives until packed
        warnings.simplefilter("ignore")
        qweight = torch._make_per_channel_quantized_tensor(weight, scale.double(), zeros, 0)
    return torch.ops.quantized.linear_prepack(qweight, None)


def dynamic_int8_mm(x: torch.Tensor, packed) -> torch.Tensor:
    """(rows, in) fp32 @ fbgemm's packed int8 (out, in)^T -> (rows, out) fp32, the input split in two (above),
    both halves in one call, so the weights are read once: x1's rows, then those of the remainder times a power
    of two that keeps it inside x1's range, which so decides the grid (x1 falls on it exactly)."""
    scale, zero = torch._choose_qparams_per_tensor(x, True)  # the grid fbgemm picks for x (reduce_range)
    x1 = torch.fake_quantize_per_tensor_affine(x, scale, zero, 0, 127)
    rest = x - x1  # each within scale / 2
    if zero in (0, 127):  # x all of one sign: the remainder would widen the grid, so it goes alone
        y = torch.ops.quantized.linear_dynamic(x1, packed, True)
        return y.add_(torch.ops.quantized.linear_dynamic(rest, packed, True))
    gain = 2.0 ** math.floor(math.log2(2 * min(zero, 127 - zero)))  # x1's shorter side of zero over scale / 2
    rows = len(x)
    y = torch.ops.quantized.linear_dynamic(torch.cat((x1, rest.mul_(gain))), packed, True)
    return y[rows:].div_(gain).add_(y[:rows])
