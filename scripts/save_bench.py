"""What an evaluation's saves cost the training's critical path (issue #42): SmolLM2-135M's shape (random
weights, AdamW's moments after one step) saved as the trainer saved before (last + state, then best, written
in the training thread) and as it saves now (a snapshot copied in the training thread; last + state written
by a background thread, best linked to last). Interleaved rounds, medians.

    python scripts/save_bench.py [--rounds 3] [--json out.json]
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
from bladegpt.files import atomic_link  # noqa: E402
from bladegpt.model import GPT  # noqa: E402
from bladegpt.sources.hf import model_config  # noqa: E402
from bladegpt.tokenizer.char import CharTokenizer  # noqa: E402
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, optimizers = smollm2_with_moments()
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
