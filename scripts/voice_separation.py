"""How well the style distance (generate/voice.py) tells a text's own voice from another's, by length (issue #41).

For each held-out text (the last tenth of a corpus, as a val split), pieces of L words drawn evenly from the
first nine tenths (its own voice) and from other texts are scored; per L: the median distance of each and the
AUC, the chance that a random own piece scores below a random other piece (0.5: no better than a coin). Also
times the held-out statistics (made once a run) and one piece's distance. One JSON row per (held-out, L) to
--out; prints the CPU.

    OMP_NUM_THREADS=1 python scripts/voice_separation.py --out results/voice_separation.jsonl
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from bladegpt.generate.voice import StyleReference, words
from bladegpt.runtime import cpu_model

REPO = Path(__file__).resolve().parents[1]
TEXTS = {"officer_k": REPO / "corpora" / "officer_k.txt", "witcher": REPO / "corpora" / "witcher.txt",
         "tinyshakespeare": REPO.parent / "shared" / "data" / "tinyshakespeare.txt"}
LENGTHS = (45, 90, 200, 400, 1600)
PIECES = 200


def auc(own: list[float], other: list[float]) -> float:
    a, b = np.array(own)[:, None], np.array(other)[None, :]
    return float((a < b).mean() + 0.5 * (a == b).mean())


def scored(reference: StyleReference, text: str, length: int) -> list[float]:
    w = words(text)
    return [reference.distance([" ".join(w[s : s + length])]) for s in np.linspace(0, len(w) - length, PIECES).astype(int)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    texts = {name: path.read_text(encoding="utf-8")[:300_000] for name, path in TEXTS.items() if path.is_file()}
    print(cpu_model())
    with open(args.out, "w", encoding="utf-8") as out:
        for held in ("officer_k", "witcher"):
            cut = int(len(texts[held]) * 0.9)
            t0 = time.perf_counter()
            reference = StyleReference.from_text(texts[held][cut:])
            made_ms = 1e3 * (time.perf_counter() - t0)
            for length in LENGTHS:
                t0 = time.perf_counter()
                own = scored(reference, texts[held][:cut], length)
                piece_ms = 1e3 * (time.perf_counter() - t0) / PIECES
                row = {"held_out": held, "held_out_words": reference.n_words, "statistics_ms": round(made_ms, 2),
                       "words": length, "pieces": PIECES, "ms_per_piece": round(piece_ms, 3),
                       "own_median": round(float(np.median(own)), 3),
                       "own_quartiles": [round(float(np.percentile(own, q)), 3) for q in (25, 75)], "cpu": cpu_model()}
                for other in texts:
                    if other != held:
                        theirs = scored(reference, texts[other], length)
                        row[f"{other}_median"] = round(float(np.median(theirs)), 3)
                        row[f"{other}_auc"] = round(auc(own, theirs), 3)
                out.write(json.dumps(row) + "\n")
                print(row, flush=True)


if __name__ == "__main__":
    main()
