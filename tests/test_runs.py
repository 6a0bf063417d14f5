"""`bladegpt runs`: the runs folder at a glance."""

import json
import os
import signal

from bladegpt.data.prepare import prepare
from bladegpt.train import train
from bladegpt.cli.tables import sparkline
from bladegpt.train.evaluate import Evaluator
from bladegpt.train.trainer import Reporter
from tests.conftest import TINY_MODEL, TINY_TRAIN
from tests.safety import invoke


class CtrlCAt(Reporter):
    def log(self, record):
        if record["step"] == 15:
            os.kill(os.getpid(), signal.SIGINT)


def test_runs_lists_each_runs_start_progress_best_and_state(corpus, workdir, monkeypatch):
    assert "No runs" in invoke("runs").output
    data = prepare([corpus], tokenizer="char").out_dir
    train(data, "nano", TINY_MODEL, TINY_TRAIN, compile="off")  # finished
    train(data, "nano", TINY_MODEL, TINY_TRAIN, compile="off", reporter=CtrlCAt())  # interrupted
    train(None, None, None, {**TINY_TRAIN, "steps": 10}, compile="off", init_from="runs/tales-1")
    train(data, None, TINY_MODEL, TINY_TRAIN, compile="off")  # no preset: the default, sized to the text
    curve = iter([3.0, 2.0, 2.5, 2.6, 2.7])
    monkeypatch.setattr(Evaluator, "loss_and_bpb", lambda self, model: (next(curve), 1.5))
    train(data, "nano", TINY_MODEL, {**TINY_TRAIN, "steps": 100, "patience": 3}, compile="off")  # stopped early
    (workdir / "runs" / "broken").mkdir()
    (workdir / "runs" / "broken" / "run.json").write_text("{garbled")

    result = invoke("runs", "--json")
    assert result.exit_code == 0, result.output
    rows = {row["run"].split("/")[-1]: row for row in json.loads(result.stdout)}
    assert [rows[name]["state"] for name in ("tales-1", "tales-2", "tales-3", "tales-5", "broken")] == \
        ["finished", "interrupted", "finished", "stopped early", "no checkpoint"]
    assert (rows["tales-1"]["step"], rows["tales-1"]["steps"], rows["tales-1"]["start"]) == (30, 30, "nano")
    assert rows["tales-3"]["start"] == "from tales-1" and rows["tales-4"]["start"] == "sized 2x32"
    assert (rows["tales-5"]["best_val_loss"], rows["tales-5"]["best_step"], rows["tales-5"]["step"]) == (2.0, 20, 50)
    assert len(rows["tales-1"]["val_bpb"]) == 3 and rows["tales-2"]["step"] == 15
    settings = rows["tales-1"]["settings"]  # the run's training settings, as run.json and its state record them
    assert settings["train"]["lr"] == TINY_TRAIN["lr"] and settings["model"]["block_size"] == 16
    assert settings["preset"] == "nano" and settings["runtime"]["precision"] in ("fp32", "bf16")
    assert rows["tales-3"]["settings"]["init_from"] == "runs/tales-1" and rows["broken"]["settings"] == {}
    table = invoke("runs")
    assert table.exit_code == 0 and "Runs" in table.output and "tales-3" in table.output


def test_sparkline():
    assert sparkline([3.0, 2.0, 1.0]) == "█▅▁"  # 8 levels: the middle rounds up
    assert len(sparkline(list(range(40)))) == 10 and sparkline([]) == ""


def test_the_runs_table_leaves_out_spare_columns_where_the_terminal_is_narrow():
    """At 80 columns every one of eleven columns was cut to two letters; now the spare ones go first."""
    from rich.console import Console

    from bladegpt.cli.tables import RUNS_SPARE_COLUMNS, runs_table

    row = dict(run="runs/officer_k-12", dataset="officer_k-SmolLM2-135M", start="SmolLM2-135M-Instruct.Q4_1.gguf",
               steps=16, step=16, time_budget_s=None, best_val_loss=2.7672, best_val_bpb=1.0839, best_step=16,
               elapsed_s=110.0, state="finished", val_bpb=[1.15, 1.12, 1.10, 1.08], copied=0.0, longest_copy=0,
               loops=0.04, style=0.91, base_style=1.32)
    wide, narrow = runs_table([row], 200), runs_table([row], 80).renderables[0]
    assert [c.header for c in wide.columns][:3] == ["run", "data", "start"] and len(wide.columns) == 13
    kept = [c.header for c in narrow.columns]
    assert {"run", "steps", "bpb", "best at", "state", "copied"} <= set(kept)
    # one run has no settings apart from others: no settings column
    assert set(kept) | set(RUNS_SPARE_COLUMNS) - {"settings"} == {c.header for c in wide.columns}
    console = Console(width=80, record=True)
    console.print(narrow)
    shown = console.export_text()
    assert "officer_k-12" in shown and "1.084" in shown and "finished" in shown and "…" not in shown
    console = Console(width=100, record=True)
    console.print(runs_table([row], 100))
    assert "0.91 (1.32)" in console.export_text()  # the style distance, the base's in brackets: kept at 100
    console = Console(width=200, record=True)
    console.print(wide)
    assert "│    4% │" in console.export_text()  # loops
    assert ("the curve is" in wide.caption) and ("curve" in kept) == ("the curve is" in narrow.caption)
    long = dict(row, run="runs/officer_k-SmolLM2-135M-Instruct.Q4_1-1", dataset="officer_k-SmolLM2-135M-Instruct.Q4_1")
    console = Console(width=80, record=True)
    console.print(runs_table([long], 80))
    shown = console.export_text()
    assert "1.084" in shown and "16/16" in shown and "110s" in shown and "…" not in shown  # numbers whole
    assert "officer_k-SmolLM2-135M-" in shown and "Instruct.Q4_1-1" in shown  # the long name folds, whole


