"""Log lines that repeat in bursts, written at most once a window per kind.

A full queue answers every request beyond it with 503, a database that is down fails every
write and readiness probe, a host that times out fails every URL on it: one warning per
answer would be thousands of lines in a burst, written on the event loop when it has the
least time to spare, and would bury everything else. The first of a kind is written at once
and opens a window; the rest within it are counted, and when it closes one line says how many
there were (the burst may have ended: waiting for the next line of the kind could leave the
count unsaid for good). A burst still going on gets one such line a window. Every answer is
still counted in the metrics (``labelsvc_problems_total``).
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass

WINDOW_SECONDS = 10.0

# What a window's closing line says: the kind, how many went unwritten, the last of them, the
# window's length in seconds.
Summary = Callable[[Hashable, int, str, float], None]
# Runs a callback after a delay in seconds (``loop.call_later``'s signature).
Later = Callable[[float, Callable[[], None]], object]


def _call_later(delay: float, callback: Callable[[], None]) -> object:
    # In a context of its own: the closing line sums up many requests, and must not carry the
    # ID of the one that opened the window (service.request_ids).
    return asyncio.get_running_loop().call_later(delay, callback, context=contextvars.Context())


@dataclass
class _Window:
    opened: float
    unwritten: int = 0
    last: str = ""


class RepeatedLines:
    def __init__(
        self,
        summarize: Summary,
        window: float | None = None,
        call_later: Later = _call_later,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._summarize = summarize
        self._window = WINDOW_SECONDS if window is None else window
        self._call_later = call_later
        self._clock = clock
        self._open: dict[Hashable, _Window] = {}

    def admit(self, kind: Hashable, line: str) -> bool:
        """Whether to write ``line`` now: True for the first of its ``kind`` in a window;
        otherwise it is counted for the window's closing line."""
        window = self._open.get(kind)
        if window is not None:
            window.unwritten += 1
            window.last = line
            return False
        self._start(kind)
        return True

    def flush(self) -> None:
        """Say now what the open windows would say when they end (at shutdown: their timers
        will never run). They stay open, with nothing left to say."""
        now = self._clock()
        for kind, window in self._open.items():
            if window.unwritten:
                self._summarize(kind, window.unwritten, window.last, round(now - window.opened, 1))
                window.unwritten = 0

    def _start(self, kind: Hashable) -> None:
        self._open[kind] = _Window(opened=self._clock())
        self._call_later(self._window, lambda: self._close(kind))

    def _close(self, kind: Hashable) -> None:
        window = self._open.pop(kind)
        if window.unwritten:
            self._summarize(kind, window.unwritten, window.last, self._window)
            self._start(kind)  # the burst may go on: its next lines wait for the next window
