"""Transcripts and plays as turns: `NAME: line`, `NAME. line` (capitals), or a name on its own line over its
speech (`First Citizen:` as in tinyshakespeare, `HAMLET.` as in Project Gutenberg's plays)."""

from __future__ import annotations

import re
from pathlib import Path

from bladegpt.data.voices.turns import Format, Reading, Turn, head_text, read_text

NAME = r"[A-Z][\w'’.\-]*(?:\s+(?:[A-Z0-9][\w'’.\-]*|of|the|de|la|le|van|von|and|du|da))*"
COLON = re.compile(rf"^(?P<name>{NAME})\s*:(?:\s+(?P<text>\S.*))?$")  # "Name: text" or "Name:" alone
CAPS = r"[A-Z][A-Z'’\-]*(?:\s+[A-Z][A-Z'’\-]*)*"
DOT = re.compile(rf"^(?P<name>{CAPS})\.(?:\s+(?P<text>\S.*))?$")  # "HAMLET. text" or "HAMLET." alone
DIRECTION = re.compile(r"^(?:\[.*\]|\(.*\)|(?:Enter|Exit|Exeunt|Re-enter|Flourish|Alarum)\b.*)$")
LEADING_DIRECTION = re.compile(r"^(\(.*?\)|\[.*?\])?\s*(.*)$")  # "HAMLET. (aside) To be": the aside is action
MAX_NAME_WORDS = 5
ROMAN = re.compile(r"^[IVXLC]+$")  # "ACT I." and "SCENE II." are headings, not speakers


def speaker_line(line: str) -> tuple[str, str] | None:
    """(name, text) when a line opens a speech (text "" when the name stands alone), else None."""
    m = COLON.match(line) or DOT.match(line)
    if not m or len(m["name"].split()) > MAX_NAME_WORDS or ROMAN.match(m["name"]):
        return None
    if m.re is DOT and not m["text"] and len(m["name"]) < 2:
        return None
    return " ".join(m["name"].split()), (m["text"] or "").strip()


def is_heading(line: str) -> bool:
    """ACT I, SCENE 2 and the like."""
    return bool(re.match(r"^(?:ACT|SCENE|Act|Scene)\s+[\dIVXLC]+\b", line))


def read_play(path: Path) -> Reading:
    """A transcript or play as turns: a speech runs to a blank line or the next speaker; stage directions
    ([...], (...), Enter/Exit lines) are action, ACT/SCENE lines headings, lines outside any speech narration."""
    turns: list[Turn] = []
    speaker, said, start = None, [], 0

    def close() -> None:
        nonlocal speaker, said
        if said:
            turns.append(Turn(speaker, " ".join(said), "speech" if speaker else "narration", start))
        speaker, said = None, []

    blank = True
    for number, raw in enumerate(read_text(path).splitlines(), 1):
        line = raw.strip()
        found = speaker_line(line) if line else None
        if found and not found[1] and not blank:
            found = None  # "Away:" inside a speech; a name alone opens one only after a blank line
        blank = not line
        if not line:
            close()
        elif is_heading(line):
            close()
            turns.append(Turn(None, line, "heading", number))
        elif found:
            close()
            aside, text = LEADING_DIRECTION.match(found[1]).groups()
            if aside:
                turns.append(Turn(None, aside, "action", number))
            speaker, said, start = found[0], [text] if text else [], number
        elif DIRECTION.match(line):
            kept = speaker
            close()
            speaker = kept
            turns.append(Turn(None, line, "action", number))
        else:
            if not said and speaker is None:
                start = number
            said.append(line)
    close()
    return Reading(turns)


def score_play(head: bytes, suffix: str) -> float:
    """The share of lines that open a speech, among two speakers or more."""
    lines = [line.strip() for line in head_text(head).splitlines() if line.strip()]
    found = [speaker_line(line) for line in lines]
    names = {f[0] for f in found if f}
    share = sum(f is not None for f in found) / max(len(lines), 1)
    if len(names) < 2 or share < 0.1:
        return 0.0
    return min(0.9, 0.2 + 1.5 * share)


FORMATS = [Format("play", score_play, read_play)]
