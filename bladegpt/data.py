"""prepare(): text files in, token files out; and the batches training reads from them."""

from __future__ import annotations

import array
import hashlib
import json
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bladegpt.config import DEFAULT_BPE_VOCAB
from bladegpt.errors import UserError
from bladegpt.files import fsync_dir, fsync_file, publish_dir, temp_dir
from bladegpt.tokenizer import Tokenizer, TokenizerError, bpe_vocab_size, load_tokenizer, train_tokenizer

DATASETS_DIR = Path("datasets")
META_FILE = "meta.json"
TOKENIZER_FILE = "tokenizer.json"
TOKEN_FILES = ("train.bin", "val.bin")
DATASET_FILES = {META_FILE, TOKENIZER_FILE, *TOKEN_FILES}
# A safe place to cut text for separate encoding: after a newline between two non-spaces.
# Neither GPT-2's nor GPT-4's split pattern joins across it, so chunks encode exactly as the whole.
_CUT = re.compile(r"(?<=\S\n)(?=\S)")
CHUNK_CHARS = 1 << 20


class DataError(UserError, ValueError):
    """Input text or a dataset folder that cannot be used; the message says what to do."""


@dataclass
class PrepareResult:
    out_dir: Path
    meta: dict


def find_text_files(inputs: list[Path]) -> list[Path]:
    """Expand folders to the .txt files inside them, in a stable order."""
    files: list[Path] = []
    for path in inputs:
        path = Path(path)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*.txt") if p.is_file())
            if not found:
                raise DataError(f"The folder {path} has no .txt files; point prepare at text files.")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise DataError(f"No such file or folder: {path}; check the path.")
    return files


def read_text(path: Path) -> str:
    data = path.read_bytes()
    if b"\x00" in data:
        raise DataError(f"{path} looks binary (it has NUL bytes); prepare takes UTF-8 text files.")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(
            f"{path} is not UTF-8 text (bad byte at offset {e.start}); convert it, "
            f"e.g. `iconv -f latin1 -t utf-8 {path.name}`."
        ) from None
    if not text.strip():
        raise DataError(f"{path} is empty; give prepare a file with text in it.")
    return text.removeprefix("\ufeff")


def split_text(text: str, val_fraction: float) -> tuple[str, str]:
    """Train is the first part, val the last, cut at a line break near the requested fraction."""
    if not 0.0 < val_fraction < 0.5:
        raise DataError(f"--val-fraction must be between 0 and 0.5, got {val_fraction}.")
    cut = int(len(text) * (1.0 - val_fraction))
    newline = text.find("\n", cut)
    if newline != -1 and newline - cut < 1000 and text[newline + 1 :].strip():  # val keeps some text
        cut = newline + 1
    return text[:cut], text[cut:]


def chunks(text: str, size: int = CHUNK_CHARS) -> list[str]:
    """Cut text into pieces of about `size` characters at places that do not change encoding."""
    pieces, start = [], 0
    while len(text) - start > size:
        match = _CUT.search(text, start + size)
        if match is None:
            break
        pieces.append(text[start : match.start()])
        start = match.start()
    pieces.append(text[start:])
    return pieces


def encode(tokenizer: Tokenizer, text: str, progress: Callable[[int], None] | None = None) -> list[int]:
    """Encode in chunks so a progress bar can follow big inputs; `progress` gets characters done."""
    ids: list[int] = []
    for piece in chunks(text):
        ids.extend(tokenizer.encode(piece))
        if progress:
            progress(len(piece))
    return ids


def write_tokens(path: Path, ids: list[int], typecode: str) -> None:
    with open(path, "wb") as f:
        array.array(typecode, ids).tofile(f)


def fingerprint(folder: Path) -> str:
    """A hash of the token files and tokenizer: a run records it, and resume checks its data is the same."""
    digest = hashlib.sha256()
    for name in (*TOKEN_FILES, TOKENIZER_FILE):
        with open(Path(folder) / name, "rb") as f:
            while block := f.read(1 << 22):
                digest.update(block)
    return digest.hexdigest()[:16]


def default_out_dir(inputs: list[Path], tokenizer_from: str | None = None) -> Path:
    """datasets/NAME after the first input; NAME-SOURCE when encoded with a pretrained model's tokenizer,
    so it sits beside the text's own dataset instead of replacing it."""
    first = Path(inputs[0])
    name = first.stem if first.is_file() else first.resolve().name
    if tokenizer_from:
        name += "-" + re.sub(r"[^A-Za-z0-9._-]+", "-", Path(tokenizer_from.rstrip("/")).name)
    return DATASETS_DIR / name