def test_a_narrow_terminal_is_told_which_columns_were_left_out_and_how_to_see_them(workdir):
    """At 80 columns five columns went without a word; now a line names them, and the width it names shows them."""
    import re
    import subprocess
    import sys

    run = workdir / "runs" / "officer_k-SmolLM2-135M-Instruct.Q4_1-1"
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"dataset": "datasets/officer_k-SmolLM2-135M", "init_from": "/m/SmolLM2-135M-Instruct.Q4_1.gguf",
                                              "model": {}, "train": {"steps": 16}}))
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 3.0, "val_loss": v, "val_bpb": v / 2.5,
                                                           "copied": 0.01, "longest_copy": 60, "loops": 0.04,
                                                           "style": 0.91}) + "\n"
                                               for s, v in ((8, 2.9), (16, 2.77))))
    header = json.dumps({"__metadata__": {"info": json.dumps({"step": 16, "elapsed": 110.0})}}).encode()
    (run / "state.safetensors").write_bytes(len(header).to_bytes(8, "little") + header)

    def shown(columns: int) -> str:
        done = subprocess.run([sys.executable, "-m", "bladegpt", "runs"], capture_output=True, text=True,
                              env={**os.environ, "COLUMNS": str(columns)})
        assert done.returncode == 0, done.stderr
        return done.stdout

    narrow = shown(80)
    said = re.search(r"Left out at 80 columns: ([a-z ,]+)\. `COLUMNS=(\d+) bladegpt runs` .* `bladegpt runs --json`",
                     " ".join(narrow.split()))
    assert said, narrow
    left = said.group(1).split(", ")
    assert {"data", "start", "curve", "loops", "style"} <= set(left)
    headers = lambda text: next(line for line in text.splitlines() if "steps" in line)
    assert not any(re.search(rf"\b{col}\b", headers(narrow)) for col in left)
    wide = shown(int(said.group(2)))
    assert "Left out" not in wide and all(col in headers(wide) for col in left), wide
    assert "from SmolLM2-135M-Instruct.Q4_1.gguf" in wide and "0.91" in wide


def _run(root, name: str, record: dict, runtime: dict | None = None) -> None:
    """A run folder as training leaves it: run.json, a metrics line, and a state header with its step."""
    run = root / "runs" / name
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"dataset": "datasets/talk", "model": {}, **record}))
    (run / "metrics.jsonl").write_text(json.dumps({"step": 10, "val_loss": 2.5, "val_bpb": 1.2}) + "\n")
    info = {"step": 10, "elapsed": 5.0, **({"runtime": runtime} if runtime else {})}
    header = json.dumps({"__metadata__": {"info": json.dumps(info)}}).encode()
    (run / "state.safetensors").write_bytes(len(header).to_bytes(8, "little") + header)


