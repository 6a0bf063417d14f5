"""The copy meter's index: how much of a sample is copied verbatim from a text, and the file it is kept in.

It reports the share of a sample's 50-character spans found word for word in the training text, and
the longest copied span in characters (gpt-2-simple #184: a model fine-tuned on a small text recites
it). The training text is the dataset's train.bin decoded (every tokenizer here is lossless), so the
source files need not be at hand.

How: hashed n-grams with verification. The index holds a 32-bit hash of the 32-byte window at every
16th byte of the training text, with its position, sorted: 8 bytes per 16 bytes of text. Any copied
span of 47 bytes or more (so every 50-character span, at least 50 bytes in UTF-8) holds one of those
windows whole. A query hashes the sample's window at every byte, looks the hashes up (binary search),
checks each hit against the text's own bytes (memory-mapped; this also clears hash collisions), joins
the hits that continue one another and extends them byte by byte to the exact copied span.

Why not a suffix array: it finds every shared substring, but over 1 GB of text it is 4-8 GB of
positions, and building it in numpy takes long and several times that memory (a C builder would be a
new dependency). This index is 0.5 GB for 1 GB of text, built with one vectorised hash and one sort,
and it answers exactly what the meter reports, since both measures start at 50 characters: copies
shorter than that (common phrases) are not reported. A window that recurs more than MAX_HITS times at
indexed positions (boilerplate repeated all through a corpus) has only its first MAX_HITS checked.

copymeter.py binds it to a dataset: a small text indexed in memory each time, a larger one once into a
file (write_index, read_index) that holds the decoded text and the sorted index.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bladegpt.files import commit, fsync

SPAN = 50  # characters: the share counts spans this long, and the longest copy is reported from this length
WINDOW, STRIDE = 32, 16  # bytes: a copy of WINDOW + STRIDE - 1 = 47 bytes or more holds an indexed window whole
SHORTEST = 47  # bytes (WINDOW + STRIDE - 1): the shortest copy the index is sure to find
MAX_HITS = 256  # indexed positions checked for one sample window
TEXT_END = 0xFF  # stands for a document separator (or a token with no text) in the training text: no UTF-8 has it
SAMPLE_END = 0xFE  # between samples in a query; differs from TEXT_END so that the two never match
KEY_CHUNK = 1 << 20  # windows hashed at once: ~100 MB of index arrays
PAIR_CHUNK = 1 << 21  # window hits checked at once (~100 MB of temporaries)
MAGIC = b"BGCOPY1\n"
HEADER = struct.Struct("<8sQQII16s")  # magic, text bytes, entries, window, stride, dataset fingerprint
_M = [np.uint64(c) for c in (0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0xD6E8FEB86659FD93)]


def _hash(words: np.ndarray) -> np.ndarray:
    """A 32-bit hash (as uint64) of each 32-byte window, given as 4 little-endian uint64 words (n, 4)."""
    h = words[:, 0] * _M[0] + words[:, 1] * _M[1] + words[:, 2] * _M[2] + words[:, 3] * _M[3]
    h ^= h >> np.uint64(29)
    return (h * _M[1]) >> np.uint64(32)


def _words(text: np.ndarray) -> np.ndarray:
    """The text (uint8) as little-endian uint64 words; its length must be a multiple of 8."""
    return text.view("<u8")


def keys_of(words: np.ndarray, first: int, count: int) -> np.ndarray:
    """Index keys of windows first..first+count-1 (window k starts at byte STRIDE * k): hash << 32 | k."""
    step = STRIDE // 8
    cols = [words[step * first + i : step * (first + count) + i : step] for i in range(WINDOW // 8)]
    keys = _hash(np.stack(cols, axis=1)) << np.uint64(32)
    keys |= np.arange(first, first + count, dtype=np.uint64)
    return keys


def padded(n: int) -> int:
    return -(-n // 8) * 8


def entries_of(n: int) -> int:
    """Indexed windows in n bytes of text."""
    return (n - WINDOW) // STRIDE + 1 if n >= WINDOW else 0


@dataclass(frozen=True)
class Copying:
    """What the meter found in some samples: `spans` 50-character spans, `copied` of them found verbatim
    in the training text, and the longest copied span in characters (0 when no span of 50 is copied)."""

    spans: int
    copied: int
    longest: int

    @property
    def share(self) -> float | None:
        """The copied share of spans, 0 to 1; None for samples shorter than one span."""
        return self.copied / self.spans if self.spans else None

    def record(self) -> dict:
        """The fields an eval record (metrics.jsonl) keeps."""
        return {"copied": None if self.share is None else round(self.share, 5), "longest_copy": self.longest}

    def describe(self) -> str:
        return describe(self.share, self.longest)


def percent(share: float) -> str:
    """A share as a short percentage; a share that is not 0 or 1 never shows as 0% or 100%."""
    if share in (0, 1):
        return f"{share:.0%}"
    return "<1%" if share < 0.01 else ">99%" if share > 0.99 else f"{share:.0%}"


def describe(share: float | None, longest: int | None) -> str:
    """The meter's one line, e.g. 'copied: 4% of 50-char spans, longest 231 chars'."""
    if share is None:
        return f"copied: no {SPAN}-char span to check"
    if not longest:
        return f"copied: {percent(share)} of {SPAN}-char spans"
    return f"copied: {percent(share)} of {SPAN}-char spans, longest {longest:,} chars"


