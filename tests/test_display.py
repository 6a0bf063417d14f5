"""What the live display shows a user."""

import io
import json
from pathlib import Path

from rich.console import Console

from bladegpt.data.prepare import prepare
from bladegpt.cli.display import TrainDisplay
from bladegpt.train import train
from tests.conftest import TINY_MODEL, TINY_TRAIN
from tests.safety import invoke


def test_a_run_shorter_than_the_log_interval_ends_with_a_full_bar(corpus):
    prepare([corpus], tokenizer="char")
    out = io.StringIO()
    display = TrainDisplay(Console(file=out, width=150, force_terminal=False))
    train(None, "nano", TINY_MODEL, {**TINY_TRAIN, "steps": 3, "log_interval": 10}, compile="off", reporter=display)
    bars = [line for line in out.getvalue().splitlines() if line.startswith("train")]
    assert bars and "3/3" in bars[-1], out.getvalue()


def test_a_run_shorter_than_the_log_interval_records_no_speed_it_did_not_measure(corpus, workdir):
    """Its evaluation repeats the last train line's loss and speed, and there was none: null, not a false 0.0."""
    from bladegpt.runs import read_metrics
    from bladegpt.train.tracker import scalars

    prepare([corpus], tokenizer="char")
    result = train(None, "nano", TINY_MODEL, {**TINY_TRAIN, "steps": 2, "log_interval": 10}, compile="off")
    records = read_metrics(result.run_dir)
    assert [(r["step"], r["loss"], r["tok_per_s"]) for r in records] == [(2, None, None)]
    assert '"tok_per_s": null' in (result.run_dir / "metrics.jsonl").read_text()
    assert "train/tok_per_s" not in scalars({**records[0], "val_loss": None})  # a tracker is sent nothing for it
    out = io.StringIO()
    display = TrainDisplay(Console(file=out, width=150, force_terminal=False))
    display.task = display.progress.add_task("train", total=2, count="", stats="")
    display.stats.update(speed="1.0k")
    display.log({"step": 2, "loss": 2.5, "lr": 1e-3, "tok_per_s": None, "mfu": None, "elapsed": 1.0})
    assert display.stats["speed"] == "-"
    for old in ("full", "lora"):  # files written with 0.0 there still read
        run = Path(__file__).parent / "fixtures" / "a57ec7e" / "runs" / old
        assert read_metrics(run)[0]["tok_per_s"] == 0.0
        shown = invoke("runs", "--json", run)
        assert shown.exit_code == 0 and json.loads(shown.stdout)[0]["best_val_loss"] is not None, shown.output


def test_a_run_by_the_clock_counts_steps_and_shows_the_clock_against_the_budget(corpus):
    from bladegpt.config import CLOCK_STEPS

    prepare([corpus], tokenizer="char")
    out = io.StringIO()
    display = TrainDisplay(Console(file=out, width=80, force_terminal=False))  # a terminal's usual width
    result = train(None, "nano", TINY_MODEL, {**TINY_TRAIN, "steps": CLOCK_STEPS, "time_budget_s": 2.0},
                   compile="off", reporter=display)
    bars = [line for line in out.getvalue().splitlines() if line.startswith("train")]
    assert bars and f"step {result.step:,} 0:0" in bars[-1] and "/0:02 loss" in bars[-1], out.getvalue()
    assert all(len(line) <= 80 and "…" not in line for line in bars), bars  # the last stats give way, not the count
