"""prepare(): text files in, token files out, as a stream.

The corpus is read in blocks, cut into pieces of about a megabyte where encoding is unchanged, encoded on every
core and written as it comes, so memory is bounded by the pieces in flight (never the corpus, nor a list of its ids).
"""

from __future__ import annotations

import hashlib
import itertools
import multiprocessing
import os
import re
import shutil
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from bladegpt import strictjson
from bladegpt.data.copymeter import is_index_file
from bladegpt.data.dataset import DATASETS_DIR, DATASET_FILES, META_FILE, TOKENIZER_FILE
from bladegpt.errors import DataError
from bladegpt.encoding import utf8_name
from bladegpt.files import fsync, publish_dir, temp_dir
from bladegpt.data.frames import FrameCounter
from bladegpt.data.textfile import TextFile, text_files, utf8_size
from bladegpt.tokenizer import GPT2_EOT, CharTokenizer, Tokenizer, tokenizer_from_dict, train_tokenizer
from bladegpt.tokenizer.bpe import bpe_vocab_size

MIN_VOCAB, MAX_VOCAB = 257, 0xD7FF  # a BPE's ids must stay below the surrogate code points (tokenizer.py)
PIECE_CHARS = 1 << 20  # text encoded as one piece (4 MB measured slower: less overlap)
HF_PIECE_CHARS = 1 << 16  # ... by a pretrained model's tokenizer: as fast, and a 4 MB batch of them peaks at
# 36 MB over the tokenizer, where four 1 MB pieces peaked at 230 MB (Hugging Face tokenizers, SmolLM2's)
HF_BATCH_PIECES = 16  # pieces a core in a batch
SAMPLE_BYTES = 32 << 20  # a corpus BPE trains on at most this much text, drawn evenly across the corpus
SAMPLE_SPANS = 64  # ... in this many spans
SEPARATOR = "\n\n"  # between files
PARALLEL_MIN_BYTES = 32 << 20  # below this, starting worker processes (~1 s) costs more than they save
# Safe places to cut text for separate encoding: neither GPT-2's nor GPT-4's split pattern joins
# across them, so pieces encode exactly as the whole. After a line break between two non-spaces;
# inside a long line, before a single space between two non-spaces.
_CUT = re.compile(r"(?<=\S\n)(?=\S)")
_SPACE_CUT = re.compile(r"(?<=\S)(?= \S)")


@dataclass
class PrepareResult:
    out_dir: Path
    meta: dict
    notes: list[str]  # one line each, to print: files a folder held that were left out, how files not UTF-8 were read


def whole_lines(blocks: Iterator[str]) -> Iterator[str]:
    """Blocks re-cut after their last line break, so a BPE counts the same words however the text was read."""
    buffer = ""
    for block in blocks:
        buffer += block
        cut = buffer.rfind("\n") + 1
        if cut:
            yield buffer[:cut]
            buffer = buffer[cut:]
    if buffer:
        yield buffer


def outside_separator(text: str, cut: int) -> int:
    """`cut`, or the start of the `<|endoftext|>` it would split (a separator is one token, never two halves)."""
    start = text.find(GPT2_EOT, max(0, cut - len(GPT2_EOT) + 1), cut + len(GPT2_EOT) - 1)
    return start if 0 <= start < cut else cut


def cut_point(text: str, size: int) -> int | None:
    """Where to end a piece of `text` near `size` characters without changing its encoding."""
    for pattern in (_CUT, _SPACE_CUT):
        match = pattern.search(text, size)
        if match is not None:
            return match.start()
    return None


def pieces(blocks: Iterator[str], size: int) -> Iterator[str]:
    """Re-cut a stream of text blocks into pieces of about `size` characters, at safe places."""
    buffer = ""
    for block in blocks:
        buffer += block
        while len(buffer) > 2 * size:
            cut = cut_point(buffer, size)
            if cut is None:
                cut = len(buffer) - size if len(buffer) > 8 * size else None  # one unbroken run of text
                if cut is None:
                    break
                cut = outside_separator(buffer, cut)
            yield buffer[:cut]
            buffer = buffer[cut:]
    if buffer:
        yield buffer


