"""LoRA against full fine-tuning on this machine: peak memory and step time, SmolLM2's shapes with random weights.

    python scripts/lora_bench.py                       # 135M, 360M and 1.7B
    python scripts/lora_bench.py --sizes 135M --pairs 8

Each (size, mode) trains `--steps` steps in a process of its own, at the fine-tune default (batch 4 x 256 tokens,
AdamW), and reports two peaks of resident memory (Linux's VmHWM): building the model (random fp32 weights, then,
for LoRA, the block matrices moved to bf16 one at a time, as a run loading a checkpoint does) and training
(the high-water mark reset after the build). Full fine-tuning is skipped where its ~16 bytes a parameter would
not fit in this machine's memory. Step times from separate processes are only comparable on an idle machine, so
the ratio comes from one process holding both models and alternating their steps (medians of `--pairs` pairs).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# SmolLM2's shapes (shared/research/llama-family.md, from the models' config.json).
SIZES = {
    "135M": dict(n_embd=576, n_layer=30, n_head=9, n_kv_head=3, intermediate_size=1536, rope_theta=100000.0),
    "360M": dict(n_embd=960, n_layer=32, n_head=15, n_kv_head=5, intermediate_size=2560, rope_theta=100000.0),
    "1.7B": dict(n_embd=2048, n_layer=24, n_head=32, n_kv_head=32, intermediate_size=8192, rope_theta=130000.0),
}
BATCH, BLOCK = 4, 256  # the fine-tune default when the memory rows were measured (now 1 x 1,024: train/recipes.py FINETUNE_BLOCK)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def peak_rss_gb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1e6  # kB to GB, as /usr/bin/time's kB are read elsewhere in the docs
    return float("nan")


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident size


def build(size: str, mode: str):
    """(model, optimizers) of SmolLM2's shape at `size`, randomly initialised, for `mode` (full or lora)."""
    import torch

    from bladegpt.config import ModelConfig, TrainConfig
    from bladegpt.lora import LoraConfig, attach
    from bladegpt.model import GPT
    from bladegpt.train.optim import make_optimizers

    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=49152, block_size=BLOCK, arch="llama", norm="rmsnorm", positions="rope",
                      activation="swiglu", layer_norm_eps=1e-5, **SIZES[size])
    model = GPT(cfg)
    lr = 1e-4
    if mode == "lora":
        attach(model, LoraConfig())
        lr *= 10
    return model, make_optimizers(model, TrainConfig(lr=lr, weight_decay=0.0, beta2=0.95), torch.device("cpu"))


def step(model, optimizers, gen) -> float:
    """One optimizer step on a random batch; its wall seconds."""
    import torch

    t0 = time.perf_counter()
    x = torch.randint(0, 49152, (BATCH, BLOCK + 1), generator=gen)
    _, loss = model(x[:, :-1].contiguous(), x[:, 1:].contiguous())
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
    for opt in optimizers:
        opt.step()
        opt.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


def one(size: str, mode: str, steps: int) -> dict:
    import torch

    model, optimizers = build(size, mode)
    params = sum(p.numel() for p in model.parameters())
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    built = peak_rss_gb()
    reset_peak()
    gen = torch.Generator().manual_seed(0)
    times = [step(model, optimizers, gen) for _ in range(steps)]
    return {"size": size, "mode": mode, "params": params, "trained": trained, "build_peak_gb": built,
            "train_peak_gb": peak_rss_gb(), "step_s": times}


def interleaved(size: str, pairs: int) -> dict:
    import torch

    full, full_opt = build(size, "full")
    lora, lora_opt = build(size, "lora")
    gen = torch.Generator().manual_seed(0)
    step(full, full_opt, gen), step(lora, lora_opt, gen)  # warm-up: allocator, first optimizer state
    times = {"full": [], "lora": []}
    for _ in range(pairs):
        times["full"].append(step(full, full_opt, gen))
        times["lora"].append(step(lora, lora_opt, gen))
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"size": size, "pairs": pairs, "full_s": med["full"], "lora_s": med["lora"],
            "lora_over_full": med["lora"] / med["full"], "times": times}


def child(*args: str) -> dict:
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def fits(size: str) -> bool:
    """Full fine-tuning's 16 B a parameter plus ~2 GB of activations within 90% of this machine's memory."""
    cfg = SIZES[size]
    d, ff, layers = cfg["n_embd"], cfg["intermediate_size"], cfg["n_layer"]
    kv = d // cfg["n_head"] * cfg["n_kv_head"]
    params = 49152 * d + layers * (d * (d + 2 * kv) + d * d + 3 * d * ff)
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return 16 * params + 2 * 2**30 < 0.9 * total


def main() -> None:
    global BATCH
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--steps", type=int, default=3, help="steps each memory run trains")
    parser.add_argument("--pairs", type=int, default=5, help="alternating full/LoRA steps timed for the ratio")
    parser.add_argument("--batch", type=int, default=4, help="sequences of 256 tokens a step (4: the fine-tune default)")
    parser.add_argument("--one", nargs=2, metavar=("SIZE", "MODE"), help=argparse.SUPPRESS)
    parser.add_argument("--interleaved", metavar="SIZE", help=argparse.SUPPRESS)
    args = parser.parse_args()
    BATCH = args.batch
    if args.one:
        print(json.dumps(one(*args.one, args.steps)))
        return
    if args.interleaved:
        print(json.dumps(interleaved(args.interleaved, args.pairs)))
        return
    import torch

    print(f"CPU: {cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"load average at start {os.getloadavg()[0]:.1f}")
    print(f"batch {BATCH} x {BLOCK} tokens, AdamW; LoRA rank 16 on every block linear, base matrices in bf16")
    results = []
    for size in args.sizes:
        for mode in ("full", "lora"):
            if mode == "full" and not fits(size):
                print(f"{size} full: not run, ~16 B a parameter does not fit in this machine's memory", flush=True)
                continue
            r = child("--one", size, mode, "--steps", str(args.steps), "--batch", str(BATCH))
            results.append(r)
            if "error" in r:
                print(f"{size} {mode}: failed: {r['error']}", flush=True)
                continue
            print(f"{size} {mode}: {r['params'] / 1e6:.0f}M params, {r['trained'] / 1e6:.2f}M trained; peak "
                  f"{r['build_peak_gb']:.2f} GB building, {r['train_peak_gb']:.2f} GB training; steps "
                  f"{', '.join(f'{t:.1f}' for t in r['step_s'])} s (separate process)", flush=True)
        if fits(size):
            r = child("--interleaved", size, "--pairs", str(args.pairs), "--batch", str(BATCH))
            results.append(r)
            if "error" in r:
                print(f"{size} interleaved: failed: {r['error']}", flush=True)
                continue
            print(f"{size} interleaved ({r['pairs']} pairs, medians): full {r['full_s']:.2f} s, LoRA "
                  f"{r['lora_s']:.2f} s a step, LoRA/full {r['lora_over_full']:.2f}", flush=True)
    print(f"load average at end {os.getloadavg()[0]:.1f}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
