"""What quantized weights cost in quality: a model's val bits per byte with its fp32 weights and with the
int8 and int4 weights `sample --precision int8|int4` (or auto's choice) generates with, on a prepared
dataset's whole val split (windows of the model's context, each token a target once, as train evaluates).
With --decode each window is fed one token a step through the KV cache, as `sample` computes (each linear
at one row, through the kernels decoding takes), and int8 is also measured without fbgemm's kernel.

    python scripts/quant_bpb.py DATASET MODEL [--block 1024] [--decode]

MODEL is a checkpoint (.safetensors, e.g. a run's best.safetensors) or any --init-from source (a GGUF
file, a Hugging Face folder or id); DATASET a folder `bladegpt prepare` made with that model's tokenizer.
"""

from __future__ import annotations

import argparse
import copy
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from bladegpt.bench import source_model
from bladegpt.data.dataset import TokenData
from bladegpt.generate import quantize as quantize_module
from bladegpt.generate.engine import KVCache
from bladegpt.generate.quantize import quantize
from bladegpt.runtime import cpu_model


def stepwise(model, x: torch.Tensor) -> torch.Tensor:
    """Logits (1, T, vocab) of x (1, T) computed one token a step through a KV cache, as generation does."""
    cache, out = KVCache(model.config.n_layer, x.size(1)), []
    for t in range(x.size(1)):
        cache.seat(1, x.device)
        out.append(model(x[:, t : t + 1], kv_cache=cache)[0])
        cache.advance(1)
    return torch.cat(out, dim=1)


def val_bpb(model, data: TokenData, block: int, decode: bool = False) -> float:
    lengths = torch.tensor([len(data.tokenizer.token_bytes(i)) for i in range(data.tokenizer.vocab_size)])
    nats = n_bytes = 0.0
    with torch.inference_mode():
        for start, skip in zip(*data.covering_windows("val", block)):
            x, y, _ = data.batch("val", start[None], block)
            logits = stepwise(model, x) if decode else model(x)[0]
            y = y[:, skip:]  # targets an earlier window had
            nats += F.cross_entropy(logits[:, skip:].flatten(0, 1).float(), y.flatten(), reduction="sum").item()
            n_bytes += lengths[y].sum().item()
    return nats / (math.log(2) * n_bytes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", type=Path)
    parser.add_argument("model")
    parser.add_argument("--block", type=int, default=1024)
    parser.add_argument("--decode", action="store_true", help="one token a step through the KV cache, as sample")
    args = parser.parse_args()
    if args.model.endswith(".safetensors"):
        from bladegpt.checkpoint import load_checkpoint

        model = load_checkpoint(Path(args.model))[0]
    else:
        model = source_model(args.model, args.block)
    model.eval()
    data = TokenData(args.dataset)
    block = min(args.block, model.config.block_size)
    how = "one token a step (--decode)" if args.decode else "whole windows"
    print(f"{cpu_model()} · {torch.get_num_threads()} threads · torch {torch.__version__} · {args.model} on "
          f"{args.dataset}'s val split, windows of {block}, {how}")
    fp32 = val_bpb(model, data, block, args.decode)
    print(f"fp32 {fp32:.4f} bpb", flush=True)
    contenders = [("int8", "int8", True), ("int4", "int4", True)]
    if args.decode:
        contenders.insert(1, ("int8 without fbgemm's kernel", "int8", False))
    available = quantize_module.dynamic_available
    for label, precision, fbgemm in contenders:
        quantize_module.dynamic_available = available if fbgemm else (lambda: False)
        said = []
        bpb = val_bpb(quantize(copy.deepcopy(model), precision, said.append), data, block, args.decode)
        print(f"{label} weights {bpb:.4f} bpb · {precision} - fp32 {bpb - fp32:+.4f}   ({' '.join(said)})", flush=True)


if __name__ == "__main__":
    main()
