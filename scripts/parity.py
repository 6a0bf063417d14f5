"""nanoGPT parity and time-to-target on tinyshakespeare, char-level: prints wall times and val losses.

Usage: python scripts/parity.py PATH/TO/tinyshakespeare.txt
Each run is a real `bladegpt train` subprocess, timed from launch to exit (start-up included).
"""

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

NANOGPT_WALL_S = 63.0  # nanoGPT's CPU run on this machine kind (shared/data/README.md)
TARGET = 1.89
NANO = ["--preset", "nano", "--lr", "1e-3", "--dropout", "0", "--eval-iters", "20", "--sample-tokens", "0"]
RUNS = {
    # nanoGPT's exact work: 4/4/128, block 64, batch 12, 2000 steps, eval every 250.
    "parity": NANO + ["--steps", "2000", "--eval-interval", "250"],
    # Fastest recipe found to reach the target: higher lr, fewer steps, one eval at the end.
    "beyond": ["--preset", "nano", "--dropout", "0", "--lr", "3e-3", "--batch-size", "16", "--steps", "900",
               "--warmup-steps", "50", "--eval-interval", "900", "--eval-iters", "20", "--sample-tokens", "0"],
}


def main(corpus: str) -> None:
    bladegpt = str(Path(sys.executable).with_name("bladegpt"))
    work = Path(tempfile.mkdtemp(prefix="bladegpt-parity-"))
    corpus = str(Path(corpus).resolve())
    subprocess.run([bladegpt, "prepare", corpus, "--tokenizer", "char"], cwd=work, check=True, capture_output=True)
    results = {}
    for name, args in RUNS.items():
        t0 = time.perf_counter()
        subprocess.run([bladegpt, "train", *args, "--run", f"runs/{name}"], cwd=work, check=True, capture_output=True)
        wall = time.perf_counter() - t0
        records = [json.loads(line) for line in (work / "runs" / name / "metrics.jsonl").read_text().splitlines()]
        evals = [r for r in records if "val_loss" in r]
        run = json.loads((work / "runs" / name / "run.json").read_text())
        results[name] = {"wall_s": round(wall, 1), "final_val_loss": evals[-1]["val_loss"],
                         "reached_target": evals[-1]["val_loss"] <= TARGET, "args": args,
                         "train": run["train"]}
        print(f"{name:7s} wall {wall:6.1f} s  ({wall / NANOGPT_WALL_S:.2f}x nanoGPT's {NANOGPT_WALL_S:.0f} s)  "
              f"final val loss {evals[-1]['val_loss']:.4f}  target <= {TARGET}: "
              f"{'yes' if evals[-1]['val_loss'] <= TARGET else 'NO'}", flush=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/tinyshakespeare.txt")
