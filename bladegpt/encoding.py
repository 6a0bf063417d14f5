"""Text at the edges that is not UTF-8: prompts and typed lines, file and folder names, output streams
(text files in other encodings: data/textfile.py).

Python hands over bytes that are not UTF-8 in argv, file names and (where the locale says so) stdin
as lone surrogates, U+DC80..U+DCFF, one per byte (PEP 383). Such a str fails wherever it is encoded
strictly: a terminal under `PYTHONIOENCODING=utf-8:strict`, safetensors' and torch's file names, a
GGUF string. Here those bytes are read as text (Latin-1 where they are not UTF-8), shown as the bytes
they are, or opened by a name those libraries take.
"""

from __future__ import annotations

import codecs
import contextlib
import io
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

from bladegpt.errors import UserError

_ESCAPED = re.compile("[\udc80-\udcff]")  # one byte that was not UTF-8, as surrogateescape carries it
_SURROGATE = re.compile("[\ud800-\udfff]")


def _shown(error: UnicodeError):
    """Encoding for a terminal: an escaped byte goes out as that byte (what `ls` shows for the name);
    a character the stream's encoding lacks goes out as a backslash escape instead of failing."""
    if not isinstance(error, UnicodeEncodeError):
        raise error
    ch = error.object[error.start]
    if "\udc80" <= ch <= "\udcff":
        return bytes([ord(ch) - 0xDC00]), error.start + 1
    return ch.encode("ascii", "backslashreplace").decode("ascii"), error.start + 1


codecs.register_error("bladegpt.shown", _shown)


def as_text(text: str) -> tuple[str, list[int]]:
    """`text` with its escaped bytes decoded: UTF-8 where they form it (a line typed under an ASCII
    locale), Latin-1 where they do not (caf\\xe9); also the bytes read as Latin-1, to say so."""
    if text.isascii() or not _SURROGATE.search(text):
        return text, []
    text = re.sub("[\ud800-\udc7f\udd00-\udfff]", "\ufffd", text)  # surrogates no decoder made: unreadable
    text = text.encode("utf-8", "surrogateescape").decode("utf-8", "surrogateescape")
    stray = [ord(ch) - 0xDC00 for ch in _ESCAPED.findall(text)]
    return _ESCAPED.sub(lambda m: chr(ord(m.group()) - 0xDC00), text), stray


def read_typed(text: str, what: str) -> tuple[str, str | None]:
    """A prompt or a typed line made text, and a note (one line) when bytes in it were not UTF-8."""
    text, stray = as_text(text)
    if not stray:
        return text, None
    shown = ", ".join(f"0x{b:02X}" for b in stray[:5]) + (", ..." if len(stray) > 5 else "")
    return text, f"The {what} has bytes that are not UTF-8 ({shown}); read as Latin-1: {text!r}."


def show_any_name() -> None:
    """Make stdout and stderr print every str: file names with bytes that are not UTF-8, and
    characters the terminal's encoding lacks (see _shown), instead of raising UnicodeEncodeError."""
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper) and stream.errors != "bladegpt.shown":
            with contextlib.suppress(ValueError, io.UnsupportedOperation):  # closed, or not ours to change
                stream.reconfigure(errors="bladegpt.shown")


def keep_typed_bytes() -> None:
    """Read stdin so that bytes that are not UTF-8 arrive escaped (then `read_typed`) instead of
    raising UnicodeDecodeError mid-conversation."""
    if isinstance(sys.stdin, io.TextIOWrapper) and sys.stdin.errors == "strict":
        with contextlib.suppress(ValueError, io.UnsupportedOperation):
            sys.stdin.reconfigure(errors="surrogateescape")


def utf8_name(name: str) -> str:
    """A name BladeGPT makes from another (a dataset after its file, a run after its dataset): its
    text as `as_text` reads it, written to disk in UTF-8 bytes whatever the locale's encoding."""
    return os.fsdecode(as_text(name)[0].encode("utf-8"))


@contextlib.contextmanager
def openable(path: Path) -> Iterator[str]:
    """A name for `path` that safetensors and torch.from_file can open: the path itself when it is
    UTF-8, else the file opened here and named by its descriptor (/proc/self/fd/N; /dev/fd/N on macOS),
    since both refuse a name that is not UTF-8 ("Path ... is not valid UTF-8")."""
    name = os.fspath(path)
    if not _SURROGATE.search(name):
        yield name
        return
    fd = os.open(name, os.O_RDONLY)  # a missing file fails here with the real path in the error
    try:
        for folder in ("/proc/self/fd", "/dev/fd"):
            if os.path.isdir(folder):
                yield f"{folder}/{fd}"
                return
        raise UserError(f"Cannot open {name} here: its name is not UTF-8; rename it (or its folder) and try again.")
    finally:
        os.close(fd)


