import json

import pytest
from typer.testing import CliRunner

from bladegpt import bench as bench_module
from bladegpt.cli import app
from bladegpt.config import PRESETS, Preset

TINY = Preset("tiny for tests", dict(n_layer=2, n_head=2, n_embd=32, block_size=16), dict(batch_size=2))


@pytest.fixture
def tiny_preset(monkeypatch):
    monkeypatch.setitem(PRESETS, "nano", TINY)


@pytest.mark.slow
def test_every_rung_in_the_json(tiny_preset):
    result = CliRunner().invoke(app, ["bench", "--preset", "nano", "--steps", "2", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)  # nothing but JSON on stdout
    rows = {r["name"]: r for r in data["rungs"]}
    assert list(rows) == ["vanilla", "mixed", "compile", "flash", "auto"]
    for r in rows.values():
        assert {"name", "ms_per_step", "tok_per_s", "speedup", "mfu", "available", "reason"} <= r.keys()
        if r["available"]:
            assert r["ms_per_step"] > 0 and r["tok_per_s"] > 0
            tokens = data["batch"] * data["block"]
            assert r["tok_per_s"] == pytest.approx(tokens / (r["ms_per_step"] / 1e3))
            assert r["speedup"] == pytest.approx(rows["vanilla"]["ms_per_step"] / r["ms_per_step"])
    assert rows["vanilla"]["speedup"] == 1.0
    assert rows["compile"]["compile_s"] is not None and rows["vanilla"]["compile_s"] is None


def test_unavailable_rung_is_reported_not_raised(tiny_preset, monkeypatch):
    monkeypatch.setattr(bench_module, "compile_available", lambda device: (False, "no C++ compiler found"))
    result = bench_module.bench("nano", steps=1, rungs=["vanilla", "compile", "auto"])
    rows = {r["name"]: r for r in result["rungs"]}
    assert rows["compile"]["available"] is False and "compiler" in rows["compile"]["reason"]
    assert rows["vanilla"]["available"] and rows["auto"]["available"] and not rows["auto"]["compile"]


def test_mfu_uses_the_formula(tiny_preset, monkeypatch):
    monkeypatch.setattr(bench_module, "peak_flops", lambda device: 1e12)
    result = bench_module.bench("nano", steps=1, rungs=["vanilla"])
    row = result["rungs"][0]
    cfg = result["model"]
    flops_per_token = 6 * result["params"] + 12 * cfg["n_layer"] * cfg["n_head"] * (cfg["n_embd"] // cfg["n_head"]) * cfg["block_size"]
    assert row["mfu"] == pytest.approx(row["tok_per_s"] * flops_per_token / 1e12)


def test_unknown_rung_is_a_user_error(tiny_preset):
    result = CliRunner().invoke(app, ["bench", "--rungs", "vanilla,turbo"])
    assert result.exit_code == 1 and "Unknown rung" in result.output


def test_generate_bench(tiny_preset):
    result = CliRunner().invoke(app, ["bench", "--generate", "--preset", "nano", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    rows = out["rows"]
    assert {r["samples"] for r in rows} == {1, 8} and all(r["tok_per_s"] > 0 for r in rows)
    assert {r["generator"] for r in rows} >= {"BladeGPT (auto)", "transformers generate"}
    assert out["repeats"] == 5 and out["decode_precision"] in ("fp32", "bf16", "int8")  # as measured here
    assert {"fp32", "int8", "int4"} <= {r["precision"] for r in rows}  # every precision this CPU runs has its rows
    if bench_module.compile_available(bench_module.resolve_device("auto"))[0]:
        compiled = [r for r in rows if r["generator"] == "BladeGPT compiled"]
        assert len(compiled) == 2 and out["compile_s"] > 0


def test_generate_table_compares_with_transformers():
    from rich.console import Console

    from bladegpt.cli.tables import generate_table

    row = lambda who, n, tps: {"generator": who, "precision": "fp32", "samples": n, "tok_per_s": tps}
    result = {"device": "a CPU", "preset": "mini", "vocab": 4096, "block": 128, "new_tokens": 100,
              "prompt_tokens": 4, "repeats": 5, "torch": "2.13", "peer": None,
              "rows": [row("BladeGPT (auto)", 1, 600.0), row("transformers generate", 1, 300.0),
                       row("BladeGPT (auto)", 8, 1600.0), row("transformers generate", 8, 1600.0)]}
    console = Console(width=120, record=True)
    console.print(generate_table(result))
    text = console.export_text()
    assert "2.00x" in text and "1.00x" in text and "median of 5 runs" in text


def test_a_step_faster_than_the_cached_peak_takes_the_peak_again(tiny_preset, monkeypatch):
    """A peak cached while the machine was busy reads low: bench measures it again, never below what ran."""
    monkeypatch.setattr(bench_module, "peak_flops", lambda device: 1.0)  # 1 FLOP/s: every step beats it
    observed = []
    monkeypatch.setattr(bench_module, "raise_cpu_peak", lambda flops: observed.append(flops) or 2 * flops)
    result = bench_module.bench("nano", steps=1, rungs=["vanilla", "mixed"], device="cpu")
    mfus = [r["mfu"] for r in result["rungs"] if r["available"]]
    assert observed and mfus and all(0 < m <= 1 for m in mfus), mfus