def check_out_dir(out_dir: Path, force: bool) -> None:
    """prepare writes a new folder, or replaces a dataset when told; it never touches anything else."""
    if out_dir.is_file() or out_dir.is_symlink():
        raise DataError(f"{out_dir} is a file; give --out a folder name for the dataset.")
    if not out_dir.is_dir() or not any(out_dir.iterdir()):
        return
    if not (out_dir / META_FILE).is_file() or not {p.name for p in out_dir.iterdir()} <= DATASET_FILES:
        raise DataError(f"{out_dir} exists and is not a dataset; choose another --out (prepare never writes "
                        "into a folder it did not make).")
    if not force:
        raise DataError(f"{out_dir} already holds a dataset (runs trained on it would see other text); "
                        f"choose another --out, or add --force to replace it.")


def prepare(
    inputs: list[Path],
    out_dir: Path | None = None,
    tokenizer: str = "bpe",
    vocab_size: int = DEFAULT_BPE_VOCAB,
    val_fraction: float = 0.1,
    progress: Callable[[int, int], None] | None = None,
    force: bool = False,
    tokenizer_from: str | None = None,
) -> PrepareResult:
    """Tokenize text files into a dataset folder: train.bin, val.bin, tokenizer.json, meta.json.

    The folder is written whole under a temporary name and renamed into place, so a killed
    prepare leaves no half dataset; an existing dataset is replaced only with `force`.
    `tokenizer_from` encodes with a pretrained model's tokenizer (for train --init-from).
    `progress(done, total)` is called with characters encoded so far.
    """
    out_dir = Path(out_dir) if out_dir is not None else default_out_dir(inputs, tokenizer_from)
    check_out_dir(out_dir, force)
    files = find_text_files(inputs)
    text = "\n\n".join(read_text(f) for f in files)
    train_text, val_text = split_text(text, val_fraction)
    n_bytes = len(text.encode("utf-8"))
    if tokenizer_from is not None:
        from bladegpt.pretrained import load_tokenizer_from

        tok = load_tokenizer_from(tokenizer_from)
    else:
        if tokenizer == "bpe":
            vocab_size = bpe_vocab_size(vocab_size, len(train_text.encode("utf-8")))
        # The char alphabet comes from the whole text, so val never has a character train lacks.
        tok = train_tokenizer(tokenizer, text if tokenizer == "char" else train_text, vocab_size)

    done = 0

    def step(n: int) -> None:
        nonlocal done
        done += n
        if progress:
            progress(done, len(text))

    start = time.perf_counter()
    train_ids = encode(tok, train_text, step)
    val_ids = encode(tok, val_text, step)
    elapsed = time.perf_counter() - start
    if not val_ids or not train_ids:
        raise DataError(f"The text is too short to keep {val_fraction:.0%} of it for validation; "
                        "give prepare more text (a few KB at least).")

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir(out_dir)
    try:
        meta = _write_dataset(tmp, tok, train_ids, val_ids)
        meta.update({
            "tokenizer_from": tokenizer_from,
            "sources": [str(f) for f in files],
            "val_fraction": val_fraction,
            "chars": len(text),
            "bytes": n_bytes,
            "train_bytes": len(train_text.encode("utf-8")),
            "val_bytes": len(val_text.encode("utf-8")),
            "encode_seconds": round(elapsed, 3),
        })
        _write_meta(tmp, meta)
        check_out_dir(out_dir, force)  # again: another prepare may have written it meanwhile
        publish_dir(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return PrepareResult(out_dir, meta)


def _write_dataset(folder: Path, tok: Tokenizer, train_ids: list[int], val_ids: list[int]) -> dict:
    dtype = "uint16" if tok.vocab_size <= 1 << 16 else "uint32"
    typecode = "H" if dtype == "uint16" else "I"
    write_tokens(folder / "train.bin", train_ids, typecode)
    write_tokens(folder / "val.bin", val_ids, typecode)
    tok.save(folder / TOKENIZER_FILE)
    return {
        "format": 1,
        "tokenizer": tok.kind,
        "vocab_size": tok.vocab_size,
        "dtype": dtype,
        "train_tokens": len(train_ids),
        "val_tokens": len(val_ids),
        "fingerprint": fingerprint(folder),
    }


def _write_meta(folder: Path, meta: dict) -> None:
    """meta.json last, then every file and the folder flushed to disk before the rename publishes them."""
    (folder / META_FILE).write_text(json.dumps(meta, indent=2))
    for path in folder.iterdir():
        fsync_file(path)
    fsync_dir(folder)


def latest_dataset(root: Path = DATASETS_DIR) -> Path:
    """The most recently prepared dataset folder."""
    metas = sorted(Path(root).glob(f"*/{META_FILE}"), key=lambda p: p.stat().st_mtime)
    if not metas:
        raise DataError("No prepared dataset found; run `bladegpt prepare FILE.txt` first.")
    return metas[-1].parent


def read_meta(folder: Path) -> dict:
    path = Path(folder) / META_FILE
    try:
        meta = json.loads(path.read_text())
        if meta["dtype"] not in ("uint16", "uint32"):
            raise ValueError(f"unknown dtype {meta['dtype']!r}")
        for key in ("vocab_size", "train_tokens", "val_tokens"):
            if not isinstance(meta[key], int) or meta[key] < 0:
                raise ValueError(f"{key} is not a count")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise DataError(f"{path} is damaged ({e}); prepare the dataset again with `bladegpt prepare`.") from None
    return meta


def _map_tokens(path: Path, n_tokens: int, dtype):
    """The token file, memory-mapped read-only (a dataset on a read-only disk trains); its size must be
    what meta.json says, or it was damaged after prepare."""
    import torch

    itemsize = torch.empty(0, dtype=dtype).element_size()
    if not path.is_file():
        raise DataError(f"{path} is missing; the dataset is damaged: prepare it again with `bladegpt prepare`.")
    size = path.stat().st_size
    if size != n_tokens * itemsize:
        raise DataError(f"{path} has {size:,} bytes but {META_FILE} says {n_tokens:,} tokens "
                        f"({n_tokens * itemsize:,} bytes); the dataset is damaged: prepare it again.")
    if n_tokens == 0:
        return torch.empty(0, dtype=dtype)
    return torch.from_file(str(path), shared=False, size=n_tokens, dtype=dtype)  # private map: never written


class TokenData:
    """A prepared dataset: memory-mapped token files, the tokenizer and its metadata."""

    def __init__(self, folder: Path):
        import torch

        folder = Path(folder)
        meta_path = folder / META_FILE
        if not meta_path.is_file():
            raise DataError(f"{folder} is not a prepared dataset (no {META_FILE}); run `bladegpt prepare` on it.")
        self.folder = folder
        self.meta = read_meta(folder)
        try:
            self.tokenizer = load_tokenizer(folder / TOKENIZER_FILE)
        except TokenizerError as e:
            raise DataError(str(e)) from None
        if self.tokenizer.vocab_size != self.meta["vocab_size"]:
            raise DataError(f"{folder}'s {TOKENIZER_FILE} has {self.tokenizer.vocab_size} tokens but {META_FILE} "
                            f"says {self.meta['vocab_size']}; the dataset is damaged: prepare it again.")
        dtype = torch.uint16 if self.meta["dtype"] == "uint16" else torch.uint32
        self.splits = {split: _map_tokens(folder / f"{split}.bin", self.meta[f"{split}_tokens"], dtype)
                       for split in ("train", "val")}

    @property
    def fingerprint(self) -> str:
        """What runs record of their data (datasets from before fingerprints are hashed now)."""
        return self.meta.get("fingerprint") or fingerprint(self.folder)

    def check_fits(self, block_size: int) -> None:
        for split, tokens in self.splits.items():
            if len(tokens) <= block_size + 1:
                raise DataError(
                    f"The {split} split has only {len(tokens)} tokens, too few for a block size of "
                    f"{block_size}; use a smaller --block-size, or prepare more text"
                    + (" or a larger --val-fraction." if split == "val" else ".")
                )

    def batch(self, split: str, ix, block_size: int):
        """Inputs and next-token targets (B, T) for the windows starting at ix (B,)."""
        import torch

        data = self.splits[split]
        x = torch.stack([data[i : i + block_size] for i in ix.tolist()]).long()
        y = torch.stack([data[i + 1 : i + 1 + block_size] for i in ix.tolist()]).long()
        return x, y

    def random_starts(self, split: str, shape: tuple[int, ...], block_size: int, generator):
        import torch

        return torch.randint(len(self.splits[split]) - block_size - 1, shape, generator=generator)
