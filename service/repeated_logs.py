"""Log lines that repeat in bursts, written at most once a window per kind.

A full queue answers every request beyond it with 503, a database that is down fails every
write and readiness probe, a host that times out fails every URL on it: one warning per
answer would be thousands of lines in a burst, written on the event loop when it has the
least time to spare, and would bury everything else. The first of a kind is written at once;
the rest within the window are counted, and the next line of that kind says how many went
unwritten. Every answer is still counted in the metrics (``labelsvc_problems_total``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable

WINDOW_SECONDS = 10.0


class RepeatedLines:
    def __init__(
        self, window: float = WINDOW_SECONDS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._window = window
        self._clock = clock
        self._kinds: dict[Hashable, tuple[float, int]] = {}  # last written, unwritten since

    def admit(self, kind: Hashable) -> int | None:
        """None when a line of this ``kind`` was written less than the window ago (this one
        is counted instead); else how many of its kind went unwritten since the last."""
        now = self._clock()
        written = self._kinds.get(kind)
        if written is not None and now - written[0] < self._window:
            self._kinds[kind] = (written[0], written[1] + 1)
            return None
        self._kinds[kind] = (now, 0)
        return 0 if written is None else written[1]
