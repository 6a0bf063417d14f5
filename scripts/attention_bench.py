"""Causal attention for training, forward + backward, each way `train --attention` takes (bladegpt/attention.py):
PyTorch's SDPA (flash attention on a CPU), manual, and chunked at several chunk sizes, at one layer's shape,
interleaved in rounds so a change in the machine's load falls on all; prints the median seconds for `--layers`
layers and each one's largest error against fp64 SDPA (the output and dq, dk, dv), and the CPU it ran on.

    python scripts/attention_bench.py [--shape 1,9,3,1024,64] [--layers 30] [--chunks 64,128,256] [--threads 2]

The default shape is SmolLM2-135M's training step as `train --init-from` runs it (1 x 1,024 tokens; 9 query heads,
3 kv heads of 64), under bf16 autocast where `--precision bf16`, with
q, k and v in bf16 (as autocast's projection gives them).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bladegpt import attention  # noqa: E402
from bladegpt.runtime import autocast, device_name  # noqa: E402


def contenders(chunks: list[int]) -> dict:
    def chunked(size):
        def run(q, k, v):
            attention.CHUNK = size
            return attention.chunked_attention(q, k, v)
        return run

    return {"sdpa": lambda q, k, v: attention.attend(q, k, v, "sdpa", 0.0),
            "manual": lambda q, k, v: attention.attend(q, k, v, "manual", 0.0),
            **{f"chunked {c}": chunked(c) for c in chunks}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="1,9,3,1024,64", help="B,nh,nkv,T,hs")
    parser.add_argument("--layers", type=int, default=30)
    parser.add_argument("--chunks", default="64,128,256")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--precision", default="bf16", choices=("bf16", "fp32"))
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    B, nh, nkv, T, hs = map(int, args.shape.split(","))
    gen = torch.Generator().manual_seed(0)
    q0, k0, v0 = (torch.randn(B, heads, T, hs, generator=gen) for heads in (nh, nkv, nkv))
    dout = torch.randn(B, nh, T, hs, generator=gen)
    device = torch.device("cpu")
    fns = contenders([int(c) for c in args.chunks.split(",")])

    low = torch.bfloat16 if args.precision == "bf16" else torch.float32  # what autocast's q, k, v projection gives

    def step(fn, dtype=low, cast=True):
        q, k, v = (t.to(dtype, copy=True).requires_grad_() for t in (q0, k0, v0))
        with autocast(device, args.precision if cast else "fp32"):
            out = fn(q, k, v)
        out.backward(dout.to(out.dtype))
        return [out.detach().double(), *(t.grad.double() for t in (q, k, v))]

    grouped = lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=nh != nkv)
    exact = step(grouped, torch.float64, cast=False)
    print(f"{device_name(device)}, torch {torch.__version__}; shape B={B} nh={nh} nkv={nkv} T={T} hs={hs}, "
          f"{args.precision}; forward + backward x {args.layers} layers, median of {args.rounds} rounds")
    times = {name: [] for name in fns}
    for name, fn in fns.items():  # warm-up
        step(fn)
    for _ in range(args.rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            step(fn)
            times[name].append((time.perf_counter() - t0) * args.layers)
    base = statistics.median(times["sdpa"])
    for name, fn in fns.items():
        errors = [(a - b).abs().max().item() for a, b in zip(step(fn), exact)]
        median = statistics.median(times[name])
        print(f"{name:12s} {median:7.3f} s  {base / median:5.2f}x sdpa's speed   max error out/dq/dk/dv: "
              + " ".join(f"{e:.3f}" for e in errors))


if __name__ == "__main__":
    main()
