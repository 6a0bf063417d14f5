"""Checkpoints written in the background (train/saver.py): the files are the state as it was when copied, best
is linked to last where they are the same, a failed write stops the run in one line, and however the run ends
the write in flight is whole on disk first."""

import errno
import json
import os
import threading
import time

import pytest
import torch
from safetensors import safe_open

from bladegpt import checkpoint, runs
from bladegpt.checkpoint import load_checkpoint, save_training, training_snapshot
from bladegpt.config import ModelConfig
from bladegpt.data.prepare import prepare
from bladegpt.errors import TrainingDiverged, UserError
from bladegpt.files import atomic_link, atomic_write_text
from bladegpt.model import GPT
from bladegpt.tokenizer.char import CharTokenizer
from bladegpt.train import train
from bladegpt.train.evaluate import Evaluator
from bladegpt.train.trainer import Reporter
from tests.conftest import TINY_MODEL, TINY_TRAIN


def read(path):
    with safe_open(str(path), framework="pt") as f:
        return f.metadata(), {name: f.get_tensor(name) for name in f.keys()}


def trained_step(model, optimizer):
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    optimizer.step()


def test_a_background_save_writes_the_state_as_it_was_when_copied(tmp_path):
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=8, n_layer=1, n_head=2, n_embd=8, block_size=8))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    tokenizer, staging = CharTokenizer(list("ab")), {}
    info = {"step": 1, "best_val": 2.0}
    for round in range(2):  # the second reuses the first's buffers
        trained_step(model, optimizer)
        now, later = tmp_path / f"now{round}", tmp_path / f"later{round}"
        now.mkdir(), later.mkdir()
        save_training(now, model, tokenizer, [optimizer], {"rng.cpu": torch.get_rng_state()}, info)
        write = training_snapshot(later, model, tokenizer, [optimizer], {"rng.cpu": torch.get_rng_state()}, info,
                                  staging)
        trained_step(model, optimizer)  # training goes on before the copy is written
        write()
        for name in (runs.LAST, runs.STATE):
            (meta_now, tensors_now), (meta_later, tensors_later) = read(now / name), read(later / name)
            assert meta_now == meta_later and tensors_now.keys() == tensors_later.keys()
            assert all(torch.equal(tensors_now[k], tensors_later[k]) for k in tensors_now)
    assert {"state", "last"} == staging.keys()


def test_a_link_keeps_what_it_held_when_its_source_is_replaced(tmp_path):
    source, link = tmp_path / "last", tmp_path / "best"
    atomic_write_text(source, "step 10")
    atomic_link(source, link)
    assert os.path.samefile(source, link) and not list(tmp_path.glob(".*.tmp"))
    atomic_write_text(source, "step 20")
    assert link.read_text() == "step 10" and source.read_text() == "step 20"


def test_best_is_last_linked_where_they_are_the_same(corpus):
    prepare([corpus], tokenizer="char")
    result = train(None, "nano", TINY_MODEL, {**TINY_TRAIN, "steps": 10}, compile="off")
    best, last = result.run_dir / runs.BEST, result.run_dir / runs.LAST
    assert os.path.samefile(best, last)
    assert load_checkpoint(best)[2] == {"step": 10, "val_loss": result.best_val_loss}


@pytest.mark.parametrize("ema", [0.0, 0.8])
def test_without_memory_for_a_copy_the_training_thread_writes_the_same_run(corpus, monkeypatch, ema):
    prepare([corpus], tokenizer="char")
    schedule = {**TINY_TRAIN, "ema": ema, "patience": 0}
    copied = train(None, "nano", TINY_MODEL, schedule, compile="off")
    monkeypatch.setattr("bladegpt.train.saver.machine_memory", lambda: (1, 1))
    started = []
    monkeypatch.setattr(threading.Thread, "start", lambda self: started.append(self))
    direct = train(None, "nano", TINY_MODEL, schedule, compile="off")
    assert not started
    assert [r.get("val_loss") for r in copied.history] == [r.get("val_loss") for r in direct.history]
    for name in (runs.BEST, runs.LAST, runs.STATE):
        (_, a), (_, b) = read(copied.run_dir / name), read(direct.run_dir / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a if k != "rng.batches")


