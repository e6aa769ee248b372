"""Admission of labeling requests: one slot each, at most ``max_inflight`` at a time.

A request is admitted, or refused with 503, once and before its image is downloaded or its
body read: a burst must not turn into unbounded concurrent downloads (each up to the image
cap in memory) queued behind the workers, and a request let in is not turned away after its
download. At capacity, the download or upload running longest past ``SLOW_FETCH_SECONDS``
gives its slot to the new request: hosts (or clients) that drip bytes, or never answer, must
not hold every slot while fast images wait.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from service.errors import Overloaded, ServiceError
from service.executor import BlockingExecutor, start_request
from service.observability import Metrics

T = TypeVar("T")

# At capacity, a download running this long gives its slot to a new request.
SLOW_FETCH_SECONDS = 5.0


def slot_taken(kind: type[ServiceError], sender: str) -> Callable[[], ServiceError]:
    """The error of a download or upload cancelled to give its slot to a new request."""
    return lambda: kind(
        f"{sender} was still sending after {SLOW_FETCH_SECONDS:g} s while the service was at"
        " capacity; its slot went to another request",
        retry_after=1,
        extra={"reason": "evicted"},
    )


class Admission:
    def __init__(self, executor: BlockingExecutor, metrics: Metrics, max_inflight: int) -> None:
        self._executor = executor
        self._metrics = metrics
        self._max_inflight = max_inflight
        self._admitted = 0
        # Downloads and uploads, by start time.
        self._intakes: dict[asyncio.Task[Any], float] = {}
        self._evicted: set[asyncio.Task[Any]] = set()

    @property
    def admitted(self) -> int:
        """Labeling requests in progress (fetching, analysing or storing)."""
        return self._admitted

    @contextmanager
    def slot(self) -> Iterator[None]:
        """A slot for one labeling request, held while the block runs; ``Overloaded`` (503)
        when there is none."""
        self._admit()
        self._admitted += 1
        start_request()  # its blocking work goes before that of requests admitted later
        try:
            yield
        finally:
            self._admitted -= 1

    async def intake(
        self, receiving: Coroutine[Any, Any, T], stage: str, evicted: Callable[[], ServiceError]
    ) -> T:
        """Run a download or an upload as a task that a new request may cancel to take its
        slot, in which case ``evicted()`` is raised. Timed as ``stage``."""
        with self._metrics.stage(stage):
            task = asyncio.create_task(receiving)
            self._intakes[task] = time.monotonic()
            try:
                return await task
            except asyncio.CancelledError:
                if task not in self._evicted:
                    raise
                raise evicted() from None
            finally:
                del self._intakes[task]
                self._evicted.discard(task)

    def _admit(self) -> None:
        try:
            self._executor.admit()  # first, so that a full queue evicts no download
            if self._admitted >= self._max_inflight and not self._evict_a_slow_intake():
                raise Overloaded(
                    f"{self._admitted} images are being labeled; retry shortly",
                    retry_after=1,
                    extra={"reason": "inflight"},
                )
        except Overloaded as exc:
            self._metrics.rejected.labels(exc.extra["reason"]).inc()
            raise

    def _evict_a_slow_intake(self) -> bool:
        """Cancel the longest-running download (or upload) past ``SLOW_FETCH_SECONDS`` to
        make room; False when none is that slow."""
        now = time.monotonic()
        # One already picked has not stopped yet (its cancellation lands on a later turn of
        # the loop): picking it again would admit a second request for one slot.
        slow = [
            (started, task)
            for task, started in self._intakes.items()
            if not task.done() and task not in self._evicted
        ]
        started, task = min(slow, default=(now, None), key=lambda item: item[0])
        if task is None or now - started < SLOW_FETCH_SECONDS:
            return False
        self._evicted.add(task)
        task.cancel()
        return True
