import json
import sys

import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

from bladegpt import bench as bench_module
from bladegpt.cli import app
from bladegpt.cli.tables import generate_table, wall_time_table
from bladegpt.config import PRESETS, Preset
from bladegpt.generate.engine import generate_batch

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


def test_a_rung_whose_rung_before_is_left_out_says_its_whole_setup():
    """`bench --rungs vanilla,mixed,flash` labelled flash '+ flash attention (SDPA)' under mixed, though it was
    compiled too (its compile column said 29 s)."""
    ladder = bench_module.ladder(torch.device("cpu"), (2, 2, 16, 16))
    labels = {r.name: r.label for r in bench_module.selected(ladder, ["vanilla", "mixed", "flash", "auto"])}
    assert labels["mixed"] == ladder[1].label and labels["flash"] == f"{ladder[3].precision}, sdpa attention, compiled"
    assert [r.label for r in bench_module.selected(ladder, None)] == [r.label for r in ladder]  # the whole ladder
    assert bench_module.selected(ladder, ["compile"])[0].label.endswith("manual attention, compiled")


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


def _tiny_gguf(path):
    """A tiny random Llama as llama.cpp's converter writes it, with a vocabulary both readers load."""
    from tests.families import tiny_family, write_gguf

    def vocabulary(writer):
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre("gpt-2")
        writer.add_token_list(["a", "b", "ab"] + [f"t{i}" for i in range(3, 320)])
        writer.add_token_types([1] * 320)
        writer.add_token_merges(["a b"])

    write_gguf(tiny_family("llama-gqa-tied"), path, tokenizer=vocabulary)
    return path


