"""Talk with a voice: each line you type joins the text, framed as the corpus frames dialogue
(data/frames.py), and the model writes the next turn in its own voice.

The whole exchange is the prompt of every reply; when it outgrows the model's context, the oldest
part slides out (the generator keeps the last `block_size` tokens).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

from bladegpt.data.dataset import META_FILE
from bladegpt.data.frames import Frame
from bladegpt.runs import RUN_FILE
from bladegpt.generate.sampler import Sampler
from bladegpt.generate.settings import SampleSettings

KEEP_CHARS = 100_000  # far more than any context here holds; the rest is never read again


def recorded(checkpoint: Path, key: str) -> object:
    """What was recorded under `key` for the corpus a checkpoint learned from: in its run's run.json, else in
    the run's dataset's meta.json; None for runs and datasets from before it was recorded."""
    try:
        saved = json.loads((Path(checkpoint).parent / RUN_FILE).read_text(encoding="utf-8"))
        if key in saved:
            return saved[key]
        meta = json.loads((Path(saved["dataset"]) / META_FILE).read_text(encoding="utf-8"))
        return meta.get(key)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):  # no run, no dataset, damaged: none
        return None


def recorded_frame(checkpoint: Path) -> Frame | None:
    """The frame recorded for the corpus a checkpoint learned from (None for runs from before frames)."""
    return Frame.from_dict(recorded(checkpoint, "chat_frame"))


def recorded_opening(checkpoint: Path) -> str:
    """What `sample` starts from with no prompt: a speaker's dataset's opening of a scene, up to their cue
    (prepare --speaker); "" for any other run."""
    opening = recorded(checkpoint, "opening")
    return opening if isinstance(opening, str) else ""


class Conversation:
    """Turns in the frame the corpus writes dialogue in, over a sliding text; turn n samples with seed + n."""

    def __init__(self, sampler: Sampler, frame: Frame, settings: SampleSettings = SampleSettings()):
        self.sampler, self.frame, self.settings, self.turn = sampler, frame, settings, 0
        self.text = ""

    def reply(self, line: str) -> Iterator[str]:
        """The model's answer to `line`, piece by piece, ending where its turn closes (or where it ends the
        text: the end-of-text token, never printed).
        The text it answers from is encoded first, so a line the tokenizer cannot take fails at once."""
        text = self.text[-KEEP_CHARS:] + self.frame.user(line.strip()) + self.frame.turn()
        pieces = self.sampler.stream(text, dataclasses.replace(self.settings, seed=self.settings.seed + self.turn))
        self.text, self.turn = text, self.turn + 1
        return self._until_closed(pieces)

    def _until_closed(self, pieces: Iterator[str]) -> Iterator[str]:
        """The answer as it comes, cut where the frame closes the turn; the end of a piece that may be
        the start of a longer close (a play's blank line) waits for the next piece."""
        answer, shown, close = "", 0, self.frame.close()
        for piece in pieces:
            answer += piece
            end = answer.find(close)
            if end >= 0:  # the model closed its turn: show it up to there
                answer = answer[:end]
                break
            hold = next((k for k in range(len(close) - 1, 0, -1) if answer.endswith(close[:k])), 0)
            if len(answer) - hold > shown:
                yield answer[shown : len(answer) - hold]
                shown = len(answer) - hold
        if len(answer) > shown:
            yield answer[shown:]
        self.text += f"{answer.strip()}{self.frame.after()}"
