"""GPT-2's block against the modern changes on the default path (issue #26): for each job
TEXT:BLOCK:SEED[:STEPS[:FLAGS]], `bladegpt train --block BLOCK --seed SEED` on the text's default dataset (`bladegpt prepare TEXT`, made once per
text); prints the best val bits per byte, its step and the steps run, the wall time of train and its ms per step,
and the share of sampled 50-character spans found verbatim in the text. Prints the CPU it ran on; appends each
row to --out as JSON, and skips jobs already there (a stopped measurement resumes).

The default run's steps and warmup are passed as flags (the same numbers the default plan picks, or STEPS), so
its 10-minute cut cannot act, and --compile off: on a shared machine that cut, and auto's choice to compile, would
make the loss depend on the other users' load.
With --jobs N, N runs at a time, each on one thread (on a loaded machine two threads of one run wait on each
other); wall times are then side by side, comparable with each other, not with a run alone.

    python scripts/blocks.py [--out results/blocks.jsonl] [--jobs 2] officer_k:gpt2:1337 officer_k:modern:1337 ...

`--speed BLOCK ...` instead times forward + backward of the small-text default model (4 x 192, block 128, batch 32,
2,112 ids, dropout 0.2) for each block, eager and with its blocks compiled (as train compiles them), interleaved
in rounds so a change in the machine's load falls on all of them: median ms per step and its ratio to the first
block's (eager to eager, compiled to compiled).

Several invocations may share one --out: each job is claimed (in OUT.claims) before it starts, so none runs twice.

TEXT is corpora/TEXT.txt, or tinyshakespeare (../shared/data); BLOCK is what `train --block` takes; FLAGS are more
train flags, comma-separated, each as --flag=value (officer_k:modern:1::--weight-decay=0.5,--dropout=0.3).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bladegpt.runtime import cpu_model

sys.path.insert(0, str(Path(__file__).parent))
from voice import verbatim_share  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def text_path(name: str) -> Path:
    corpus = REPO / "corpora" / f"{name}.txt"
    return corpus if corpus.exists() else REPO.parent / "shared" / "data" / f"{name}.txt"


def bladegpt(*args: str, cwd: Path, threads: int | None = None) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO), **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    done = subprocess.run([sys.executable, "-m", "bladegpt", *args], cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"bladegpt {' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done.stdout


def planned(data: Path, block: str, steps: str | None) -> list[str]:
    """The default plan's --steps and --warmup-steps for this dataset (or STEPS and its warmup)."""
    from bladegpt.train.plan import new_plan

    train = {"steps": int(steps)} if steps else {}
    plan = new_plan(data / "datasets" / next((data / "datasets").iterdir()).name, None, {"block": block}, train, {})
    return ["--steps", str(plan.train_cfg.steps), "--warmup-steps", str(plan.train_cfg.warmup_steps),
            "--eval-interval", str(plan.train_cfg.eval_interval), "--eval-iters", str(plan.train_cfg.eval_iters)]


def run_dir(job: str, work: Path) -> Path:
    """Where a job's run goes: its name with ':' as '-', and its flags' ',' and '=' left out."""
    return work / "runs" / job.replace(":", "-").replace(",", "").replace("=", "")


def measure(job: str, work: Path, threads: int | None) -> dict:
    name, block, seed, *rest = job.split(":")
    steps, extra = (rest + ["", ""])[:2]
    data, run = work / name, run_dir(job, work)
    flags = ["--block", block, "--seed", seed, "--run", str(run), "--compile", "off",
             *planned(data, block, steps or None), *[f for f in extra.split(",") if f]]
    start = time.perf_counter()
    bladegpt("train", *flags, cwd=data, threads=threads)
    return record(job, work, time.perf_counter() - start, threads)


