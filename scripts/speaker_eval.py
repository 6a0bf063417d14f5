"""One character's voice, three ways, scored on the same held-out lines (issue #38, item 6).

From one read of a script and one split (prepare --speaker's: the last whole exchanges, about --val-fraction of
the speaker's bytes), three datasets that share the val split and its mask, so that every run's val bits per
byte, its early stopping and its best checkpoint all read the speaker's held-out lines and nothing else:

    masked  the speaker's lines the targets, everyone else's turns and the action context (prepare --speaker),
            trained with --context-weight 0: the context not trained at all
    weighted  the same dataset at the recipe's own context weight (train's default on a speaker's dataset)
    plain   the same train text, every token a target (the whole screenplay as plain text, in the same frame)
    alone   the speaker's turns only (`K:` and the line), every token a target: their lines cut out by hand

None trains on a held-out exchange. `score` reads any checkpoint (or a pretrained source) on masked's val split:
the speaker's tokens only, each once, in windows of the run's context.

    python scripts/speaker_eval.py build corpora/officer_k_script.txt --speaker K --init-from SMOL --out datasets/voices-k
    python scripts/speaker_eval.py score runs/voices-k/masked-1/best.safetensors --data datasets/voices-k/masked
    python scripts/speaker_eval.py run corpora/officer_k_script.txt --speaker K --init-from SMOL --seeds 1 2 \\
        --results results/voices.jsonl

`run` builds the datasets, trains each (`bladegpt train --init-from SMOL --seed S`, the default fine-tune
recipe, --compile off so that a shared machine's load cannot change what is run), scores its best checkpoint,
talks with it through `bladegpt chat` (the same lines, the same seed), and appends a JSON row a run to
--results (a row already there is skipped: a stopped measurement resumes).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bladegpt.data.speaker import (opening, read_script, speaker_meta, speaker_tokenizer, split_exchanges,  # noqa: E402
                                   write_dataset)
from bladegpt.data.frames import USER, Frame  # noqa: E402

KINDS = ("masked", "plain", "alone", "weighted")
DATASETS = {"weighted": "masked"}  # a kind trained on another kind's dataset
LINES = ["You're late.", "What did you find out there?", "Do you ever dream?", "Tell me about the tree."]


def build(script_path: Path, speakers: list[str], tokenizer_from: str, out: Path, val_fraction: float) -> None:
    """The three datasets under `out`, from one read and one split."""
    script = read_script([script_path], speakers)
    train, val = split_exchanges(script.exchanges, val_fraction, script.name)
    val_pieces = [p for e in val for p in e]
    every = [(text, True) for e in train for text, _ in e]
    alone = [(text, True) for e in train for i, (text, target) in enumerate(e)
             if target or (i + 1 < len(e) and e[i + 1][1])]  # the speaker's cue and their line
    tok = speaker_tokenizer("bpe", None, tokenizer_from, "", "")
    frame = Frame("play", script.name, script.interlocutor or USER)
    meta = speaker_meta(script, frame, opening(train), val_fraction, tokenizer_from, len(val))
    train_pieces = {"masked": [p for e in train for p in e], "plain": every, "alone": alone}
    for kind in ("masked", "plain", "alone"):
        written = write_dataset(out / kind, tok, {"train": train_pieces[kind], "val": val_pieces},
                                {"train": kind == "masked", "val": True}, {**meta, "voice_eval": kind}, force=True)
        print(f"{kind}: {written['train_tokens']:,} train tokens ({written['train_target_tokens']:,} targets), "
              f"{written['val_tokens']:,} val tokens ({written['val_target_tokens']:,} targets)")


def score(checkpoint: str, data_dir: Path, block: int | None = None) -> dict:
    """Loss (nats/token) and bits per byte of the speaker's val tokens, each once, in fp32; the model is a
    BladeGPT checkpoint (a LoRA one with its base) or any pretrained source."""
    import torch

    from bladegpt.data.dataset import TokenData
    from bladegpt.sources import is_bladegpt, load_bladegpt, load_pretrained

    data = TokenData(data_dir)
    if is_bladegpt(checkpoint):
        model, _, _ = load_bladegpt(Path(checkpoint))
    else:
        model = load_pretrained(checkpoint).model
    model.eval()
    T = min(block or model.config.block_size, len(data.splits["val"]) - 1)
    lengths = torch.tensor([len(data.tokenizer.token_bytes(i)) for i in range(data.tokenizer.vocab_size)],
                           dtype=torch.float64)
    starts, skips = data.covering_windows("val", T)
    nats = tokens = n_bytes = 0.0
    with torch.no_grad():
        for start, skip in zip(starts.tolist(), skips.tolist()):
            x, y, _ = data.batch("val", torch.tensor([start]), T)
            y[:, :skip] = -1
            _, loss = model(x, y)
            kept = y >= 0
            nats += float(loss) * int(kept.sum())
            tokens += int(kept.sum())
            n_bytes += float(lengths[y[kept]].sum())
    return {"val_loss": nats / tokens, "val_bpb": nats / (math.log(2) * n_bytes), "val_targets": int(tokens),
            "val_target_bytes": int(n_bytes), "block": T}


def done_rows(results: Path) -> set[tuple[str, int]]:
    if not results.is_file():
        return set()
    return {(r["kind"], r["seed"]) for r in map(json.loads, results.read_text().splitlines()) if r.get("seed") is not None}


def chat(checkpoint: Path, seed: int) -> str:
    """What the voice answers to LINES through `bladegpt chat` (the run's frame, its default other party)."""
    out = subprocess.run([sys.executable, "-m", "bladegpt", "chat", "--checkpoint", str(checkpoint), "--seed",
                          str(seed), "--max-new-tokens", "60"], input="\n".join(LINES) + "\n", text=True,
                         capture_output=True, check=True)
    return out.stdout


def run(args) -> None:
    from bladegpt.runtime import cpu_model

    data_root = Path(args.datasets)
    if not (data_root / "alone" / "meta.json").is_file():
        build(Path(args.script), args.speaker, args.init_from, data_root, args.val_fraction)
    results = Path(args.results)
    results.parent.mkdir(parents=True, exist_ok=True)
    done = done_rows(results)
    for seed in args.seeds:
        for kind in args.kinds:
            label = kind + args.tag
            if (label, seed) in done:
                continue
            run_dir = Path(args.runs) / f"{label}-{seed}"
            t0 = time.perf_counter()
            pinned = ["--context-weight", "0"] if kind == "masked" and "--context-weight" not in args.train_flags else []
            subprocess.run([sys.executable, "-m", "bladegpt", "train", "--data", str(data_root / DATASETS.get(kind, kind)),
                            "--init-from", args.init_from, "--seed", str(seed), "--run", str(run_dir), "--compile", "off",
                            *pinned, *args.train_flags], check=True, stdout=subprocess.DEVNULL)
            wall = time.perf_counter() - t0
            records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
            evals = [r for r in records if r.get("val_bpb") is not None]
            row = {"kind": label, "seed": seed, "train_flags": [*pinned, *args.train_flags], "steps": records[-1]["step"], "wall_s": round(wall, 1),
                   "train_val_bpb": [r["val_bpb"] for r in evals], "cpu": cpu_model(),
                   "threads": os.environ.get("OMP_NUM_THREADS"),
                   **score(str(run_dir / "best.safetensors"), data_root / "masked"),
                   "chat": chat(run_dir / "best.safetensors", seed)}
            with open(results, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
            print(json.dumps({k: v for k, v in row.items() if k != "chat"}), flush=True)
    if not args.base:
        return
    if ("base", None) not in {(r["kind"], r.get("seed")) for r in map(json.loads, results.read_text().splitlines())}:
        row = {"kind": "base", "seed": None, "steps": 0, "cpu": cpu_model(),
               **score(args.init_from, data_root / "masked", args.block)}
        with open(results, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build")
    b.add_argument("script")
    b.add_argument("--speaker", action="append", required=True)
    b.add_argument("--init-from", required=True)
    b.add_argument("--out", required=True)
    b.add_argument("--val-fraction", type=float, default=0.1)
    s = sub.add_parser("score")
    s.add_argument("checkpoint")
    s.add_argument("--data", required=True)
    s.add_argument("--block", type=int, default=None)
    r = sub.add_parser("run")
    r.add_argument("script")
    r.add_argument("--speaker", action="append", required=True)
    r.add_argument("--init-from", required=True)
    r.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    r.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    r.add_argument("--datasets", default="datasets/voices")
    r.add_argument("--runs", default="runs/voices")
    r.add_argument("--results", default="results/voices.jsonl")
    r.add_argument("--val-fraction", type=float, default=0.1)
    r.add_argument("--block", type=int, default=1024, help="the context the base model is scored in")
    r.add_argument("--base", action="store_true", help="and score the untouched --init-from model, once")
    r.add_argument("--tag", default="", help="added to the kind in the rows and run folders: a variant's runs")
    r.add_argument("--train-flags", nargs=argparse.REMAINDER, default=[], help="more `train` flags (last)")
    args = parser.parse_args()
    if args.command == "build":
        build(Path(args.script), args.speaker, args.init_from, Path(args.out), args.val_fraction)
    elif args.command == "score":
        print(json.dumps(score(args.checkpoint, Path(args.data), args.block)))
    else:
        run(args)


if __name__ == "__main__":
    main()
