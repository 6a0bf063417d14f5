"""Does the default path fit each text? (issue #14) For each text: `bladegpt prepare TEXT`, then
`bladegpt train` with no flags, in a fresh folder; prints wall time, the best val bits per byte,
and how much sampled text is copied from the training text (the share of 50-character spans of
samples with fixed seeds that occur verbatim in it). Prints the CPU it ran on.

    python scripts/voice.py [--keep DIR] [TEXT ...]      (default: corpora/officer_k.txt corpora/witcher.txt tinyshakespeare)

--keep DIR keeps each text's dataset and run in DIR/NAME (to sample from it later); otherwise they go
to a temporary folder, removed after.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bladegpt.runtime import cpu_model

REPO = Path(__file__).resolve().parents[1]
TEXTS = [REPO / "corpora" / "officer_k.txt", REPO / "corpora" / "witcher.txt",
         REPO.parent / "shared" / "data" / "tinyshakespeare.txt"]
SPAN = 50
SEEDS = range(1, 6)  # five samples of 400 tokens each


def bladegpt(*args: str, cwd: Path) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "bladegpt", *args], cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"bladegpt {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def verbatim_share(samples: str, text: str) -> float:
    """The share of the samples' 50-character spans found word for word in the text."""
    spans = [samples[i : i + SPAN] for i in range(0, len(samples) - SPAN + 1)]
    return sum(span in text for span in spans) / max(1, len(spans))


def workspace(keep: Path | None, name: str):
    """The folder a text's dataset and run go to: DIR/NAME kept, or a temporary one."""
    if keep is None:
        return tempfile.TemporaryDirectory()
    folder = keep / name
    if folder.exists():  # never into an earlier run's folder
        sys.exit(f"{folder} already exists; choose another --keep folder.")
    folder.mkdir(parents=True)
    return contextlib.nullcontext(str(folder))


def main() -> None:
    args = sys.argv[1:]
    keep = None
    if args[:1] == ["--keep"]:
        if len(args) < 2:
            sys.exit("--keep needs a folder: python scripts/voice.py --keep DIR [TEXT ...]")
        keep, args = Path(args[1]).resolve(), args[2:]
    texts = [Path(t).resolve() for t in args] or TEXTS
    print(f"{cpu_model()}, {os.cpu_count()} cores", flush=True)
    rows = []
    for path in texts:
        with workspace(keep, path.stem) as tmp:
            tmp = Path(tmp)
            start = time.perf_counter()
            bladegpt("prepare", str(path), cwd=tmp)
            bladegpt("train", cwd=tmp)
            wall = time.perf_counter() - start
            run = next((tmp / "runs").iterdir())
            evals = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "val_bpb" in r]
            best = min(evals, key=lambda r: r["val_loss"])
            samples = "".join(bladegpt("sample", "", "--seed", str(seed), "--max-new-tokens", "400", cwd=tmp)
                              for seed in SEEDS)
            share = verbatim_share(samples, path.read_text(encoding="utf-8"))
            rows.append({"text": path.name, "kb": path.stat().st_size / 1e3, "wall_s": wall, "best_val_bpb": best["val_bpb"],
                         "best_step": best["step"], "steps": evals[-1]["step"], "verbatim": share})
            r = rows[-1]
            print(f"{r['text']:<22} {r['kb']:>7.0f} KB  {r['wall_s']:>6.0f} s  best val bpb {r['best_val_bpb']:.3f} "
                  f"(step {r['best_step']} of {r['steps']})  verbatim {r['verbatim']:.1%}", flush=True)
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
