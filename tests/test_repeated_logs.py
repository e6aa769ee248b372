"""Lines of one kind are written at most once a window; the window's end says how many were
not, whether or not another line of the kind follows."""

from __future__ import annotations

from collections.abc import Callable, Hashable

from service.repeated_logs import RepeatedLines


class Timers:
    """``call_later`` on a clock the test moves."""

    def __init__(self) -> None:
        self.now = 0.0
        self.due: list[tuple[float, Callable[[], None]]] = []

    def call_later(self, delay: float, callback: Callable[[], None]) -> None:
        self.due.append((self.now + delay, callback))

    def advance(self, seconds: float) -> None:
        self.now += seconds
        while ready := [timer for timer in self.due if timer[0] <= self.now]:
            for timer in ready:
                self.due.remove(timer)
                timer[1]()


def throttled() -> tuple[RepeatedLines, Timers, list[tuple[Hashable, int, str, float]]]:
    timers = Timers()
    summaries: list[tuple[Hashable, int, str, float]] = []
    lines = RepeatedLines(
        lambda *summary: summaries.append(summary),
        window=10,
        call_later=timers.call_later,
        clock=lambda: timers.now,
    )
    return lines, timers, summaries


def test_the_first_of_a_kind_is_written_and_the_rest_summed_up_when_the_window_ends() -> None:
    lines, timers, summaries = throttled()
    assert lines.admit((503, "overloaded"), "POST /a")
    timers.advance(4)
    assert not any([lines.admit((503, "overloaded"), f"POST /{n}") for n in range(3)])
    # Another kind has a window of its own.
    assert lines.admit((503, "database-unavailable"), "GET /readyz")
    assert summaries == []
    timers.advance(6)  # the window runs from the line written, not from the last one counted
    assert summaries == [((503, "overloaded"), 3, "POST /2", 10)]
    # The burst may go on: its next lines are counted for the next window's end.
    assert not lines.admit((503, "overloaded"), "POST /4")
    timers.advance(4)  # the other kind's window ends with nothing to say, and closes
    assert summaries == [((503, "overloaded"), 3, "POST /2", 10)]
    assert lines.admit((503, "database-unavailable"), "GET /readyz")
    timers.advance(6)
    assert summaries[1:] == [((503, "overloaded"), 1, "POST /4", 10)]
    timers.advance(60)  # quiet windows close: the next line is written at once
    assert lines.admit((503, "overloaded"), "POST /5")
    assert len(summaries) == 2


def test_a_burst_that_stops_is_still_summed_up() -> None:
    lines, timers, summaries = throttled()
    assert lines.admit((502, "upstream-error"), "POST /v1/labels")
    for _ in range(500):
        lines.admit((502, "upstream-error"), "POST /v1/labels")
    timers.advance(10)
    assert summaries == [((502, "upstream-error"), 500, "POST /v1/labels", 10)]
    timers.advance(100)
    assert timers.due == []


def test_a_stop_says_what_the_open_windows_have_not_said_yet() -> None:
    """At shutdown the windows' timers never run: flushing sums up each burst so far, once."""
    lines, timers, summaries = throttled()
    assert lines.admit((502, "upstream-error"), "POST /a")
    timers.advance(2.5)
    assert not lines.admit((502, "upstream-error"), "POST /b")
    assert not lines.admit((502, "upstream-error"), "POST /c")
    assert lines.admit((503, "overloaded"), "POST /d")  # nothing more of this kind
    lines.flush()
    assert summaries == [((502, "upstream-error"), 2, "POST /c", 2.5)]
    lines.flush()
    timers.advance(10)  # should the loop run on, the windows end with nothing more to say
    assert len(summaries) == 1
