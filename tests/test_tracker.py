"""`train --tracker`: TensorBoard and W&B get what metrics.jsonl gets, and never stop a run."""

import json
import struct
import sys

import pytest

from bladegpt.train import train
from bladegpt.data.prepare import prepare
from bladegpt.runs import read_metrics
from bladegpt.train.tracker import TensorBoard, scalars
from bladegpt.train.trainer import Reporter
from tests.conftest import TINY_MODEL, TINY_TRAIN
from tests.safety import TINY_CLI, assert_one_line_error, invoke

SETTINGS = {**TINY_TRAIN, "sample_tokens": 8}


class Told(Reporter):
    """Keeps the trainer's messages; raises at `fail_at` (a crash between two checkpoints)."""

    def __init__(self, fail_at: int | None = None):
        self.messages, self.fail_at = [], fail_at

    def message(self, text):
        self.messages.append(text)

    def log(self, record):
        if record["step"] == self.fail_at:
            raise RuntimeError("the machine went away")


def board(folder) -> tuple[dict, dict]:
    """TensorBoard's own reading of an event folder: {tag: [(step, value)]} and {tag: {step: text}}."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    values = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    texts = {tag.removesuffix("/text_summary"): {e.step: e.tensor_proto.string_val[0].decode() for e in events.Tensors(tag)}
             for tag in events.Tags()["tensors"]}
    return values, texts


def expected(run_dir) -> dict:
    """What metrics.jsonl holds, as tracker tags: {tag: [(step, value)]}."""
    out = {}
    for record in read_metrics(run_dir):
        for tag, value in scalars(record).items():
            if not out.get(tag) or out[tag][-1][0] != record["step"]:
                out.setdefault(tag, []).append((record["step"], value))
    return out


def assert_same(logged: dict, wanted: dict) -> None:
    assert logged.keys() == wanted.keys()
    for tag, points in wanted.items():
        assert [s for s, _ in logged[tag]] == [s for s, _ in points], tag
        assert [v for _, v in logged[tag]] == pytest.approx([v for _, v in points], rel=1e-6), tag  # float32


def test_tensorboard_reads_back_what_metrics_jsonl_holds(corpus, workdir):
    pytest.importorskip("tensorboard")
    data = prepare([corpus], tokenizer="char").out_dir
    told = Told()
    train(data, "nano", TINY_MODEL, SETTINGS, compile="off", tracker="tensorboard", reporter=told)
    run = workdir / "runs" / "tales-1"
    values, texts = board(run / "tensorboard")
    wanted = expected(run)
    assert {"train/loss", "val/loss", "val/bpb", "train/lr"} <= wanted.keys()
    assert [s for s, _ in wanted["val/loss"]] == [10, 20, 30] and len(wanted["train/loss"]) == 6
    assert_same(values, wanted)
    assert sorted(texts["sample"]) == [10, 20, 30] and all(texts["sample"].values())
    assert str(data.resolve()) in texts["settings"][0] and '"n_embd": 32' in texts["settings"][0]
    assert any("tensorboard --logdir runs" in m for m in told.messages)


def test_tensorboard_after_a_crash_and_resume_holds_each_step_once(corpus, workdir):
    pytest.importorskip("tensorboard")
    data = prepare([corpus], tokenizer="char").out_dir
    with pytest.raises(RuntimeError):  # steps 21-25 are logged, then lost with the crash: the last save is step 20
        train(data, "nano", TINY_MODEL, SETTINGS, compile="off", tracker="tensorboard", reporter=Told(fail_at=25))
    run = workdir / "runs" / "tales-1"
    train(resume=True, run=run, compile="off", tracker="tensorboard")
    values, texts = board(run / "tensorboard")
    assert_same(values, expected(run))
    assert [s for s, _ in values["train/loss"]] == [5, 10, 15, 20, 25, 30] and sorted(texts["sample"]) == [10, 20, 30]


def read_wandb(path):
    """The records of a .wandb file (LevelDB's log format: 32 KiB blocks of chunks, each a 7-byte header:
    crc32, length, kind; a 7-byte file header first), parsed with W&B's own protobuf."""
    from wandb.proto import wandb_internal_pb2

    raw, records, pending, pos = path.read_bytes(), [], b"", 7
    while pos + 7 <= len(raw):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is padding
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", raw[pos:pos + 7])
        pending += raw[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL, LAST
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
        elif kind == 0:
            break
    return records


def test_wandb_offline_writes_its_run_folder(corpus, workdir, monkeypatch):
    wandb = pytest.importorskip("wandb")
    for name in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(workdir / "wandb-home"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    data = prepare([corpus], tokenizer="char").out_dir
    told = Told()
    train(data, "nano", TINY_MODEL, SETTINGS, compile="off", tracker="wandb", reporter=told)
    assert not [m for m in told.messages if "W&B stopped" in m], told.messages
    wandb.teardown()  # what the process's exit does: W&B writes its file in the background until then
    run = workdir / "runs" / "tales-1"
    run_id = (run / "wandb" / "bladegpt-run-id").read_text()
    [log] = (run / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb")
    logged = {}
    config = ""
    for record in read_wandb(log):
        if record.HasField("history"):
            step = record.history.step.num
            for item in record.history.item:
                key = item.key or "/".join(item.nested_key)
                if not key.startswith(("_", "samples")):
                    logged.setdefault(key, []).append((step, json.loads(item.value_json)))
        for part in ("config", "run"):  # the settings come with the run record, and in config records
            if record.HasField(part):
                updates = record.config.update if part == "config" else record.run.config.update
                config += "".join(item.value_json for item in updates)
    assert_same(logged, expected(run))
    assert str(data.resolve()) in config
    tables = sorted((log.parent / "files" / "media" / "table").glob("samples_*.table.json"))
    assert len(tables) == 3 and len(json.loads(tables[-1].read_text())["data"]) == 3  # a row per evaluation
    assert any("wandb sync" in m for m in told.messages)


def test_a_tracker_that_cannot_start_is_one_line_and_the_run_goes_on(corpus, workdir, monkeypatch):
    prepare([corpus], tokenizer="char")
    monkeypatch.setitem(sys.modules, "wandb", None)  # not installed
    result = invoke("train", *TINY_CLI, "--steps", "10", "--eval-interval", "10", "--tracker", "wandb")
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())  # the display wraps long lines to the terminal
    assert said.count("--tracker wandb needs the wandb package, which is not installed (pip install "
                      "'bladegpt[wandb]'); training goes on without it.") == 1, result.output
    assert (workdir / "runs" / "tales-1" / "last.safetensors").is_file()


def test_a_tracker_that_fails_mid_run_is_one_line_and_the_run_goes_on(corpus, workdir, monkeypatch):
    pytest.importorskip("tensorboard")
    data = prepare([corpus], tokenizer="char").out_dir

    def full_disk(self, step, values):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(TensorBoard, "_scalars", full_disk)
    told = Told()
    result = train(data, "nano", TINY_MODEL, SETTINGS, compile="off", tracker="tensorboard", reporter=told)
    assert result.step == 30 and len(read_metrics(result.run_dir)) == 9  # metrics.jsonl is written on
    assert [m for m in told.messages if "TensorBoard" in m][1:] == [
        "TensorBoard stopped working (OSError: [Errno 28] No space left on device); training goes on without it."]


def test_unknown_tracker_is_one_line(corpus, workdir):
    prepare([corpus], tokenizer="char")
    assert_one_line_error(invoke("train", *TINY_CLI, "--tracker", "mlflow"), "--tracker 'mlflow'", "tensorboard or wandb")
    assert not (workdir / "runs").exists()


def test_scalars_from_records():
    train_record = {"step": 10, "loss": 2.5, "lr": 1e-3, "tok_per_s": 900.0, "mfu": None, "elapsed": 3.0}
    assert scalars(train_record) == {"train/loss": 2.5, "train/lr": 1e-3, "train/tok_per_s": 900.0, "time/elapsed_s": 3.0}
    eval_record = {"step": 10, "loss": 2.5, "lr": 1e-3, "val_loss": 2.7, "val_bpb": 1.9, "elapsed": 3.5,
                   "copied": 0.02, "val_top1": 0.4, "note": "text", "flag": True}
    assert scalars(eval_record) == {"val/loss": 2.7, "val/bpb": 1.9, "time/elapsed_s": 3.5, "sample/copied": 0.02,
                                    "val/top1": 0.4}