def test_a_failed_background_write_stops_the_run_in_one_line_keeping_the_last_save(corpus, monkeypatch):
    prepare([corpus], tokenizer="char")
    commit, calls = checkpoint._commit_training, []

    def full_disk_at_the_second(*args):
        calls.append(args)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        commit(*args)

    monkeypatch.setattr(checkpoint, "_commit_training", full_disk_at_the_second)
    with pytest.raises(UserError, match="Could not save a checkpoint .*No space left on device.*previous one is kept"):
        train(None, "nano", TINY_MODEL, TINY_TRAIN, compile="off")
    run_dir = runs.latest_run()
    assert load_checkpoint(run_dir / runs.LAST)[2]["step"] == 10
    assert not list(run_dir.glob(".*.tmp"))


def test_a_run_ending_on_an_error_finishes_the_write_in_flight_first(corpus, monkeypatch):
    prepare([corpus], tokenizer="char")
    commit, finished = checkpoint._commit_training, []

    def slow(*args):
        time.sleep(1.0)
        commit(*args)
        finished.append(True)

    monkeypatch.setattr(checkpoint, "_commit_training", slow)
    curve = iter([2.0, float("nan")])
    monkeypatch.setattr(Evaluator, "loss_and_bpb", lambda self, model: (next(curve), 1.0))
    with pytest.raises(TrainingDiverged):
        train(None, "nano", TINY_MODEL, TINY_TRAIN, compile="off")
    assert finished == [True]
    assert not [t for t in threading.enumerate() if t.name == "bladegpt-save"]


@pytest.mark.skipif(not hasattr(os, "setpriority"), reason="no per-thread priority here")
def test_the_background_write_gives_the_steps_the_cpu_first(tmp_path):
    from bladegpt.train.saver import BackgroundSaver

    saver, seen = BackgroundSaver(tmp_path), []
    saver.submit([lambda: seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))])
    saver.wait()
    assert seen == [19] and os.getpriority(os.PRIO_PROCESS, 0) != 19  # the training thread keeps its own


class Killed(BaseException):
    """A kill -9 between two renames, as far as the files go: nothing after it runs, nothing staged is removed."""


@pytest.mark.parametrize("ema", [0.0, 0.8])
def test_a_kill_after_state_is_committed_leaves_best_to_recover_with_last(corpus, monkeypatch, ema):
    """state's rename commits a save whole: best (improved at that evaluation) is staged before it, as last is,
    so a kill after it loses neither; before, best was linked or written after, and a kill between left a best
    older than the one state.safetensors records (or none at all)."""
    prepare([corpus], tokenizer="char")
    commit = checkpoint.commit

    def killed_after_last(tmp, path):
        commit(tmp, path)
        if path.name == runs.LAST:
            raise Killed

    monkeypatch.setattr(checkpoint, "commit", killed_after_last)
    with pytest.raises(Killed):
        train(None, "nano", TINY_MODEL, {**TINY_TRAIN, "ema": ema}, compile="off")
    run_dir = runs.latest_run()
    checkpoint.recover_training(run_dir)
    assert checkpoint.read_info(run_dir / runs.STATE)["best_step"] == 10
    assert load_checkpoint(run_dir / runs.BEST)[2]["step"] == 10
    assert not list(run_dir.glob(".*.tmp"))


