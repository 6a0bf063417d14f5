"""Talk with a voice: each line you type joins the text, framed as the corpus frames dialogue, and
the model writes the next line in its own voice.

The whole exchange is the prompt of every reply; when it outgrows the model's context, the oldest
part slides out (the generator keeps the last `block_size` tokens).
"""

from __future__ import annotations

from collections.abc import Iterator

from bladegpt.errors import UserError
from bladegpt.sampler import Sampler

# How a line of dialogue is written. "quotes": a line of its own inside double quotes, as the shipped
# corpora (officer_k, witcher) write speech; "lines": one plain line each.
FRAMES = {"quotes": ('"', '"'), "lines": ("", "\n")}
KEEP_CHARS = 100_000  # far more than any context here holds; the rest is never read again


def check_frame(frame: str) -> None:
    if frame not in FRAMES:
        raise UserError(f"Unknown --frame '{frame}'; choose one of: {', '.join(FRAMES)}.")


class Conversation:
    def __init__(self, sampler: Sampler, frame: str = "quotes", seed: int = 0, max_new_tokens: int = 200,
                 temperature: float = 0.8, top_k: int | None = 200, top_p: float | None = None):
        check_frame(frame)
        self.sampler, self.seed, self.turn = sampler, seed, 0
        self.open, self.close = FRAMES[frame]
        self.settings = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p)
        self.text = ""

    def reply(self, line: str) -> Iterator[str]:
        """The model's answer to `line`, piece by piece, ending where its line of dialogue closes (or
        where it ends the text: the end-of-text token, never printed).
        The text it answers from is encoded first, so a line the tokenizer cannot take fails at once."""
        text = self.text[-KEEP_CHARS:] + f"{self.open}{line.strip()}{self.close}\n\n{self.open}"
        pieces = self.sampler.stream(text, seed=self.seed + self.turn, **self.settings)
        self.text, self.turn = text, self.turn + 1
        return self._until_closed(pieces)

    def _until_closed(self, pieces: Iterator[str]) -> Iterator[str]:
        answer = ""
        for piece in pieces:
            answer += piece
            end = answer.find(self.close)
            if end >= 0:  # the model closed its line: show it up to there
                yield piece[: len(piece) - (len(answer) - end)]
                answer = answer[:end]
                break
            yield piece
        self.text += f"{answer.strip()}{self.close}\n\n"
