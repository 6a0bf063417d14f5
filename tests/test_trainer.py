import json
import os
import signal
from types import SimpleNamespace

import pytest
import torch

from bladegpt.checkpoint import load_checkpoint
from bladegpt.config import TrainConfig
from bladegpt.errors import ConfigError
from bladegpt.data.prepare import prepare
from bladegpt.train import train
from bladegpt.train.trainer import Reporter, Trainer
from tests.conftest import TINY_MODEL, TINY_TRAIN


def run(data=None, **overrides):
    return train(data, "nano", TINY_MODEL if not overrides.pop("resume", False) else None,
                 {**TINY_TRAIN, **overrides}, compile="off")


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_loss_falls(corpus, optimizer):
    prepare([corpus], tokenizer="char")
    result = run(steps=80, eval_interval=80, optimizer=optimizer)
    losses = [r["loss"] for r in result.history if "val_loss" not in r]
    assert losses[-1] < losses[0] - 1.0, losses
    assert result.best_val_loss < losses[0] - 1.0


def test_run_folder_metrics_and_checkpoints(corpus, workdir):
    prepare([corpus], tokenizer="char")
    first = run()
    second = run()
    assert first.run_dir.name == "tales-1" and second.run_dir.name == "tales-2"  # never overwritten
    for name in ("best.safetensors", "last.safetensors", "state.safetensors", "run.json", "metrics.jsonl"):
        assert (first.run_dir / name).is_file()
    records = [json.loads(line) for line in (first.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all({"step", "loss", "lr", "tok_per_s"} <= r.keys() for r in records)
    evals = [r for r in records if "val_loss" in r]
    assert [r["step"] for r in evals] == [10, 20, 30]
    assert all(r["val_bpb"] > 0 for r in evals)



def assert_resume_follows(whole, resumed, cut: int) -> None:
    """The resumed run's records after step `cut` are the uninterrupted run's: the same steps and
    evaluations, losses within 1e-6."""
    before = [r for r in whole.history if r["step"] > cut]
    after = [r for r in resumed.history if r["step"] > cut]
    assert [r["step"] for r in before] == [r["step"] for r in after]
    for a, b in zip(before, after):
        assert a.get("val_loss") == b.get("val_loss")
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-6)

class CtrlCAt(Reporter):
    """Presses Ctrl-C (a real SIGINT) when the given step is logged."""

    def __init__(self, step):
        self.step = step

    def log(self, record):
        if record["step"] == self.step:
            os.kill(os.getpid(), signal.SIGINT)


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_ctrl_c_then_resume_follows_the_same_curve(corpus, optimizer):
    prepare([corpus], tokenizer="char")
    settings = dict(dropout=0.1)  # dropout makes the RNG state matter
    schedule = {**TINY_TRAIN, "optimizer": optimizer}
    whole = train(None, "nano", {**TINY_MODEL, **settings}, schedule, compile="off")
    cut = train(None, "nano", {**TINY_MODEL, **settings}, schedule, compile="off", reporter=CtrlCAt(15))
    assert cut.interrupted and cut.step == 15
    resumed = train(resume=True, run=cut.run_dir, compile="off")
    assert resumed.step == 30
    # the two fresh runs are the same run up to the cut (measuring this machine, done by whichever run came
    # first, once drew from the global random stream and moved the first run's dropout masks)
    assert [r["loss"] for r in cut.history] == [r["loss"] for r in whole.history if r["step"] <= 15]
    assert_resume_follows(whole, resumed, 15)


def test_accumulation_equals_a_bigger_batch(corpus):
    data = prepare([corpus], tokenizer="char").out_dir
    base = dict(steps=3, eval_interval=3, warmup_steps=1)
    exact = dict(device="cpu", precision="fp32", compile="off")  # the arithmetic, not bf16's rounding
    big = train(data, "nano", TINY_MODEL, {**TINY_TRAIN, **base, "batch_size": 8, "accum": 1}, **exact)
    acc = train(data, "nano", TINY_MODEL, {**TINY_TRAIN, **base, "batch_size": 8, "accum": 4}, **exact)
    a, _, _ = load_checkpoint(big.run_dir / "last.safetensors")
    b, _, _ = load_checkpoint(acc.run_dir / "last.safetensors")
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(p, q, atol=1e-5), name
    assert big.best_val_loss == pytest.approx(acc.best_val_loss, abs=1e-5)  # evaluation sees the same sequences too


def test_accum_must_divide_the_batch():
    with pytest.raises(ConfigError, match="does not divide the batch of 12 sequences.*2, 3, 4, 6, 12"):
        TrainConfig(batch_size=12, accum=5)


def test_resume_with_another_optimizer_is_refused(corpus):
    prepare([corpus], tokenizer="char")
    first = run(optimizer="muon")
    with pytest.raises(ConfigError, match="--resume keeps .*--optimizer muon, which its saved optimizer state"):
        train(None, "nano", None, {"optimizer": "adamw"}, resume=True, run=first.run_dir, compile="off")
    resumed = train(None, "nano", None, {"steps": 40, "muon_lr": 0.02}, resume=True, run=first.run_dir, compile="off")
    assert resumed.step == 40  # with its own optimizers; a new --muon-lr is allowed, as a new --lr is


def test_model_flags_are_refused_on_resume(corpus):
    prepare([corpus], tokenizer="char")
    run()
    with pytest.raises(Exception, match="own model shape"):
        train(None, "nano", {"n_layer": 3}, None, resume=True, compile="off")


def test_bf16_training_runs_where_supported(corpus):
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        pytest.skip("no bf16 on this CPU")
    prepare([corpus], tokenizer="char")
    result = train(None, "nano", TINY_MODEL, {**TINY_TRAIN, "steps": 10}, precision="bf16", attention="manual",
                   compile="off")
    assert result.best_val_loss < 4.0


def test_early_stopping_keeps_the_best_and_a_resume_can_go_on(corpus, monkeypatch):
    from bladegpt.train.evaluate import Evaluator

    prepare([corpus], tokenizer="char")
    curve = iter([3.0, 2.0, 2.5, 2.4, 2.6, 2.7, 1.5, 1.4, 1.6, 1.7, 1.8])  # best at the 2nd evaluation, then 3 worse
    monkeypatch.setattr(Evaluator, "loss_and_bpb", lambda self, model: (next(curve), 1.0))
    messages = []
    reporter = type("R", (Reporter,), {"message": lambda self, text: messages.append(text)})()
    result = train(None, "nano", TINY_MODEL, {**TINY_TRAIN, "steps": 100, "patience": 3}, compile="off",
                   reporter=reporter)
    assert result.stopped_early and result.step == 50 and result.best_val_loss == 2.0
    assert any("Stopped early at step 50" in m and "2.0000 at step 20" in m for m in messages), messages
    _, _, info = load_checkpoint(result.run_dir / "best.safetensors")
    assert info["step"] == 20
    with pytest.raises(Exception, match="stopped early at step 50.*--patience"):
        train(resume=True, run=result.run_dir, compile="off")
    resumed = train(None, None, None, {"patience": 5}, resume=True, run=result.run_dir, compile="off")
    assert resumed.step == 100 and resumed.best_val_loss == 1.4 and not resumed.stopped_early


def test_default_run_is_sized_to_the_text():
    from bladegpt.train.recipes import SCRATCH_PASSES, SCRATCH_TOKEN_NOISE, SCRATCH_WEIGHT_DECAY, sized_to_text

    train_cfg, notes = sized_to_text({}, 30_000, 3_000, 4096, {"steps": 250, "warmup_steps": 25, "batch_size": 32}, 120_000)
    assert train_cfg["steps"] == -(-SCRATCH_PASSES * 30_000 // 4096) and train_cfg["eval_iters"] == 2
    assert train_cfg["eval_interval"] * 10 <= train_cfg["steps"] and any("passes" in n for n in notes)
    assert train_cfg["optimizer"] == "muon" and any("--optimizer muon" in n for n in notes)
    assert train_cfg["weight_decay"] == SCRATCH_WEIGHT_DECAY and any("--weight-decay" in n for n in notes)
    assert train_cfg["token_noise"] == SCRATCH_TOKEN_NOISE and any("--token-noise" in n for n in notes)
    flags, _ = sized_to_text({"steps": 77, "eval_iters": 9, "lr": None, "optimizer": "adamw", "weight_decay": 0.05,
                              "token_noise": 0.0}, 30_000, 3_000, 4096, {"steps": 250}, 120_000)
    assert (flags["steps"], flags["eval_iters"], flags["optimizer"], flags["weight_decay"], flags["token_noise"]) == (
        77, 9, "adamw", 0.05, 0.0)
    assert flags["warmup_steps"] == 3  # --steps 77: warm up over a twentieth of them, not the preset's 25
    short, said = sized_to_text({"steps": 20}, 30_000, 3_000, 4096, {"steps": 250, "warmup_steps": 25}, 120_000)
    assert short["warmup_steps"] == 1 and any("a twentieth of --steps 20" in n for n in said)
    big, said = sized_to_text({}, 8_000_000, 800_000, 4096, {"steps": 250}, 32_000_000)
    assert big["eval_iters"] == 20  # a big val split is sampled, not read whole
    assert "token_noise" not in big and not any("--token-noise" in n for n in said)  # read a few times, not 50
    assert (big["optimizer"], big["weight_decay"]) == ("muon", SCRATCH_WEIGHT_DECAY)  # measured up to 4 MB (issue #36)
    assert big["steps"] == -(-SCRATCH_PASSES * 8_000_000 // 4096)


def test_default_model_is_sized_to_the_text():
    from bladegpt.config import SMALL_TEXT_BYTES
    from bladegpt.train.recipes import SCRATCH_BLOCK, SCRATCH_DROPOUT, SMALL_TEXT_SHAPE, sized_model

    small, notes = sized_model({}, SMALL_TEXT_BYTES - 1)
    assert small == {**SMALL_TEXT_SHAPE, "dropout": SCRATCH_DROPOUT, "block": SCRATCH_BLOCK} and len(notes) == 3
    large, notes = sized_model({"n_layer": None}, SMALL_TEXT_BYTES)
    assert large == {"dropout": SCRATCH_DROPOUT, "block": SCRATCH_BLOCK} and len(notes) == 2  # the preset's own shape
    mine, notes = sized_model({"n_embd": 512, "dropout": 0.0, "block": "gpt2"}, 1_000)
    assert mine == {"n_embd": 512, "dropout": 0.0, "block": "gpt2"} and not notes  # any shape flag keeps the preset's shape


class Said(Reporter):
    def __init__(self):
        self.lines = []

    def message(self, text):
        self.lines.append(text)


def test_a_small_val_split_is_read_whole_each_token_once(corpus, workdir, monkeypatch):
    """An evaluation whose batches can hold the whole val split reads it back to back, so the val loss
    does not depend on the run's seed; a larger split is sampled (eval_iters batches)."""
    from bladegpt.data.dataset import TokenData

    data = TokenData(prepare([corpus], tokenizer="char").out_dir)
    T = TINY_MODEL["block_size"]
    read = []
    batch = TokenData.batch

    def reading(self, split, ix, block_size, *weight):
        if split == "val":
            read.append(ix)
        return batch(self, split, ix, block_size, *weight)

    monkeypatch.setattr(TokenData, "batch", reading)
    targets = len(data.splits["val"]) - 1
    windows = targets // T
    assert targets % T  # a tail shorter than a window is left: a last window ends at the split's end
    train(None, "nano", TINY_MODEL, {**TINY_TRAIN, "steps": 10, "eval_interval": 10, "eval_iters": windows},
          compile="off")
    starts = torch.cat(read).tolist()
    assert starts == [i * T for i in range(windows)] + [targets - T]  # each val token a target once
    read.clear()
    train(None, "nano", TINY_MODEL, {**TINY_TRAIN, "steps": 10, "eval_interval": 10, "eval_iters": 1,
                                     "batch_size": 2}, compile="off")
    assert sum(len(ix) for ix in read) == 2 < windows  # too big for one batch of 2: sampled


def test_a_cut_run_timed_again_gets_back_what_a_slow_start_cut(corpus, workdir, monkeypatch):
    """The first steps ran slow (a busy machine, or eager before a compile): the run is cut to fit the
    budget, then timed again at its settled speed it trains its whole schedule after all."""
    prepare([corpus], tokenizer="char")
    monkeypatch.setattr("bladegpt.train.plan.SCRATCH_BUDGET_S", 8.0)
    monkeypatch.setattr("bladegpt.train.recipes.SCRATCH_PASSES", 1)  # the shortest sized run: 100 steps
    clock = [0.0]  # the trainer's clock, advanced by the steps alone: 0.3 s for the first three, then 0.01
    monkeypatch.setattr("bladegpt.train.trainer.time", SimpleNamespace(perf_counter=lambda: clock[0]))
    step = Trainer.train_step

    def slow_start(self):
        clock[0] += 0.3 if self.step < 3 else 0.01
        return step(self)

    monkeypatch.setattr(Trainer, "train_step", slow_start)
    said = Said()
    result = train(None, None, TINY_MODEL, {"sample_tokens": 0, "patience": 0}, compile="off", reporter=said)
    text = " ".join(said.lines)
    assert "for the whole schedule pass --steps" in text and "Timed again at step 14" in text
    saved = json.loads((result.run_dir / "run.json").read_text())
    assert result.step == saved["train"]["steps"] == 100  # the whole sized schedule, recorded for --resume


def test_a_default_run_too_long_for_the_budget_is_cut_and_resumes_to_the_cut(corpus, workdir, monkeypatch):
    prepare([corpus], tokenizer="char")
    monkeypatch.setattr("bladegpt.train.plan.SCRATCH_BUDGET_S", 0.05)
    said = Said()
    result = train(None, None, TINY_MODEL, {"sample_tokens": 0, "patience": 0}, compile="off", reporter=said)
    text = " ".join(said.lines)
    assert "Sized to the text" in text and "--dropout 0.2" in text and "for the whole schedule pass --steps" in text
    saved = json.loads((result.run_dir / "run.json").read_text())
    assert saved["train"]["steps"] == result.step < 100 and saved["model"]["dropout"] == 0.2
    with pytest.raises(Exception, match="already finished"):  # resume follows the cut schedule
        train(None, None, None, {}, resume=True, run=result.run_dir, compile="off")


@pytest.mark.slow
def test_compiled_training_follows_eager(corpus):
    """--compile on compiles each block (regional compilation); its steps give eager's losses, its
    evaluations and samples run, and the checkpoint holds the same names as an eager run's."""
    prepare([corpus], tokenizer="char")
    settings = dict(steps=6, eval_interval=3, log_interval=1, sample_tokens=20)
    eager = train(None, "nano", TINY_MODEL, {**TINY_TRAIN, **settings}, device="cpu", precision="fp32", compile="off")
    compiled = train(None, "nano", TINY_MODEL, {**TINY_TRAIN, **settings}, device="cpu", precision="fp32", compile="on")
    loss = lambda result: [r["loss"] for r in result.history if "val_loss" not in r]
    assert loss(compiled) == pytest.approx(loss(eager), abs=2e-3)
    val = lambda result: [r["val_loss"] for r in result.history if "val_loss" in r]
    assert val(compiled) == pytest.approx(val(eager), abs=2e-3)
    a, _, _ = load_checkpoint(eager.run_dir / "last.safetensors")
    b, _, _ = load_checkpoint(compiled.run_dir / "last.safetensors")
    assert a.state_dict().keys() == b.state_dict().keys()


def test_a_cut_schedule_keeps_the_plans_evaluations():
    """A budget cut (and a retimed run given back its steps) evaluates as often as the plan did: a
    fine-tune of 17 steps evaluating every 4 kept being evaluated every 10 steps once cut to 16."""
    from bladegpt.config import TrainConfig
    from bladegpt.train.pacing import fit_to_budget

    cfg = TrainConfig(steps=17, eval_interval=4)
    cut = fit_to_budget(cfg, step=3, elapsed=40, per_step=42, budget_s=600, full_steps=17, full_interval=4)
    assert (cut.steps, cut.eval_interval) == (16, 4) and cfg.steps == 17  # a new plan: the old one is as it was
    back = fit_to_budget(cut, step=6, elapsed=80, per_step=11, budget_s=600, full_steps=17, full_interval=4)
    assert (back.steps, back.eval_interval) == (17, 4)  # given back: the plan's own schedule
    assert fit_to_budget(back, step=6, elapsed=80, per_step=11, budget_s=600, full_steps=17, full_interval=4) is None
    cfg = TrainConfig(steps=1500, eval_interval=100)  # from scratch: 15 evaluations
    cfg = fit_to_budget(cfg, step=10, elapsed=10, per_step=1, budget_s=600, full_steps=1500, full_interval=100)
    assert (cfg.steps, cfg.eval_interval) == (600, 40)
    cfg = fit_to_budget(cfg, step=10, elapsed=10, per_step=4, budget_s=600, full_steps=1500, full_interval=100)
    assert (cfg.steps, cfg.eval_interval) == (157, 10)  # never more often than every 10 steps


@pytest.mark.parametrize("steps", [3, 10])
def test_the_estimate_speaks_only_of_steps_still_to_come(steps):
    """`train --steps 3` said "about 0 s for the 0 steps left" after its last step; a longer run says what is left."""
    from bladegpt.train.distributed import Distributed
    from bladegpt.train.pacing import ESTIMATE_STEPS, Pacer

    said = []
    pacer, cfg = Pacer(TrainConfig(steps=steps), Distributed(), said.append), TrainConfig(steps=steps)
    for step in range(1, ESTIMATE_STEPS + 1):
        cfg, _ = pacer.timed(cfg, 1.0, step, float(step))
    left = [line for line in said if "steps left" in line]
    assert left == ([] if steps == ESTIMATE_STEPS else [f"1.00 s a step here: about {steps - ESTIMATE_STEPS} s for "
                                                        f"the {steps - ESTIMATE_STEPS} steps left, evaluations included."])


def test_a_time_budget_spreads_its_evaluations_over_the_steps_the_clock_allows(corpus, workdir):
    """`train --time` with no --steps or --eval-interval: the plan cannot know how many steps fit, so the
    interval is set from the first steps' timing (it once was a billion steps / 15: one evaluation, at the end)."""
    from bladegpt.config import CLOCK_STEPS
    from bladegpt.train.recipes import FINETUNE_EVALS, SCRATCH_EVALS, finetune_config, sized_to_text

    chosen = {"steps": CLOCK_STEPS, "time_budget_s": 3.0}
    train_cfg, notes = sized_to_text(chosen, 10_000, 1_000, 512, {}, 40_000)
    assert train_cfg["evals_in_budget"] == SCRATCH_EVALS and any("over the --time budget" in n for n in notes)
    assert train_cfg["warmup_share"] and "warmup_steps" not in sized_to_text(chosen, 10_000, 1_000, 512, {}, 40_000)[0]
    assert sized_to_text({**chosen, "eval_interval": 7}, 10_000, 1_000, 512, {}, 40_000)[0].get("evals_in_budget") is None
    assert finetune_config(chosen, 576, 10_000, 1_000, 128)[0].evals_in_budget == FINETUNE_EVALS  # a fine-tune too
    prepare([corpus], tokenizer="char")
    said = Said()
    result = train(None, None, TINY_MODEL, {**TINY_TRAIN, "steps": CLOCK_STEPS, "time_budget_s": 3.0, "patience": 0,
                                            "eval_interval": None, "warmup_steps": None}, compile="off", reporter=said)
    evals = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in evals if "val_loss" in r]
    assert any("evaluating about 15 times as the clock allows, the first after" in line for line in said.lines)
    # warmup sized to what fits, not the preset's (a one-minute run of the mini preset was all warmup)
    assert any("warming up over" in line for line in said.lines)
    lrs = [json.loads(line)["lr"] for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert max(lrs) > 0.9 * TINY_TRAIN["lr"] and lrs[-1] < 0.5 * TINY_TRAIN["lr"]  # warmed up, then decayed
    assert len(evals) >= SCRATCH_EVALS // 3, ([(r["step"], r["elapsed"]) for r in evals], said.lines)


def test_the_paced_interval_follows_the_measured_step_and_evaluation_times():
    """Re-set after each evaluation: a machine that slows down (CI's, under a parallel suite, went from
    the first steps' pace to a third of it) still gets the evaluations the budget owes."""
    from bladegpt.train.pacing import paced_interval

    assert paced_interval(0, 100, 10, step_s=1.0, eval_s=0.0) == 10
    assert paced_interval(0, 100, 10, step_s=1.0, eval_s=5.0) == 5  # evaluations take their share of the time
    assert paced_interval(50, 100, 10, step_s=0.5, eval_s=0.0) == 20  # half the time left owes half of them
    assert paced_interval(50, 100, 10, step_s=1.5, eval_s=0.0) == 6  # slower steps: sooner, none lost
    assert paced_interval(99, 100, 10, step_s=1.0, eval_s=5.0) == 1  # never fewer than one step
    assert paced_interval(0, 100, 10, step_s=1.0, eval_s=30.0) == 3  # 3 evaluations fit, not 10: 3 steps before each


def test_mfu_never_passes_100_percent_when_the_cached_peak_read_low(corpus, workdir, monkeypatch):
    """A peak measured once while the machine was busy is cached for good; a run that computes faster
    measures it again (a helper saw MFU 107% and 115%)."""
    from bladegpt.train import runbook

    prepare([corpus], tokenizer="char")
    monkeypatch.setattr(runbook, "peak_flops", lambda device: 1.0)  # 1 FLOP/s: every step beats it
    result = train(None, None, TINY_MODEL, {**TINY_TRAIN, "steps": 12}, compile="off")
    mfus = [r["mfu"] for r in map(json.loads, (result.run_dir / "metrics.jsonl").read_text().splitlines()) if "mfu" in r]
    assert mfus and all(0 < m <= 1 for m in mfus), mfus


def test_an_averaged_run_keeps_the_average_as_best_and_resumes_exactly(corpus):
    prepare([corpus], tokenizer="char")
    settings, schedule = dict(dropout=0.1), {**TINY_TRAIN, "ema": 0.8, "patience": 0}
    said = Said()
    whole = train(None, "nano", {**TINY_MODEL, **settings}, schedule, compile="off", reporter=said)
    assert any("an average of the weights (--ema 0.8, about the last 5 steps)" in line for line in said.lines)
    plain = train(None, "nano", {**TINY_MODEL, **settings}, {**schedule, "ema": 0.0}, compile="off")
    # the same training, evaluated on other weights
    assert [r["loss"] for r in whole.history] == [r["loss"] for r in plain.history]
    assert [r.get("val_loss") for r in whole.history] != [r.get("val_loss") for r in plain.history]
    best, _, info = load_checkpoint(whole.run_dir / "best.safetensors")
    last, _, _ = load_checkpoint(whole.run_dir / "last.safetensors")
    assert info["val_loss"] == pytest.approx(whole.best_val_loss)
    assert not torch.equal(best.lm_head.weight, last.lm_head.weight)  # best holds the average, last the weights
    cut = train(None, "nano", {**TINY_MODEL, **settings}, schedule, compile="off", reporter=CtrlCAt(15))
    resumed = train(resume=True, run=cut.run_dir, compile="off")
    assert_resume_follows(whole, resumed, 15)


def test_epochs_sampling_trains_and_resumes_exactly(corpus):
    prepare([corpus], tokenizer="char")
    settings, schedule = dict(dropout=0.1), {**TINY_TRAIN, "sampling": "epochs"}
    whole = train(None, "nano", {**TINY_MODEL, **settings}, schedule, compile="off")
    losses = [r["loss"] for r in whole.history if "val_loss" not in r]
    assert losses[-1] < losses[0]
    cut = train(None, "nano", {**TINY_MODEL, **settings}, schedule, compile="off", reporter=CtrlCAt(15))
    resumed = train(resume=True, run=cut.run_dir, compile="off")
    assert_resume_follows(whole, resumed, 15)


def test_an_unknown_sampling_is_one_line():
    with pytest.raises(ConfigError, match="Unknown --sampling 'shuffle'; use one of: random, epochs"):
        TrainConfig(sampling="shuffle")


def test_token_noise_trains_changes_only_the_inputs_and_resumes_exactly(corpus):
    prepare([corpus], tokenizer="char")
    settings, schedule = dict(dropout=0.1), {**TINY_TRAIN, "token_noise": 0.2}
    whole = train(None, "nano", {**TINY_MODEL, **settings}, schedule, compile="off")
    losses = [r["loss"] for r in whole.history if "val_loss" not in r]
    assert losses[-1] < losses[0]
    plain = train(None, "nano", {**TINY_MODEL, **settings}, {**schedule, "token_noise": 0.0}, compile="off")
    assert [r["loss"] for r in whole.history] != [r["loss"] for r in plain.history]
    cut = train(None, "nano", {**TINY_MODEL, **settings}, schedule, compile="off", reporter=CtrlCAt(15))
    resumed = train(resume=True, run=cut.run_dir, compile="off")
    assert_resume_follows(whole, resumed, 15)


@pytest.mark.parametrize("share", [-0.1, 1.0, float("nan")])
def test_a_token_noise_outside_0_to_1_is_one_line(share):
    with pytest.raises(ConfigError, match=r"--token-noise must be a share of the input tokens in \[0, 1\)"):
        TrainConfig(token_noise=share)


@pytest.mark.parametrize("share, sampled_at", [(1e9, [10, 20, 30]), (0.0, [10, 30])])
def test_a_costly_sample_is_written_at_the_first_and_last_evaluations_only(corpus, monkeypatch, share, sampled_at):
    """A sample that costs more than SAMPLE_SHARE of the steps before it is left out between the first evaluation
    and the last (SmolLM2's cost a training step each); the phases say what each part of the run took."""
    from bladegpt.train import pacing

    monkeypatch.setattr(pacing, "SAMPLE_SHARE", share)
    monkeypatch.setattr(pacing, "SAMPLE_FREE_S", 0.0)  # this tiny model's samples take milliseconds
    prepare([corpus], tokenizer="char")
    seen = []

    class Watch(Reporter):
        def eval(self, record, sample):
            seen.append((record["step"], sample))

    result = train(None, "nano", TINY_MODEL, {**TINY_TRAIN, "sample_tokens": 8}, compile="off", reporter=Watch())
    assert [step for step, sample in seen if sample] == sampled_at and [s for s, _ in seen] == [10, 20, 30]
    phases = result.phases
    assert len(phases["steps, eager"]) + len(phases.get("steps, compiled", [])) == 30
    assert len(phases["evaluations: val loss"]) == 3 and len(phases["evaluations: samples"]) == len(sampled_at)
    assert len(phases["saves: last + state"]) == 3 and phases["plan: the dataset read, the run sized"]


def test_evaluations_sampling_through_an_int8_copy_leave_training_as_it_was_and_resume_exactly(corpus, monkeypatch):
    """The int8 copy an evaluation decodes from shares the training weights: the run trains as one that never
    samples, and a resume follows it; with chunked attention, which the sample's prompt goes through."""
    from bladegpt.generate import sampler
    from bladegpt.train import evaluate

    real = evaluate.decode_precision
    monkeypatch.setattr(evaluate, "decode_precision", lambda model, device, cast=True: "int8" if cast else
                        real(model, device, cast=cast))
    made = []
    quantize = sampler.quantize
    monkeypatch.setattr(sampler, "quantize",
                        lambda model, precision, **kw: made.append(precision) or quantize(model, precision, **kw))
    prepare([corpus], tokenizer="char")
    schedule = {**TINY_TRAIN, "sample_tokens": 8}
    whole = train(None, "nano", TINY_MODEL, schedule, compile="off", attention="chunked")
    assert made == ["int8"] * 3
    silent = train(None, "nano", TINY_MODEL, {**schedule, "sample_tokens": 0}, compile="off", attention="chunked")
    assert [(r["loss"], r.get("val_loss")) for r in whole.history] == [(r["loss"], r.get("val_loss")) for r in silent.history]
    assert all(torch.equal(a, b) for a, b in zip(whole.model.parameters(), silent.model.parameters()))
    cut = train(None, "nano", TINY_MODEL, schedule, compile="off", attention="chunked", reporter=CtrlCAt(15))
    resumed = train(resume=True, run=cut.run_dir, compile="off")
    assert_resume_follows(whole, resumed, 15)
