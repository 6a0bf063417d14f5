"""Datasets are never refilled, replaced in place, or written half: issue #12, items 1, 5 and 9."""

import json
import os
import signal
import subprocess
import sys

import pytest

from bladegpt.data.dataset import TokenData
from bladegpt.errors import DataError
from bladegpt.data.prepare import prepare
from bladegpt.train import train
from tests.conftest import TINY_MODEL, TINY_TRAIN, corpus_text
from tests.safety import REPO, TINY_CLI, assert_one_line_error, invoke, read_only


def sizes(folder):
    return {p.name: p.stat().st_size for p in folder.iterdir()}


@pytest.mark.parametrize("damage", ["truncate train", "empty val", "delete train", "meta claims 10^9"])
def test_damaged_token_files_are_refused_never_refilled(corpus, workdir, damage):
    data = prepare([corpus], tokenizer="char").out_dir
    if damage == "truncate train":
        (data / "train.bin").write_bytes((data / "train.bin").read_bytes()[:100])
    elif damage == "empty val":
        (data / "val.bin").write_bytes(b"")
    elif damage == "delete train":
        (data / "train.bin").unlink()
    else:
        meta = json.loads((data / "meta.json").read_text())
        (data / "meta.json").write_text(json.dumps({**meta, "train_tokens": 10**9}))
    before = sizes(data)
    result = invoke("train", *TINY_CLI, "--steps", "5")
    assert_one_line_error(result, str(data / ("val.bin" if damage == "empty val" else "train.bin")), "prepare it again")
    assert sizes(data) == before  # nothing grown, nothing created
    assert not (workdir / "runs" / "tales-1").exists()


def test_a_read_only_dataset_trains(corpus, workdir):
    data = prepare([corpus], tokenizer="char").out_dir
    with read_only(data):
        result = train(data, "nano", TINY_MODEL, {**TINY_TRAIN, "steps": 10}, compile="off")
    assert result.step == 10 and result.best_val_loss < 4


def test_token_files_are_never_written(corpus, workdir):
    data = TokenData(prepare([corpus], tokenizer="char").out_dir)
    tokens = data.splits["train"]
    before = (data.folder / "train.bin").read_bytes()
    tokens[:5] = 7  # even a write goes to this process's copy, never to the user's file
    assert (data.folder / "train.bin").read_bytes() == before


def test_prepare_never_replaces_a_dataset_unless_told(corpus, workdir):
    first = prepare([corpus], tokenizer="char").out_dir
    run = train(first, "nano", TINY_MODEL, {**TINY_TRAIN, "steps": 10}, compile="off").run_dir
    before = {p.name: p.read_bytes() for p in first.iterdir()}
    corpus.write_text(corpus_text(seed=9))
    result = invoke("prepare", corpus, "--tokenizer", "char")
    assert_one_line_error(result, "already holds a dataset", "--force")
    assert {p.name: p.read_bytes() for p in first.iterdir()} == before

    assert invoke("prepare", corpus, "--tokenizer", "char", "--force").exit_code == 0
    assert {p.name: p.read_bytes() for p in first.iterdir()} != before
    with pytest.raises(DataError, match="not the data .* trained on"):
        train(None, "nano", None, {"steps": 20}, resume=True, run=run, compile="off")
    assert_one_line_error(invoke("train", "--resume", "--run", run, "--steps", "20"), "not the data")
    assert [p.name for p in workdir.joinpath("datasets").iterdir()] == ["tales"]  # no temporary folders left


def test_prepare_never_writes_into_a_folder_it_did_not_make(corpus, workdir):
    (workdir / "notes").mkdir()
    (workdir / "notes" / "mine.txt").write_text("keep me")
    for extra in ([], ["--force"]):
        assert_one_line_error(invoke("prepare", corpus, "--out", "notes", *extra), "is not a dataset")
    assert [p.name for p in (workdir / "notes").iterdir()] == ["mine.txt"]
    assert_one_line_error(invoke("prepare", corpus, "--out", "tales.txt"), "is a file")
    assert corpus.read_text() == corpus_text()
    (workdir / "to-notes").symlink_to(workdir / "notes")
    (workdir / "to-nothing").symlink_to(workdir / "gone")
    for link in ("to-notes", "to-nothing"):
        assert_one_line_error(invoke("prepare", corpus, "--out", link, "--force"), f"{link} is a link")
    assert invoke("prepare", corpus, "--tokenizer", "char").exit_code == 0
    assert_one_line_error(invoke("train", *TINY_CLI, "--run", "to-nothing"), "--run to-nothing is a link to nothing")
    assert not (workdir / "gone").exists() and [p.name for p in (workdir / "notes").iterdir()] == ["mine.txt"]


