"""The copy meter: how much of a sample is copied verbatim from the training text."""

import io
import json
import random

import pytest

from bladegpt.data import copymeter
from bladegpt.data.copyindex import CopyIndex, percent
from bladegpt.errors import DataError
from bladegpt.cli.display import TrainDisplay
from bladegpt.train import train
from bladegpt.data.prepare import prepare
from tests.conftest import TINY_MODEL, TINY_TRAIN, corpus_text
from tests.safety import invoke, read_only

TEXT = corpus_text(2000, seed=3)  # ~80 KB, the size of a text users fine-tune on


def brute_force(samples: list[str], text: str) -> tuple[int, int, int]:
    """Spans, copied spans and the longest copy (0 under 50 characters), the slow and obvious way."""
    spans = copied = longest = 0
    for s in samples:
        pieces = [s[i : i + 50] for i in range(len(s) - 49)]
        spans += len(pieces)
        copied += sum(p in text for p in pieces)
        for i in range(len(s)):
            while i + longest < len(s) and s[i : i + longest + 1] in text:
                longest += 1
    return spans, copied, longest if longest >= 50 else 0


def test_finds_a_planted_80_character_span_and_nothing_in_unrelated_text():
    index = CopyIndex.from_bytes(TEXT.encode())
    planted = TEXT[31_337 : 31_337 + 80]
    unrelated = "#Zebras juggle 42 quartz yo-yos#" * 10  # "#" and digits are not in the text
    found = index.measure([unrelated + planted + unrelated])
    assert found.longest == 80
    assert found.copied == 80 - 50 + 1 and found.spans == len(unrelated + planted + unrelated) - 49
    assert found.describe() == f"copied: {found.copied / found.spans:.0%} of 50-char spans, longest 80 chars"
    none = index.measure([unrelated * 3])
    assert (none.copied, none.longest, none.share) == (0, 0, 0.0)
    assert none.describe() == "copied: 0% of 50-char spans"
    assert index.measure(["short"]).share is None  # no span to judge


def test_the_training_display_shows_the_meter_under_its_sample():
    from rich.console import Console

    out = io.StringIO()
    display = TrainDisplay(Console(file=out, width=100, force_terminal=False))
    display.task = display.progress.add_task("train", total=10, stats="")
    display.eval({"step": 5, "val_loss": 2.0, "val_bpb": 2.1, "elapsed": 3, "copied": 0.04, "longest_copy": 231}, "A")
    display.eval({"step": 6, "val_loss": 2.0, "val_bpb": 2.1, "elapsed": 3}, "B")  # no meter (yet): no line
    assert out.getvalue().count("copied: 4% of 50-char spans, longest 231 chars") == 1
    assert out.getvalue().count("copied") == 1


def test_agrees_with_brute_force_on_mixed_samples_in_any_script():
    rng = random.Random(0)
    text = "".join(rng.choice("aé€😀 b\n") for _ in range(20_000))  # 1- to 4-byte characters
    index = CopyIndex.from_bytes(text.encode())
    for _ in range(10):
        samples = []
        for _ in range(3):  # copied stretches of all lengths between invented ones, measured apart
            s = ""
            while len(s) < 300:
                at = rng.randrange(len(text) - 200)
                s += text[at : at + rng.randrange(5, 150)] if rng.random() < 0.6 else "xyz"[: rng.randrange(1, 4)]
            samples.append(s)
        found = index.measure(samples)
        assert (found.spans, found.copied, found.longest) == brute_force(samples, text)


def test_no_copy_across_a_document_boundary(workdir):
    rng = random.Random(1)
    first, second = ("".join(rng.choice("abcdefgh ") for _ in range(3000)) for _ in range(2))  # no 20 chars recur
    (workdir / "docs.txt").write_text(first + "<|endoftext|>" + second)
    index = copymeter.for_dataset(prepare([workdir / "docs.txt"], tokenizer="bpe").out_dir)
    assert index.measure([first[-60:] + second[:60]]).longest == 60
    assert index.measure([first[-60:] + "<|endoftext|>" + second[:60]]).longest == 60  # as an eval sample ends


