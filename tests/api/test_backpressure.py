"""Bursts beyond the bounds get fast 503s, the event loop stays free, and service recovers."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from service import admission, repeated_logs
from service.request_ids import RequestIdFilter
from service.settings import Settings
from tests.api.test_errors import assert_problem
from tests.conftest import API_KEY, CAT_PHOTO, AppClient, running
from tests.support.image_server import ImageServer


def photo_names(evalset_dir: Path, count: int) -> list[str]:
    return sorted(p.name for p in (evalset_dir / "images").glob("*.jpg"))[:count]


def overload_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "-> 503 overloaded" in r.getMessage()]


async def test_burst_beyond_the_bound_gets_503_then_recovers(
    make_settings: Callable[..., Settings],
    image_server: ImageServer,
    evalset_dir: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(repeated_logs, "WINDOW_SECONDS", 1.0)
    caplog.handler.addFilter(RequestIdFilter())
    async with running(make_settings(workers=1, max_inflight=4)) as client:
        names = photo_names(evalset_dir, 24)
        responses = await asyncio.gather(
            *(client.post("/v1/labels", json={"url": image_server.photo_url(n)}) for n in names)
        )
        statuses = [r.status_code for r in responses]
        assert set(statuses) <= {201, 503}
        assert statuses.count(201) >= 4 and statuses.count(503) >= 1
        # One warning for the burst, not one a refusal (service.repeated_logs).
        assert overload_lines(caplog) == ["POST /v1/labels -> 503 overloaded"]
        # The rest are told when the window ends, though no other refusal follows.
        unwritten = (
            f"{statuses.count(503) - 1} more answers 503 overloaded in the last 1 s, not"
            " logged one by one (the last: POST /v1/labels)"
        )
        await asyncio.sleep(1.5)
        closing = [r for r in caplog.records if r.getMessage() == unwritten]
        assert [getattr(r, "request", None) for r in closing] == [""]  # no one request's ID
        for response in responses:
            if response.status_code == 503:
                assert_problem(response, 503, "overloaded")
                assert response.headers["retry-after"] == "1"

        # Recovery is immediate: every refused image is accepted when sent again in bounds.
        refused = [n for n, r in zip(names, responses, strict=True) if r.status_code == 503]
        for name in refused:
            retry = await client.post("/v1/labels", json={"url": image_server.photo_url(name)})
            assert retry.status_code == 201
        metrics = (await client.get("/metrics")).text
        assert 'labelsvc_rejected_requests_total{reason="inflight"}' in metrics


async def test_a_full_queue_refuses_before_the_download_and_never_after(
    make_settings: Callable[..., Settings], image_server: ImageServer, evalset_dir: Path
) -> None:
    """Each image queues several jobs (decode, then its models), so the queue passes its
    bound long before the in-flight limit is reached: a request let in must not be refused
    once its bytes are in, and one turned away must be turned away before its download."""
    async with running(make_settings(workers=1, max_pending=3, max_inflight=16)) as client:
        urls = [image_server.photo_url(n, alias="queue") for n in photo_names(evalset_dir, 16)]
        responses = await asyncio.gather(
            *(client.post("/v1/labels", json={"url": u}) for u in urls)
        )
        assert [r.status_code for r in responses] == [201] * 16

        executor = client.resources.executor
        release = threading.Event()
        blockers = [asyncio.create_task(executor.run(release.wait, 10)) for _ in range(3)]
        await asyncio.sleep(0.05)
        try:
            url = image_server.photo_url(CAT_PHOTO, alias="queue-full")
            refused = await client.post("/v1/labels", json={"url": url})
            assert assert_problem(refused, 503, "overloaded")["reason"] == "queue_full"
            assert url.removeprefix(image_server.base) not in {p for p, _ in image_server.requests}
        finally:
            release.set()
            await asyncio.gather(*blockers)


async def test_event_loop_stays_responsive_while_inference_runs(
    make_settings: Callable[..., Settings], image_server: ImageServer, evalset_dir: Path
) -> None:
    """Inference and decoding run on the executor: the loop keeps ticking during a burst.

    Done on the loop, 32 decodes and detections would stall it for well over a second.
    """
    async with running(make_settings(max_inflight=64)) as client:
        lags: list[float] = []
        done = asyncio.Event()

        async def ticker() -> None:
            while not done.is_set():
                before = time.perf_counter()
                await asyncio.sleep(0.005)
                lags.append(time.perf_counter() - before - 0.005)

        ticking = asyncio.create_task(ticker())
        names = photo_names(evalset_dir, 32)
        started = time.perf_counter()
        responses = await asyncio.gather(
            *(client.post("/v1/labels", json={"url": image_server.photo_url(n)}) for n in names)
        )
        burst = time.perf_counter() - started
        done.set()
        await ticking
        assert all(r.status_code == 201 for r in responses)
        assert max(lags) < max(0.25, burst / 4), (max(lags), burst)


async def test_slow_downloads_give_their_slots_to_new_requests_at_capacity(
    make_settings: Callable[..., Settings],
    image_server: ImageServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A host that drips bytes must not hold every slot: at capacity, the download running
    longest past SLOW_FETCH_SECONDS is cancelled (504, reason evicted) for a new request."""
    monkeypatch.setattr(admission, "SLOW_FETCH_SECONDS", 0.5)
    async with running(make_settings(max_inflight=2)) as client:
        slow = [
            asyncio.create_task(client.post("/v1/labels", json={"url": image_server.url(path)}))
            for path in ("/drip?a", "/drip?b")
        ]
        await asyncio.sleep(0.2)  # both admitted, neither slow yet: a new one is refused
        refused = await client.post("/v1/labels", json={"url": image_server.url("/drip?c")})
        assert_problem(refused, 503, "overloaded")
        await asyncio.sleep(0.5)
        fast = await client.post("/v1/labels", json={"url": image_server.photo_url(CAT_PHOTO)})
        assert fast.status_code == 201, fast.text
        done, dripping = await asyncio.wait(slow, timeout=10, return_when=asyncio.FIRST_COMPLETED)
        (evicted,) = [task.result() for task in done]
        assert assert_problem(evicted, 504, "upstream-timeout")["reason"] == "evicted"
        for task in dripping:
            task.cancel()
        metrics = (await client.get("/metrics")).text
        assert 'labelsvc_fetch_failures_total{reason="evicted"} 1.0' in metrics


