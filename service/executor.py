"""One sized executor for all blocking work (decode, inference), with a bounded queue.

``admit`` (and ``run``, which calls it) let work in only while fewer than ``max_pending``
jobs are queued or running; past that the caller gets ``Overloaded`` (503 with Retry-After)
at once instead of waiting behind an unbounded queue. A labeling request is admitted once,
before its download, and its jobs then go through ``run_admitted``, never refused.

Queued work is served oldest request first, not in the order tasks were submitted. A
labeling request submits its decode, then its model runs; in plain FIFO order those model
runs wait behind the decodes of every request that arrived meanwhile, so under a burst
requests overtake each other and the slowest wait about twice their fair share. A request
that calls ``start_request`` gets a ticket, and every task it (or a task it starts) submits
is served before the work of requests with later tickets. Work without a ticket gets one
when it is submitted.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import itertools
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, Generic, ParamSpec, TypeVar

from service.errors import Overloaded, ServiceUnavailable

P = ParamSpec("P")
T = TypeVar("T")

_tickets = itertools.count()
_ticket: contextvars.ContextVar[int | None] = contextvars.ContextVar("request_ticket", default=None)


def start_request() -> None:
    """Mark the current task, and the tasks it starts from now on, as one request."""
    _ticket.set(next(_tickets))


class _Job(Generic[T]):
    """One call, run on a worker thread, its outcome handed to a future on the event loop.

    ``done`` runs on the loop once the job has left the executor (run, skipped or cancelled):
    not when its caller stops waiting, since a job already running goes on all the same.
    """

    __slots__ = ("_call", "_done", "_future", "_loop", "_submitted")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        future: asyncio.Future[T],
        call: Callable[[], T],
        done: Callable[[], None],
    ) -> None:
        self._loop, self._future, self._call, self._done = loop, future, call, done
        self._submitted = time.perf_counter()

    def run(self, waited: Callable[[float], None] | None = None) -> None:
        if self._future.cancelled():  # the caller gave up while this waited in the queue
            self._on_loop(self._done)
            return
        if waited is not None:
            waited(time.perf_counter() - self._submitted)
        try:
            result = self._call()
        except BaseException as exc:  # the caller's to handle, as with run_in_executor
            self._on_loop(_fail, self._future, exc, self._done)
        else:
            self._on_loop(_succeed, self._future, result, self._done)

    def cancel(self) -> None:
        self._on_loop(_cancel, self._future, self._done)

    def _on_loop(self, callback: Callable[..., None], *args: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits any more
            self._loop.call_soon_threadsafe(callback, *args)


def _succeed(future: asyncio.Future[T], result: T, done: Callable[[], None]) -> None:
    done()
    if not future.done():
        future.set_result(result)


def _fail(future: asyncio.Future[T], error: BaseException, done: Callable[[], None]) -> None:
    done()
    if not future.done():
        future.set_exception(error)


def _cancel(future: asyncio.Future[Any], done: Callable[[], None]) -> None:
    done()
    future.cancel()


# (ticket, submission order, job); no job tells a worker to stop.
_Item = tuple[int, int, _Job[Any] | None]


class BlockingExecutor:
    def __init__(
        self, workers: int, max_pending: int, *, waited: Callable[[float], None] | None = None
    ) -> None:
        """``waited`` is called, on the worker thread, with the seconds each job spent
        queued before a worker took it."""
        self.workers = workers
        self.max_pending = max_pending
        self._waited = waited
        self._queue: queue.PriorityQueue[_Item] = queue.PriorityQueue()
        self._order = itertools.count()
        self._pending = 0
        self._closed = False
        self._threads = [
            threading.Thread(target=self._work, name=f"labelsvc-work_{i}", daemon=True)
            for i in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    @property
    def pending(self) -> int:
        """Jobs queued or running, whether or not their callers still wait for them."""
        return self._pending

    def admit(self) -> None:
        """Raise ``Overloaded`` (reason ``queue_full``) when ``max_pending`` jobs are queued or
        running: new work is turned away at once rather than queued without bound."""
        if self._pending >= self.max_pending:
            raise Overloaded(
                f"{self._pending} tasks are already waiting for a worker; retry shortly",
                retry_after=1,
                extra={"reason": "queue_full"},
            )

    async def run(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        self.admit()
        return await self.run_admitted(fn, *args, **kwargs)

    async def run_admitted(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run follow-up work of a task already admitted by ``run``: never refused, so a
        request that fans out into several tasks cannot be turned away halfway through."""
        if self._closed:  # a request that arrived as the service stops
            raise ServiceUnavailable(
                "the service is shutting down; retry shortly",
                retry_after=1,
                extra={"reason": "shutting_down"},
            )
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        call = functools.partial(contextvars.copy_context().run, fn, *args, **kwargs)
        ticket = _ticket.get()
        job = _Job(loop, future, call, self._job_left)
        self._pending += 1
        self._queue.put((next(_tickets) if ticket is None else ticket, next(self._order), job))
        return await future

    def _job_left(self) -> None:
        self._pending -= 1

    def _work(self) -> None:
        while True:
            job = self._queue.get()[2]
            if job is None:
                return
            job.run(self._waited)

    def shutdown(self) -> None:
        """Stop the workers after the jobs they are running; queued jobs are cancelled."""
        self._closed = True
        while True:
            try:
                job = self._queue.get_nowait()[2]
            except queue.Empty:
                break
            if job is not None:
                job.cancel()
        for _ in self._threads:
            self._queue.put((-1, next(self._order), None))
        for thread in self._threads:
            thread.join()
