"""How fast `prepare` encodes a big corpus, and in how much memory (issue #15).

Builds a corpus (default 1 GB) by repeating a text, then times `prepare` with each tokenizer
beside the floor to beat: tiktoken's single-threaded encoding of the same bytes with GPT-2's
BPE. Also a folder of 10,000 small files against one file of the same bytes. Each row runs in
its own process, so its peak memory (max RSS) is its own. Prints the CPU it ran on.

    python scripts/prepare_bench.py [--size-mb 1024] [--text ../shared/data/tinyshakespeare.txt] [--corpus FILE]
                                    [--gguf MODEL.gguf] [--rows floor,gpt2,hf]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bladegpt.runtime import cpu_model

# Each row: a snippet run in a fresh interpreter; it prints seconds, the peak RSS is read after.
FLOOR = """
import sys, time, tiktoken
from bladegpt.tokenizer import TiktokenTokenizer
enc = TiktokenTokenizer.gpt2().encoding
start = time.perf_counter()
with open(sys.argv[1], encoding="utf-8") as f:
    while piece := f.read(1 << 20):
        enc.encode_ordinary(piece)
print(time.perf_counter() - start)
"""
PREPARE = """
import sys, time
from bladegpt.data.prepare import prepare
start = time.perf_counter()
prepare([sys.argv[1]], out_dir=sys.argv[2], tokenizer=sys.argv[3], force=True)
print(time.perf_counter() - start)
"""
# A pretrained model's tokenizer (Hugging Face tokenizers, kind "hf"), read from a GGUF file.
HF_FLOOR = """
import sys, time
from bladegpt.tokenizer.hf import HFTokenizer
from bladegpt.sources.gguf import read_metadata as read_gguf_metadata
tok = HFTokenizer.from_gguf(read_gguf_metadata(sys.argv[2])).tokenizer
start = time.perf_counter()
with open(sys.argv[1], encoding="utf-8") as f:
    while piece := f.read(1 << 20):
        tok.encode(piece, add_special_tokens=False)  # one sequence: one thread
print(time.perf_counter() - start)
"""
PREPARE_HF = """
import sys, time
import bladegpt.sources
from bladegpt.tokenizer.hf import HFTokenizer
from bladegpt.sources.gguf import read_metadata as read_gguf_metadata
from bladegpt.data.prepare import prepare
tok = HFTokenizer.from_gguf(read_gguf_metadata(sys.argv[3]))
bladegpt.sources.load_tokenizer_from = lambda source: tok  # the tokenizer prepare --tokenizer-from would load
start = time.perf_counter()
prepare([sys.argv[1]], out_dir=sys.argv[2], tokenizer_from=sys.argv[3], force=True)
print(time.perf_counter() - start)
"""
ROWS = ("gpt2", "bpe", "char", "many", "hf")  # besides the floor, always timed
MEASURE = """
import resource, subprocess, sys
out = subprocess.run([sys.executable, "-c", sys.argv[1], *sys.argv[2:]], capture_output=True, text=True, check=True)
print(out.stdout.strip(), resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)
"""


def run(code: str, *args: str) -> tuple[float, float]:
    """(seconds, peak MB) of `code` in a fresh process."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = subprocess.run([sys.executable, "-c", MEASURE, code, *args], capture_output=True, text=True, env=env)
    if out.returncode:
        sys.exit(out.stderr)
    seconds, peak = out.stdout.split()
    return float(seconds), float(peak)


def build(text: Path, size: int, folder: Path) -> tuple[Path, Path]:
    """One file of `size` bytes, and a folder of 10,000 files holding a tenth of it (or all, if smaller)."""
    chunk = text.read_text(encoding="utf-8")
    big = folder / "corpus.txt"
    with open(big, "w", encoding="utf-8") as f:
        written = 0
        while written < size:
            f.write(chunk)
            written += len(chunk.encode("utf-8"))
    many = folder / "many"
    many.mkdir()
    per_file = max(1, min(size, 100 << 20) // 10_000)
    with open(big, "rb") as f:
        blob = f.read(per_file * 10_000)
    for i in range(10_000):  # cut at line breaks so each file is whole lines
        part = blob[i * per_file : (i + 1) * per_file]
        (many / f"{i:05d}.txt").write_bytes(part.rsplit(b"\n", 1)[0] + b"\n" if b"\n" in part else part)
    return big, many


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--text", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare.txt"))
    parser.add_argument("--corpus", help="use this file instead of building one")
    parser.add_argument("--json", help="also write the rows here")
    parser.add_argument("--gguf", help="also time this GGUF file's tokenizer (kind hf), e.g. SmolLM2's")
    parser.add_argument("--rows", default=",".join(ROWS), help=f"which rows, of {','.join(ROWS)}")
    args = parser.parse_args()
    wanted = set(args.rows.split(",")) - ({"hf"} if args.gguf is None else set())
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.corpus:
            big, many = Path(args.corpus), None
        else:
            big, many = build(Path(args.text), args.size_mb << 20, tmp)
        mb = big.stat().st_size / 1e6
        print(f"{cpu_model()}, {os.cpu_count()} cores; corpus {mb:,.0f} MB ({big})", flush=True)
        rows = []
        seconds, peak = run(FLOOR, str(big))
        floor = mb / seconds
        rows.append({"row": "tiktoken gpt2, one thread (the floor)", "mb_s": floor, "peak_mb": peak, "seconds": seconds})
        for kind in ("gpt2", "bpe", "char"):
            if kind in wanted:
                seconds, peak = run(PREPARE, str(big), str(tmp / f"out-{kind}"), kind)
                rows.append({"row": f"prepare --tokenizer {kind}", "mb_s": mb / seconds, "peak_mb": peak, "seconds": seconds})
        if "hf" in wanted:
            name = Path(args.gguf).name
            seconds, peak = run(HF_FLOOR, str(big), args.gguf)
            rows.append({"row": f"tokenizers, one thread ({name})", "mb_s": mb / seconds, "peak_mb": peak, "seconds": seconds})
            seconds, peak = run(PREPARE_HF, str(big), str(tmp / "out-hf"), args.gguf)
            rows.append({"row": f"prepare, kind hf ({name})", "mb_s": mb / seconds, "peak_mb": peak, "seconds": seconds})
        if many is not None and "many" in wanted:
            many_mb = sum(p.stat().st_size for p in many.iterdir()) / 1e6
            one = tmp / "one.txt"
            one.write_bytes(b"\n\n".join(p.read_bytes() for p in sorted(many.iterdir())))
            for label, path, size in (("10,000 files", many, many_mb), ("the same bytes, one file", one, one.stat().st_size / 1e6)):
                seconds, peak = run(PREPARE, str(path), str(tmp / "out-many"), "gpt2")
                rows.append({"row": f"prepare --tokenizer gpt2, {label} ({size:,.0f} MB)", "mb_s": size / seconds,
                             "peak_mb": peak, "seconds": seconds})
        print(f"{'':<60} {'MB/s':>7} {'x floor':>8} {'peak MB':>8} {'seconds':>8}")
        for r in rows:
            r["x_floor"] = r["mb_s"] / floor
            print(f"{r['row']:<60} {r['mb_s']:>7.1f} {r['x_floor']:>7.2f}x {r['peak_mb']:>8.0f} {r['seconds']:>8.1f}")
        if args.json:
            Path(args.json).write_text(json.dumps({"cpu": cpu_model(), "corpus_mb": mb, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
