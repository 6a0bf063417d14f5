"""What an evaluation's saves cost the training's critical path (issue #42): SmolLM2-135M's shape (random
weights, AdamW's moments after one step) saved as the trainer saved before (last + state, then best, written
in the training thread) and as it saves now (a snapshot copied in the training thread; last + state written
by a background thread, best linked to last). Interleaved rounds, medians.

    python scripts/save_bench.py [--rounds 3] [--json out.json]

With --writers: the same 1.6 GB (the weights and AdamW's moments) written by safetensors' save_file and by
tensorfile.save_tensors (O_DIRECT), fsync included, alternating, --gap seconds apart (a run's saves are
tens of seconds apart; a VM may take freed memory back meanwhile). Medians.

    python scripts/save_bench.py --writers [--rounds 3] [--gap 20]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bladegpt import runs  # noqa: E402
from bladegpt.checkpoint import save_checkpoint, save_training, training_snapshot  # noqa: E402
from bladegpt.files import atomic_link, fsync  # noqa: E402
from bladegpt.model import GPT  # noqa: E402
from bladegpt.runtime import cpu_model  # noqa: E402
from bladegpt.tensorfile import save_tensors  # noqa: E402
from bladegpt.sources.hf import model_config  # noqa: E402
from bladegpt.tokenizer.char import CharTokenizer  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from bladegpt.train.saver import BackgroundSaver  # noqa: E402
from scripts.finetune_bench import LLAMA_COMMON, SHAPES  # noqa: E402


def smollm2_with_moments() -> tuple[GPT, list[torch.optim.Optimizer]]:
    cfg = model_config(Path("smollm2-135m"), {**LLAMA_COMMON, **SHAPES["smollm2-135m"]})
    cfg.block_size = 64
    model = GPT(cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    return model, [optimizer]


def writers(model: GPT, optimizers: list[torch.optim.Optimizer], rounds: int, gap: float) -> dict:
    """Seconds to write the weights and moments as one safetensors file, fsync included, by each writer."""
    tensors = {name: t.detach().contiguous() for name, t in model.state_dict().items() if name != "lm_head.weight"}
    tensors.update({f"opt.{i}.{k}": t for i, s in enumerate(optimizers[0].state.values()) for k, t in s.items()})
    size = sum(t.numel() * t.element_size() for t in tensors.values())
    times: dict[str, list[float]] = {"safetensors.torch.save_file": [], "tensorfile.save_tensors (O_DIRECT)": []}
    with tempfile.TemporaryDirectory(prefix="bladegpt-savebench-", dir=".") as folder:
        for _ in range(rounds):
            for name, write in zip(times, (save_file, save_tensors)):
                time.sleep(gap)
                path = Path(folder) / "state.safetensors"
                t0 = time.perf_counter()
                write(tensors, str(path), metadata={"format": "bladegpt-1"})
                fsync(path)
                times[name].append(time.perf_counter() - t0)
                path.unlink()
    return {"cpu": cpu_model(), "bytes": size, "gap_s": gap,
            **{name: {"median_s": round(statistics.median(t), 3), "all_s": [round(x, 3) for x in t]}
               for name, t in times.items()}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--writers", action="store_true", help="time the two writers of a file instead")
    parser.add_argument("--gap", type=float, default=20.0, help="with --writers: seconds between writes")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, optimizers = smollm2_with_moments()
    if args.writers:
        result = writers(model, optimizers, args.rounds, args.gap)
        print(json.dumps(result, indent=1))
        if args.json:
            args.json.write_text(json.dumps(result, indent=1) + "\n")
        return
    tokenizer = CharTokenizer(list("ab"))
    tensors = {"rng.cpu": torch.get_rng_state()}
    info = {"step": 4, "elapsed": 1.0, "last_loss": 2.0, "best_val": 2.5, "best_step": 4, "stale_evals": 0}
    times: dict[str, list[float]] = {"before: in the training thread": [], "now: in the training thread": [],
                                     "now: the background write (off the critical path)": []}
    with tempfile.TemporaryDirectory(prefix="bladegpt-savebench-", dir=".") as folder:
        run_dir = Path(folder)
        saver = BackgroundSaver(run_dir)
        staging: dict = {}  # reused round after round, as the trainer reuses it save after save
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            save_training(run_dir, model, tokenizer, optimizers, tensors, info)
            save_checkpoint(run_dir / runs.BEST, model, tokenizer, step=4, val_loss=2.5)
            times["before: in the training thread"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            write = training_snapshot(run_dir, model, tokenizer, optimizers, tensors, info, staging)
            saver.submit([write, lambda: atomic_link(run_dir / runs.LAST, run_dir / runs.BEST)])
            t1 = time.perf_counter()
            saver.wait()
            times["now: in the training thread"].append(t1 - t0)
            times["now: the background write (off the critical path)"].append(time.perf_counter() - t1)
    result = {name: {"median_s": round(statistics.median(t), 3), "all_s": [round(x, 3) for x in t]}
              for name, t in times.items()}
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
