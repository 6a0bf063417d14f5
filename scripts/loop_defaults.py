"""Does a default against loops pay (issue #41, item 3)? Samples of a trained run under several decoding settings,
each measured by the voice report (generate/voice.py: loops, style distance from the held-out text) and the copy
meter; bits per byte is the model's, unchanged by decoding.

Settings: the defaults (temperature 0.8, top-k 200, nothing against repeats); `--repetition-penalty` 1.1 and 1.3
(CTRL's, what BladeGPT has); and DRY ("Don't Repeat Yourself", p-e-w's sampler as llama.cpp's
llama_sampler_dry_apply runs it, ported from koboldcpp): a token that would extend a sequence already in the
context past `allowed_length` tokens loses multiplier * base ** (length - allowed_length) from its logit, the
length counted back from the end of the context to the last sequence breaker (a token whose text holds "\\n",
":", '"' or "*": llama.cpp's defaults, single characters, so each is one token's match), and a breaker itself is
never penalised. DRY is written here, not in the package: it goes there only if it measures better.

Each setting draws `--samples` samples (seeds 0..n-1, one batch) of `--tokens` tokens from an empty prompt, as an
evaluation does; per setting: the median over samples of each sample's loops and style distance, the pooled style
distance (all samples' words together) and the copied share. One JSON row a setting to --out; prints the CPU.

    OMP_NUM_THREADS=2 python scripts/loop_defaults.py runs/officer_k-1 --out results/loop_defaults_smollm2.jsonl
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from bladegpt.data import copymeter
from bladegpt.data.dataset import TokenData
from bladegpt.generate import engine
from bladegpt.generate.sampler import Sampler
from bladegpt.generate.settings import SampleSettings
from bladegpt.generate.voice import StyleReference, loops
from bladegpt.runs import read_run
from bladegpt.runtime import cpu_model

BREAKERS = ("\n", ":", '"', "*")  # llama.cpp's default dry_sequence_breakers
ORIGINAL = engine.sample_next_token


def dry_penalties(context: list[int], breaker: set[int], multiplier: float, base: float, allowed: int) -> dict[int, float]:
    """id -> what DRY subtracts from its logit after `context` (llama_sampler_dry_apply's steps 1-4, directly)."""
    n = len(context)
    if n <= allowed:
        return {}
    limit = n  # step 1: a repeat may not reach back past the last breaker
    for i in range(n):
        if context[n - 1 - i] in breaker:
            limit = i
            break
    if limit < allowed:
        return {}
    longest: dict[int, int] = {}
    for j in range(n - 1):  # steps 2-3: the repeat that ends at j and at the end; the token after j would extend it
        length = 0
        while length < min(limit, j + 1) and context[j - length] == context[n - 1 - length]:
            length += 1
        if length >= allowed:
            following = context[j + 1]
            longest[following] = max(longest.get(following, 0), length)
    return {t: multiplier * base ** (length - allowed) for t, length in longest.items() if t not in breaker}


def with_dry(breaker: set[int], multiplier: float, base: float, allowed: int):
    """engine.sample_next_token with DRY applied first, from `seen` (generate_batch passes it under a penalty of 1)."""

    def sample(logits, generator=None, repetition_penalty=None, seen=None, **knobs):
        logits = logits.float().clone()
        for row, context in enumerate(seen.tolist()):
            for token, penalty in dry_penalties(context, breaker, multiplier, base, allowed).items():
                logits[row, token] -= penalty
        return ORIGINAL(logits, generator, **knobs)

    return sample


def measure(sampler: Sampler, reference: StyleReference, index, args, name: str, penalty: float | None,
            dry: tuple[float, float, int] | None) -> dict:
    tok = sampler.tokenizer
    engine.sample_next_token = ORIGINAL
    if dry is not None:
        breaker = {i for i in range(tok.vocab_size) if any(b.encode() in tok.token_bytes(i) for b in BREAKERS)}
        engine.sample_next_token = with_dry(breaker, *dry)
        penalty = 1.0  # generate_batch passes `seen` only under a penalty; 1 changes nothing
    settings = SampleSettings(args.tokens, repetition_penalty=penalty, seed=0)
    t0 = time.perf_counter()
    texts: dict[int, str] = {}
    for i, piece in sampler.samples("", args.samples, settings):
        texts[i] = texts.get(i, "") + piece
    seconds = time.perf_counter() - t0
    samples = [texts.get(i, "") for i in range(args.samples)]
    each_loops = [x for s in samples if (x := loops([s])) is not None]
    each_style = [x for s in samples if (x := reference.distance([s])) is not None]
    copying = index.measure(samples)
    median = lambda xs: statistics.median(xs) if xs else None  # noqa: E731
    return {"setting": name, "repetition_penalty": penalty if dry is None else None, "dry": dry,
            "samples": args.samples, "tokens": args.tokens, "loops_median": median(each_loops),
            "loops_mean": statistics.fmean(each_loops) if each_loops else None, "loops_pooled": loops(samples),
            "style_median": median(each_style), "style_pooled": reference.distance(samples),
            "copied": copying.share, "longest_copy": copying.longest, "seconds": round(seconds, 1),
            "looping_samples": sum(x > 0.1 for x in each_loops), "loops_each": each_loops,
            "style_each": [round(x, 3) for x in each_style], "first_sample": samples[0][:300]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--settings", default="default,rep1.1,rep1.3,dry0.8")
    parser.add_argument("--precision", default="auto", help="sample's --precision (auto measures; int8 on a busy CPU)")
    args = parser.parse_args()
    torch.set_num_threads(int(__import__("os").environ.get("OMP_NUM_THREADS", "1")))
    saved = read_run(args.run)
    reference = StyleReference.from_text(TokenData(Path(saved["dataset"])).target_text("val"))
    index = copymeter.for_dataset(Path(saved["dataset"]))
    sampler = Sampler(args.run / "best.safetensors", "auto", args.precision, "off")
    known = {"default": (None, None), "rep1.1": (1.1, None), "rep1.3": (1.3, None),
             "dry0.8": (None, (0.8, 1.75, 2)), "dry0.4": (None, (0.4, 1.75, 2))}
    print(f"{cpu_model()} · {args.run} · {sampler.precision} · {args.samples} samples x {args.tokens} tokens")
    with open(args.out, "a", encoding="utf-8") as out:
        for name in args.settings.split(","):
            row = {"run": str(args.run), "cpu": cpu_model(), "precision": sampler.precision,
                   **measure(sampler, reference, index, args, name, *known[name])}
            out.write(json.dumps(row) + "\n")
            out.flush()
            print(name, {k: row[k] for k in ("loops_median", "loops_mean", "looping_samples", "style_median",
                                              "style_pooled", "copied", "seconds")}, flush=True)


if __name__ == "__main__":
    main()
