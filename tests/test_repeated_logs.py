"""Lines of one kind are written at most once a window, and the next says how many were not."""

from __future__ import annotations

from service.repeated_logs import RepeatedLines


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_first_of_a_kind_is_written_and_the_rest_of_the_window_counted() -> None:
    clock = Clock()
    lines = RepeatedLines(window=10, clock=clock)
    assert lines.admit((503, "overloaded")) == 0
    clock.now += 4
    assert [lines.admit((503, "overloaded")) for _ in range(3)] == [None, None, None]
    # Another kind has a window of its own.
    assert lines.admit((503, "database-unavailable")) == 0
    clock.now += 6  # the window runs from the line written, not from the last one counted
    assert lines.admit((503, "overloaded")) == 3
    assert lines.admit((503, "overloaded")) is None
    clock.now += 60
    assert lines.admit((503, "overloaded")) == 1
    assert lines.admit((503, "database-unavailable")) == 0