class Corpus:
    """The text files as one text (joined by a blank line), read as a stream, split into train and val."""

    def __init__(self, files: list[Path], val_fraction: float):
        if not 0.0 < val_fraction < 0.5:
            raise DataError(f"--val-fraction must be between 0 and 0.5, got {val_fraction}.")
        self.files = [TextFile.open(Path(f)) for f in files]
        self.sizes = [f.text_bytes for f in self.files]
        self.bytes = sum(self.sizes) + len(SEPARATOR) * (len(files) - 1)
        self.val_start = int(self.bytes * (1.0 - val_fraction))  # in bytes; moved to the next line break

    def blocks(self) -> Iterator[str]:
        for i, file in enumerate(self.files):
            empty = True
            for block in file.blocks():
                empty = empty and not block.strip()
                yield block
            if empty:
                raise DataError(f"{file.path} is empty; give prepare a file with text in it.")
            if i < len(self.files) - 1:
                yield SEPARATOR

    def split_blocks(self) -> Iterator[tuple[str, str]]:
        """("train" or "val", text) blocks: val starts at the first line break after val_start
        (within a thousand characters, and leaving val some text), as it always has."""
        done, split = 0, "train"
        for block in self.blocks():
            size = utf8_size(block)
            if split == "train" and done + size > self.val_start:
                at = len(block.encode("utf-8")[: self.val_start - done].decode("utf-8", "ignore"))
                newline = block.find("\n", at)
                if newline != -1 and newline - at < 1000 and block[newline + 1 :].strip():
                    at = newline + 1
                at = outside_separator(block, at)
                yield "train", block[:at]
                block, split = block[at:], "val"
            done += size
            yield split, block

    def sample(self) -> Iterator[str]:
        """The training text a corpus BPE learns from: all of it when small, else SAMPLE_SPANS spans
        drawn evenly across the train part (deterministic), each cut to whole lines."""
        budget = SAMPLE_BYTES
        if self.val_start <= budget:
            yield from whole_lines(text for split, text in self.split_blocks() if split == "train")
            return
        span = budget // SAMPLE_SPANS
        starts = [round(i * (self.val_start - span) / (SAMPLE_SPANS - 1)) for i in range(SAMPLE_SPANS)]
        offsets = [0]
        for size in self.sizes:
            offsets.append(offsets[-1] + size + len(SEPARATOR))
        for start in starts:
            i = max(k for k in range(len(self.files)) if offsets[k] <= start)
            at = start - offsets[i]
            text = "".join(self.files[i].blocks(at, span))
            whole = text.split("\n")[1 if at else 0 : -1]  # drop the lines the span cuts into
            if whole:
                yield "\n".join(whole) + "\n"

    def alphabet(self) -> list[str]:
        """Every character of the corpus (val included, so val never has one train lacks), streamed;
        the separators' characters only where they also stand outside one."""
        seen: set[str] = set()
        held = ""  # the end of the text so far, which may be the start of a separator
        for block in self.blocks():
            parts = (held + block).split(GPT2_EOT)
            held = parts[-1][-(len(GPT2_EOT) - 1) :]
            seen.update(*parts[:-1], parts[-1][: len(parts[-1]) - len(held)])
        seen.update(held)
        return sorted(seen)


def build_tokenizer(corpus: Corpus, kind: str, vocab_size: int | None, tokenizer_from: str | None) -> Tokenizer:
    """The dataset's tokenizer; a corpus BPE of `vocab_size` ids, or with None sized to the text."""
    if tokenizer_from is not None:
        from bladegpt.sources import load_tokenizer_from

        return load_tokenizer_from(tokenizer_from)
    if kind == "char":
        return CharTokenizer(corpus.alphabet())
    if kind == "bpe":
        if vocab_size is None:
            vocab_size = bpe_vocab_size(min(corpus.val_start, SAMPLE_BYTES))
        return train_tokenizer(kind, corpus.sample(), vocab_size)
    return train_tokenizer(kind, "")


def split_pieces(corpus: Corpus, size: int) -> Iterator[tuple[str, str]]:
    """("train" or "val", piece) in corpus order, reading the corpus once: train's pieces, then val's."""
    for split, blocks in itertools.groupby(corpus.split_blocks(), key=lambda block: block[0]):
        for piece in pieces((text for _, text in blocks), size):
            yield split, piece


_worker_tokenizer: Tokenizer | None = None


def _start_worker(tokenizer: dict) -> None:
    global _worker_tokenizer
    _worker_tokenizer = tokenizer_from_dict(tokenizer)


