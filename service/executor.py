"""One sized executor for all blocking work (decode, inference), with a bounded queue.

Work is admitted only while fewer than ``max_pending`` items are queued or running; past
that the caller gets ``Overloaded`` (503 with Retry-After) at once instead of waiting
behind an unbounded queue.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

from service.errors import Overloaded

P = ParamSpec("P")
T = TypeVar("T")


class BlockingExecutor:
    def __init__(self, workers: int, max_pending: int) -> None:
        self.workers = workers
        self.max_pending = max_pending
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="labelsvc-work")
        self._pending = 0

    @property
    def pending(self) -> int:
        return self._pending

    async def run(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        if self._pending >= self.max_pending:
            raise Overloaded(
                f"{self._pending} tasks are already waiting for a worker; retry shortly",
                retry_after=1,
                extra={"reason": "queue_full"},
            )
        return await self.run_admitted(fn, *args, **kwargs)

    async def run_admitted(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run follow-up work of a task already admitted by ``run``: never refused, so a
        request that fans out into several tasks cannot be turned away halfway through."""
        self._pending += 1
        try:
            call = functools.partial(contextvars.copy_context().run, fn, *args, **kwargs)
            return await asyncio.get_running_loop().run_in_executor(self._pool, call)
        finally:
            self._pending -= 1

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
