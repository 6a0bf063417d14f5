"""Screenplays as turns: the plain-text industry layout (scene headings, action, a cue in capitals over its
dialogue, indented) and Fountain, the plain-text markup of the same layout (fountain.io/syntax)."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from bladegpt.data.voices.turns import Format, Kind, Reading, Turn, clean_cue, head_text, read_text

HEADING = re.compile(r"^(?:\d+[A-Z]?\s+)?(?:INT|EXT|EST|INT\.?\s?/\s?EXT|EXT\.?\s?/\s?INT|I\s?/\s?E)[.\s]",
                     re.IGNORECASE)  # a shooting script numbers its scenes: "12  INT. HOUSE - DAY  12"
SCENE_NUMBER = re.compile(r"^\d+[A-Z]?\s+|\s+\d+[A-Z]?$")
TRANSITION = re.compile(r"^(?:[A-Z ]+ TO:|FADE (?:IN|OUT)[.:]?|FADE TO BLACK\.?|THE END\.?)$")
PAGE_MARK = re.compile(r"^\(?(?:MORE|CONTINUED|CONT['’]?D)\)?:?$|^CONTINUED:?(?:\s*\(\d+\))?$|^\d+\.?$")
COLUMNS = re.compile(r"\S+(?:\s{1,2}\S+)*")  # a run of text; three spaces or more part two columns
NOTE = re.compile(r"\[\[.*?\]\]", re.DOTALL)  # Fountain notes
BONEYARD = re.compile(r"/\*.*?\*/", re.DOTALL)  # Fountain's commented-out text
EMPHASIS = re.compile(r"(\*{1,3}|_)(?=\S)(.+?)(?<=\S)\1")
MAX_CUE_WORDS = 6
MAX_CUE_CHARS = 40


def is_cue(text: str, fountain: bool) -> bool:
    """A character cue: a short line in capitals (its extensions such as (V.O.) aside), or Fountain's `@name`."""
    if fountain and text.startswith("@"):
        return len(text) > 1
    name = clean_cue(text)
    return (bool(name) and name == name.upper() and any(c.isalpha() for c in name)
            and len(name) <= MAX_CUE_CHARS and len(name.split()) <= MAX_CUE_WORDS
            and not HEADING.match(name) and not TRANSITION.match(name) and not name.endswith(("!", "?", ":"))
            and not (fountain and text.startswith(("!", ".", ">", "~", "#", "="))))


def dual_cues(line: str) -> list[tuple[int, str]] | None:
    """Two cues side by side on one line (plain-text dual dialogue): [(column, cue), (column, cue)]."""
    runs = [(m.start(), m.group()) for m in COLUMNS.finditer(line)]
    if len(runs) == 2 and all(is_cue(cue, False) for _, cue in runs):
        return runs
    return None


def strip_fountain(text: str, left: Counter) -> str:
    """Fountain's notes, boneyard and title page taken out (and counted in `left`), each line kept where it
    was (blank lines stand in), so turns keep their line numbers."""
    blank = lambda m: "\n" * m.group().count("\n")  # noqa: E731
    left["boneyard passages /* */"] += len(BONEYARD.findall(text))
    text = BONEYARD.sub(blank, text)
    left["notes [[...]]"] += len(NOTE.findall(text))
    lines = NOTE.sub(blank, text).split("\n")
    if lines and re.match(r"^[A-Za-z][A-Za-z ]*:", lines[0]):  # a title page: key: value lines to a blank line
        for i, line in enumerate(lines):
            if not line.strip():
                break
            lines[i] = ""
            left["title page lines"] += 1
    return "\n".join(lines)


def speech(speaker: str, lines: list[tuple[int, str]], fountain: bool) -> list[Turn]:
    """A cue's block as turns: its words as speech, a (parenthetical) apart as action, page marks dropped."""
    turns: list[Turn] = []
    said: list[tuple[int, str]] = []
    aside: list[tuple[int, str]] = []
    for number, text in lines:
        if aside or text.startswith("("):  # a parenthetical, over one line or several
            aside.append((number, text))
            if text.endswith(")"):
                if said:
                    turns.append(_turn(speaker, said, "speech", fountain))
                    said = []
                turns.append(_turn(None, aside, "action", fountain))
                aside = []
            continue
        said.append((number, text))
    if said:
        turns.append(_turn(speaker, said, "speech", fountain))
    if aside:
        turns.append(_turn(None, aside, "action", fountain))
    return turns


def _turn(speaker: str | None, lines: list[tuple[int, str]], kind: Kind, fountain: bool) -> Turn:
    text = " ".join(t for _, t in lines)
    if fountain:
        text = EMPHASIS.sub(r"\2", text)
    return Turn(speaker, text, kind, lines[0][0])


def split_columns(lines: list[tuple[int, str]], middle: int) -> tuple[list, list]:
    """Side-by-side dialogue parted at `middle`: each run of text goes to the column it starts in."""
    left, right = [], []
    for number, raw in lines:
        for m in COLUMNS.finditer(raw):
            (left if m.start() < middle else right).append((number, m.group()))
    return left, right


