"""Weight-only int8 for generation: a quarter of fp32's bytes for every weight a decode step reads.

A one-token step multiplies one row by every weight of the model: it is bound by how fast memory
delivers the weights, not by arithmetic (SmolLM2-135M decodes at ~6 GB/s of fp32 weights on a 2-core
EPYC). Int8 weights with one fp32 scale per output channel (symmetric absmax, gpt-fast's
WeightOnlyInt8QuantHandler and torchao's int8_weight_only) read 4x fewer bytes; activations stay in
floating point, so only the weights are rounded: each to within half its channel's step, max|w| / 254.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Rows past which the packed int8 kernel loses to dequantizing the weight once and running the float
# matmul: on a 2-core EPYC (AVX2) the kernel is 1.5x faster than fp32 at 16 rows, 2.5x slower at 64
# (a 576 x 3,072 weight; 1.4x and 2.5x for the 576 x 49,152 head). Decode steps are 1-16 rows;
# prompts (prefill) are longer.
PACKED_MAX_ROWS = 16


@torch.library.custom_op("bladegpt::int8_weight_mm", mutates_args=())
def int8_weight_mm(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """(rows, in) bf16 @ int8 (out, in)^T * bf16 scale (out,) -> (rows, out) bf16, by PyTorch's packed CPU
    kernel. An opaque op to torch.compile: inductor's own lowering of the kernel (torch 2.13) fails on an
    input it has fused (a LoweringException), so compiled decode steps call the kernel through this.
    Eager steps call the kernel directly."""
    return torch._weight_int8pack_mm(x, weight, scale)


@int8_weight_mm.register_fake
def _(x, weight, scale):
    return x.new_empty(x.shape[0], weight.shape[0])


class Int8Linear(nn.Module):
    """y = x W^T * scale (+ b): W int8 (out, in), scale fp32 (out,). On CPU through PyTorch's packed
    weight-only kernel (`torch._weight_int8pack_mm`, which wants bf16 activations and computes in fp32
    accumulators); elsewhere, or for many rows, W is dequantized to x's dtype for the matmul."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        weight = linear.weight.detach().float()
        scale = weight.abs().amax(dim=1).clamp(min=torch.finfo(torch.float32).tiny) / 127  # (out,)
        self.register_buffer("weight", (weight / scale[:, None]).round().clamp(-127, 127).to(torch.int8))
        self.register_buffer("scale", scale)
        self.register_buffer("scale_bf16", scale.to(torch.bfloat16), persistent=False)  # the packed kernel's, cast once
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def dequantized(self, dtype: torch.dtype) -> torch.Tensor:
        """W as floats (out, in): what this layer multiplies by."""
        return (self.weight.to(torch.float32) * self.scale[:, None]).to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // self.in_features
        if x.device.type == "cpu" and rows <= PACKED_MAX_ROWS:
            flat = x.reshape(rows, self.in_features).to(torch.bfloat16)
            # The custom op only where torch.compile traces: eager, its dispatch cost ~30 us a call (8% of a step)
            mm = int8_weight_mm if torch.compiler.is_compiling() else torch._weight_int8pack_mm
            y = mm(flat, self.weight, self.scale_bf16)
            y = y.to(x.dtype).view(*x.shape[:-1], self.out_features)
        else:
            y = F.linear(x, self.weight.to(x.dtype)) * self.scale.to(x.dtype)
        return y if self.bias is None else y + self.bias.to(y.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 weights"


def int8_available(device: torch.device) -> bool:
    """Whether this PyTorch runs weight-only int8 on the device (the packed CPU kernel, or the dequantizing path)."""
    return device.type != "cpu" or hasattr(torch, "_weight_int8pack_mm")


def quantize_int8(model: nn.Module) -> nn.Module:
    """Replace every nn.Linear of `model` in place with an Int8Linear (generation only: no gradients).
    Embeddings stay as they are: a lookup reads one row a token. A head tied to the embedding gets its
    own int8 copy; the embedding keeps the float weights."""
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.Linear):
                setattr(module, name, Int8Linear(child).to(child.weight.device))
    return model
