"""prepare streams (issue #15): the same tokens as encoding the whole text, in bounded memory, on every core."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bladegpt.data import prepare as prepare_module
from bladegpt.data.dataset import TokenData
from bladegpt.errors import DataError
from bladegpt.data.prepare import Corpus, prepare
from bladegpt.data.voices import list_speakers
from tests.conftest import corpus_text
from tests.safety import REPO

MIXED = "Numbers 1234567 and 3.14!  Unicode: café — 😀 日本\n\n\n\tTabs   and   runs of spaces\n"


def books(folder, n, lines=40):
    folder.mkdir()
    for i in range(n):
        (folder / f"{i:05d}.txt").write_text(f"Book {i} says hello.\n" + corpus_text(lines, seed=i) + MIXED)
    return folder


def decoded(data: TokenData) -> dict[str, str]:
    return {s: data.tokenizer.decode(data.splits[s].tolist()) for s in ("train", "val")}


@pytest.mark.parametrize("kind", ["gpt2", "bpe", "char"])
def test_streamed_in_parallel_equals_encoding_the_whole_text(workdir, monkeypatch, kind):
    folder = books(workdir / "shelf", 30)
    whole = "\n\n".join(p.read_text() for p in sorted(folder.iterdir()))
    one = TokenData(prepare([folder], out_dir=workdir / "one", tokenizer=kind, vocab_size=400).out_dir)
    monkeypatch.setattr(prepare_module, "PIECE_CHARS", 700)  # many pieces...
    monkeypatch.setattr("bladegpt.data.textfile.READ_BYTES", 333)  # ...read in odd blocks...
    monkeypatch.setattr(prepare_module, "PARALLEL_MIN_BYTES", 0)  # ...encoded by worker processes
    many = TokenData(prepare([folder], out_dir=workdir / "many", tokenizer=kind, vocab_size=400).out_dir)
    assert "".join(decoded(one).values()) == whole and decoded(many) == decoded(one)
    for split in ("train", "val"):
        assert torch.equal(many.splits[split], one.splits[split])
        assert one.splits[split].tolist() == one.tokenizer.encode(decoded(one)[split])  # as if encoded whole
    assert many.meta["fingerprint"] == one.meta["fingerprint"]


def test_progress_reports_bytes_to_the_end(workdir):
    folder = books(workdir / "shelf", 5)
    seen = []
    prepare([folder], tokenizer="char", progress=lambda done, total: seen.append((done, total)))
    total = sum(p.stat().st_size for p in folder.iterdir()) + 2 * 4
    assert seen[-1] == (total, total) and all(a[0] <= b[0] for a, b in zip(seen, seen[1:]))


def test_the_bpe_learns_from_a_bounded_sample_drawn_across_the_corpus(workdir, monkeypatch):
    folder = workdir / "shelf"
    folder.mkdir()
    for i in range(200):
        (folder / f"{i:03d}.txt").write_text("".join(f"Book {i} line {j} of the tale.\n" for j in range(60)))
    monkeypatch.setattr(prepare_module, "SAMPLE_BYTES", 64_000)
    corpus = Corpus(sorted(folder.iterdir()), 0.1)
    sample = list(corpus.sample())
    assert sum(len(s) for s in sample) <= 64_000 and all(s.endswith("\n") for s in sample)
    books_seen = {int(line.split()[1]) for s in sample for line in s.splitlines()}
    assert min(books_seen) == 0 and max(books_seen) >= 170  # drawn across the train text (books 0-179)
    assert all(line.startswith("Book ") and line.endswith("tale.") for s in sample for line in s.splitlines())
    first = prepare([folder], out_dir=workdir / "a", tokenizer="bpe", vocab_size=512)
    second = prepare([folder], out_dir=workdir / "b", tokenizer="bpe", vocab_size=512)
    assert (first.out_dir / "tokenizer.json").read_text() == (second.out_dir / "tokenizer.json").read_text()


def test_the_vocabulary_is_sized_to_the_text_unless_chosen(workdir):
    text = REPO / "corpora" / "officer_k.txt"
    sized = TokenData(prepare([text], out_dir=workdir / "sized").out_dir)
    assert sized.meta["vocab_size"] == 2048  # tokenizer/bpe.py's bpe_vocab_size for its 59 KB of training text
    chosen = TokenData(prepare([text], out_dir=workdir / "chosen", vocab_size=3000).out_dir)
    assert chosen.meta["vocab_size"] == 3000  # the flag wins over the sizing
    with pytest.raises(DataError, match="--vocab-size must be between 257"):
        prepare([text], out_dir=workdir / "tiny", vocab_size=100)
    assert not (workdir / "tiny").exists()


PEAK = """
import resource, subprocess, sys
subprocess.run([sys.executable, "-c", "from bladegpt.data.prepare import prepare; import sys; "
                "prepare([sys.argv[1]], out_dir=sys.argv[2], tokenizer='gpt2')", *sys.argv[1:]], check=True)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024)
