"""Dynamic micro-batching: concurrent requests for one model become one batched call.

Callers ``await batcher.submit(item)``. A collector gathers items until ``max_batch_size``
are waiting or ``max_wait_ms`` has passed since the first, runs ``run_batch(items)`` once on
the executor, and routes each result (or the batch's exception) back to its caller. With
``max_batch_size == 1`` each item runs on its own at once: no added latency.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")
Runner = Callable[..., Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class BatchPolicy:
    max_batch_size: int = 1
    max_wait_ms: float = 2.0


class MicroBatcher(Generic[T, R]):
    def __init__(
        self,
        run_batch: Callable[[Sequence[T]], Sequence[R]],
        run: Runner,
        policy: BatchPolicy,
    ) -> None:
        """``run(fn, items)`` executes a batch off the loop: ``BlockingExecutor.run`` (refused
        when the queue is full) or ``run_admitted`` (for work already admitted)."""
        if policy.max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        self._run_batch = run_batch
        self._execute = run
        self._policy = policy
        self._waiting: list[tuple[T, asyncio.Future[R]]] = []
        # The first submitter's context: the batch runs as its request (the executor serves
        # the oldest request first), even when a later submitter's task fills it.
        self._context: contextvars.Context | None = None
        self._flush: asyncio.TimerHandle | None = None

    async def submit(self, item: T) -> R:
        if self._policy.max_batch_size == 1:
            results: Sequence[R] = await self._execute(self._run_batch, [item])
            return results[0]
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        if not self._waiting:
            self._context = contextvars.copy_context()
        self._waiting.append((item, future))
        if len(self._waiting) >= self._policy.max_batch_size:
            self._dispatch()
        elif self._flush is None:
            self._flush = asyncio.get_running_loop().call_later(
                self._policy.max_wait_ms / 1000, self._dispatch
            )
        return await future

    def _dispatch(self) -> None:
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        batch, self._waiting = self._waiting, []
        context, self._context = self._context, None
        if batch:
            asyncio.get_running_loop().create_task(self._run(batch), context=context)

    async def _run(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        try:
            results = await self._execute(self._run_batch, [item for item, _ in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"batch of {len(batch)} gave {len(results)} results")
        except BaseException as exc:  # every waiter learns why its batch failed
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)
