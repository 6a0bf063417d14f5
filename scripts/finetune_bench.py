"""A fine-tuning step of BladeGPT beside transformers' (issues #11, #23): the same weights, batch,
context and precision; forward, backward and a fused AdamW step each. Random weights of the real
shapes (SmolLM2-135M, SmolLM2-360M, GPT-2 124M), which time as the real ones, so nothing is downloaded.

BladeGPT runs as `train` runs it (auto precision, auto attention, compiled blocks, the chunked loss) and
eager; transformers eager with SDPA attention (its default) at the same precision. Timing: one process
per model, the contenders alternating step by step so a slow spell of the machine hits all of them;
medians after 2 warm-up steps. Peak memory: each contender alone in a fresh process (RSS on a CPU).

    python scripts/finetune_bench.py [--models smollm2-135m,smollm2-360m] [--steps 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import multiprocessing
import resource
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bladegpt.train.recipes import FINETUNE_BLOCK, FINETUNE_TOKENS
from bladegpt.runtime import autocast, choose_attention, choose_precision, device_name  # noqa: E402

# transformers config.json fields of each shape (../shared/research/llama-family.md; GPT-2's own).
SHAPES = {
    "smollm2-135m": dict(model_type="llama", hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, rope_theta=100000.0),
    "smollm2-360m": dict(model_type="llama", hidden_size=960, intermediate_size=2560, num_hidden_layers=32,
                         num_attention_heads=15, num_key_value_heads=5, rope_theta=100000.0),
    "gpt2": dict(model_type="gpt2", n_embd=768, n_layer=12, n_head=12, vocab_size=50257),
}
LLAMA_COMMON = dict(vocab_size=49152, tie_word_embeddings=True, max_position_embeddings=8192, rms_norm_eps=1e-5)
CONTENDERS = ("BladeGPT", "BladeGPT eager", "transformers")
WARMUP = 2


def build(name: str, block: int, batch: int, precision: str):
    """(BladeGPT model, transformers model) holding the same random weights, in training mode."""
    import transformers

    from bladegpt.sources.base import build_model
    from bladegpt.sources.hf import gpt2_state_dict, llama_state_dict, model_config

    fields = {**(LLAMA_COMMON if SHAPES[name]["model_type"] == "llama" else {}), **SHAPES[name]}
    torch.manual_seed(0)
    config = transformers.AutoConfig.for_model(**fields)
    hf = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    cfg = model_config(Path(name), fields)
    cfg.block_size = min(cfg.block_size, block)
    pairs = list(hf.state_dict().items())
    state = gpt2_state_dict(pairs) if fields["model_type"] == "gpt2" else llama_state_dict(pairs, cfg)
    ours = build_model(cfg, state, name)
    attention = choose_attention(torch.device("cpu"), precision, cfg.attention_shape(batch))
    ours.set_attention(attention)
    return ours.train(), hf.train()


def stepper(who: str, ours, hf, x, y, precision: str, share: bool = True):
    """One training step of `who` as a function; BladeGPT's blocks compiled as `train` compiles them
    (on a copy of the model where `share`: the eager contender trains the original)."""
    if who == "BladeGPT":
        ours = copy.deepcopy(ours) if share else ours
        ours.compile_blocks()
    model = hf if who == "transformers" else ours
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
    device = torch.device("cpu")

    def step() -> float:
        with autocast(device, precision):
            if who == "transformers":
                loss = model(input_ids=x, labels=y).loss  # labels shifted inside: the same work
            else:
                _, loss = model(x, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    return step


def timing(name: str, block: int, batch: int, steps: int, precision: str) -> dict:
    ours, hf = build(name, block, batch, precision)
    x = torch.randint(0, 49152 if name != "gpt2" else 50257, (batch, block))
    steps_of = {who: stepper(who, ours, hf, x, x, precision) for who in CONTENDERS}
    times = {who: [] for who in CONTENDERS}
    for i in range(WARMUP + steps):
        for who, step in steps_of.items():
            t0 = time.perf_counter()
            step()
            if i >= WARMUP:
                times[who].append(time.perf_counter() - t0)
    return {who: statistics.median(t) for who, t in times.items()}


def peak_memory(name: str, block: int, batch: int, who: str, precision: str) -> float:
    """Peak RSS (MB) of a fresh process that builds only `who`'s model (random weights of the shape)
    and trains it for two steps: weights, gradients, AdamW's moments and activations."""
    from bladegpt.model import GPT
    from bladegpt.sources.hf import model_config

    fields = {**(LLAMA_COMMON if SHAPES[name]["model_type"] == "llama" else {}), **SHAPES[name]}
    if who == "transformers":
        import transformers

        config = transformers.AutoConfig.for_model(**fields)
        model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").train()
    else:
        cfg = model_config(Path(name), fields)
        cfg.block_size = min(cfg.block_size, block)
        model = GPT(cfg).train()
    x = torch.randint(0, fields["vocab_size"], (batch, block))
    step = stepper(who, model, model, x, x, precision, share=False)
    for _ in range(2):
        step()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="smollm2-135m,smollm2-360m", help=f"comma-separated: {', '.join(SHAPES)}")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per contender, after 2 warm-up steps")
    parser.add_argument("--batch", type=int, default=FINETUNE_TOKENS // FINETUNE_BLOCK)
    parser.add_argument("--block", type=int, default=FINETUNE_BLOCK)
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    device = torch.device("cpu")
    precision = choose_precision(device)
    print(f"{device_name(device)} · torch {torch.__version__} · precision {precision} (auto) · "
          f"{args.batch} x {args.block} tokens a step", flush=True)
    print(f"{'model':<14} {'contender':<16} {'ms/step':>9} {'tok/s':>7} {'vs transformers':>15} {'peak MB':>8}")
    rows = []
    context = multiprocessing.get_context("spawn")
    for name in args.models.split(","):
        with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
            times = pool.submit(timing, name, args.block, args.batch, args.steps, precision).result()
        for who in CONTENDERS:
            with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
                peak = pool.submit(peak_memory, name, args.block, args.batch, who, precision).result()
            row = dict(model=name, contender=who, ms_per_step=times[who] * 1e3,
                       tok_per_s=args.batch * args.block / times[who], speedup=times["transformers"] / times[who],
                       peak_mb=peak, precision=precision, batch=args.batch, block=args.block, device=device_name(device))
            rows.append(row)
            print(f"{name:<14} {who:<16} {row['ms_per_step']:>9,.0f} {row['tok_per_s']:>7.0f} "
                  f"{row['speedup']:>14.2f}x {row['peak_mb']:>8,.0f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
