"""A choice's token ids turned into text as they come, cut at the first stop string (never sent)."""

from __future__ import annotations

import codecs

from bladegpt.tokenizer import Tokenizer


class TextStream:
    """Feed token ids, get the text that is safe to send: half-made UTF-8 characters and any ending that may
    be the start of a stop string wait for the next token. `stopped` once a stop string appeared."""

    def __init__(self, tokenizer: Tokenizer, stops: list[str]):
        self.tokenizer, self.stops = tokenizer, [s for s in stops if s]
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.held = ""
        self.text = ""  # everything sent
        self.tokens = 0
        self.stopped = False

    def feed(self, token: int) -> str:
        self.tokens += 1
        return self._release(self.decoder.decode(self.tokenizer.token_bytes(token)))

    def finish(self) -> str:
        """What was held back, once the text has ended (not after a stop string)."""
        if self.stopped:
            return ""
        piece = self._release(self.decoder.decode(b"", final=True))
        rest, self.held = self.held, ""
        self.text += rest
        return piece + rest

    def _release(self, new: str) -> str:
        if self.stopped:
            return ""
        self.held += new
        cuts = [i for i in (self.held.find(s) for s in self.stops) if i >= 0]
        if cuts:
            piece, self.held, self.stopped = self.held[: min(cuts)], "", True
        else:
            hold = max((k for s in self.stops for k in range(len(s) - 1, 0, -1) if self.held.endswith(s[:k])), default=0)
            piece, self.held = self.held[: len(self.held) - hold], self.held[len(self.held) - hold :]
        self.text += piece
        return piece
