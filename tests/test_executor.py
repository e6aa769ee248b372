"""The blocking-work executor: bounded, and serving the oldest request first."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest

from service.errors import Overloaded, ServiceUnavailable
from service.executor import BlockingExecutor, start_request


@pytest.fixture
def executor() -> Iterator[BlockingExecutor]:
    pool = BlockingExecutor(workers=1, max_pending=8)
    yield pool
    pool.shutdown()


async def occupy(executor: BlockingExecutor) -> tuple[asyncio.Task[None], threading.Event]:
    """Keep the only worker busy until the returned event is set."""
    release, started = threading.Event(), threading.Event()

    def hold() -> None:
        started.set()
        release.wait(10)

    busy = asyncio.create_task(executor.run(hold))
    await asyncio.to_thread(started.wait, 10)
    return busy, release


async def test_work_is_served_oldest_request_first(executor: BlockingExecutor) -> None:
    busy, release = await occupy(executor)
    done: list[str] = []

    async def request(name: str, first_step: asyncio.Event, second_step: asyncio.Event) -> None:
        start_request()
        step_one = asyncio.create_task(executor.run(done.append, f"{name}1"))
        await first_step.wait()
        await asyncio.gather(step_one, executor.run_admitted(done.append, f"{name}2"))
        second_step.set()

    a_ready, b_ready, finished_a, finished_b = (asyncio.Event() for _ in range(4))
    a = asyncio.create_task(request("a", a_ready, finished_a))
    await asyncio.sleep(0.01)
    b = asyncio.create_task(request("b", b_ready, finished_b))
    await asyncio.sleep(0.01)
    b_ready.set()  # b's second step is queued before a's...
    await asyncio.sleep(0.01)
    a_ready.set()
    await asyncio.sleep(0.01)
    release.set()
    await asyncio.gather(busy, a, b)
    assert done == ["a1", "a2", "b1", "b2"]  # ...but a was admitted first


async def test_without_requests_work_is_first_in_first_out(executor: BlockingExecutor) -> None:
    busy, release = await occupy(executor)
    done: list[int] = []
    queued = [asyncio.create_task(executor.run(done.append, i)) for i in range(5)]
    await asyncio.sleep(0.01)
    release.set()
    await asyncio.gather(busy, *queued)
    assert done == [0, 1, 2, 3, 4]


async def test_results_errors_and_a_full_queue(executor: BlockingExecutor) -> None:
    assert await executor.run(sum, [1, 2, 3]) == 6
    with pytest.raises(ZeroDivisionError):
        await executor.run(divmod, 1, 0)
    busy, release = await occupy(executor)
    queued = [asyncio.create_task(executor.run(abs, -i)) for i in range(7)]
    await asyncio.sleep(0.01)
    assert executor.pending == 8
    with pytest.raises(Overloaded):
        await executor.run(abs, 1)
    follow_up = asyncio.create_task(executor.run_admitted(abs, -9))  # never refused
    await asyncio.sleep(0.01)
    assert executor.pending == 9
    release.set()
    assert await follow_up == 9
    assert await asyncio.gather(*queued) == list(range(7))
    await busy
    assert executor.pending == 0


async def test_a_cancelled_caller_skips_its_queued_work(executor: BlockingExecutor) -> None:
    busy, release = await occupy(executor)
    ran: list[int] = []
    queued = asyncio.create_task(executor.run(ran.append, 1))
    await asyncio.sleep(0.01)
    queued.cancel()
    await asyncio.sleep(0.01)
    release.set()
    await busy
    assert await executor.run(ran.append, 2) is None
    assert ran == [2] and queued.cancelled()


async def test_work_still_running_counts_after_its_caller_gives_up(
    executor: BlockingExecutor,
) -> None:
    busy, release = await occupy(executor)
    busy.cancel()  # the caller goes; the worker is still busy with its job
    await asyncio.sleep(0.01)
    assert executor.pending == 1  # so the bound still counts it
    release.set()
    for _ in range(100):
        if executor.pending == 0:
            break
        await asyncio.sleep(0.01)
    assert executor.pending == 0


async def test_shutdown_cancels_queued_work() -> None:
    executor = BlockingExecutor(workers=1, max_pending=8)
    busy, release = await occupy(executor)
    queued = asyncio.create_task(executor.run(abs, -1))
    await asyncio.sleep(0.01)
    # The worker is released only once the shutdown has dropped the queued job: released
    # on a timer instead, a late shutdown thread would let the worker run that job.
    stopping = asyncio.create_task(asyncio.to_thread(executor.shutdown))
    await asyncio.wait({queued}, timeout=10)
    release.set()
    await stopping
    await busy
    with pytest.raises(asyncio.CancelledError):
        await queued
    with pytest.raises(ServiceUnavailable, match="shutting down"):
        await executor.run(abs, 1)


async def test_the_wait_for_a_worker_is_reported() -> None:
    waits: list[float] = []
    pool = BlockingExecutor(workers=1, max_pending=8, waited=waits.append)
    try:
        busy, release = await occupy(pool)
        queued = asyncio.create_task(pool.run(lambda: None))
        await asyncio.sleep(0)  # queued (and its wait begun) before the 0.2 s are counted
        await asyncio.sleep(0.2)
        release.set()
        await asyncio.gather(busy, queued)
    finally:
        pool.shutdown()
    assert len(waits) == 2
    assert waits[0] < 0.2 <= waits[1]  # the second job queued behind the first