def test_runs_tell_apart_the_settings_that_differ_and_json_carries_them_all(workdir):
    """`runs` showed no training settings: two runs with another --context-weight looked the same."""
    from rich.console import Console

    from bladegpt.cli.tables import runs_table, settings_apart
    from bladegpt.runs import run_folders, summarize

    shared = {"steps": 10, "batch_size": 8, "seed": 1337, "accum": 1}
    _run(workdir, "talk-1", {"init_from": "/m/SmolLM2.gguf", "model": {"block_size": 256},
                             "train": {**shared, "lr": 3e-4, "context_weight": 0.0},
                             "lora": {"rank": 8, "alpha": 16.0}}, {"precision": "bf16", "compile": "off"})
    _run(workdir, "talk-2", {"init_from": "/m/SmolLM2.gguf", "model": {"block_size": 512},
                             "train": {**shared, "lr": 1e-3, "context_weight": 0.5}}, {"precision": "fp32", "compile": "off"})
    _run(workdir, "talk-3", {"train": {"steps": 10, "batch_size": 8}})  # an older run: fewer settings recorded

    result = invoke("runs", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert rows[0]["settings"] == {"init_from": "/m/SmolLM2.gguf", "lora": {"rank": 8, "alpha": 16.0},
                                   "model": {"block_size": 256}, "train": {**shared, "lr": 3e-4, "context_weight": 0.0},
                                   "runtime": {"precision": "bf16", "compile": "off"}}  # as recorded, nothing more
    assert rows[2]["settings"] == {"model": {}, "train": {"steps": 10, "batch_size": 8}}

    summaries = [summarize(p) for p in run_folders([workdir / "runs"])]
    assert [set(items) for items in settings_apart(summaries)] == [
        {"lr=0.0003", "context-weight=0", "seed=1337", "accum=1", "block-size=256", "lora-rank=8", "lora-alpha=16",
         "precision=bf16", "compile=off"},
        {"lr=0.001", "context-weight=0.5", "seed=1337", "accum=1", "block-size=512", "lora-rank=-", "lora-alpha=-",
         "precision=fp32", "compile=off"},
        {"lr=-", "context-weight=-", "seed=-", "accum=-", "block-size=-", "lora-rank=-", "lora-alpha=-",
         "precision=-", "compile=-"}]  # batch-size and steps are the same in all three: left out
    console = Console(width=200, record=True)
    console.print(runs_table(summaries, 200))
    shown = console.export_text()
    assert "┃ settings" in shown and "context-weight=0.5" in shown and "precision=fp32" in shown
    assert "batch-size" not in shown and "steps=" not in shown  # the same in every run, or in the steps column
    assert "settings: the train flags not the same" in shown

    one = Console(width=200, record=True)
    one.print(runs_table([summarize(workdir / "runs" / "talk-1")], 200))  # one run: nothing to tell apart
    assert "settings" not in one.export_text()


def test_the_settings_column_wraps_between_its_items_and_is_named_where_it_is_left_out():
    from rich.console import Console

    from bladegpt.cli.tables import runs_table

    row = dict(run="runs/talk-1", dataset="talk", start="from SmolLM2-135M-Instruct.Q4_1.gguf", steps=16, step=16,
               time_budget_s=None, best_val_loss=2.7, best_val_bpb=1.08, best_step=16, elapsed_s=110.0,
               state="finished", val_bpb=[1.1, 1.08], copied=None, longest_copy=None, loops=None, style=None,
               base_style=None, settings={"train": {"lr": 3e-4, "context_weight": 0.0, "warmup_steps": 100}})
    other = dict(row, run="runs/talk-2", settings={"train": {"lr": 1e-3, "context_weight": 0.5, "warmup_steps": 50,
                                                             "sampling": "[b]x"}})  # shown as written, not as markup
    for width in (200, 100, 80):
        console = Console(width=width, record=True)
        console.print(runs_table([row, other], width))
        shown = console.export_text()
        assert all(len(line) <= width for line in shown.splitlines())
        assert "from SmolLM2-135M-Instruct.Q4_1.gguf" in shown or "start" in shown.split("Left out")[-1]
        if "Left out" in shown.replace("\n", " ") and "settings" in shown.split("Left out")[-1]:
            assert "context-weight=" not in shown
        else:  # each item whole on a line
            assert "context-weight=0.5" in shown and "warmup-steps=50" in shown and "sampling=[b]x" in shown, shown
    assert "settings" in " ".join(shown.split("Left out")[-1].split())  # at 80 columns: named as left out


def test_runs_lists_a_run_whose_files_hold_values_of_the_wrong_kind(workdir):
    """A hand-edited or damaged run.json that still had its dataset, model and train (a time budget of "abc",
    an init_from of 123) stopped `runs` and `runs --json` with a traceback, for every run listed: now such a
    value reads as not recorded, and the other runs are listed as before."""
    _run(workdir, "talk-1", {"train": {"steps": 10}})
    _run(workdir, "talk-2", {"init_from": 123, "preset": ["nano"], "lora": "r8",
                             "train": {"steps": "10", "time_budget_s": "abc", "patience": "3"}})
    run = workdir / "runs" / "talk-2"
    header = json.dumps({"__metadata__": {"info": json.dumps({"step": "10", "elapsed": "5", "stale_evals": []})}})
    (run / "state.safetensors").write_bytes(len(header).to_bytes(8, "little") + header.encode())
    with open(run / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 0, "val_loss": 2.6, "copied": 0.5, "longest_copy": "60"}) + "\n")
    for args in (("runs", "--json"), ("runs",)):
        result = invoke(*args)
        assert result.exit_code == 0, result.output
    rows = json.loads(invoke("runs", "--json").stdout)
    assert rows[0]["state"] == "finished" and rows[0]["step"] == 10
    read = [rows[1][name] for name in ("start", "steps", "time_budget_s", "elapsed_s")]
    assert read == ["sized ?x?", None, None, None]
    assert (rows[1]["step"], rows[1]["copied"], rows[1]["longest_copy"]) == (0, 0.5, None)
    assert "talk-2" in invoke("runs").stdout