class CopyIndex:
    """A training text and its sorted window index, ready to measure samples against.

    `text` is the training text's bytes (uint8, documents separated by TEXT_END), padded with TEXT_END to a
    multiple of 8; `keys` the sorted window keys (uint64). Either may be memory-mapped.
    """

    def __init__(self, text: np.ndarray, n_bytes: int, keys: np.ndarray):
        # plain arrays over the same memory: a memmap's indexing costs a wrapper on every lookup
        self.text, self.n_bytes, self.keys = np.asarray(text), n_bytes, np.asarray(keys)
        self.words = _words(self.text)

    @classmethod
    def from_bytes(cls, data: bytes) -> CopyIndex:
        """An index of `data` (the training text's UTF-8), built in memory."""
        text = np.full(padded(len(data)), TEXT_END, dtype=np.uint8)
        text[: len(data)] = np.frombuffer(data, dtype=np.uint8)
        keys = keys_of(_words(text), 0, entries_of(len(data)))
        keys.sort()
        return cls(text, len(data), keys)

    def measure(self, samples: Iterable[str]) -> Copying:
        """How much of `samples` (each a generated text, measured apart) is copied from the training text."""
        encoded = [s.encode("utf-8", "replace") for s in samples]
        query = np.frombuffer(bytes([SAMPLE_END]).join(encoded), dtype=np.uint8)
        reach = self._reach(query)
        # Characters start where a byte is not a UTF-8 continuation byte; a separator is one of its own.
        starts = np.flatnonzero((query & 0xC0) != 0x80)
        spans = copied = longest = 0
        offset = 0
        for sample in encoded:
            end = offset + len(sample)
            lo, hi = np.searchsorted(starts, [offset, end])
            bounds = np.append(starts[lo:hi], end)  # byte offset of each character, and the sample's end
            if len(bounds) > SPAN:
                begin, stop = bounds[:-SPAN], bounds[SPAN:]
                spans += len(begin)
                copied += int((reach[begin] >= stop).sum())
                # The longest copy: for each start, the characters up to the furthest byte a copy reaches.
                whole = np.searchsorted(bounds, reach[bounds[:-1]], side="right") - 1 - np.arange(len(bounds) - 1)
                longest = max(longest, int(whole.max()))
            offset = end + 1
        return Copying(spans, copied, longest if longest >= SPAN else 0)

    def copies_ending(self, pieces: list[bytes], new: list[int], chars: int) -> np.ndarray:
        """For each piece (UTF-8), whether a span of `chars` characters that ends in its last new[i] bytes
        is found verbatim in the training text (bool array): what decoding with --no-copy asks of each
        candidate token. `chars` must span SHORTEST bytes, so at least 47."""
        query = np.frombuffer(bytes([SAMPLE_END]).join(pieces), dtype=np.uint8)
        reach = self._reach(query)
        starts = np.flatnonzero((query & 0xC0) != 0x80)
        found = np.zeros(len(pieces), dtype=bool)
        offset = 0
        for i, piece in enumerate(pieces):
            end = offset + len(piece)
            lo, hi = np.searchsorted(starts, [offset, end])
            bounds = np.append(starts[lo:hi], end)
            if len(bounds) > chars:
                begin, stop = bounds[:-chars], bounds[chars:]
                fresh = stop > end - new[i]  # spans that end in the new bytes
                found[i] = bool((reach[begin[fresh]] >= stop[fresh]).any())
            offset = end + 1
        return found

    def _reach(self, query: np.ndarray) -> np.ndarray:
        """For each byte of the query, the furthest end of a copied span (47 bytes or more) starting at or
        before it (-1 where none does): a query piece [a, b) is copied whole if reach[a] >= b."""
        reach = np.full(len(query) + 1, -1, dtype=np.int64)
        for a, b in self._copies(query):
            np.maximum.at(reach, a, b)
        return np.maximum.accumulate(reach)

    def _copies(self, query: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Copied spans (query starts, query ends), each maximal, found through indexed windows."""
        n = len(query) - WINDOW + 1
        if n <= 0 or len(self.keys) == 0:
            return
        windows = np.lib.stride_tricks.sliding_window_view(query, WINDOW)
        words = np.ascontiguousarray(windows).view("<u8")  # (n, 4)
        hashes = _hash(words) << np.uint64(32)
        order = np.argsort(hashes)  # looked up in order: each search starts where the last ended (3x faster)
        first, last = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64)
        first[order] = np.searchsorted(self.keys, hashes[order])
        last[order] = np.searchsorted(self.keys, hashes[order] | np.uint64(0xFFFFFFFF), side="right")
        counts = np.minimum(last - first, MAX_HITS)
        total = np.cumsum(counts)
        done = 0
        while done < n:  # in chunks of windows, so that a window found all through the text never floods memory
            upto = max(done + 1, int(np.searchsorted(total, (total[done - 1] if done else 0) + PAIR_CHUNK)))
            part = slice(done, upto)
            j = np.repeat(np.arange(done, upto), counts[part])
            run_start = np.cumsum(counts[part]) - counts[part]
            pos = np.repeat(first[part] - run_start, counts[part]) + np.arange(len(j))
            k = (self.keys[pos] & np.uint64(0xFFFFFFFF)).astype(np.int64)
            step = STRIDE // 8
            same = np.ones(len(j), dtype=bool)
            for i in range(WINDOW // 8):  # the text's own bytes: clears hash collisions
                same &= self.words[step * k + i] == words[j, i]
            if same.any():
                yield self._extend(query, j[same], STRIDE * k[same])
            done = upto

    def _extend(self, query: np.ndarray, j: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Join window matches (query j, text p) on one diagonal that continue one another, then extend
        each joined match left and right to where query and text differ."""
        d = p - j
        order = np.lexsort((j, d))
        j, d = j[order], d[order]
        new = np.ones(len(j), dtype=bool)
        new[1:] = (d[1:] != d[:-1]) | (j[1:] != j[:-1] + STRIDE)
        first, last = np.flatnonzero(new), np.append(np.flatnonzero(new)[1:], len(j)) - 1
        a, b, d = j[first], j[last] + WINDOW, d[first]
        a = a - self._agree(query, a - 1, a - 1 + d, -1)
        b = b + self._agree(query, b, b + d, 1)
        return a, b

    def _agree(self, query: np.ndarray, q: np.ndarray, t: np.ndarray, direction: int) -> np.ndarray:
        """How many bytes query and text agree on from q and t on (each an array), going `direction`."""
        length = np.zeros(len(q), dtype=np.int64)
        live = np.arange(len(q))
        steps = np.arange(STRIDE) * direction
        while len(live):
            qi, ti = q[live, None] + steps, t[live, None] + steps
            inside = (qi >= 0) & (qi < len(query)) & (ti >= 0) & (ti < self.n_bytes)
            qi[~inside], ti[~inside] = 0, 0  # read anywhere; `inside` decides
            equal = inside & (query[qi] == self.text[ti])
            run = np.where(equal.all(axis=1), STRIDE, np.argmin(equal, axis=1))
            length[live] += run
            q, t = q + STRIDE * direction, t + STRIDE * direction
            live = live[run == STRIDE]
        return length


# -- the index file --------------------------------------------------------------------------------


def write_index(path: Path, pieces: Iterable[np.ndarray], fingerprint: str) -> None:
    """The text given as uint8 `pieces` written into `path` and indexed, through a temporary file renamed into
    place: the text, then its sorted keys, under a header naming the dataset (HEADER)."""
    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a process killed while writing
        try:
            os.kill(int(stale.name.split(".")[-2]), 0)
        except ProcessLookupError:
            stale.unlink(missing_ok=True)
        except (ValueError, PermissionError):
            continue
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(bytes(HEADER.size))
            n = 0
            for piece in pieces:
                f.write(piece.tobytes())
                n += len(piece)
            f.write(bytes([TEXT_END]) * (padded(n) - n))
        entries = entries_of(n)
        if entries >= 2**32:  # a key keeps the window's number in 32 bits
            raise ValueError(f"the training text is {n / 2**30:.0f} GB, more than the 64 GB the copy meter indexes.")
        keys = np.empty(entries, dtype=np.uint64)
        if entries:
            words = np.memmap(tmp, dtype="<u8", mode="r", offset=HEADER.size, shape=(padded(n) // 8,))
            for first in range(0, entries, KEY_CHUNK):
                count = min(KEY_CHUNK, entries - first)
                keys[first : first + count] = keys_of(words, first, count)
            del words
            keys.sort()
        with open(tmp, "r+b") as f:
            f.seek(0, os.SEEK_END)
            keys.tofile(f)
            f.seek(0)
            f.write(HEADER.pack(MAGIC, n, entries, WINDOW, STRIDE, fingerprint.encode()[:16]))
        fsync(tmp)
        commit(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_index(path: Path, fingerprint: str) -> CopyIndex | None:
    """The index in `path`, memory-mapped; None if it is missing, or not one for this dataset and layout."""
    try:
        with open(path, "rb") as f:
            magic, n, entries, window, stride, saved = HEADER.unpack(f.read(HEADER.size))
        size = path.stat().st_size
    except (OSError, struct.error):
        return None
    if (magic, window, stride, saved) != (MAGIC, WINDOW, STRIDE, fingerprint.encode()[:16].ljust(16, b"\0")) \
            or size != HEADER.size + padded(n) + 8 * entries:
        return None
    text = np.memmap(path, dtype=np.uint8, mode="r", offset=HEADER.size, shape=(padded(n),))
    keys = np.memmap(path, dtype=np.uint64, mode="r", offset=HEADER.size + padded(n), shape=(entries,)) \
        if entries else np.empty(0, dtype=np.uint64)
    return CopyIndex(text, n, keys)
