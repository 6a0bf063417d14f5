"""What the live display shows a user."""

import io

from rich.console import Console

from bladegpt.data.prepare import prepare
from bladegpt.cli.display import TrainDisplay
from bladegpt.train import train
from tests.conftest import TINY_MODEL, TINY_TRAIN


def test_a_run_shorter_than_the_log_interval_ends_with_a_full_bar(corpus):
    prepare([corpus], tokenizer="char")
    out = io.StringIO()
    display = TrainDisplay(Console(file=out, width=150, force_terminal=False))
    train(None, "nano", TINY_MODEL, {**TINY_TRAIN, "steps": 3, "log_interval": 10}, compile="off", reporter=display)
    bars = [line for line in out.getvalue().splitlines() if line.startswith("train")]
    assert bars and "3/3" in bars[-1], out.getvalue()


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
