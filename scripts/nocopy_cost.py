"""What `--no-copy N` costs per token (issue #41, item 1), single-threaded, on a small and a large training text.

For each text: its copy index built in memory, then 2,000 tokens a sample drawn over a byte-level vocabulary (256 ids
and a stop id) from made-up logits, with and without the guard, in two regimes: `novel` (random logits: the
drawn token seldom copies, one check a token) and `reciting` (the text's next byte 12 logits above the rest,
from a random place: the model recites, and the guard refuses the token that would reach N characters). The
cost is the guarded time per token minus the plain one; a batch's rows are first checked in one query (not
counted), then each redraw alone (single checks). The large text
is tinyshakespeare's lines shuffled anew for each copy, repeated to --big-mb (so every line recurs ~90 times
at 100 MB, each time between other lines). Prints the CPU.

    OMP_NUM_THREADS=1 python scripts/nocopy_cost.py [--big-mb 100] [--n 50]
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import torch

from bladegpt.data.copyindex import CopyIndex
from bladegpt.generate.engine import sample_guarded, sample_next_token
from bladegpt.generate.nocopy import Guard, NoCopy
from bladegpt.runtime import cpu_model

REPO = Path(__file__).resolve().parents[1]
VOCAB = [bytes([i]) for i in range(256)] + [b""]
STOP = 256


def shuffled_copies(source: Path, megabytes: int) -> bytes:
    lines = source.read_bytes().splitlines(keepends=True)
    out, size, k = [], 0, 0
    while size < megabytes * 2**20:
        copy = lines[:]
        random.Random(k).shuffle(copy)
        out.append(b"".join(copy))
        size += len(out[-1])
        k += 1
    return b"".join(out)[: megabytes * 2**20]


class Counting(Guard):
    checks = 0

    def copies(self, ids):
        Counting.checks += 1
        return super().copies(ids)


def run(text: bytes, rule: NoCopy | None, reciting: bool, steps: int, rows: int = 1) -> tuple[float, list[str]]:
    """Seconds per token and row, and the texts drawn."""
    gens = [torch.Generator().manual_seed(r) for r in range(rows)]
    noise = torch.Generator().manual_seed(100)
    starts = [random.Random(r).randrange(len(text) - steps - 1) for r in range(rows)]
    guards = None if rule is None else [Counting(rule) for _ in range(rows)]
    knobs = dict(temperature=0.8, top_k=40)
    spent, drawn = 0.0, []
    for t in range(steps):
        logits = torch.randn(rows, len(VOCAB), generator=noise)
        if reciting:
            logits[torch.arange(rows), [text[s + t] for s in starts]] += 12.0
        t0 = time.perf_counter()
        if guards is None:
            token = sample_next_token(logits, gens, **knobs)
        else:
            token = sample_guarded(logits, gens, knobs, None, guards)
        spent += time.perf_counter() - t0
        drawn.append(token.tolist())
    texts = [b"".join(VOCAB[step[r]] for step in drawn).decode("utf-8", "replace") for r in range(rows)]
    return spent / steps / rows, texts


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--big-mb", type=int, default=100)
    parser.add_argument("--n", type=int, default=50)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--rows", type=int, default=16, help="samples of the batched regime")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"CPU: {cpu_model()} · 1 thread · --no-copy {args.n} · {args.steps} tokens a regime")
    texts = {"officer_k (66 KB)": (REPO / "corpora/officer_k.txt").read_bytes(),
             f"tinyshakespeare shuffled ({args.big_mb} MB)": shuffled_copies(
                 Path("/work/shared/data/tinyshakespeare.txt"), args.big_mb)}
    for name, text in texts.items():
        t0 = time.perf_counter()
        index = CopyIndex.from_bytes(text)
        built = time.perf_counter() - t0
        size = (index.text.nbytes + index.keys.nbytes) / 2**20
        print(f"{name}: index built in {built:.1f} s, {size:,.1f} MB in memory (text + keys)")
        rule = NoCopy(index, args.n, VOCAB, (STOP,))
        for reciting, rows in ((False, 1), (True, 1), (True, args.rows)):
            plain, free = run(text, None, reciting, args.steps, rows)
            Counting.checks = 0
            guarded, kept = run(text, rule, reciting, args.steps, rows)
            print(f"  {'reciting' if reciting else 'novel':8s} x{rows:<2d}: plain {plain * 1e6:5.0f} us/token, guarded "
                  f"{guarded * 1e6:5.0f} us/token: {(guarded - plain) * 1e6:5.0f} us/token more, "
                  f"{Counting.checks / args.steps / rows:.2f} single checks/token, forced {rule.forced}; "
                  f"{index.measure(free).describe()} -> {index.measure(kept).describe()}")

if __name__ == "__main__":
    main()