@pytest.fixture
def dataset(workdir):
    (workdir / "tales.txt").write_text(TEXT)
    return prepare([workdir / "tales.txt"], tokenizer="bpe").out_dir


def test_a_dataset_is_read_from_its_token_files_and_a_big_one_cached_once(dataset, monkeypatch, tmp_path):
    piece = TEXT[5000:5100]
    small = copymeter.for_dataset(dataset)
    assert small.measure([piece]).longest == 100 and not list(dataset.glob("copymeter-*"))  # in memory
    monkeypatch.setattr(copymeter, "IN_MEMORY_BYTES", 0)
    monkeypatch.setattr(copymeter, "_INDEXES", {})
    fingerprint = json.loads((dataset / "meta.json").read_text())["fingerprint"]
    assert copymeter.for_dataset(dataset).measure([piece]).longest == 100
    cached = dataset / f"copymeter-{fingerprint}.idx"
    assert cached.is_file() and [p.name for p in dataset.iterdir() if p.name.startswith(".")] == []
    written = cached.stat().st_mtime_ns
    monkeypatch.setattr(copymeter, "_INDEXES", {})  # a new process reads the file, never writes it again
    assert copymeter.for_dataset(dataset).measure([piece]).longest == 100 and cached.stat().st_mtime_ns == written
    with pytest.raises(DataError, match="prepared again"):
        copymeter.for_dataset(dataset, fingerprint="0" * 16)
    result = invoke("prepare", dataset.parent.parent / "tales.txt", "--force")  # the index is the dataset's own
    assert result.exit_code == 0, result.output
    assert not cached.exists()


def test_a_read_only_dataset_is_indexed_in_the_users_cache(dataset, monkeypatch):
    monkeypatch.setattr(copymeter, "IN_MEMORY_BYTES", 0)
    monkeypatch.setattr(copymeter, "_INDEXES", {})
    fingerprint = json.loads((dataset / "meta.json").read_text())["fingerprint"]
    with read_only(dataset):
        assert copymeter.for_dataset(dataset).measure([TEXT[:90]]).longest == 90
        assert not list(dataset.glob("*copymeter*"))
    assert copymeter.cached_locations(dataset, fingerprint)[1].is_file()


def test_train_sample_and_runs_report_the_copy_meter(dataset, workdir):
    train(dataset, "nano", TINY_MODEL, {**TINY_TRAIN, "steps": 20, "sample_tokens": 20}, compile="off")
    evals = [r for r in map(json.loads, (workdir / "runs/tales-1/metrics.jsonl").read_text().splitlines())
             if "val_loss" in r]
    assert 0 <= evals[-1]["copied"] <= 1 and evals[-1]["longest_copy"] >= 0
    sampled = invoke("sample", "The", "--max-new-tokens", "20", "--seed", "1")
    assert sampled.exit_code == 0, sampled.output
    assert "copied: " in sampled.stderr and "copied" not in sampled.stdout  # piped samples stay clean
    quiet = invoke("sample", "The", "--max-new-tokens", "20", "--seed", "1", "--no-copy-check")
    assert "copied" not in quiet.output and quiet.stdout == sampled.stdout
    rows = json.loads(invoke("runs", "--json").stdout)
    assert rows[0]["copied"] == evals[-1]["copied"] and rows[0]["longest_copy"] == evals[-1]["longest_copy"]
    assert percent(evals[-1]["copied"]) in invoke("runs").output.split("tales-1")[1]
    for name in ("train.bin", "meta.json"):  # a dataset gone: the samples come, and one quiet line says why
        (dataset / name).rename(dataset / f"{name}.moved")
    gone = invoke("sample", "The", "--max-new-tokens", "20", "--seed", "1")
    assert gone.exit_code == 0 and "No copy check: the run's dataset" in gone.stderr and "is gone" in gone.stderr