def record(job: str, work: Path, wall: float, threads: int | None) -> dict:
    """The row of a finished run: its best val bpb, steps, wall, and the verbatim share of its samples."""
    name, block, seed, *_ = job.split(":")
    path, data = text_path(name), work / name
    run = run_dir(job, work)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "val_bpb" in r]
    best = min(evals, key=lambda r: r["val_loss"])
    last = max(r["step"] for r in records if "step" in r)
    samples = bladegpt("sample", "", "--checkpoint", str(run), "--seed", "1", "--num-samples", "5",
                       "--max-new-tokens", "400", cwd=data, threads=threads)
    row = {"job": job, "text": name, "block": block, "seed": int(seed), "best_val_bpb": round(best["val_bpb"], 4),
           "best_step": best["step"], "steps": last, "train_wall_s": round(wall, 1),
           "ms_per_step": round(1000 * wall / max(1, last), 1), "threads": threads,
           "verbatim": round(verbatim_share(samples, path.read_text(encoding="utf-8")), 4),
           "load": os.getloadavg()[0]}
    print(f"{job:<40} bpb {row['best_val_bpb']:.3f} (step {row['best_step']} of {last})  train {wall:6.1f} s "
          f"({row['ms_per_step']:.0f} ms/step)  verbatim {row['verbatim']:.1%}  load {row['load']:.1f}", flush=True)
    return row


def speed(blocks: list[str], rounds: int = 3, steps: int = 3) -> None:
    import statistics

    import torch

    from bladegpt.config import from_preset
    from bladegpt.train.recipes import SMALL_TEXT_SHAPE
    from bladegpt.model import GPT

    torch.manual_seed(0)
    models = {}
    for block in blocks:
        for compiled in (False, True):
            cfg, _ = from_preset("mini", {**SMALL_TEXT_SHAPE, "dropout": 0.2, "block": block})
            cfg.vocab_size = 2112
            models[block + (" compiled" if compiled else "")] = model = GPT(cfg)
            if compiled:  # as `train --compile on` (or auto's choice) runs it
                model.compile_blocks()
    x = torch.randint(0, 2112, (32, 128))
    times = {name: [] for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            for i in range(steps + 1):
                start = time.perf_counter()
                _, loss = model(x, x)
                loss.backward()
                if i:  # the first step of each round warms up (and compiles, in the first round)
                    times[name].append(time.perf_counter() - start)
    for name in models:
        base = statistics.median(times[blocks[0] + (" compiled" if name.endswith(" compiled") else "")])
        ms = statistics.median(times[name])
        print(f"{name:<60} {1000 * ms:7.1f} ms/step  {ms / base:.2f}x  ({torch.get_num_threads()} threads)", flush=True)


def main() -> None:
    args = sys.argv[1:]
    if args[:1] == ["--speed"]:
        print(f"{cpu_model()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}", flush=True)
        return speed(args[1:])
    out, jobs = Path("results/blocks.jsonl"), 1
    if args[:1] == ["--collect"]:  # rows for runs of WORK/runs that finished without their invocation
        work, out = Path(args[1]), Path("results/blocks.jsonl")
        for job in args[2:]:
            metrics = (run_dir(job, work) / "metrics.jsonl").read_text().splitlines()
            row = record(job, work, json.loads(metrics[-1])["elapsed"], 1)
            with out.open("a") as f:
                f.write(json.dumps({**row, "wall_is": "training loop only (collected)"}) + "\n")
        return
    while args[:1] in (["--out"], ["--jobs"]):
        if args[0] == "--out":
            out = Path(args[1])
        else:
            jobs = int(args[1])
        args = args[2:]
    out.parent.mkdir(parents=True, exist_ok=True)
    done = {r["job"] for r in map(json.loads, out.read_text().splitlines())} if out.exists() else set()
    print(f"{cpu_model()}, {os.cpu_count()} cores, {jobs} job(s) at a time", flush=True)
    work = Path(tempfile.mkdtemp(prefix="bladegpt-blocks-"))
    todo = [job for job in args if job not in done]
    for name in dict.fromkeys(job.split(":")[0] for job in todo):
        (work / name).mkdir()
        start = time.perf_counter()
        bladegpt("prepare", str(text_path(name)), cwd=work / name)
        print(f"prepare {name}: {time.perf_counter() - start:.1f} s", flush=True)

    claims = out.with_name(out.name + ".claims")

    def one(job: str) -> None:
        with claims.open("a+") as f:  # O_APPEND: one line a claim, whole
            f.seek(0)
            if job in f.read().split("\n"):
                return
            f.write(job + "\n")
        row = measure(job, work, 1 if jobs > 1 else None)
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")

    with ThreadPoolExecutor(jobs) as pool:
        list(pool.map(one, todo))


if __name__ == "__main__":
    main()
