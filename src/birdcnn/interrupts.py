"""Ctrl-C in a long loop (a training run, a search): the first asks it to stop cleanly, the second stops at once."""
from __future__ import annotations

import signal
import sys


class StopOnCtrlC:
    """Within `with StopOnCtrlC() as stop:`, the first Ctrl-C only sets `stop.set` (and prints `message`,
    if any): the loop finishes its step or batch, so what it saves agrees with itself, and stops. A second
    Ctrl-C stops at once (KeyboardInterrupt). Outside the main thread Ctrl-C stays a KeyboardInterrupt."""

    def __init__(self, message: str | None = None):
        self.message = message
        self.set = False
        self._old = None

    def __enter__(self) -> StopOnCtrlC:
        def handler(signum, frame):
            if self.set:
                self._restore()
                raise KeyboardInterrupt
            self.set = True
            if self.message:
                print(self.message, file=sys.stderr)
        try:
            self._old = signal.signal(signal.SIGINT, handler)
        except ValueError:  # not the main thread: Python allows signal handlers only there
            self._old = None
        return self

    def __exit__(self, *exc) -> bool:
        self._restore()
        return False

    def _restore(self) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
