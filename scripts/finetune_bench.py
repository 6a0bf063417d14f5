"""What a GPT-2 fine-tuning step costs here (issue #11): ms/step, tokens/s and peak memory, with the
precision and attention `auto` picks. Random weights of GPT-2's shapes time the same as the real
ones, so nothing is downloaded. Each row runs in a fresh process (its own peak memory).

    python scripts/finetune_bench.py [--steps 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import torch

from bladegpt.bench import Rung, run_rung
from bladegpt.config import FINETUNE, FINETUNE_BLOCK, ModelConfig
from bladegpt.runtime import choose_attention, choose_precision, device_name

SHAPES = {"gpt2": (12, 12, 768), "gpt2-medium": (24, 16, 1024)}
# (model, sequences per step, context): the fine-tune default, and GPT-2's full context at the same tokens/step.
ROWS = [("gpt2", FINETUNE["batch_size"], FINETUNE_BLOCK), ("gpt2", 1, 1024), ("gpt2-medium", FINETUNE["batch_size"], FINETUNE_BLOCK)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="timed steps per row, after 2 warm-up steps")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    device = torch.device("cpu")
    precision = choose_precision(device)
    print(f"{device_name(device)} · torch {torch.__version__} · auto precision {precision}")
    print(f"{'model':<12} {'batch x ctx':>11} {'attention':>9} {'ms/step':>9} {'tok/s':>7} {'peak MB':>8}")
    rows = []
    context = multiprocessing.get_context("spawn")
    for name, batch, block in ROWS:
        n_layer, n_head, n_embd = SHAPES[name]
        cfg = ModelConfig(vocab_size=50257, block_size=block, n_layer=n_layer, n_head=n_head, n_embd=n_embd,
                          bias=True, activation="gelu_tanh")
        attention = choose_attention(device, precision, cfg.attention_shape(batch))
        rung = Rung("auto", "train's pick", precision, attention, False)  # fine-tunes are too short to repay a compile
        with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
            row = pool.submit(run_rung, rung, cfg, batch, args.steps, "cpu").result()
        row.update(model=name, batch=batch, block=block, attention=attention, precision=precision,
                   tok_per_s=batch * block / (row["ms_per_step"] / 1e3), device=device_name(device))
        rows.append(row)
        print(f"{name:<12} {f'{batch} x {block}':>11} {attention:>9} {row['ms_per_step']:>9.0f} "
              f"{row['tok_per_s']:>7.0f} {row['peak_mem_mb']:>8.0f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
