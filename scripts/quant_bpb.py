"""What quantized weights cost in quality: a model's val bits per byte with its fp32 weights and with the
int8 and int4 weights `sample --precision int8|int4` (or auto's choice) generates with, on a prepared
dataset's whole val split (windows of the model's context, each token a target once, as train evaluates).

    python scripts/quant_bpb.py DATASET MODEL [--block 1024]

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
from bladegpt.generate.quantize import quantize
from bladegpt.runtime import cpu_model


def val_bpb(model, data: TokenData, block: int) -> float:
    lengths = torch.tensor([len(data.tokenizer.token_bytes(i)) for i in range(data.tokenizer.vocab_size)])
    nats = n_bytes = 0.0
    with torch.inference_mode():
        for start, skip in zip(*data.covering_windows("val", block)):
            x, y, _ = data.batch("val", start[None], block)
            logits, _ = model(x)
            y = y[:, skip:]  # targets an earlier window had
            nats += F.cross_entropy(logits[:, skip:].flatten(0, 1).float(), y.flatten(), reduction="sum").item()
            n_bytes += lengths[y].sum().item()
    return nats / (math.log(2) * n_bytes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", type=Path)
    parser.add_argument("model")
    parser.add_argument("--block", type=int, default=1024)
    args = parser.parse_args()
    if args.model.endswith(".safetensors"):
        from bladegpt.checkpoint import load_checkpoint

        model = load_checkpoint(Path(args.model))[0]
    else:
        model = source_model(args.model, args.block)
    model.eval()
    data = TokenData(args.dataset)
    block = min(args.block, model.config.block_size)
    print(f"{cpu_model()} · torch {torch.__version__} · {args.model} on {args.dataset}'s val split, windows of {block}")
    fp32 = val_bpb(model, data, block)
    print(f"fp32 {fp32:.4f} bpb", flush=True)
    for precision in ("int8", "int4"):
        bpb = val_bpb(quantize(copy.deepcopy(model), precision), data, block)
        print(f"{precision} weights {bpb:.4f} bpb · {precision} - fp32 {bpb - fp32:+.4f}", flush=True)


if __name__ == "__main__":
    main()