def parse(text: str, fountain: bool) -> Reading:
    """Turns from a screenplay's text: blocks parted by blank lines; a block opening with a cue is that
    speaker's dialogue, one opening with INT./EXT. a heading, any other action (transitions too). Page
    marks ((MORE), CONTINUED:, page numbers) and Fountain's outline (# sections, = synopses) are left out."""
    left: Counter = Counter()
    if fountain:
        text = strip_fountain(text, left)
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    blocks, block = [], []
    for number, raw in enumerate(lines, 1):
        if PAGE_MARK.match(raw.strip()) or (fountain and raw.strip() == "==="):
            left["page marks ((MORE), CONTINUED:, page numbers)"] += 1
        elif fountain and raw.lstrip().startswith(("#", "=")):
            left["outline lines (# sections, = synopses)"] += 1
        elif raw.strip():
            block.append((number, raw.replace("\t", "    ").rstrip()))
        elif block:
            blocks.append(block)
            block = []
    if block:
        blocks.append(block)
    margin = min((len(r) - len(r.lstrip()) for b in blocks for _, r in b), default=0)
    indented = _indented(blocks, margin)
    turns: list[Turn] = []
    for block in blocks:
        turns += _block(block, fountain, margin if indented else None)
    return Reading(turns, +left)


def _indented(blocks: list, margin: int) -> bool:
    """Whether cues sit to the right of the action (the industry layout), so a capitals line at the margin is action."""
    cues = [len(r) - len(r.lstrip()) for b in blocks if len(b) > 1 for _, r in b[:1] if is_cue(r.strip(), False)]
    return bool(cues) and sum(indent > margin + 4 for indent in cues) > len(cues) / 2


def _block(block: list[tuple[int, str]], fountain: bool, margin: int | None) -> list[Turn]:
    number, raw = block[0]
    first = raw.strip()
    if HEADING.match(first) or fountain and re.match(r"^\.[A-Za-z0-9]", first):
        heading = re.sub(r"\s*#[^#]*#$", "", first.lstrip(".")) if fountain else SCENE_NUMBER.sub("", first)
        return [Turn(None, heading, "heading", number)] + (_block(block[1:], fountain, margin) if block[1:] else [])
    at_margin = margin is not None and len(raw) - len(raw.lstrip()) <= margin + 4
    pair = None if fountain or margin is None else dual_cues(raw)
    if pair and len(block) > 1:
        (c1, cue1), (c2, cue2) = pair
        left, right = split_columns([(n, r) for n, r in block[1:]], (c1 + c2) // 2)
        return speech(clean_cue(cue1), left, False) + speech(clean_cue(cue2), right, False)
    if len(block) > 1 and not at_margin and is_cue(first, fountain):
        body = [(n, r.strip()) for n, r in block[1:]]
        if margin is not None:  # action resuming at the margin ends the dialogue
            end = next((i for i, (_, r) in enumerate(block[1:]) if len(r) - len(r.lstrip()) <= margin), len(body))
            return speech(clean_cue(first), body[:end], fountain) + (
                [_turn(None, body[end:], "action", fountain)] if body[end:] else [])
        return speech(clean_cue(first), body, fountain)
    return [_turn(None, [(n, r.strip().lstrip("!>") if fountain else r.strip()) for n, r in block], "action", fountain)]


def read_screenplay(path: Path) -> Reading:
    """A plain-text screenplay (as IMSDb serves them, or exported to text) as turns."""
    return parse(read_text(path), fountain=False)


def read_fountain(path: Path) -> Reading:
    """A Fountain screenplay as turns; its notes [[...]], boneyard /* */ and title page left out."""
    return parse(read_text(path), fountain=True)


def score_screenplay(head: bytes, suffix: str) -> float:
    """Scene headings and cue-over-dialogue pairs in the head say a screenplay."""
    lines = [line.strip() for line in head_text(head).splitlines()]
    headings = sum(bool(HEADING.match(line)) for line in lines)
    cues = sum(is_cue(a, False) and bool(b) and not is_cue(b, False) for a, b in zip(lines, lines[1:]) if a)
    if headings == 0 and cues < 5:  # a novel's capitals (CHAPTER I, a title) stand over a blank line, not speech
        return 0.0
    return min(0.95, 0.3 + 0.15 * headings + 0.03 * cues)


def score_fountain(head: bytes, suffix: str) -> float:
    """A screenplay with Fountain's marks ([[notes]], /* */, @cues, ^ dual cues, a title page), or a .fountain file."""
    text = head_text(head)
    marks = any(m in text for m in ("[[", "/*", "\n@", "^\n")) or bool(re.match(r"^Title\s*:", text))
    if suffix == ".fountain":
        return 1.0
    return score_screenplay(head, suffix) + (0.02 if marks else -0.02)


FORMATS = [Format("screenplay", score_screenplay, read_screenplay), Format("fountain", score_fountain, read_fountain)]
