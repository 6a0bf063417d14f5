"""Subtitles as turns: WebVTT with its voice spans `<v Name>` (webvtt-py, which keeps them; pysubs2 drops
them), ASS/SSA with its Name field and SRT, which names no speaker (pysubs2). Timings, cue numbers and
styling tags never reach the text."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pysubs2
import webvtt

from bladegpt.data.voices.turns import Format, Reading, Turn, head_text, read_text
from bladegpt.errors import DataError

SRT_TIME = re.compile(r"^\s*\d+:\d\d:\d\d[,.]\d{1,3}\s*-->\s*\d+:\d\d:\d\d[,.]\d{1,3}(?:\s.*)?$")
VTT_TIME = re.compile(r"^\s*(?:\d+:)?\d\d:\d\d\.\d{3}\s+-->\s+(?:\d+:)?\d\d:\d\d\.\d{3}(?:\s.*)?$")
ASS_TIME = re.compile(r"^Dialogue:\s*[^,]*,\s*\d+:\d\d:\d\d[.:]\d\d,\s*\d+:\d\d:\d\d[.:]\d\d,")
VOICE = re.compile(r"<v(?:\.[^\s>]+)*\s+([^>]+)>")
TAG = re.compile(r"<[^>]*>")
DASH = re.compile(r"(?m)^\s*[-–]\s*")  # "- " opening each speaker's line in a two-voice cue
DRAWING = re.compile(r"\\p[1-9]")  # an ASS event that draws a shape: vector commands, not words


def _bad_line(path: Path, number: int, line: str, expected: str) -> DataError:
    return DataError(f"{path} line {number} is not a subtitle {expected}: {line.strip()[:60]!r}; fix or "
                     "remove that line, or leave the file out.")


def _timing_lines(path: Path, text: str, pattern: re.Pattern, marker: str, expected: str) -> list[int]:
    """The line numbers of every cue's timing (or ASS Dialogue) line, in order; one malformed is a DataError."""
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        if marker in line and (line.startswith(marker) or marker == "-->"):
            if not pattern.match(line):
                raise _bad_line(path, number, line, expected)
            found.append(number)
    return found


def read_srt(path: Path) -> Reading:
    """An SRT file's cues as speech with no speaker (SRT has none), tags and timings left out."""
    text = read_text(path)
    expected = "timing (00:00:01,000 --> 00:00:02,000)"
    rows = text.lstrip("\ufeff").splitlines()
    for number, (before, cue, timing) in enumerate(zip([""] + rows, rows, rows[1:] + [""]), 2):
        if not before.strip() and cue.strip().isdigit() and not SRT_TIME.match(timing):
            raise _bad_line(path, number, timing, expected)  # a cue number not followed by its timing
    lines = _timing_lines(path, text, SRT_TIME, "-->", expected)
    try:
        events = pysubs2.SSAFile.from_string(text, format_="srt").events
    except Exception as e:  # pysubs2 refuses it: its own words, with the file
        raise DataError(f"{path} line 1: pysubs2 cannot read it as SRT ({e}); check the file.") from None
    turns = [Turn(None, " ".join(e.plaintext.split()), "speech", number)
             for e, number in zip(events, lines) if e.plaintext.strip()]
    return Reading(turns, +Counter({"empty cues": len(events) - len(turns)}))


def read_ass(path: Path) -> Reading:
    """An ASS/SSA file's Dialogue lines as speech by their Name (actor) field; Comment lines, drawings,
    override tags {\\...} and timings left out."""
    text = read_text(path)
    lines = _timing_lines(path, text, ASS_TIME, "Dialogue:", "Dialogue line (Dialogue: 0,0:00:01.00,0:00:02.00,...)")
    try:
        events = pysubs2.SSAFile.from_string(text, format_="ass").events
    except Exception as e:
        raise DataError(f"{path} line 1: pysubs2 cannot read it as ASS/SSA ({e}); check the file.") from None
    dialogue = [e for e in events if not e.is_comment]
    drawn = [DRAWING.search(e.text) is not None for e in dialogue]
    turns = [Turn(e.name.strip() or None, " ".join(e.plaintext.split()), "speech", number)
             for e, number, shape in zip(dialogue, lines, drawn) if e.plaintext.strip() and not shape]
    return Reading(turns, +Counter({"Comment lines": len(events) - len(dialogue), "drawings": sum(drawn),
                                    "empty lines": len(dialogue) - sum(drawn) - len(turns)}))


def read_vtt(path: Path) -> Reading:
    """A WebVTT file's cues as speech, each voice span `<v Name>` its own turn by Name (a cue with none
    has speaker None); NOTE, STYLE and REGION blocks, timings and tags left out."""
    text = read_text(path)
    if not text.lstrip("\ufeff").startswith("WEBVTT"):
        raise _bad_line(path, 1, text.splitlines()[0] if text else "", "WebVTT header (WEBVTT)")
    lines = _timing_lines(path, text, VTT_TIME, "-->", "timing (00:00:01.000 --> 00:00:02.000)")
    try:
        captions = webvtt.from_string(text).captions
    except Exception as e:
        raise DataError(f"{path} line 1: webvtt-py cannot read it ({e}); check the file.") from None
    turns = []
    for caption, number in zip(captions, lines):
        for speaker, said in voices(caption.raw_text):
            if said:
                turns.append(Turn(speaker, said, "speech", number))
    notes = sum(block.lstrip().startswith(("NOTE", "STYLE", "REGION")) for block in re.split(r"\n\s*\n", text))
    return Reading(turns, +Counter({"NOTE, STYLE and REGION blocks": notes}))


def voices(raw: str) -> list[tuple[str | None, str]]:
    """A cue's text parted at its voice spans: [(speaker or None, plain text)], dialogue dashes taken off."""
    parts = VOICE.split(raw)  # [before, name1, text1, name2, text2, ...]
    found = [(None, parts[0])] + [(parts[i].strip(), parts[i + 1]) for i in range(1, len(parts), 2)]
    return [(who, " ".join(DASH.sub("", TAG.sub("", text)).replace("&lt;", "<").replace("&gt;", ">")
                           .replace("&amp;", "&").split())) for who, text in found]


def score_srt(head: bytes, suffix: str) -> float:
    text = head_text(head).lstrip("\ufeff")
    timings = sum(bool(SRT_TIME.match(line)) and "," in line for line in text.splitlines()[:200])
    first = text.split("\n", 1)[0].strip()
    return 0.95 if timings and first.isdigit() else (0.6 if suffix == ".srt" else 0.0)


def score_vtt(head: bytes, suffix: str) -> float:
    return 1.0 if head_text(head).lstrip("\ufeff").startswith("WEBVTT") else (0.6 if suffix == ".vtt" else 0.0)


def score_ass(head: bytes, suffix: str) -> float:
    text = head_text(head)
    return 1.0 if "[Script Info]" in text[:2000] or "[Events]" in text else (0.6 if suffix in (".ass", ".ssa") else 0.0)


FORMATS = [Format("webvtt", score_vtt, read_vtt), Format("ass", score_ass, read_ass), Format("srt", score_srt, read_srt)]
