"""The corpus's files, folders expanded and each file once; a corpus file read as text: its encoding told from
its first bytes (UTF-8, or UTF-16 or UTF-32 by a byte-order mark or their NUL pattern), its characters streamed in
blocks and checked as they are read."""

from __future__ import annotations

import codecs
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bladegpt.errors import DataError

READ_BYTES = 1 << 20  # bytes read from a file at a time
SNIFF_BYTES = 1 << 16  # bytes a file's encoding is told from

# Byte-order marks, the longer first (UTF-32-LE's begins with UTF-16-LE's): codec, and a name to say.
BOMS = [(codecs.BOM_UTF32_LE, "utf-32-le"), (codecs.BOM_UTF32_BE, "utf-32-be"), (codecs.BOM_UTF8, "utf-8"),
        (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be")]
NAMES = {"utf-8": "UTF-8", "utf-16-le": "UTF-16 (little-endian)", "utf-16-be": "UTF-16 (big-endian)",
         "utf-32-le": "UTF-32 (little-endian)", "utf-32-be": "UTF-32 (big-endian)"}
UNIT = {"utf-8": 1, "utf-16-le": 2, "utf-16-be": 2, "utf-32-le": 4, "utf-32-be": 4}  # bytes a character starts on


def sniff(head: bytes) -> tuple[str, int, str]:
    """The encoding of a text file from its first bytes: (Python codec, bytes of byte-order mark to
    skip, how it was told). A BOM says it (what Windows Notepad writes for "Unicode", UTF-16-LE);
    without one, UTF-16 and UTF-32 show as NUL bytes at every second (fourth) position, where text
    in Latin scripts has its high bytes; anything else is read as UTF-8 (and checked as it is read)."""
    for bom, codec in BOMS:
        if head.startswith(bom):
            return codec, len(bom), "byte-order mark"
    n = len(head) // 4 * 4
    if n < 8 or b"\x00" not in head[:n]:
        return "utf-8", 0, "default"
    nul = [head[i:n:4].count(0) / (n // 4) for i in range(4)]  # share of NULs at each position mod 4
    patterns = {"utf-32-le": (nul[2] > 0.9 and nul[3] > 0.9 and nul[0] < 0.5),
                "utf-32-be": (nul[0] > 0.9 and nul[1] > 0.9 and nul[3] < 0.5),
                "utf-16-le": (min(nul[1], nul[3]) > 0.5 and max(nul[0], nul[2]) < 0.1),
                "utf-16-be": (min(nul[0], nul[2]) > 0.5 and max(nul[1], nul[3]) < 0.1)}
    for codec, seen in patterns.items():
        if seen:
            return codec, 0, "NUL-byte pattern, no byte-order mark"
    return "utf-8", 0, "default"


def text_files(inputs: list[Path]) -> tuple[list[Path], list[str]]:
    """The files INPUTS name, folders expanded to the .txt files inside them (any case; hidden ones aside), in a
    stable order, and a line for each folder naming what it holds that is left out. DataError (one line) for a
    missing path, a folder without text, or a file given twice."""
    files: list[Path] = []
    notes: list[str] = []
    for path in map(Path, inputs):
        if path.is_dir():
            inside = sorted(p for p in path.rglob("*") if p.is_file())
            found = [p for p in inside if p.suffix.lower() == ".txt" and not hidden(p, path)]
            if not found:
                raise DataError(f"The folder {path} has no .txt files; point prepare at text files.")
            if left := [str(p.relative_to(path)) for p in sorted(set(inside) - set(found))]:
                notes.append(f"Left out of {path} (prepare reads a folder's .txt files): {', '.join(left[:5])}"
                             f"{f' and {len(left) - 5} more' if len(left) > 5 else ''}; name a file to read it.")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise DataError(f"No such file or folder: {path}; check the path.")
    return once(files), notes


def hidden(path: Path, folder: Path) -> bool:
    """A file or folder whose name starts with a dot, under `folder`: an editor's or a tool's, not a text."""
    return any(part.startswith(".") for part in path.relative_to(folder).parts)


def once(files: list[Path]) -> list[Path]:
    """`files`, each one once: a file named twice (a folder and a file in it, a link) would be trained on twice,
    and the copy at the end would leak its text into validation. DataError (one line) naming both."""
    seen: dict[tuple[int, int], Path] = {}
    for path in files:
        stat = path.stat()
        first = seen.setdefault((stat.st_dev, stat.st_ino), path)
        if first is not path:
            also = "" if str(first) == str(path) else f" (also as {path})"
            raise DataError(f"{first} is given twice{also}: its text would be read twice, and the copy at the end "
                            "would leak into validation; give each file once.")
    return files


def utf8_size(text: str) -> int:
    """Bytes of `text` in UTF-8, without encoding it when it is ASCII (isascii is O(1) in CPython)."""
    return len(text) if text.isascii() else len(text.encode("utf-8"))


@dataclass
class TextFile:
    """A corpus file: its encoding (sniffed: UTF-8 unless a byte-order mark or UTF-16's NUL pattern says
    UTF-16 or UTF-32), where its text starts (after any BOM, never trained on), and its text's size in
    UTF-8 bytes, the unit prepare counts in (measured by one read when the file is not UTF-8)."""

    path: Path
    encoding: str
    start: int
    size: int
    text_bytes: int
    how: str

    @classmethod
    def open(cls, path: Path) -> TextFile:
        with open(path, "rb") as f:
            head = f.read(SNIFF_BYTES)
        encoding, start, how = sniff(head)
        size = path.stat().st_size
        file = cls(path, encoding, start, size, size - start, how)
        if encoding != "utf-8":
            file.text_bytes = sum(utf8_size(block) for block in file.blocks())
        return file

    def note(self) -> str | None:
        """One line saying how a file that is not UTF-8 was read."""
        if self.encoding == "utf-8":
            return None
        return f"Read {self.path} as {NAMES[self.encoding]} (its {self.how}), decoded to text before encoding."

    def blocks(self, at: int = 0, length: int | None = None) -> Iterator[str]:
        """The text in blocks, from `at` for about `length` bytes of it (UTF-8 bytes; in a UTF-16 or
        UTF-32 file mapped to its own bytes in proportion, on a character's first byte)."""
        if self.encoding == "utf-8":
            return file_blocks(self.path, self.encoding, self.start, self.start + at, length)
        unit, ratio = UNIT[self.encoding], (self.size - self.start) / max(self.text_bytes, 1)
        at = round(at * ratio) // unit * unit
        length = None if length is None else max(unit, round(length * ratio) // unit * unit)
        return file_blocks(self.path, self.encoding, self.start, self.start + at, length)


def file_blocks(path: Path, encoding: str = "utf-8", text_start: int = 0, start: int = 0,
                length: int | None = None) -> Iterator[str]:
    """A text file's characters in blocks, checked as they are read: decodable, no NUL characters.
    The incremental decoder carries a character (or a UTF-16 surrogate pair) split across two reads;
    read from inside the text (start past text_start), a character cut at the start is skipped."""
    decoder = codecs.getincrementaldecoder(encoding)("ignore" if start > text_start else "strict")
    offset, left = max(start, text_start), length
    with open(path, "rb") as f:
        f.seek(offset)
        while left is None or left > 0:
            data = f.read(READ_BYTES if left is None else min(READ_BYTES, left))
            if not data:
                break
            try:
                text = "\x00" if encoding == "utf-8" and b"\x00" in data else decoder.decode(data)
            except UnicodeDecodeError as e:
                raise DataError(_undecodable(path, encoding, f"a bad byte at offset {offset + e.start}")) from None
            if "\x00" in text:
                raise DataError(f"{path} looks binary (it has NUL bytes); prepare takes text files: UTF-8, or "
                                "UTF-16 or UTF-32 (which it recognises by their byte-order mark).")
            yield text
            offset += len(data)
            if left is not None:
                left -= len(data)
        if length is None:
            try:
                decoder.decode(b"", final=True)
            except UnicodeDecodeError:
                raise DataError(_undecodable(path, encoding, "it ends inside a character")) from None


def _undecodable(path: Path, encoding: str, where: str) -> str:
    if encoding == "utf-8":
        return (f"{path} is not UTF-8 text ({where}); convert it, e.g. `iconv -f latin1 -t utf-8 {path.name}` "
                "(or -f UTF-16 if it was saved as Unicode without a byte-order mark).")
    return (f"{path} is not valid {NAMES[encoding]} text ({where}); convert it to UTF-8, e.g. "
            f"`iconv -f {encoding.upper()} -t UTF-8 {path.name}`.")