def test_names_with_brackets_are_shown_as_written(workdir, monkeypatch):
    """A run folder, dataset or model file named with [brackets] was read as rich markup: `[v2]talk-1` showed as
    `talk-1`, `[bold]` vanished and bolded the rest; the settings column was escaped, the other cells were not."""
    _run(workdir, "[v2]talk-1", {"dataset": "datasets/[b]talk", "init_from": "/m/[red]SmolLM2.gguf",
                                 "train": {"steps": 10}})
    _run(workdir, "[v2]talk-2", {"dataset": "datasets/[b]talk", "preset": "[i]nano", "train": {"steps": 10}})
    run = workdir / "runs" / "[v2]talk-2"
    (run / ".lock").write_text("1")
    (run / ".state.safetensors.tmp").write_bytes(b"cut short")
    result = invoke("runs")
    assert result.exit_code == 0, result.output
    assert "runs/[v2]talk-2" in result.stderr and ".state.safetensors.tmp" in result.stderr  # the removal, said
    from bladegpt.cli.app import console

    monkeypatch.setattr(console, "width", 200)  # every column shown
    shown = invoke("runs").stdout
    for name in ("[v2]talk-1", "[v2]talk-2", "[b]talk", "from [red]SmolLM2.gguf", "[i]nano"):
        assert name in shown, shown
    (workdir / "[x]").mkdir()
    assert "No runs in [x]/ yet" in invoke("runs", "[x]").stdout


def test_a_start_waits_out_a_readers_look_at_the_runs_lock(tmp_path, monkeypatch):
    """`bladegpt runs` takes each run's lock for milliseconds (is it training? may its stale staged copies go?);
    a train starting in that moment was refused, 'pid N is training in it', naming the run's last trainer."""
    import fcntl
    import threading

    import pytest

    from bladegpt import runs
    from bladegpt.errors import UserError

    (tmp_path / runs.LOCK).write_text("4242")  # the pid of the run's last training, long gone
    look = os.open(tmp_path / runs.LOCK, os.O_RDONLY)
    fcntl.flock(look, fcntl.LOCK_SH)  # as runs' _running looks
    threading.Timer(0.1, os.close, [look]).start()
    monkeypatch.setattr(runs, "READER_HOLD_S", 30.0)  # the look ends long before: never a timing in the test
    lock = runs.RunLock(tmp_path)
    assert (tmp_path / runs.LOCK).read_text() == str(os.getpid())
    monkeypatch.setattr(runs, "READER_HOLD_S", 0.2)
    with pytest.raises(UserError, match=f"pid {os.getpid()} is training in it"):  # a training's lock: refused
        runs.RunLock(tmp_path)
    lock.release()


def test_at_40_columns_the_runs_table_is_cut_to_columns_read_whole_never_cropped():
    """At 40 columns the table, with every spare column gone, was still 60 wide: rich folded the state to
    'fi/is/ed' and cropped it and copied off the right edge without a word. Now the numbers go too, named."""
    from rich.console import Console

    from bladegpt.cli.tables import runs_table

    row = dict(run="runs/talk-1", dataset="talk", start="nano", steps=16, step=16, time_budget_s=None,
               best_val_loss=2.7, best_val_bpb=1.08, best_step=16, elapsed_s=110.0, state="finished",
               val_bpb=[1.1, 1.08], copied=0.01, longest_copy=60, loops=None, style=None, base_style=None)
    for width in (40, 30):
        console = Console(width=width, record=True)
        console.print(runs_table([row, dict(row, run="runs/talk-2", state="interrupted")], width))
        shown = console.export_text()
        table, said = shown.split("Left out")
        assert "finished" in table and "16/16" in table and ("interrupted" in table or width < 40), shown
        rows = [line.rstrip() for line in table.splitlines() if line[:1] in "┏┃┡│└"]
        assert rows and all(line[-1] in "┓┃┩│┘" for line in rows), shown  # the right border: nothing cropped
        assert "copied" in " ".join(said.split()) and "copied:" not in table  # left out, and named so
