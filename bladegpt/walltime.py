"""Where the default voice run's wall time goes: `prepare --tokenizer-from SOURCE` and `train --init-from SOURCE`
as the CLI runs them (the same library calls, each in a fresh process, as two commands are), timed phase by
phase by the code that does the work (prepare's meta.json, train's runbook.Phases), on a cold and then a warm
compile cache (inductor's cache pointed at a new folder, then the same folder again)."""

from __future__ import annotations

import multiprocessing
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import torch

from bladegpt.data.prepare import prepare
from bladegpt.errors import ConfigError
from bladegpt.runtime import device_name, resolve_device
from bladegpt.train import train

START = "process start: Python, torch and bladegpt imported"


def _prepare(text: str, source: str, workdir: str, launched: float) -> dict:
    """`bladegpt prepare TEXT --tokenizer-from SOURCE` in this fresh process; its phases in seconds."""
    started = time.time()
    os.chdir(workdir)
    result = prepare([Path(text)], tokenizer_from=source)
    meta = result.meta
    return {"out_dir": str(Path(workdir) / result.out_dir), "phases": {
        f"prepare: {START}": [started - launched],
        "prepare: the tokenizer loaded, the text read": [meta["seconds"] - meta["encode_seconds"]],
        "prepare: encoded and written": [meta["encode_seconds"]]}, "wall_s": time.time() - launched}


def _train(data: str, source: str, seed: int | None, workdir: str, launched: float) -> dict:
    """`bladegpt train --init-from SOURCE [--seed N]` in this fresh process; its phases and its best bpb."""
    started = time.time()
    os.chdir(workdir)
    result = train(data=Path(data), init_from=source, train_overrides={"seed": seed})
    bpbs = [r["val_bpb"] for r in result.history if r.get("val_bpb") is not None]
    return {"phases": {f"train: {START}": [started - launched], **result.phases}, "wall_s": time.time() - launched,
            "steps": result.step, "best_val_bpb": min(bpbs) if bpbs else None, "torch": torch.__version__,
            "device": device_name(resolve_device("auto"))}


@contextmanager
def inductor_cache(folder: str):
    """Processes started inside see `folder` as inductor's cache (FX graphs, AOTAutograd, kernels)."""
    before = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = folder
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("TORCHINDUCTOR_CACHE_DIR")
        else:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = before


def in_fresh_process(fn, *args):
    """fn(*args, launch time) in a new Python process, as a command runs."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args, time.time()).result()


def voice_run(text: str, source: str, seed: int | None, inductor_dir: str) -> dict:
    """prepare then train, each in its own process, in a scratch folder; the phases of both, in order."""
    with tempfile.TemporaryDirectory(prefix="bladegpt-walltime-") as workdir, inductor_cache(inductor_dir):
        prepared = in_fresh_process(_prepare, text, source, workdir)
        trained = in_fresh_process(_train, prepared["out_dir"], source, seed, workdir)
    return {**trained, "phases": {**prepared["phases"], **trained["phases"]},
            "wall_s": prepared["wall_s"] + trained["wall_s"]}


def bench_wall_time(text: str, source: str | None, seed: int | None = None) -> dict:
    """The default voice run on `text` from `source`, timed twice: on a cold compile cache, then warm."""
    if source is None:
        raise ConfigError("--wall-time times the default fine-tune: add --init-from SOURCE (a GGUF file, "
                          "ollama:NAME, a Hugging Face folder or hub id).")
    if not Path(text).exists():
        raise ConfigError(f"No such text: {text}; give --wall-time a text file or folder.")
    with tempfile.TemporaryDirectory(prefix="bladegpt-inductor-") as inductor_dir:
        runs = {cache: voice_run(str(Path(text).resolve()), source, seed, inductor_dir) for cache in ("cold", "warm")}
    first = runs["cold"]
    return {"device": first["device"], "torch": first["torch"], "text": text, "source": source, "seed": seed,
            "runs": runs}
