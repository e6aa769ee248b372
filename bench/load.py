"""The load generator of the ingest benchmarks: aiohttp clients sending labeling requests.

aiohttp's HTTP parser is C: on a 2-core machine every millisecond the client spends is taken
from the service, and httpx costs about 1 ms more per request.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

from bench.baseline import WARM_UP_PHOTOS
from bench.harness import PhotoHost

T = TypeVar("T")


async def _send_all(
    base: str,
    items: list[T],
    concurrency: int,
    send: Callable[[aiohttp.ClientSession, T], Any],
    expected: int = 201,
) -> tuple[float, list[float]]:
    """``send`` each item to the service, ``concurrency`` at a time, each answered
    ``expected``: images/s and latencies."""
    limit = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(base, timeout=timeout) as client:

        async def one(index: int, item: T) -> None:
            async with limit:
                start = time.perf_counter()
                async with send(client, item) as response:
                    body = await response.read()
                latencies.append(time.perf_counter() - start)
                if response.status != expected:
                    raise RuntimeError(f"item {index}: {response.status} {body[:200]!r}")

        start = time.perf_counter()
        await asyncio.gather(*(one(i, item) for i, item in enumerate(items)))
        return len(items) / (time.perf_counter() - start), latencies


async def post_all(
    base: str, urls: list[str], concurrency: int, expected: int = 201
) -> tuple[float, list[float]]:
    """POST every URL to ``/v1/labels``, ``concurrency`` at a time, each answered
    ``expected`` (201: new images): images/s and latencies."""
    return await _send_all(
        base,
        urls,
        concurrency,
        lambda client, url: client.post("/v1/labels", json={"url": url}),
        expected,
    )


async def upload_all(base: str, bodies: list[bytes], concurrency: int) -> tuple[float, list[float]]:
    """POST every image's bytes to ``/v1/labels/upload``, ``concurrency`` at a time."""
    return await _send_all(
        base,
        bodies,
        concurrency,
        lambda client, body: client.post(
            "/v1/labels/upload", data=body, headers={"Content-Type": "image/jpeg"}
        ),
    )


async def post_batches(base: str, urls: list[str], size: int) -> tuple[float, list[float]]:
    """POST the URLs ``size`` at a time to ``/v1/labels/batch``, one batch after another:
    images/s and latencies per batch."""
    latencies: list[float] = []
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(base, timeout=timeout) as client:
        start = time.perf_counter()
        for first in range(0, len(urls), size):
            items = [{"url": url} for url in urls[first : first + size]]
            sent = time.perf_counter()
            async with client.post("/v1/labels/batch", json={"items": items}) as response:
                body = await response.json()
            latencies.append(time.perf_counter() - sent)
            statuses = {result["status"] for result in body["results"]}
            if response.status != 200 or statuses != {201}:
                raise RuntimeError(f"batch at {first}: {response.status} {statuses}")
        return len(urls) / (time.perf_counter() - start), latencies


def warm_up(base: str, host: PhotoHost, files: list[Path], concurrency: int) -> None:
    """As the bare pipeline is warmed up: the first photos, as bytes the service has not
    labeled (the timed photos stay new to it), at the run's concurrency."""
    urls = [host.warm_up_url(f.name) for f in files[:WARM_UP_PHOTOS]]
    asyncio.run(post_all(base, urls, concurrency))