KILLED_PREPARE = """
import os, signal, sys
real = os.replace
def replace(src, dst):
    if "tales" in str(dst):
        os.kill(os.getpid(), signal.SIGKILL)  # the new dataset is written whole; die before it is published
    real(src, dst)
os.replace = replace
from bladegpt.data.prepare import prepare
prepare([sys.argv[1]], tokenizer="char", force=True)
"""


def test_a_killed_prepare_leaves_the_old_dataset_whole(corpus, workdir):
    data = prepare([corpus], tokenizer="char").out_dir
    before = {p.name: p.read_bytes() for p in data.iterdir()}
    corpus.write_text(corpus_text(seed=5) * 3)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", KILLED_PREPARE, str(corpus)], cwd=workdir, env=env)
    assert done.returncode == -signal.SIGKILL
    assert {p.name: p.read_bytes() for p in data.iterdir()} == before
    TokenData(data)  # still a consistent dataset
    mine = workdir / "datasets" / ".tales.tmp-999999999"  # named like a dead prepare's, but not ours
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    prepare([corpus], tokenizer="char", force=True)  # the next prepare clears the dead one's temporary folder
    assert sorted(p.name for p in (workdir / "datasets").iterdir()) == [".tales.tmp-999999999", "tales"]
    assert (mine / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("text", ["One single line of text, all there is.\n",
                                  "short\nlines\nhere\n" + "x" * 3000 + "\n",
                                  "a\nb\n" + "word " * 400])
def test_validation_is_never_empty(workdir, text):
    (workdir / "t.txt").write_text(text)
    result = invoke("prepare", "t.txt", "--tokenizer", "char")
    if result.exit_code == 0:
        meta = json.loads((workdir / "datasets" / "t" / "meta.json").read_text())
        assert meta["val_tokens"] > 0 and meta["train_tokens"] > meta["val_tokens"]
    else:
        assert_one_line_error(result, "too short")


@pytest.mark.parametrize("garble", ["meta not json", "meta wrong types", "tokenizer a list", "tokenizer no tokens"])
def test_damaged_dataset_files_are_one_line(corpus, workdir, garble):
    data = prepare([corpus]).out_dir
    if garble == "meta not json":
        (data / "meta.json").write_text("{not json")
    elif garble == "meta wrong types":
        (data / "meta.json").write_text(json.dumps({"dtype": "uint16", "vocab_size": "many"}))
    elif garble == "tokenizer a list":
        (data / "tokenizer.json").write_text("[1, 2, 3]")
    else:
        (data / "tokenizer.json").write_text(json.dumps({"kind": "bpe", "pattern": "x"}))
    result = invoke("train", *TINY_CLI, "--steps", "5")
    assert_one_line_error(result, "prepare")
    assert not (workdir / "runs" / "tales-1").exists()


def test_a_folder_a_kill_left_replaced_but_not_deleted_is_removed_by_the_next_build_of_it(tmp_path):
    """publish_dir moves the old folder aside, then deletes it: a kill between left `.NAME.old-PID` (a whole
    dataset's size) for ever; the next build of the same folder removes it, as it removes `.NAME.tmp-PID`."""
    from bladegpt.files import temp_dir

    dead, other = (int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                                      text=True).stdout) for _ in range(2))  # pids no process has now
    dest = tmp_path / "tales"
    left = {kind: tmp_path / f".tales.{kind}-{dead}" for kind in ("old", "tmp")}
    alive = tmp_path / f".tales.old-{os.getppid()}"  # a live process's: maybe being published now
    users = tmp_path / f".tales.tmp-{other}"
    for folder in (*left.values(), alive, users):
        folder.mkdir()
        (folder / "train.bin").write_bytes(b"tokens")
    (users / "notes.txt").write_text("mine")  # not only what the build writes: not ours to delete
    tmp = temp_dir(dest, {"train.bin", "val.bin", "meta.json"})
    assert tmp.is_dir() and not any(folder.exists() for folder in left.values())
    assert (alive / "train.bin").exists() and (users / "notes.txt").read_text() == "mine"