def test_a_resume_drops_what_a_kill_left_staged_and_never_committed(corpus):
    prepare([corpus], tokenizer="char")
    result = train(None, "nano", TINY_MODEL, {**TINY_TRAIN, "steps": 10}, compile="off")
    files = {p.name: p.read_bytes() for p in result.run_dir.iterdir()}
    for name in (runs.STATE, runs.BEST):  # a kill cut their writes short
        checkpoint.temp_path(result.run_dir / name).write_bytes(files[name][: len(files[name]) // 2])
    checkpoint.recover_training(result.run_dir)
    assert {p.name: p.read_bytes() for p in result.run_dir.iterdir()} == files


def test_without_hard_links_best_is_a_copy_that_keeps_its_content(tmp_path, monkeypatch):
    def no_links(*args):
        raise OSError(errno.EPERM, "Operation not permitted")

    source, link = tmp_path / "last", tmp_path / "best"
    atomic_write_text(source, "step 10")
    monkeypatch.setattr(os, "link", no_links)
    atomic_link(source, link)
    assert not os.path.samefile(source, link) and link.read_text() == "step 10"
    atomic_write_text(source, "step 20")
    assert link.read_text() == "step 10" and not list(tmp_path.glob(".*.tmp"))


def test_a_second_ctrl_c_while_a_save_is_written_stops_only_once_the_write_is_whole(tmp_path):
    """A Ctrl-C that interrupts the wait for a write is raised once the write is on disk: an interrupted
    Thread.join marks the thread stopped, and the process ended with state renamed and last left staged."""
    import signal

    from bladegpt.train.saver import BackgroundSaver

    saver, written, sent = BackgroundSaver(tmp_path), [], threading.Event()
    saver.submit([lambda: (sent.wait(), time.sleep(0.3), written.append(True))])  # ends only after the Ctrl-C

    def ctrl_c():  # to the main thread itself, so its wait is interrupted (os.kill may wake another thread)
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
        sent.set()

    # Ctrl-C as a terminal gives it: a suite started in the background (`make test &`) inherits SIGINT ignored
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        threading.Timer(0.3, ctrl_c).start()
        with pytest.raises(KeyboardInterrupt):
            saver.wait()
    finally:
        signal.signal(signal.SIGINT, previous)
    assert written == [True]
    assert not [t for t in threading.enumerate() if t.name == "bladegpt-save"]


def test_a_failed_first_save_does_not_point_at_a_resume_that_cannot_be(corpus, monkeypatch):
    prepare([corpus], tokenizer="char")

    def full_disk(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "_commit_training", full_disk)
    with pytest.raises(UserError, match="No space left on device.*none was saved before it.*train again") as e:
        train(None, "nano", TINY_MODEL, TINY_TRAIN, compile="off")
    assert "--resume" not in str(e.value)


def test_a_copy_is_made_only_where_the_runs_memory_budget_has_room(tmp_path, monkeypatch):
    """Gemma 3 270M's run peaked at 11.3 GB with a save's copy, 8.0 without: the copy must fit the budget the
    run was sized to, beside its estimated peak, or the save is written in the training thread."""
    from bladegpt.config import TrainConfig
    from bladegpt.train import saver as saver_module
    from bladegpt.train.saver import BackgroundSaver, copy_room

    monkeypatch.setattr(saver_module, "machine_memory", lambda: (64e9, 32e9))
    assert BackgroundSaver(tmp_path, room=1e9).staging(2e9) is None
    assert BackgroundSaver(tmp_path, room=3e9).staging(2e9) == {}
    assert BackgroundSaver(tmp_path).staging(2e9) == {}  # no room given (a GPU run): half what is available
    cfg, train = ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=64), TrainConfig(batch_size=4)
    peak = saver_module.training_bytes(cfg, train.micro_batch * cfg.block_size, None, False)
    monkeypatch.setattr(saver_module, "memory_budget", lambda device=None: peak + 5e6)
    assert copy_room(torch.nn.Linear(2, 2), cfg, train, torch.device("cpu")) == pytest.approx(5e6)
    assert copy_room(torch.nn.Linear(2, 2), cfg, train, torch.device("meta")) is None


class Said(Reporter):
    def __init__(self):
        self.messages = []

    def message(self, text):
        self.messages.append(text)


def _killed_in_first_save(run_dir, finished):
    """A run folder as a kill -9 in its first save leaves it: run.json, the lock, the metrics so far, and the
    save's staged copies, state's cut short; beside them a file of the user's with a look-alike name."""
    run_dir.mkdir(parents=True)
    for name in (runs.RUN_FILE, runs.LOCK, runs.METRICS):
        (run_dir / name).write_bytes((finished / name).read_bytes())
    state = (finished / runs.STATE).read_bytes()
    checkpoint.temp_path(run_dir / runs.STATE).write_bytes(state[: len(state) // 2])
    checkpoint.temp_path(run_dir / runs.LAST).write_bytes((finished / runs.LAST).read_bytes())
    checkpoint.temp_path(run_dir / runs.RUN_FILE).write_text("{")


def test_what_a_kill_in_the_first_save_left_staged_is_removed_by_runs_and_by_the_next_start_and_said(corpus, workdir):
    """A kill -9 in a run's first save left its staged copies (a model's and its optimizer state's size) in
    the run folder for ever: --resume refuses the folder, and a new run elsewhere never looks at it."""
    from tests.safety import invoke

    prepare([corpus], tokenizer="char")
    finished = train(None, "nano", TINY_MODEL, {**TINY_TRAIN, "steps": 10}, compile="off").run_dir
    run_dir = workdir / "runs" / "killed-1"
    _killed_in_first_save(run_dir, finished)
    staged = sorted(p.name for p in run_dir.glob(".*.tmp"))
    assert staged == [".last.safetensors.tmp", ".run.json.tmp", ".state.safetensors.tmp"]

    lock = runs.RunLock(run_dir)  # a training holds the folder: its staged copies may be a save in progress
    assert invoke("runs").exit_code == 0 and sorted(p.name for p in run_dir.glob(".*.tmp")) == staged
    lock.release()
    with pytest.raises(UserError, match="no checkpoint to resume"):
        train(resume=True, run=run_dir, compile="off")

    result = invoke("runs", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)[-1]["run"].endswith("killed-1")  # stdout: the JSON alone
    said = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(said) == 1 and "killed-1" in said[0] and all(name in said[0] for name in staged), result.stderr
    assert not list(run_dir.glob(".*.tmp"))
    assert invoke("runs").stderr == ""  # said once: nothing left to remove

    _killed_in_first_save(workdir / "runs" / "killed-2", finished)  # a new run in the folder removes them too
    mine = workdir / "runs" / "killed-2" / ".state.safetensors.tmp.keep"
    told = Said()
    with pytest.raises(UserError, match="not a run folder"):  # a file of the user's: the folder is refused whole
        mine.write_text("mine")
        train(None, "nano", TINY_MODEL, {**TINY_TRAIN, "steps": 10}, compile="off", run=mine.parent, reporter=told)
    assert mine.read_text() == "mine" and len(list(mine.parent.glob(".*.tmp"))) == 3 and not told.messages
    mine.unlink()
    resumed = train(None, "nano", TINY_MODEL, {**TINY_TRAIN, "steps": 10}, compile="off", run=mine.parent,
                    reporter=told)
    assert resumed.step == 10 and not list(mine.parent.glob(".*.tmp"))
    removals = [m for m in told.messages if m.startswith("Removed")]
    assert len(removals) == 1 and all(name in removals[0] for name in staged), told.messages


def test_a_resume_removes_and_says_what_no_save_will_commit_and_recovers_what_one_did(corpus):
    """After a kill between state's rename and last's, last's staged copy is the committed save: kept and moved
    into place; a later save's staged state and a staged metrics file are stale: removed, and said."""
    prepare([corpus], tokenizer="char")
    run_dir = train(None, "nano", TINY_MODEL, {**TINY_TRAIN, "steps": 10}, compile="off").run_dir
    last = (run_dir / runs.LAST).read_bytes()
    checkpoint.temp_path(run_dir / runs.LAST).write_bytes(last)  # of state's step: the rest of its commit
    (run_dir / runs.LAST).write_bytes(b"the save before")
    checkpoint.temp_path(run_dir / runs.STATE).write_bytes(b"cut short")
    checkpoint.temp_path(run_dir / runs.METRICS).write_text('{"step": 1')
    assert runs.remove_stale_staged_if_idle(run_dir) == [".metrics.jsonl.tmp", ".state.safetensors.tmp"]
    checkpoint.temp_path(run_dir / runs.STATE).write_bytes(b"cut short")
    told = Said()
    resumed = train(resume=True, run=run_dir, train_overrides={"steps": 20}, reporter=told)
    assert resumed.step == 20 and not list(run_dir.glob(".*.tmp"))
    assert told.messages[0] == runs.said_removed(run_dir, [".state.safetensors.tmp"])


def test_only_the_exact_staged_names_of_a_runs_files_are_removed(tmp_path):
    names = [".last.safetensors.tmp", ".best.safetensors.tmp", ".state.safetensors.tmp", ".run.json.tmp",
             ".metrics.jsonl.tmp"]
    others = [".notes.txt.tmp", "last.safetensors.tmp", ".last.safetensors.tmp2", ".lock.tmp", ".LAST.safetensors.tmp"]
    for name in names + others:
        (tmp_path / name).write_text("x")
    (tmp_path / "folder").mkdir()
    (tmp_path / ".tensorboard.tmp").mkdir()
    os.symlink(tmp_path / "folder", tmp_path / ".best.safetensors.tmp.link")
    assert sorted(runs.remove_stale_staged(tmp_path)) == sorted(names)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(others + ["folder", ".tensorboard.tmp",
                                                                           ".best.safetensors.tmp.link"])


def test_a_link_at_a_name_a_run_writes_is_never_written_through(tmp_path):
    """A link (or folder) at a staged copy's name or the lock's was written through: run.json's save overwrote
    the file it pointed to, the lock truncated it to a pid. Now each is refused in one line, naming it, and the
    file it points to is as it was; a staged copy a killed write left (a hard link to a user's file, too) is
    replaced, not written into."""
    mine = tmp_path / "mine.txt"
    mine.write_text("precious")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for name in (runs.RUN_FILE, runs.STATE, runs.LAST, runs.BEST, runs.METRICS):
        staged = checkpoint.temp_path(run_dir / name)
        staged.symlink_to(mine)
        with pytest.raises(FileExistsError, match="in the way"):
            atomic_write_text(run_dir / name, "{}")
        with pytest.raises(FileExistsError, match="in the way"):
            atomic_link(mine, run_dir / name)
        with pytest.raises(UserError, match="is a link"):  # a new run in the folder is refused before it writes
            runs.claim_run_dir(run_dir, tmp_path)
        checkpoint.recover_training(run_dir)  # a resume's recovery leaves the link alone
        assert staged.is_symlink() and mine.read_text() == "precious"
        staged.unlink()
    (run_dir / runs.LOCK).symlink_to(mine)
    with pytest.raises(UserError, match="is a link"):
        runs.RunLock(run_dir)
    assert mine.read_text() == "precious"
    (run_dir / runs.LOCK).unlink()
    os.link(mine, checkpoint.temp_path(run_dir / runs.RUN_FILE))  # a second name of the user's file
    atomic_write_text(run_dir / runs.RUN_FILE, "{}")
    assert mine.read_text() == "precious" and (run_dir / runs.RUN_FILE).read_text() == "{}"
    checkpoint.temp_path(run_dir / runs.LAST).mkdir()
    with pytest.raises(FileExistsError, match="in the way"):
        atomic_write_text(run_dir / runs.LAST, "{}")


def test_runs_shows_a_read_only_run_folder_with_what_a_kill_left_staged(tmp_path):
    """`runs` on a read-only folder of runs (a backup, a mount) stopped at the first staged copy it could not
    remove, and showed none of the runs: the removal is a reader's courtesy, so it now leaves what it cannot
    remove and shows the runs."""
    from tests.safety import invoke, read_only

    run_dir = tmp_path / "backup" / "talk-1"
    run_dir.mkdir(parents=True)
    (run_dir / runs.RUN_FILE).write_text(json.dumps({"dataset": "datasets/talk", "model": {}, "train": {}}))
    (run_dir / runs.LOCK).write_text("1")
    checkpoint.temp_path(run_dir / runs.STATE).write_bytes(b"cut short")
    with read_only(tmp_path / "backup"):
        assert runs.remove_stale_staged_if_idle(run_dir) == []
        result = invoke("runs", "--json", tmp_path / "backup")
        assert result.exit_code == 0, result.output
        assert [row["run"] for row in json.loads(result.stdout)] == [str(run_dir)]
    assert checkpoint.temp_path(run_dir / runs.STATE).read_bytes() == b"cut short"


def test_runs_removes_staged_names_only_in_a_folder_whose_run_json_is_a_runs(tmp_path):
    """`runs FOLDER` lists what holds a run.json; another tool's folder with a run.json, a .lock and a file
    named like a staged copy had that file removed. Only a folder whose run.json reads as a run's is touched."""
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / runs.RUN_FILE).write_text(json.dumps({"name": "another tool's run"}))
    (theirs / runs.LOCK).write_text("")
    staged = checkpoint.temp_path(theirs / runs.METRICS)
    staged.write_text("theirs")
    assert runs.remove_stale_staged_if_idle(theirs) == [] and staged.read_text() == "theirs"
    (theirs / runs.RUN_FILE).write_text(json.dumps({"dataset": "datasets/talk", "model": {}, "train": {}}))
    assert runs.remove_stale_staged_if_idle(theirs) == [staged.name] and not staged.exists()
