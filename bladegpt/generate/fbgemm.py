"""fbgemm's dynamically quantized linear (torch.ops.quantized.linear_dynamic, in PyTorch's x86 builds) for int8
weights, each input row scaled to its largest value and split in two so it keeps ~13 bits.

fbgemm rounds the input to uint8 with one scale and multiplies it by the int8 weights in integer arithmetic
(VNNI's vpdpbusd where the CPU has it): SmolLM2's 576 x 49,152 head, as below, at one row 2.3-2.6x PyTorch's
packed weight-only kernel (`torch._weight_int8pack_mm`), at 8 rows 2.3-2.4x (AMD EPYC, one thread); its smaller
layers lose at one row (0.4-0.9x) and range from 0.5x to 1.4x at 8, so quantize.choose_int8_kernels measures.
Rounding the input alone, to 7 bits (reduce_range, as PyTorch's own dynamic Linear asks: full 8 bits can
overflow the int16 sums of CPUs without VNNI), cost +0.015 nats a token on officer_k at the head. So each row is
divided by its largest |value| and goes in as two: x1, its rounding to 1/63 steps, and the remainder (within
half a step) times 64, on the same steps; one more row pins fbgemm's grid (it picks one from the whole input's
min and max) to exactly those steps. Each input value is then within 1/8,064 of its row's largest, whatever the
other rows, its sign or its size, and fbgemm sums integers exactly: the same bits for a row alone, batched with
any others, at any thread count. All rows in one call, so the weights are read once. SmolLM2 on officer_k's val
split, decoded a token a step as `sample` does: 1.2187 bits per byte with it, 1.2188 in fp32
(docs/benchmarks/generation.md).
"""

from __future__ import annotations

import functools
import warnings

import torch

DYNAMIC_MARGIN = 1.3  # how much faster fbgemm must measure to be taken: a near tie could flip from run to run


def dynamic_available() -> bool:
    """Whether this PyTorch has fbgemm's dynamically quantized linear and what packing it needs (x86 builds do;
    ARM's do not; PyTorch has deprecated its quantized tensors, so a later one may not)."""
    return ("fbgemm" in torch.backends.quantized.supported_engines and hasattr(torch, "_make_per_channel_quantized_tensor")
            and hasattr(torch.ops.quantized, "linear_dynamic") and hasattr(torch.ops.quantized, "linear_prepack"))


def dynamic_pack(weight: torch.Tensor, scale: torch.Tensor):
    """fbgemm's packed copy of int8 weights (out, in) with fp32 scales (out,), one a row, zero points 0."""
    zeros = torch.zeros(len(scale), dtype=torch.long)
    with warnings.catch_warnings():  # quantized tensors are deprecated in PyTorch; this one lives until packed
        warnings.simplefilter("ignore")
        qweight = torch._make_per_channel_quantized_tensor(weight, scale.double(), zeros, 0)
    return torch.ops.quantized.linear_prepack(qweight, None)


GRID_STEPS = 63  # x1's integer steps to a row's largest |value|: fbgemm's 7-bit grid pinned to -64 .. 63 (zero point 64)
REST_GAIN = 64  # the remainder's scale: 64 / 2 stays inside the grid; a power of two, so dividing is exact


@functools.cache
def _grid_rows(width: int) -> torch.Tensor:
    """Rows `width` wide holding -64 and 63, the input's min and max that fbgemm sets its grid by: a step of
    exactly 1 (two rows where the width is 1)."""
    grid = torch.zeros(-(-2 // width), width)
    grid.view(-1)[:2] = torch.tensor([-GRID_STEPS - 1.0, GRID_STEPS])
    return grid


def dynamic_int8_mm(x: torch.Tensor, packed) -> torch.Tensor:
    """(rows, in) fp32 @ fbgemm's packed int8 (out, in)^T -> (rows, out) fp32, each input value rounded to within
    1/8,064 of its row's largest |value| (above), in one call: x1's rows, the remainders', the grid's. A row
    holding NaN or inf gives a row of NaN (fbgemm would refuse the whole input)."""
    rows = len(x)
    # (rows, 1); a row of subnormals would make a step of 0, its units inf, and every row's grid wider
    step = torch.linalg.vector_norm(x, ord=torch.inf, dim=1, keepdim=True).clamp_(min=torch.finfo(torch.float32).tiny)
    step = step.div_(GRID_STEPS)
    units = torch.nan_to_num_(x / step, nan=0.0)  # within [-63, 63]; 0 where the row holds NaN or inf
    x1 = units.round()
    rest = units.sub_(x1).mul_(REST_GAIN)  # within [-32, 32]
    y = torch.ops.quantized.linear_dynamic(torch.cat((x1, rest, _grid_rows(x.size(1)))), packed, True)
    return y[:rows].add_(y[rows : 2 * rows], alpha=1 / REST_GAIN).mul_(step)