def _encode_piece(text: str, dtype: str) -> bytes:
    return _worker_tokenizer.encode_bytes(text, dtype)


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def encoded_pieces(tok: Tokenizer, items: Iterator[tuple[str, str]], dtype: str,
                   parallel: bool) -> Iterator[tuple[str, str, bytes]]:
    """(split, piece, its ids as bytes), in order. In parallel, one worker process per core (measured
    1.97x one thread on 2 cores, where tiktoken's GIL-free threads gave 1.61x: building the Python
    lists of ids holds the GIL), with at most two pieces per worker in flight. A pretrained model's
    tokenizer ("hf") runs its own threads on a batch of pieces instead, at any corpus size."""
    if tok.kind == "hf":
        yield from batch_encoded_pieces(tok, items, dtype)
        return
    if not parallel or cores() == 1:
        for split, piece in items:
            yield split, piece, tok.encode_bytes(piece, dtype)
        return
    global _worker_tokenizer
    workers, context = cores(), multiprocessing.get_context()
    if context.get_start_method() == "fork":  # workers inherit the tokenizer built here (GPT-2's takes ~1 s)
        _worker_tokenizer, setup = tok, {}
    else:
        setup = {"initializer": _start_worker, "initargs": (tok.to_dict(),)}
    with ProcessPoolExecutor(workers, mp_context=context, **setup) as pool:
        pending: deque = deque()
        for split, piece in items:
            pending.append((split, piece, pool.submit(_encode_piece, piece, dtype)))
            if len(pending) > 2 * workers:
                split, piece, future = pending.popleft()
                yield split, piece, future.result()
        while pending:
            split, piece, future = pending.popleft()
            yield split, piece, future.result()


def batch_encoded_pieces(tok: Tokenizer, items: Iterator[tuple[str, str]],
                         dtype: str) -> Iterator[tuple[str, str, bytes]]:
    """(split, piece, its ids as bytes), in order: a batch of pieces at a time, encoded by the tokenizer's own
    threads (`tokenizers` releases the GIL), as pieces of one text (their ids are the whole text's)."""
    before = None
    while batch := list(itertools.islice(items, HF_BATCH_PIECES * cores())):
        encoded = tok.encode_pieces_bytes([piece for _, piece in batch], dtype, before)
        yield from ((split, piece, data) for (split, piece), data in zip(batch, encoded))
        before = batch[-1][1]


def encode_corpus(corpus: Corpus, tok: Tokenizer, folder: Path, progress: Callable[[int, int], None] | None) -> dict:
    """Encode the corpus piece by piece, writing train.bin and val.bin as the ids come; meanwhile tell
    how the text writes dialogue (frames.py), for chat."""
    dtype = "uint16" if tok.vocab_size <= 1 << 16 else "uint32"
    itemsize = 2 if dtype == "uint16" else 4
    counts, chars, text_bytes = {"train": 0, "val": 0}, {"train": 0, "val": 0}, {"train": 0, "val": 0}
    digest = hashlib.sha256()  # the same hash as data.fingerprint: train.bin, val.bin, tokenizer.json
    done, frames = 0, FrameCounter()
    files = {split: open(folder / f"{split}.bin", "wb") for split in counts}
    try:
        parallel = corpus.bytes >= PARALLEL_MIN_BYTES
        size = HF_PIECE_CHARS if tok.kind == "hf" else PIECE_CHARS
        for split, piece, data in encoded_pieces(tok, split_pieces(corpus, size), dtype, parallel):
            files[split].write(data)
            frames.feed(piece)
            digest.update(data)
            counts[split] += len(data) // itemsize
            n = utf8_size(piece)
            chars[split] += len(piece)
            text_bytes[split] += n
            done += n
            if progress:
                progress(done, corpus.bytes)
    finally:
        for f in files.values():
            f.close()
    return {"counts": counts, "chars": chars, "bytes": text_bytes, "digest": digest, "dtype": dtype,
            "frame": frames.frame()}


def default_out_dir(inputs: list[Path], tokenizer_from: str | None = None) -> Path:
    """datasets/NAME after the first input; NAME-SOURCE with a model's tokenizer, beside the text's own."""
    first = Path(inputs[0])
    name = utf8_name(first.stem if first.is_file() else first.resolve().name)
    if tokenizer_from:
        source = Path(tokenizer_from.removeprefix("ollama:").replace(":", "-").rstrip("/\\"))
        source = re.sub(r"-\d{5}-of-\d{5}$", "", source.stem if source.suffix in (".gguf", ".safetensors")
                        else source.name)  # a split GGUF's first part, model-00001-of-00003, names the model
        name += "-" + re.sub(r"[^A-Za-z0-9._-]+", "-", source)
    return DATASETS_DIR / name


