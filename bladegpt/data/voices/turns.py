"""What every voice reader gives: a file as turns (who said what, or the action around it, and where), and how
speaker names compare, so `--speaker K` finds "K (V.O.)" and "k" alike."""

from __future__ import annotations

import difflib
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from bladegpt.data.textfile import TextFile, sniff

Kind = Literal["speech", "action", "heading", "narration"]

# A screenplay cue's extensions: (V.O.), (O.S.), (O.C.), (CONT'D), (cont'd), (CONTINUING) and the like.
EXTENSION = re.compile(r"\s*\((?:V\.?\s?O\.?|O\.?\s?S\.?|O\.?\s?C\.?|CONT['’]?D|CONTINUED|CONTINUING|"
                       r"ON SCREEN|OVER|INTO PHONE|ON PHONE|FILTERED|PRE-LAP|SUBTITLED)\)", re.IGNORECASE)


@dataclass(frozen=True)
class Turn:
    """One piece of a source: `speech` by `speaker` (None when the source does not say who, as a novel's
    unattributed quote), or `action`, `heading` (a scene heading) or `narration` with speaker None; `line` is
    where it starts, 1-based (an EPUB's paragraph number, a JSON export's message number)."""

    speaker: str | None
    text: str
    kind: Kind
    line: int


@dataclass
class Reading:
    """A file read: its turns in order, and what it held that is no one's words: counted by kind
    ({"media placeholders": 3}) and, for whole pages, by name (["cover.xhtml (cover)"]), so a listing
    can say what was left out."""

    turns: list[Turn]
    left_out: Counter[str] = field(default_factory=Counter)
    pages_left_out: list[str] = field(default_factory=list)

    def said(self) -> list[str]:
        """What was left out, in words: "media placeholders: 3", "cover.xhtml (cover)"."""
        return [f"{what}: {n:,}" for what, n in self.left_out.items() if n] + self.pages_left_out


@dataclass(frozen=True)
class Format:
    """A reader: its name, how much a file's first bytes look like it (0 to 1, from its head and its
    lower-case suffix, e.g. ".vtt"), and the reader itself (DataError naming the file and line on a bad one)."""

    name: str
    score: Callable[[bytes, str], float]
    read: Callable[[Path], Reading]


def read_text(path: Path) -> str:
    """A text file's whole text, its encoding told as prepare tells it (UTF-8, or UTF-16/32 by BOM)."""
    return "".join(TextFile.open(path).blocks())


def head_text(head: bytes) -> str:
    """The first bytes of a file as text for scoring formats (a character cut at the end is dropped)."""
    codec, skip, _ = sniff(head)
    return head[skip:].decode(codec, errors="ignore")


def speaker_key(name: str) -> str:
    """A name folded for comparison: case, a cue's extensions ((V.O.), (CONT'D)...) and spacing."""
    return " ".join(EXTENSION.sub("", name).split()).casefold()


def clean_cue(name: str) -> str:
    """A cue as a speaker's name: its extensions and a Fountain `@` or `^` marker taken off."""
    return " ".join(EXTENSION.sub("", name.strip().lstrip("@").rstrip("^")).split())


def same_speaker(a: str, b: str) -> bool:
    """Whether two spellings name one speaker: "Officer K", "OFFICER K (V.O.)" and "officer k" do."""
    return speaker_key(a) == speaker_key(b)


def closest_names(name: str, names: list[str], n: int = 3) -> list[str]:
    """The speakers in `names` spelled most like `name`, likeliest first, for a "no speaker NAME; did you
    mean ...?" line: those whose words hold all of its words or whose words it holds ("OFFICER K" and "K",
    "Ruiz" and "DET. RUIZ"), then difflib's closest spellings (ratio at least 0.6)."""
    keys = {speaker_key(other): other for other in names}
    wanted = set(speaker_key(name).split())
    within = [k for k in keys if wanted and (set(k.split()) <= wanted or wanted <= set(k.split()))]
    spelled = difflib.get_close_matches(speaker_key(name), list(keys), n=n)
    return [keys[k] for k in dict.fromkeys(within + spelled)][:n]


def words(text: str) -> int:
    """Words in a turn, as whitespace-separated pieces."""
    return len(text.split())
