"""A resume with changed settings: run.json, `runs` and the display agree with what was done, and one line
says what changed and what it does to the learning rate (issue #28, item 6)."""

import json

import pytest

from bladegpt import runs
from bladegpt.config import TrainConfig
from bladegpt.train import train
from bladegpt.train.optim import lr_at, schedule_progress
from bladegpt.data.prepare import prepare
from bladegpt.train.trainer import Reporter
from tests.conftest import TINY_MODEL, TINY_TRAIN
from tests.safety import assert_one_line_error, invoke

SETTINGS = {**TINY_TRAIN, "steps": 10, "warmup_steps": 2, "log_interval": 1, "eval_interval": 5}


class Recorder(Reporter):
    def __init__(self):
        self.messages, self.started = [], None

    def start(self, info):
        self.started = info

    def message(self, text):
        self.messages.append(text)


def lrs(run_dir):
    return {r["step"]: r["lr"] for line in (run_dir / runs.METRICS).read_text().splitlines()
            if "val_loss" not in (r := json.loads(line))}


def test_a_finished_run_resumed_with_more_steps(corpus, workdir):
    """The issue's instance: a finished 10-step run resumed with --steps 20 trains to 20, and run.json,
    `runs --json` and the display say 20; the lr's climb back up the re-planned cosine is announced."""
    prepare([corpus], tokenizer="char")
    first = train(None, "nano", TINY_MODEL, SETTINGS, compile="off")
    assert first.step == 10
    seen = Recorder()
    resumed = train(None, None, None, {"steps": 20}, resume=True, run=first.run_dir, compile="off", reporter=seen)
    assert resumed.step == 20 and seen.started["steps"] == 20

    saved = json.loads((first.run_dir / runs.RUN_FILE).read_text())
    assert saved["train"]["steps"] == 20
    assert saved["resumes"] == [{"step": 10, "changed": {"steps": [10, 20]}}]
    row = json.loads(invoke("runs", "--json").stdout)[0]
    assert (row["step"], row["steps"], row["state"]) == (20, 20, "finished")

    logged = lrs(first.run_dir)
    before, after = TrainConfig(**{**SETTINGS, "steps": 10}), TrainConfig(**{**SETTINGS, "steps": 20})
    assert logged[11] == pytest.approx(lr_at(10, after, schedule_progress(after, 10, 0.0)))
    assert logged[11] > 2 * logged[10]  # the jump the line announces
    [line] = [m for m in seen.messages if m.startswith("Resuming at step 10")]
    assert "--steps 20 (was 10)" in line and "planned again" in line
    assert f"{logged[10]:.2e} at step 10 to {logged[11]:.2e} at step 11" in line
    assert lr_at(9, before, schedule_progress(before, 9, 0.0)) == pytest.approx(logged[10])


def test_other_changed_settings_are_recorded_and_named(corpus, workdir):
    """Of the same kind: a timed run given a longer --time, then a run given a new --eval-interval and
    --patience: each change is in run.json with its step, `runs` follows it, the line names it and says
    whether the lr schedule moved. A resume that changes nothing leaves run.json as it was."""
    prepare([corpus], tokenizer="char")
    # patience 0: on a quiet machine the tiny model stops improving within the budget, and early stopping
    # would end the run before its clock does
    timed = train(None, "nano", TINY_MODEL, {**SETTINGS, "steps": 10**9, "time_budget_s": 1.0, "patience": 0},
                  compile="off")
    budget = round(timed.elapsed_s) + 2.0  # two seconds more than it took, however loaded the machine
    seen = Recorder()
    longer = train(None, None, None, {"steps": 10**9, "time_budget_s": budget}, resume=True, run=timed.run_dir,
                   compile="off", reporter=seen)
    assert longer.elapsed_s >= budget and seen.started["time_budget_s"] == budget
    saved = json.loads((timed.run_dir / runs.RUN_FILE).read_text())
    assert saved["train"]["time_budget_s"] == budget
    assert saved["resumes"][0]["changed"] == {"time_budget_s": [1.0, budget]}
    assert any(f"--time {budget:.0f} s (was 1 s)" in m and "planned again" in m for m in seen.messages), seen.messages
    row = next(r for r in json.loads(invoke("runs", "--json").stdout) if r["run"].endswith("tales-1"))
    assert (row["time_budget_s"], row["state"]) == (budget, "finished")

    cut = train(None, "nano", TINY_MODEL, SETTINGS, compile="off")
    seen = Recorder()
    train(None, None, None, {"steps": 15}, resume=True, run=cut.run_dir, compile="off")
    train(None, None, None, {"steps": 20, "eval_interval": 2, "patience": 9}, resume=True, run=cut.run_dir,
          compile="off", reporter=seen)
    saved = json.loads((cut.run_dir / runs.RUN_FILE).read_text())
    assert [r["step"] for r in saved["resumes"]] == [10, 15]
    assert saved["resumes"][1]["changed"] == {"steps": [15, 20], "eval_interval": [5, 2], "patience": [3, 9]}
    assert (saved["train"]["eval_interval"], saved["train"]["patience"]) == (2, 9)
    evals = [r["step"] for r in map(json.loads, (cut.run_dir / runs.METRICS).read_text().splitlines()) if "val_loss" in r]
    assert evals == [5, 10, 15, 16, 18, 20]  # the new interval from the resume on
    [line] = [m for m in seen.messages if m.startswith("Resuming")]
    assert "--eval-interval 2 (was 5)" in line and "--patience 9 (was 3)" in line

    before = (cut.run_dir / runs.RUN_FILE).read_text()
    quiet = Recorder()
    with pytest.raises(Exception, match="already finished at step 20"):
        train(None, None, None, {"steps": 20}, resume=True, run=cut.run_dir, compile="off", reporter=quiet)
    assert (cut.run_dir / runs.RUN_FILE).read_text() == before and not quiet.messages


def test_a_resume_cannot_change_its_seed(corpus, workdir):
    prepare([corpus], tokenizer="char")
    assert invoke("train", "--preset", "nano", "--n-layer", "2", "--n-head", "2", "--n-embd", "32", "--block-size",
                  "16", "--batch-size", "4", "--eval-iters", "2", "--sample-tokens", "0", "--compile", "off",
                  "--steps", "10").exit_code == 0
    assert_one_line_error(invoke("train", "--resume", "--steps", "20", "--seed", "7"), "own random streams", "--seed")
    # nor what its evaluations measure, nor the order of its windows
    assert_one_line_error(invoke("train", "--resume", "--steps", "20", "--ema", "0.9"), "keeps", "--ema 0.0")
    assert_one_line_error(invoke("train", "--resume", "--steps", "20", "--sampling", "epochs"), "keeps",
                          "--sampling random")
    # nor the optimizer its state is for (it said "the state holds 1 optimizers, this run has 2")
    assert_one_line_error(invoke("train", "--resume", "--steps", "20", "--optimizer", "muon"), "keeps",
                          "--optimizer adamw")


def test_a_run_extended_while_warming_up_is_told_its_schedule_is_planned_again():
    """The next step's lr is the same (still warming up), but the cosine now ends 10 steps later."""
    from bladegpt.config import TrainConfig
    from bladegpt.train.resume import describe_resume

    line = describe_resume(TrainConfig(steps=20, warmup_steps=25), TrainConfig(steps=30, warmup_steps=25), 20, 5.0)
    assert "--steps 30 (was 20)" in line and "planned again" in line
    same = describe_resume(TrainConfig(steps=20, eval_interval=5), TrainConfig(steps=20, eval_interval=2), 10, 5.0)
    assert "unchanged" in same
