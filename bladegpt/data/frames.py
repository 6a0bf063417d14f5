"""How a corpus writes dialogue, so `chat` writes the talk the way the voice can continue it.

Three frames: `quotes` ("..." lines, as novels and the shipped corpora write speech), `play` (a
speaker's NAME: on its own line, then the speech, then a blank line, as tinyshakespeare), and `lines`
(one plain line each). prepare detects the corpus's frame from its text and records it in meta.json;
a run records its dataset's. A frame whose characters the tokenizer cannot encode (a quote in a char
model of a play) never works, so it is never the default.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

from bladegpt.errors import UserError

KINDS = ("quotes", "play", "lines")
USER = "YOU"  # the speaker of your lines in a play: a neutral name, not one of the cast the voice plays
DETECT_CHARS = 8 << 20  # a corpus's frame is told from its first 8 M characters
MIN_SHARE = 0.02  # of non-blank lines: speaker lines for a play, lines with a quote for quotes
MIN_COUNT = 10
# A speaker line: a name of one to five words, capitalised, and a colon ending the line ("First Citizen:").
_SPEAKER = re.compile(r"^([A-Z][A-Za-z'.-]*(?: [A-Za-z'.-]+){0,4}):[ \t]*$", re.MULTILINE)
_QUOTED = re.compile(r'^.*"', re.MULTILINE)
_NONBLANK = re.compile(r"^[ \t]*\S", re.MULTILINE)


@dataclass
class Frame:
    """One way of writing the talk: your line as `user` writes it, the opening of the voice's turn, and
    the text that closes its turn (where its answer is cut)."""

    kind: str
    voice: str | None = None  # a play's speaker the voice answers as; None: the model writes who speaks
    you: str = USER  # a play's speaker your lines are written as (a speaker's dataset: whom they talk with most)

    def user(self, line: str) -> str:
        if self.kind == "quotes":
            return f'"{line}"\n\n'
        if self.kind == "play":
            return f"{self.you}:\n{line}\n\n"
        return f"{line}\n"

    def turn(self) -> str:
        if self.kind == "quotes":
            return '"'
        if self.kind == "play":
            return f"{self.voice}:\n" if self.voice else ""
        return ""

    def close(self) -> str:
        return {"quotes": '"', "play": "\n\n", "lines": "\n"}[self.kind]

    def after(self) -> str:
        """What follows the voice's answer in the text, before your next line."""
        return {"quotes": '"\n\n', "play": "\n\n", "lines": "\n"}[self.kind]

    def scaffold(self) -> str:
        """Every character the frame itself writes: what a tokenizer must encode for it to work."""
        return self.user("") + self.turn() + self.after()

    def describe(self) -> str:
        if self.kind == "play":
            return f"play: you speak as {self.you}, the voice answers as {self.voice}" if self.voice else \
                f"play: you speak as {self.you}, the voice answers as whom it chooses"
        return {"quotes": 'quotes: each line a "..." of its own', "lines": "lines: one plain line each"}[self.kind]

    def to_dict(self) -> dict:
        return {"kind": self.kind, "voice": self.voice, **({"you": self.you} if self.you != USER else {})}

    @classmethod
    def from_dict(cls, data: object) -> Frame | None:
        """A recorded frame, or None when there is none (or it is not one this version knows)."""
        if isinstance(data, dict) and data.get("kind") in KINDS and isinstance(data.get("voice"), (str, type(None))):
            play = data["kind"] == "play"
            you = data.get("you") if play and isinstance(data.get("you"), str) and data["you"].strip() else USER
            return cls(data["kind"], data["voice"] if play else None, you)
        return None


class FrameCounter:
    """Counts, over the text it is fed (up to DETECT_CHARS), what says how the corpus writes dialogue."""

    def __init__(self) -> None:
        self.chars = self.lines = self.quoted = 0
        self.speakers: Counter[str] = Counter()

    def feed(self, text: str) -> None:
        if self.chars >= DETECT_CHARS:
            return
        text = text[: DETECT_CHARS - self.chars]
        self.chars += len(text)
        self.lines += len(_NONBLANK.findall(text))
        self.quoted += len(_QUOTED.findall(text))
        self.speakers.update(_SPEAKER.findall(text))

    def frame(self) -> Frame:
        """play when speaker lines are common, else quotes when quoted lines are, else lines."""
        enough = max(MIN_COUNT, MIN_SHARE * self.lines)
        if sum(self.speakers.values()) >= enough:
            cast = [name for name, _ in self.speakers.most_common() if name != USER]
            return Frame("play", cast[0] if cast else None)
        if self.quoted >= enough:
            return Frame("quotes")
        return Frame("lines")


def detect(text: str) -> Frame:
    counter = FrameCounter()
    counter.feed(text)
    return counter.frame()


def encodes(frame: Frame, encode) -> bool:
    """Whether `encode` (a tokenizer's) can write the frame's own text."""
    try:
        encode(frame.scaffold())
    except ValueError:  # TokenizerError: characters the tokenizer never saw
        return False
    return True


def check_kind(kind: str | None) -> None:
    """A --frame that is not a frame: one line, before the model loads."""
    if kind is not None and kind not in KINDS:
        raise UserError(f"Unknown --frame '{kind}'; choose one of: {', '.join(KINDS)}.")


def speaking_as(frame: Frame, name: str, cast: list[str] = ()) -> Frame:
    """The frame with your lines written as `name` (chat --as), spelled as the script's `cast` spells them
    where they are in it; only a play names who speaks, and you cannot be the voice."""
    from bladegpt.data.voices.turns import same_speaker  # the readers' name folding, loaded only for --as

    if frame.kind != "play":
        raise UserError(f"--as names who you speak as in the play frame, and this talk is in the {frame.kind} "
                        "frame; add --frame play, or leave --as out.")
    if not name.strip() or "\n" in name or ":" in name:
        raise UserError(f"--as {name!r} cannot be written as a speaker's cue; give a name without colons or line "
                        "breaks, as the script spells it.")
    if frame.voice and same_speaker(name, frame.voice):
        raise UserError(f"--as {name} is the voice itself, who answers you; speak as someone else (--as "
                        f"{next((c for c in cast if not same_speaker(c, frame.voice)), 'YOU')}), or leave --as out.")
    spelled = next((c for c in cast if same_speaker(c, name)), name.strip())
    return Frame(frame.kind, frame.voice, spelled)


def choose(kind: str | None, recorded: Frame | None, encode) -> tuple[Frame, str]:
    """The frame to talk in and where it came from: the one asked for (`kind`), else the one recorded
    for the model's corpus, else the first of quotes, lines that the tokenizer can write. A frame it
    cannot write is refused in one line naming those that work."""
    if kind is not None:
        frame = recorded if recorded is not None and recorded.kind == kind else Frame(kind)
        if not encodes(frame, encode):
            working = [k for k in KINDS if encodes(recorded if recorded and recorded.kind == k else Frame(k), encode)]
            raise UserError(f"This model's tokenizer cannot write the {kind} frame (its text has characters the "
                            f"tokenizer never saw); use --frame {' or --frame '.join(working)}.")
        return frame, "chosen"
    if recorded is not None and encodes(recorded, encode):
        return recorded, "from the corpus"
    for frame in (Frame("quotes"), Frame("lines")):
        if encodes(frame, encode):
            return frame, "what its tokenizer can write"
    return Frame("lines"), "what its tokenizer can write"
