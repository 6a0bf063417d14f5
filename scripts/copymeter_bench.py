"""How fast the copy meter indexes a big training text, in how much memory, and how fast it answers
(issue #23, item 4).

Builds a corpus (default 1 GB) from copies of a text, each copy with 1% of its lowercase letters made
uppercase at random (so copies differ, and every window recurs in many places, as boilerplate does),
prepares it with GPT-2's tokenizer, then, each step in a fresh process (its peak memory its own):
indexes the dataset's train.bin (decode, hash, sort, write the cache file; its peak anonymous memory
sampled every 20 ms, beside the max RSS, which also counts the pages of the files it maps), opens the
cached index,
and measures samples against it: one unrelated 800-character sample, one with an 80-character span
planted from the text, and 64 samples of 800 characters drawn from the text with changes, as
`sample --num-samples 64` would give. Also the in-memory build of the text itself. Prints the CPU.

    python scripts/copymeter_bench.py [--size-mb 1024] [--text ../shared/data/tinyshakespeare.txt] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bladegpt.runtime import cpu_model

REPO = Path(__file__).resolve().parents[1]

BUILD = """
import json, sys, threading, time
import torch
from bladegpt.data import copymeter
from bladegpt import runtime
peak = [0]
def anon():  # the process's own memory, without the pages of files it maps (which the kernel can drop)
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("RssAnon"))
def watch():
    while True:
        peak[0] = max(peak[0], anon())
        time.sleep(0.02)
threading.Thread(target=watch, daemon=True).start()
before = anon()
start = time.perf_counter()
index = copymeter.for_dataset(sys.argv[1])
print(json.dumps({"seconds": time.perf_counter() - start, "entries": len(index.keys), "text_bytes": index.n_bytes,
                  "anon_mb_before": before / 1024, "anon_mb_peak": max(peak[0], anon()) / 1024}))
"""
QUERY = """
import json, random, sys, time
import torch  # loaded already wherever the meter runs (train, sample): not part of opening the index
from bladegpt.data import copymeter
from bladegpt import runtime
start = time.perf_counter()
index = copymeter.for_dataset(sys.argv[1])
opened = time.perf_counter() - start
text = open(sys.argv[2], encoding="utf-8").read()
rng = random.Random(0)
def changed(piece):  # a sample that copies in stretches: a character changed every 20-120
    out = list(piece)
    i = rng.randrange(20, 120)
    while i < len(out):
        out[i] = "#"
        i += rng.randrange(20, 120)
    return "".join(out)
unrelated = "#Zebras juggle 42 quartz yo-yos#" * 25
at = rng.randrange(len(text) - 80)
planted = unrelated[:400] + text[at : at + 80] + unrelated[400:720]
many = [changed(text[a : a + 800]) for a in (rng.randrange(len(text) - 800) for _ in range(64))]
out = {"open_s": opened}
for name, samples in (("unrelated", [unrelated]), ("planted", [planted]), ("many", many), ("many_again", many),
                      ("unrelated_again", [unrelated]), ("planted_again", [planted])):
    t, cpu = time.perf_counter(), time.process_time()
    found = index.measure(samples)
    out[name] = {"seconds": time.perf_counter() - t, "cpu_seconds": time.process_time() - cpu,
                 "chars": sum(map(len, samples)), "line": found.describe(), "longest": found.longest}
print(json.dumps(out))
"""
IN_MEMORY = """
import json, sys, time
from bladegpt.data.copyindex import CopyIndex
data = open(sys.argv[1], "rb").read()
times = []
for _ in range(5):
    t = time.perf_counter()
    CopyIndex.from_bytes(data)
    times.append(time.perf_counter() - t)
print(json.dumps({"bytes": len(data), "seconds": sorted(times)[2]}))
"""


def run(code: str, *args: str) -> dict:
    """A snippet in a fresh interpreter: its JSON output, and its peak RSS in MB (children's max RSS)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"failed:\n{done.stdout}\n{done.stderr}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["peak_rss_mb"] = peak / 1024 if peak > before else None  # None: not above an earlier child's
    return result


def corpus(text: Path, size_mb: int, out: Path) -> None:
    """Copies of `text` until size_mb, each with 1% of its lowercase letters uppercased at random."""
    base = np.frombuffer(text.read_bytes(), dtype=np.uint8)
    lower = np.flatnonzero((base >= ord("a")) & (base <= ord("z")))
    rng = np.random.default_rng(0)
    with open(out, "wb") as f:
        for _ in range(-(-size_mb * 2**20 // len(base))):
            copy = base.copy()
            copy[rng.choice(lower, len(lower) // 100, replace=False)] -= 32
            f.write(copy.tobytes())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mb", type=int, default=1024)
    ap.add_argument("--text", type=Path, default=REPO.parent / "shared" / "data" / "tinyshakespeare.txt")
    ap.add_argument("--keep", type=Path, help="keep the corpus, dataset and index in this folder")
    args = ap.parse_args()
    print(f"{cpu_model()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}", flush=True)
    tmp = tempfile.TemporaryDirectory() if args.keep is None else None
    folder = Path(tmp.name if tmp else args.keep)
    folder.mkdir(parents=True, exist_ok=True)
    results = {"cpu": cpu_model(), "cores": os.cpu_count(), "in_memory": run(IN_MEMORY, str(args.text))}
    print("in memory:", results["in_memory"], flush=True)
    text, data = folder / "corpus.txt", folder / "dataset"
    if not data.is_dir():
        corpus(args.text, args.size_mb, text)
        start = time.perf_counter()
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        subprocess.run([sys.executable, "-m", "bladegpt", "prepare", str(text), "--tokenizer", "gpt2", "--out",
                        str(data)], env=env, check=True, capture_output=True)
        print(f"prepared {text.stat().st_size / 1e6:.0f} MB in {time.perf_counter() - start:.0f} s", flush=True)
        text.unlink()
    for old in data.glob("copymeter-*.idx"):
        old.unlink()
    results["build"] = run(BUILD, str(data))
    index = next(data.glob("copymeter-*.idx"))
    results["build"]["index_file_mb"] = index.stat().st_size / 1e6
    results["build"]["train_bin_mb"] = (data / "train.bin").stat().st_size / 1e6
    print("build:", results["build"], flush=True)
    results["query"] = run(QUERY, str(data), str(args.text))
    print("query:", json.dumps(results["query"], indent=1), flush=True)
    results["load_after"] = os.getloadavg()[0]
    print(json.dumps(results))
    if tmp:
        tmp.cleanup()


if __name__ == "__main__":
    main()