"""


@pytest.mark.slow
def test_memory_stays_bounded_by_the_pieces_in_flight(workdir):
    """64 MB of text: encoding it whole (a str, then a Python list of ids) took about 14 bytes a byte."""
    text = corpus_text(2000) + MIXED
    with open(workdir / "big.txt", "w") as f:
        for _ in range((64 << 20) // len(text)):
            f.write(text)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", PEAK, "big.txt", "out"], cwd=workdir, env=env,
                          capture_output=True, text=True, check=True)
    peak_mb = int(done.stdout.split()[-1])
    assert peak_mb < 300, f"prepare of 64 MB peaked at {peak_mb} MB"
    data = TokenData(workdir / "out")
    assert data.meta["bytes"] == (workdir / "big.txt").stat().st_size


def rss_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
    pytest.skip("no /proc/self/status here")


def test_training_reads_only_the_windows_it_samples(workdir, corpus):
    """A 1 GB token file (sparse: it costs no disk) maps without being read; a batch touches a few pages."""
    data_dir = prepare([corpus], tokenizer="char").out_dir
    meta = (data_dir / "meta.json").read_text().replace(
        f'"train_tokens": {TokenData(data_dir).meta["train_tokens"]}', f'"train_tokens": {1 << 29}')
    (data_dir / "meta.json").write_text(meta)
    with open(data_dir / "train.bin", "r+b") as f:
        f.truncate(2 << 29)  # 512M uint16 tokens
    before = rss_mb()
    data = TokenData(data_dir)
    ix = data.random_starts("train", (64,), 256, torch.Generator().manual_seed(0))
    x, _, _ = data.batch("train", ix, 256)
    assert x.shape == (64, 256) and rss_mb() - before < 64


def test_a_dataset_is_named_after_the_text_and_the_model_without_split_part_numbers(tmp_path):
    from bladegpt.data.prepare import default_out_dir

    text = [tmp_path / "officer_k.txt"]
    text[0].write_text("Rain.\n")
    assert default_out_dir(text).name == "officer_k"
    assert default_out_dir(text, "m/SmolLM2-135M.Q4_1.gguf").name == "officer_k-SmolLM2-135M.Q4_1"
    assert default_out_dir(text, "big/model-00001-of-00003.gguf").name == "officer_k-model"
    assert default_out_dir(text, "ollama:smollm2:135m").name == "officer_k-smollm2-135m"


def test_the_prepared_table_folds_a_long_folder_whole_at_80_columns(corpus, workdir):
    """'written to' ended in '…' where the folder's name passed the column: the one thing to pass to train."""
    from rich.console import Console

    from bladegpt.cli.tables import prepared_table

    out = workdir / "some" / "really" / "long" / "folder" / "for" / "the" / "officer_k-SmolLM2-135M-Instruct.Q4_1"
    console = Console(width=80, record=True)
    console.print(prepared_table(prepare([corpus], out, tokenizer="char"), vocab_sized=True))
    text = console.export_text()
    assert "…" not in text and str(out) in "".join(line.split("│")[2].strip() for line in text.splitlines()
                                                   if line.count("│") == 3), text


def test_a_speakers_val_row_counts_in_words_a_person_writes():
    """A two-line subtitle said "the last 1 exchanges"."""
    from bladegpt.cli.tables import speaker_rows

    meta = {"speaker": {"name": "Anna", "aliases": ["Anna"], "target_lines": 2, "context_lines": 2, "val_exchanges": 1},
            "source_formats": [{"format": "webvtt"}], "target_tokens": 61, "context_tokens": 62, "val_target_tokens": 33}
    assert dict(speaker_rows(meta))["val"] == "the last 1 exchange, 33 target tokens"
    meta["speaker"]["val_exchanges"], meta["val_target_tokens"] = 17, 1
    assert dict(speaker_rows(meta))["val"] == "the last 17 exchanges, 1 target token"


def test_a_folders_other_files_are_named_and_a_file_given_twice_is_refused(workdir):
    folder = books(workdir / "shelf", 2)
    (folder / "LOUD.TXT").write_text("Shouted, in capitals.\n" * 50)
    (folder / "notes.md").write_text("# not text for prepare\n")
    (folder / ".draft.txt").write_text("an editor's copy\n")
    result = prepare([folder], tokenizer="char")
    assert [Path(p).name for p in result.meta["sources"]] == ["00000.txt", "00001.txt", "LOUD.TXT"]
    assert result.notes == [f"Left out of {folder} (prepare reads a folder's .txt files): .draft.txt, notes.md; "
                            "name a file to read it."]
    (workdir / "again.txt").symlink_to(folder / "00000.txt")
    for inputs in ([folder, folder / "00001.txt"], [folder / "00000.txt", workdir / "again.txt"]):
        with pytest.raises(DataError, match="is given twice"):
            prepare(inputs, out_dir=workdir / "twice", tokenizer="char")
    with pytest.raises(DataError, match="is given twice"):
        list_speakers([folder / "00001.txt", folder])
    assert not (workdir / "twice").exists()
