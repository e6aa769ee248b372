"""Micro-batching: gathering, size and time bounds, result routing, error routing."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Iterator, Sequence

import pytest

from service.errors import Overloaded
from service.executor import BlockingExecutor, start_request
from service.infer.batching import BatchPolicy, MicroBatcher


class Recorder:
    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.lock = threading.Lock()

    def __call__(self, items: Sequence[int]) -> list[int]:
        with self.lock:
            self.batches.append(list(items))
        return [item * 10 for item in items]


@pytest.fixture
def executor() -> Iterator[BlockingExecutor]:
    pool = BlockingExecutor(workers=2, max_pending=16)
    yield pool
    pool.shutdown()


async def test_concurrent_items_share_one_call_and_get_their_own_results(
    executor: BlockingExecutor,
) -> None:
    recorder = Recorder()
    batcher = MicroBatcher(recorder, executor.run, BatchPolicy(max_batch_size=8, max_wait_ms=50))
    results = await asyncio.gather(*(batcher.submit(i) for i in range(8)))
    assert results == [i * 10 for i in range(8)]
    assert recorder.batches == [list(range(8))]


async def test_batches_are_capped_by_size(executor: BlockingExecutor) -> None:
    recorder = Recorder()
    batcher = MicroBatcher(recorder, executor.run, BatchPolicy(max_batch_size=4, max_wait_ms=50))
    await asyncio.gather(*(batcher.submit(i) for i in range(10)))
    assert sorted(len(b) for b in recorder.batches) == [2, 4, 4]
    assert sorted(x for b in recorder.batches for x in b) == list(range(10))


async def test_a_lone_item_waits_at_most_max_wait(executor: BlockingExecutor) -> None:
    recorder = Recorder()
    batcher = MicroBatcher(recorder, executor.run, BatchPolicy(max_batch_size=64, max_wait_ms=5))
    assert await asyncio.wait_for(batcher.submit(7), timeout=2) == 70
    assert recorder.batches == [[7]]


async def test_batch_size_one_runs_each_item_directly(executor: BlockingExecutor) -> None:
    recorder = Recorder()
    batcher = MicroBatcher(recorder, executor.run, BatchPolicy(max_batch_size=1))
    assert await asyncio.gather(batcher.submit(1), batcher.submit(2)) == [10, 20]
    assert sorted(recorder.batches) == [[1], [2]]


async def test_a_failing_batch_fails_each_waiter(executor: BlockingExecutor) -> None:
    def broken(items: Sequence[int]) -> list[int]:
        raise ValueError("model exploded")

    batcher = MicroBatcher(broken, executor.run, BatchPolicy(max_batch_size=4, max_wait_ms=5))
    results = await asyncio.gather(*(batcher.submit(i) for i in range(3)), return_exceptions=True)
    assert all(isinstance(r, ValueError) for r in results)


async def test_full_executor_rejects_the_batch(executor: BlockingExecutor) -> None:
    tiny = BlockingExecutor(workers=1, max_pending=1)
    release = threading.Event()
    blocker = asyncio.create_task(tiny.run(release.wait, 5))
    await asyncio.sleep(0.02)
    batcher = MicroBatcher(Recorder(), tiny.run, BatchPolicy(max_batch_size=2, max_wait_ms=1))
    try:
        results = await asyncio.gather(batcher.submit(1), batcher.submit(2), return_exceptions=True)
        assert all(isinstance(r, Overloaded) for r in results)
    finally:
        release.set()
        await blocker
        tiny.shutdown()


async def test_a_full_batch_is_served_as_its_oldest_request() -> None:
    """The batch fills in its last submitter's task, yet it runs as the request that opened
    it: before the work of requests admitted after that one."""
    single = BlockingExecutor(workers=1, max_pending=8)
    release, started = threading.Event(), threading.Event()
    done: list[str] = []

    def hold() -> None:
        started.set()
        release.wait(10)

    def run_batch(items: Sequence[str]) -> list[str]:
        done.extend(items)
        return list(items)

    batcher = MicroBatcher(
        run_batch, single.run_admitted, BatchPolicy(max_batch_size=2, max_wait_ms=60_000)
    )

    async def request(name: str, work: Callable[[], Awaitable[object]]) -> None:
        start_request()
        await work()

    busy = asyncio.create_task(single.run(hold))
    try:
        await asyncio.to_thread(started.wait, 10)
        a = asyncio.create_task(request("a", lambda: batcher.submit("a")))
        await asyncio.sleep(0.01)
        c = asyncio.create_task(request("c", lambda: single.run_admitted(done.append, "c")))
        await asyncio.sleep(0.01)
        b = asyncio.create_task(request("b", lambda: batcher.submit("b")))
        await asyncio.sleep(0.01)
        release.set()
        await asyncio.gather(busy, a, b, c)
    finally:
        release.set()
        single.shutdown()
    assert done == ["a", "b", "c"]


def test_policy_is_validated(executor: BlockingExecutor) -> None:
    with pytest.raises(ValueError, match="max_batch_size"):
        MicroBatcher(Recorder(), executor.run, BatchPolicy(max_batch_size=0))
