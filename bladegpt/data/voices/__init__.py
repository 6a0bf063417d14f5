"""One character's voice from the sources people have: screenplays, plays and transcripts, subtitles, novels
and chat exports read as turns (who says what), each file's format told by its content, and who speaks how
much. Nothing here writes a file."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from bladegpt.data.textfile import hidden, once
from bladegpt.data.voices import chats, novel, play, screenplay, subtitles
from bladegpt.data.voices.turns import Format, Reading, Turn, closest_names, same_speaker, speaker_key, words
from bladegpt.errors import DataError

__all__ = ["Turn", "Reading", "FileVoices", "Speaker", "read_turns", "detect", "list_speakers", "same_speaker",
           "speaker_key", "closest_names", "read"]

FORMATS: list[Format] = screenplay.FORMATS + play.FORMATS + subtitles.FORMATS + novel.FORMATS + chats.FORMATS
HEAD_BYTES = 1 << 16  # a file's format is told from its first 64 KiB
# The extension each format is saved with: a hint that breaks a near tie, never a verdict.
SUFFIXES = {"fountain": (".fountain", ".spmd"), "webvtt": (".vtt",), "ass": (".ass", ".ssa"), "srt": (".srt",),
            "epub": (".epub",), "telegram": (".json",), "discord": (".json",), "whatsapp": (".txt",)}
HINT = 0.05
NOVELS = ("epub", "prose")


def detect(path: Path) -> Format:
    """The format that best explains a file's first 64 KiB (each reader scores it, 0 to 1; the extension
    adds a little); prose, the fallback, reads any text."""
    with open(path, "rb") as f:
        head = f.read(HEAD_BYTES)
    suffix = path.suffix.lower()
    scores = [(score + (HINT if score > 0 and suffix in SUFFIXES.get(f.name, ()) else 0.0), -i, f)
              for i, f in enumerate(FORMATS) for score in [f.score(head, suffix)]]
    best = max(scores, key=lambda s: s[:2])
    if best[0] <= 0:
        raise DataError(f"{path} is empty or not a text, subtitle, EPUB or chat-export file; leave it out.")
    return best[2]


def read(path: Path) -> tuple[str, Reading]:
    """A file as (format name, its Reading: turns and what was left out); DataError (one line, naming the
    file and line) when it is missing or cannot be read as the format its content shows."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"No such file: {path}; check the path.")
    found = detect(path)
    return found.name, found.read(path)


def read_turns(path: Path) -> tuple[str, list[Turn]]:
    """A file as (format name, its turns in order); errors as `read`."""
    name, reading = read(path)
    return name, reading.turns


@dataclass
class FileVoices:
    """How one file was read: its format, its turns by kind, and its speech with and without a speaker."""

    path: Path
    format: str
    turns: int
    attributed: int  # speech turns with a speaker
    unattributed: int  # speech turns without (a novel's unattributed quote, an SRT cue)
    left_out: list[str] = field(default_factory=list)  # "media placeholders: 3", "cover.xhtml (cover)"

    def note(self) -> str:
        """What a reader should know about this file's speakers and what was left out, in a few words."""
        if self.format == "srt":
            notes = [f"SRT names no speakers: {self.unattributed:,} cues of text only"]
        elif self.format in NOVELS:
            notes = [f"{self.attributed:,} quotes attributed, {self.unattributed:,} not"]
        else:
            notes = [f"speech without a speaker: {self.unattributed:,}"] if self.unattributed else []
        return "; ".join(notes + ([f"left out {', '.join(self.left_out)}"] if self.left_out else []))


@dataclass
class Speaker:
    """One speaker over all the files: a spelling of the name (the commonest), speech turns and words."""

    name: str
    lines: int
    words: int


def find_files(inputs: list[Path]) -> list[Path]:
    """Files, and every file inside folders (hidden ones aside), in a stable order."""
    files: list[Path] = []
    for path in map(Path, inputs):
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and not hidden(p, path))
            if not found:
                raise DataError(f"The folder {path} has no files; point prepare at transcripts, subtitles or books.")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise DataError(f"No such file or folder: {path}; check the path.")
    return once(files)


def list_speakers(inputs: list[Path]) -> tuple[list[FileVoices], list[Speaker]]:
    """Who speaks in the files and how much, most lines first (names folded as same_speaker folds them),
    and how each file was read. Reads only: every file is read before anything is returned."""
    files, lines, said, spellings = [], Counter(), Counter(), defaultdict(Counter)
    for path in find_files(inputs):
        name, reading = read(path)
        speech = [t for t in reading.turns if t.kind == "speech"]
        files.append(FileVoices(path, name, len(reading.turns), sum(t.speaker is not None for t in speech),
                                sum(t.speaker is None for t in speech), reading.said()))
        for t in speech:
            if t.speaker is not None:
                key = speaker_key(t.speaker)
                lines[key] += 1
                said[key] += words(t.text)
                spellings[key][t.speaker] += 1
    speakers = [Speaker(spellings[k].most_common(1)[0][0], n, said[k]) for k, n in lines.items()]
    return files, sorted(speakers, key=lambda s: (-s.lines, -s.words, s.name))
