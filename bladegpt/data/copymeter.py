"""The copy meter bound to a dataset and a run: a dataset's training text decoded from its token files and
indexed (copyindex.py), in memory for a small text, else once into `copymeter-FINGERPRINT.idx` beside its
token files (or, where that folder is read-only, in the user's cache folder); made in the background, so a
sample or an evaluation never waits for it."""

from __future__ import annotations

import functools
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from bladegpt.data.copyindex import TEXT_END, CopyIndex, read_index, write_index
from bladegpt.data.dataset import MASK_FILES, TOKENIZER_FILE, fingerprint as hash_files, read_meta
from bladegpt.errors import DataError
from bladegpt.files import cache_dir
from bladegpt.runs import RUN_FILE, read_run
from bladegpt.tokenizer import load_tokenizer

IN_MEMORY_BYTES = 4 * 2**20  # up to this much training text is indexed in memory each time (~0.1 s), not cached
DECODE_CHUNK = 1 << 20  # token ids decoded at once: ~4 MB of text


def byte_table(tokenizer) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every id's bytes, concatenated (uint8), with offsets and lengths; the end-of-text token and ids
    with no text stand for TEXT_END, so that no copy is found across a document boundary."""
    pieces = []
    for i in range(tokenizer.vocab_size):
        piece = b"" if i == tokenizer.eot_id else tokenizer.token_bytes(i)
        pieces.append(piece or bytes([TEXT_END]))
    lengths = np.array([len(p) for p in pieces], dtype=np.int64)
    return np.frombuffer(b"".join(pieces), dtype=np.uint8), np.cumsum(lengths) - lengths, lengths


def decode_tokens(ids: np.ndarray, table: tuple[np.ndarray, np.ndarray, np.ndarray]) -> Iterator[np.ndarray]:
    """The text of token ids, as uint8 arrays of DECODE_CHUNK tokens each (vectorised: no Python per token)."""
    data, offsets, lengths = table
    for i in range(0, len(ids), DECODE_CHUNK):
        chunk = np.asarray(ids[i : i + DECODE_CHUNK], dtype=np.int64)
        n = lengths[chunk]
        out_start = np.cumsum(n) - n
        yield data[np.repeat(offsets[chunk] - out_start, n) + np.arange(int(n.sum()))]


def index_name(fingerprint: str) -> str:
    return f"copymeter-{fingerprint}.idx"


INDEX_FILE = re.compile(r"\.?copymeter-[0-9a-f]+\.idx(\.\d+\.tmp)?")


def is_index_file(name: str) -> bool:
    """Whether a file in a dataset folder is the copy meter's (its index, or one being written)."""
    return INDEX_FILE.fullmatch(name) is not None


def cached_locations(folder: Path, fingerprint: str) -> list[Path]:
    """Where a dataset's index may be: beside its token files, else in the user's cache folder."""
    name = index_name(fingerprint)
    return [Path(folder) / name, cache_dir() / "copymeter" / name]


def dataset_index(folder: Path, ids: np.ndarray, tokenizer: Callable[[], object], fingerprint: str,
                  text_bytes: int) -> CopyIndex:
    """The index of a dataset's training text: built in memory for a small text; for a larger one, read
    from its cache file, or built into it (the dataset folder, or the user's cache where that is
    read-only). `tokenizer()` gives the dataset's tokenizer, loaded only to build. Raises OSError only
    when neither place can be written."""
    if text_bytes <= IN_MEMORY_BYTES:
        return CopyIndex.from_bytes(b"".join(p.tobytes() for p in decode_tokens(ids, byte_table(tokenizer()))))
    places = cached_locations(folder, fingerprint)
    for path in places:
        if (found := read_index(path, fingerprint)) is not None:
            return found
    error: OSError | None = None
    table = byte_table(tokenizer())
    for path in places:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_index(path, decode_tokens(ids, table), fingerprint)
        except OSError as e:
            error = error or e
            continue
        if (found := read_index(path, fingerprint)) is not None:
            return found
    raise error or OSError(f"could not index {folder}")


_INDEXES: dict[tuple[str, str], CopyIndex] = {}
_LOCK = threading.Lock()


def for_dataset(folder: Path, fingerprint: str | None = None) -> CopyIndex:
    """The copy meter of a prepared dataset, built at most once per process. `fingerprint` (what a run
    recorded) must match the dataset's, or DataError says the dataset has changed."""
    folder = Path(folder)
    if not (folder / "meta.json").is_file():
        raise DataError(f"the run's dataset {folder} is gone.")
    meta = read_meta(folder)
    actual = meta.get("fingerprint") or hash_files(folder)
    if fingerprint is not None and fingerprint != actual:
        raise DataError(f"the run's dataset {folder} was prepared again since it trained.")
    key = (str(folder.resolve()), actual)
    with _LOCK:
        if key not in _INDEXES:
            dtype = np.uint16 if meta["dtype"] == "uint16" else np.uint32
            n = meta["train_tokens"]
            ids = np.memmap(folder / "train.bin", dtype=dtype, mode="r", shape=(n,)) if n else np.empty(0, dtype)
            text_bytes = meta.get("train_bytes", 4 * n)
            if "train" in meta.get("masks", ()):  # a speaker's dataset: a sample is held against their lines only
                ids = ids[np.fromfile(folder / MASK_FILES["train"], dtype=np.uint8, count=n).astype(bool)]
                text_bytes = meta.get("train_target_bytes", text_bytes)
            tokenizer = functools.partial(load_tokenizer, folder / TOKENIZER_FILE)  # loaded only to build
            _INDEXES[key] = dataset_index(folder, ids, tokenizer, actual, text_bytes)
        return _INDEXES[key]


def for_checkpoint(checkpoint: Path) -> Background | None:
    """The copy meter of the run a checkpoint was saved in, made in the background; None for a checkpoint
    outside a run folder (an export), whose training text is not known. A run whose dataset is gone or
    was prepared again gets no meter, and its `error` says so."""
    run_dir = Path(checkpoint).parent
    if not (run_dir / RUN_FILE).is_file():
        return None

    def make() -> CopyIndex:
        saved = read_run(run_dir)
        return for_dataset(Path(saved["dataset"]), saved.get("dataset_fingerprint"))

    return Background(make)


class Background:
    """A copy meter being made in a background thread, so that a sample or an evaluation never waits for
    it: `ready()` is the index once made (None before, or if it could not be made; `error` says why)."""

    def __init__(self, make: Callable[[], CopyIndex]):
        self.index: CopyIndex | None = None
        self.error: Exception | None = None
        self.thread = threading.Thread(target=self._run, args=(make,), daemon=True)  # never holds up an exit
        self.thread.start()

    def _run(self, make) -> None:
        try:
            self.index = make()
        except Exception as e:  # a meter that cannot be made is no reason to stop training or sampling
            self.error = e

    @property
    def busy(self) -> bool:
        return self.thread.is_alive()

    def ready(self) -> CopyIndex | None:
        return self.index

    def wait(self, timeout: float | None = None) -> CopyIndex | None:
        """The index once made, waiting at most `timeout` seconds (None: until it is)."""
        self.thread.join(timeout)
        return self.index
