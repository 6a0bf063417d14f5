"""Ctrl-C and SIGTERM (sent by `timeout`, `docker stop` and job schedulers) mean the same: stop cleanly."""

from __future__ import annotations

import signal
import threading

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    """While training, the first signal asks the loop to finish its step, save and stop; a second
    one stops at once. Before the loop runs (start-up), a signal stops at once: nothing to save."""

    def __init__(self):
        self.requested = False
        self.graceful = False  # set by the loop once a stop can be saved
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        if self.graceful and not self.requested:
            self.requested = True
            return
        raise KeyboardInterrupt

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():  # signals reach the main thread only
            self._previous = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
