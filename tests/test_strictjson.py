"""Every JSON BladeGPT writes is strict JSON: a value that is not a finite number is null (issue #28, item 7)."""

import json
import math

import pytest
from safetensors import safe_open

from bladegpt import bench as bench_module, runs, strictjson
from bladegpt.train import train
from bladegpt.data.prepare import prepare
from bladegpt.train.runbook import MetricsLog
from bladegpt.train.evaluate import Evaluator
from bladegpt.errors import TrainingDiverged
from tests.conftest import TINY_MODEL, TINY_TRAIN
from tests.safety import invoke, poison_weights_at


def strict(text: str):
    """Parse as jq or a strict reader would: NaN, Infinity and -Infinity are errors."""
    return json.loads(text, parse_constant=lambda word: pytest.fail(f"bare {word} in {text[:200]!r}"))


def written_json(run_dir):
    """Every JSON a run wrote: run.json, each metrics line, each checkpoint's metadata."""
    texts = [(run_dir / runs.RUN_FILE).read_text()]
    texts += (run_dir / runs.METRICS).read_text().splitlines()
    for name in (runs.LAST, runs.STATE, runs.BEST):
        if (run_dir / name).exists():
            with safe_open(str(run_dir / name), framework="pt") as f:
                texts += [v for k, v in f.metadata().items() if k in ("config", "tokenizer", "info", "param_groups")]
    return texts


def test_dumps_writes_null_for_every_non_finite_float():
    value = {"loss": float("nan"), "rows": [1.5, float("inf"), (float("-inf"), 2)], "n": 3, "ok": True, "s": "NaN"}
    assert strict(strictjson.dumps(value)) == {"loss": None, "rows": [1.5, None, [None, 2]], "n": 3, "ok": True,
                                               "s": "NaN"}
    assert strictjson.number(float("nan")) is None and strictjson.number(None) is None
    assert strictjson.number(True) is None and strictjson.number(2) == 2.0


def test_a_nan_loss_leaves_only_strict_json(corpus, workdir, monkeypatch):
    """The issue's instance: the loss turns NaN, the run stops in one line, and every file it wrote reads
    as strict JSON."""
    prepare([corpus], tokenizer="char")
    poison_weights_at(monkeypatch, 12)
    with pytest.raises(TrainingDiverged):
        train(None, "nano", TINY_MODEL, TINY_TRAIN, compile="off")
    for text in written_json(workdir / "runs" / "tales-1"):
        strict(text)


def test_a_non_finite_metric_is_written_as_null_everywhere(corpus, workdir, monkeypatch):
    """Of the same kind: a value that is not finite but does not stop the run (here the bits per byte of
    an evaluation, and a speed) is null in metrics.jsonl and in `runs --json`, never a crash or a bare
    word; the curve and the best skip it."""
    prepare([corpus], tokenizer="char")
    evaluations = iter([(3.0, float("inf")), (2.0, 1.5), (2.5, float("nan"))])  # at steps 10, 20, 30
    monkeypatch.setattr(Evaluator, "loss_and_bpb", lambda self, model: next(evaluations))
    result = train(None, "nano", TINY_MODEL, TINY_TRAIN, compile="off")
    assert result.step == 30
    records = [strict(line) for line in (result.run_dir / runs.METRICS).read_text().splitlines()]
    assert [r["val_bpb"] for r in records if "val_loss" in r] == [None, 1.5, None]
    for text in written_json(result.run_dir):
        strict(text)
    MetricsLog(result.run_dir, main=True).write({"step": 31, "loss": float("nan"), "tok_per_s": float("inf")})
    assert strict((result.run_dir / runs.METRICS).read_text().splitlines()[-1]) == \
        {"step": 31, "loss": None, "tok_per_s": None}

    listed = invoke("runs", "--json")
    assert listed.exit_code == 0, listed.output
    row = strict(listed.stdout)[0]
    assert (row["best_val_loss"], row["best_val_bpb"], row["best_step"], row["val_bpb"]) == (2.0, 1.5, 20, [1.5])


def test_readers_take_null_and_older_files_nan(corpus, workdir):
    """metrics.jsonl lines from an older version (bare NaN) or with null are no value to `runs`: never
    the best, never on the curve, never a traceback; the table shows them as '-'."""
    data = prepare([corpus], tokenizer="char").out_dir
    result = train(data, "nano", TINY_MODEL, TINY_TRAIN, compile="off")
    path = result.run_dir / runs.METRICS
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    evals = [r for r in lines if "val_loss" in r]
    evals[0]["val_loss"], evals[0]["val_bpb"] = float("nan"), float("nan")
    evals[1]["val_loss"], evals[1]["val_bpb"] = None, None
    evals[2]["val_bpb"] = None
    path.write_text("".join(json.dumps(r) + "\n" for r in lines) + "NaN\n")  # json.dumps writes NaN bare
    listed = invoke("runs", "--json")
    assert listed.exit_code == 0, listed.output
    row = strict(listed.stdout)[0]
    assert (row["best_step"], row["best_val_bpb"], row["val_bpb"]) == (30, None, [])
    table = invoke("runs")
    assert table.exit_code == 0 and "Traceback" not in table.output and "tales-1" in table.output
    resumed = train(None, None, None, {"steps": 40}, resume=True, run=result.run_dir, compile="off")
    assert resumed.step == 40


def test_bench_json_is_strict(monkeypatch):
    row = {"name": "vanilla", "ms_per_step": 1.0, "tok_per_s": math.inf, "mfu": math.nan, "speedup": 1.0}
    monkeypatch.setattr(bench_module, "bench", lambda *a, **k: {"rungs": [row]})
    monkeypatch.setattr(bench_module, "bench_generate", lambda *a, **k: {"rows": [{"tok_per_s": math.nan}]})
    result = invoke("bench", "--json")
    assert result.exit_code == 0 and strict(result.stdout)["rungs"][0] == {**row, "tok_per_s": None, "mfu": None}
    result = invoke("bench", "--generate", "--json")
    assert result.exit_code == 0 and strict(result.stdout) == {"rows": [{"tok_per_s": None}]}