async def test_each_slow_download_gives_its_slot_to_one_request_only(
    make_settings: Callable[..., Settings],
    image_server: ImageServer,
    evalset_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A keyed batch starts its items in one turn of the event loop, before a cancelled
    download has stopped: each slow download must still admit one item, not all of them."""
    monkeypatch.setattr(admission, "SLOW_FETCH_SECONDS", 0.3)
    async with running(make_settings(max_inflight=2)) as client:
        slow = [
            asyncio.create_task(client.post("/v1/labels", json={"url": image_server.url(path)}))
            for path in ("/drip?one-slot-a", "/drip?one-slot-b")
        ]
        await asyncio.sleep(0.6)  # both admitted and past SLOW_FETCH_SECONDS
        peak = 0

        async def watch() -> None:
            nonlocal peak
            while True:
                peak = max(peak, client.resources.pipeline.admitted)
                await asyncio.sleep(0.002)

        watching = asyncio.create_task(watch())
        names = photo_names(evalset_dir, 16)
        items = [{"url": image_server.photo_url(n, alias="one-slot")} for n in names]
        response = await client.post(
            "/v1/labels/batch", json={"items": items}, headers={"X-API-Key": API_KEY}
        )
        watching.cancel()
        statuses = [result["status"] for result in response.json()["results"]]
        assert statuses.count(201) == 2 and statuses.count(503) == 14, statuses
        assert overload_lines(caplog) == ["an item of /v1/labels/batch -> 503 overloaded"]
        # The two evicted downloads count until their cancellation lands.
        assert peak <= 4, peak
        evicted = await asyncio.gather(*slow)
        assert [assert_problem(r, 504, "upstream-timeout")["reason"] for r in evicted] == [
            "evicted",
            "evicted",
        ]


async def test_a_request_cancelled_at_shutdown_gets_503_not_500(
    client: AppClient, image_server: ImageServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The server cancels requests still running when its graceful shutdown runs out: a
    labeling request caught mid-download is told to retry, not given a 500, and the 503 has
    its warning line, as every other has."""
    caplog.set_level(logging.INFO, logger="service.api.problems")
    caplog.handler.addFilter(RequestIdFilter())
    posting = asyncio.create_task(
        client.post("/v1/labels", json={"url": image_server.url("/drip?shutdown")})
    )
    await asyncio.sleep(0.5)  # admitted, downloading
    posting.cancel(msg="Task cancelled, timeout graceful shutdown exceeded")
    response = await posting
    problem = assert_problem(response, 503, "unavailable")
    assert problem["reason"] == "shutting_down"
    assert response.headers["retry-after"] == "1"
    assert response.headers["x-content-type-options"] == "nosniff"
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.getMessage() == "POST /v1/labels -> 503 unavailable"
    assert getattr(warning, "request", None) == f" (request {response.headers['x-request-id']})"
    text = (await client.get("/metrics")).text
    assert 'route="/v1/labels",status="503"' in text
    assert 'labelsvc_problems_total{status="503",type="unavailable"} 1.0' in text