def test_llama_cpp_row_is_skipped_with_its_reason_where_not_installed(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # `import llama_cpp` now raises ImportError
    monkeypatch.setattr(bench_module, "compile_available", lambda device: (False, "not timed here"))
    gguf_file = _tiny_gguf(tmp_path / "tiny.gguf")
    result = bench_module.bench_generate(source=str(gguf_file), new_tokens=4, samples=(1,), repeats=1)
    assert "llama-cpp-python is not installed" in result["llama_cpp"]
    assert not any(r["generator"].startswith("llama.cpp") for r in result["rows"])
    assert any(r["generator"] == "BladeGPT (auto)" for r in result["rows"])  # the rest still timed
    console = Console(width=200, record=True)
    console.print(generate_table(result))
    assert "llama-cpp-python is not installed" in console.export_text()


def test_llama_cpp_row_needs_a_gguf_file():
    _, _, reason = bench_module.llama_cpp_peer(None, [1, 2], 4)
    assert "--init-from FILE.gguf" in reason


def test_llama_cpp_row_on_a_tiny_gguf(tmp_path, monkeypatch):
    pytest.importorskip("llama_cpp")
    gguf_file = _tiny_gguf(tmp_path / "tiny.gguf")
    run, kind, reason = bench_module.llama_cpp_peer(str(gguf_file), [5, 6, 7, 8], 12)
    assert reason is None and kind == "gguf"  # the test file names no file type
    tokens = run()
    model = bench_module.load_pretrained(str(gguf_file)).model.eval()
    ours = generate_batch(model, [5, 6, 7, 8], 12, 320, [torch.Generator().manual_seed(0)], temperature=0)
    assert tokens == [int(t) for t in ours] and run() == tokens  # greedy, the same model: the same tokens, every run
    monkeypatch.setattr(bench_module, "compile_available", lambda device: (False, "not timed here"))
    result = bench_module.bench_generate(source=str(gguf_file), new_tokens=6, samples=(1, 2), repeats=1)
    llama = [r for r in result["rows"] if r["generator"].startswith("llama.cpp")]
    assert [(r["samples"], r["precision"]) for r in llama] == [(1, "gguf")] and llama[0]["tok_per_s"] > 0
    assert result["llama_cpp"] is None
    console = Console(width=200, record=True)
    console.print(generate_table(result))
    assert "vs llama.cpp's 1" in console.export_text()


@pytest.mark.slow
def test_wall_time_times_prepare_and_train_by_phase_cold_and_warm(workdir, corpus, tmp_path):
    """The voice run timed by the code that runs it: every phase of both commands, on both caches, in the table."""
    pytest.importorskip("transformers")
    from tests.families import tiny_family
    from tests.test_hf_tokenizer import build_folder

    folder = build_folder(tmp_path / "tiny-smollm", "smollm")
    tiny_family("llama-gqa-tied", vocab=512).save_pretrained(folder)
    result = CliRunner().invoke(app, ["bench", "--wall-time", str(corpus), "--init-from", str(folder), "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert list(out["runs"]) == ["cold", "warm"]
    for run in out["runs"].values():
        phases = run["phases"]
        assert {"prepare: encoded and written", "plan: the source loaded, the dataset read", "evaluations: val loss",
                "evaluations: samples", "saves: last + state"} <= phases.keys()
        steps = phases.get("steps, eager", []) + phases.get("steps, compiled", [])
        assert len(steps) == run["steps"] and len(phases["evaluations: val loss"]) >= 1
        assert 0 < sum(sum(t) for t in phases.values()) <= run["wall_s"] and 0 < run["best_val_bpb"] < 20
    assert not list(workdir.glob("runs/*")) and not list(workdir.glob("datasets/*"))  # written in a scratch folder
    console = Console(width=200, record=True)
    console.print(wall_time_table(out))
    text = console.export_text()
    assert "cold s" in text and "warm s" in text and "evaluations: samples" in text


def test_wall_time_needs_a_model():
    result = CliRunner().invoke(app, ["bench", "--wall-time", "corpora/officer_k.txt"])
    assert result.exit_code == 1 and "--init-from" in result.output


def test_a_narrow_terminal_gets_every_measurement_whole():
    """At 80 columns the ladder read 'ms/st…', '136.9…', 'compi…': a measurement of minutes, cut without a word.
    Now every number is whole, and the columns that do not fit move to a second table under it."""
    from bladegpt.cli.tables import BENCH_SPARE_COLUMNS, bench_table

    def rung(name, label, ms, **more):
        return {"name": name, "label": label, "available": True, "reason": None, "ms_per_step": ms, "ms_min": ms - 10.6,
                "ms_max": ms + 99.1, "compile_s": None, "peak_mem_mb": 1229.0, "tok_per_s": 12680.8, "mfu": 0.484,
                "speedup": 1.0, **more}

    result = {"device": "Intel(R) Xeon(R) Processor @ 2.80GHz, 2 threads", "peak_flops": 2e11, "preset": "nano",
              "params": 1311872, "batch": 12, "block": 64, "steps": 40, "torch": "2.13.0+cpu",
              "rungs": [rung("vanilla", "fp32, manual attention, eager", 65.7),
                        rung("mixed", "+ bf16 autocast", 147.8, speedup=0.44, slower_than_previous=True),
                        {"name": "compile", "label": "+ torch.compile", "available": False,
                         "reason": "torch.compile needs a C compiler: install gcc, or leave the compile rung out"},
                        rung("auto", "train's pick: fp32, sdpa, compiled", 60.9, compile_s=3.2, speedup=1.08)]}
    for width in (80, 60):
        console = Console(width=width, record=True)
        console.print(bench_table(result, width))
        text = console.export_text()
        assert "…" not in text and all(len(line) <= width for line in text.splitlines()), text
        for cell in ("65.7", "55.1–164.8", "12,681", "▼ 0.44x", "48.4%", "3 s", "1,229 MiB", "vanilla", "compile"):
            assert cell in text, (cell, text)
        setup = " ".join(line.split("│")[2].strip() for line in text.splitlines() if line.count("│") > 3)
        assert width < 80 or "(not run: torch.compile needs a C compiler: install gcc, or leave the compile rung out)" in setup
        assert "Left out above at" in text and any(col in text.split("Left out above at")[1] for col in BENCH_SPARE_COLUMNS)
    console = Console(width=200, record=True)
    console.print(bench_table(result, 200))
    assert "Left out" not in console.export_text()


def test_narrow_tables_fold_long_names_never_cut_them():
    from bladegpt.cli.speakers import speakers_table
    from bladegpt.data.voices import Speaker

    row = lambda who, n, tps: {"generator": who, "precision": "gguf", "samples": n, "tok_per_s": tps}
    result = {"device": "a CPU", "preset": "SmolLM2-135M-Instruct.Q4_1.gguf", "vocab": 49152, "block": 1024,
              "new_tokens": 100, "prompt_tokens": 4, "repeats": 5, "torch": "2.13", "peer": None,
              "rows": [row("BladeGPT (auto)", 1, 23.0), row("transformers generate", 1, 12.0),
                       row("llama.cpp (llama-cpp-python)", 1, 30.0)]}
    console = Console(width=80, record=True)
    console.print(generate_table(result))
    console.print(speakers_table([Speaker("OFFICER-K-THE-REPLICANT-OF-LOS-ANGELES-2049", 1234, 56789),
                                  Speaker("JOI", 3, 40)]))
    text = console.export_text()
    assert "…" not in text, text
    joined = "".join(text.split("│"))  # a folded name's pieces, one under the other
    assert "llama-cpp-pyth" in "".join(joined.split()) and "2.50x" in text and "1,234" in text