def check_out_dir(out_dir: Path, force: bool) -> None:
    """prepare writes a new folder, or replaces a dataset when told; it never touches anything else."""
    if out_dir.is_file() or out_dir.is_symlink():
        raise DataError(f"{out_dir} is a {'link' if out_dir.is_symlink() else 'file'}; give --out a folder name of its own for the dataset.")
    if not out_dir.is_dir() or not any(out_dir.iterdir()):
        return
    ours = [p.name in DATASET_FILES or is_index_file(p.name) for p in out_dir.iterdir()]  # the copy meter's index too
    if not (out_dir / META_FILE).is_file() or not all(ours):
        raise DataError(f"{out_dir} exists and is not a dataset; choose another --out (prepare never writes "
                        "into a folder it did not make).")
    if not force:
        raise DataError(f"{out_dir} already holds a dataset; choose another --out, or add --force to replace it "
                        "(runs trained on it resume only if the new one holds the same tokens).")


def prepare(
    inputs: list[Path],
    out_dir: Path | None = None,
    tokenizer: str = "bpe",
    vocab_size: int | None = None,
    val_fraction: float = 0.1,
    progress: Callable[[int, int], None] | None = None,
    force: bool = False,
    tokenizer_from: str | None = None,
) -> PrepareResult:
    """Tokenize text files into a dataset folder: train.bin, val.bin, tokenizer.json, meta.json.

    The folder is written whole under a temporary name and renamed into place, so a killed
    prepare leaves no half dataset; an existing dataset is replaced only with `force`.
    `tokenizer_from` encodes with a pretrained model's tokenizer (for train --init-from).
    `progress(done, total)` is called with bytes of text encoded so far.
    """
    started = time.perf_counter()
    if vocab_size is not None and not MIN_VOCAB <= vocab_size <= MAX_VOCAB:
        raise DataError(f"--vocab-size must be between {MIN_VOCAB} (the 256 bytes and the end of text) and "
                        f"{MAX_VOCAB:,}, got {vocab_size:,}; leave it out to size it to the text.")
    out_dir = Path(out_dir) if out_dir is not None else default_out_dir(inputs, tokenizer_from)
    check_out_dir(out_dir, force)
    files, left_out = text_files(inputs)
    corpus = Corpus(files, val_fraction)
    tok = build_tokenizer(corpus, tokenizer, vocab_size, tokenizer_from)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir(out_dir, DATASET_FILES)
    try:
        encode_start = time.perf_counter()
        written = encode_corpus(corpus, tok, tmp, progress)
        encode_seconds = time.perf_counter() - encode_start
        counts = written["counts"]
        if not counts["val"] or not counts["train"]:
            raise DataError(f"The text is too short to keep {val_fraction:.0%} of it for validation; "
                            "give prepare more text (a few KB at least).")
        tok.save(tmp / TOKENIZER_FILE)
        written["digest"].update((tmp / TOKENIZER_FILE).read_bytes())
        meta = {
            "format": 1,
            "tokenizer": tok.kind,
            "tokenizer_from": tokenizer_from,
            "vocab_size": tok.vocab_size,
            "eot_id": tok.eot_id,  # what `<|endoftext|>` in the text became (None: characters)
            "stop_ids": list(tok.stop_ids),  # every id that ends a text, eos first
            "dtype": written["dtype"],
            "train_tokens": counts["train"],
            "val_tokens": counts["val"],
            "fingerprint": written["digest"].hexdigest()[:16],
            "sources": [str(f.path) for f in corpus.files],
            "source_encodings": [f.encoding for f in corpus.files],
            "val_fraction": val_fraction,
            "chars": written["chars"]["train"] + written["chars"]["val"],
            "bytes": written["bytes"]["train"] + written["bytes"]["val"],
            "train_bytes": written["bytes"]["train"],
            "val_bytes": written["bytes"]["val"],
            "chat_frame": written["frame"].to_dict(),
            "encode_seconds": round(encode_seconds, 3),
            "seconds": round(time.perf_counter() - started, 3),
        }
        _write_meta(tmp, meta)
        check_out_dir(out_dir, force)  # again: another prepare may have written it meanwhile
        publish_dir(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return PrepareResult(out_dir, meta, left_out + [note for f in corpus.files if (note := f.note())])


def _write_meta(folder: Path, meta: dict) -> None:
    """meta.json last, then every file and the folder flushed to disk before the rename publishes them."""
    (folder / META_FILE).write_text(strictjson.dumps(meta, indent=2), encoding="utf-8")
    for path in folder.iterdir():
        fsync(path)
    fsync(folder)
