"""Download cost: the service's fetcher against a bare HTTP client, in CPU per image.

Every labeled image is downloaded on the service's event loop, so each millisecond of CPU a
download takes is taken from the models on a small machine. This bench fetches the evalset
photos from a local keep-alive HTTP host at ``CONCURRENCY``, on uvloop as the service runs,
three ways in the same run, alternately ``ROUNDS`` times (medians count):

- ``fetcher``: ``service.fetch.download.ImageFetcher``: address checks, pinned addresses,
  size cap and hash while streaming, over httpx with the aiohttp transport;
- ``bare``: an aiohttp session reading each body, with no checks (the floor);
- ``httpx_default``: a plain ``httpx.AsyncClient`` on its own transport (httpcore) streaming
  each body, with no checks: what the fetcher would cost on httpx's default I/O.

Prints one JSON line: ``{"name": "fetch", "ratio": bare / fetcher CPU, ...}`` with the CPU
milliseconds per download of each, and how many connections each fetcher opened per image
(keep-alive at work: a reconnect per image would also be a TLS handshake per image).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import httpx
import uvloop

from bench.harness import photo_server, photos
from service.fetch.download import ImageFetcher
from service.fetch.policy import FetchPolicy

CONCURRENCY = 16
ROUNDS = 3

Fetch = Callable[[str], Awaitable[int]]


async def cpu_ms_per_download(fetch: Fetch, urls: list[str], sizes: list[int]) -> float:
    limit = asyncio.Semaphore(CONCURRENCY)

    async def one(url: str) -> int:
        async with limit:
            return await fetch(url)

    start = time.process_time()
    got = await asyncio.gather(*(one(url) for url in urls))
    spent = time.process_time() - start
    if got != sizes:
        raise RuntimeError("a download came back with the wrong number of bytes")
    return 1000 * spent / len(urls)


def connections_opened(base: str) -> int:
    """Connections the photo host has accepted, this probe's own included."""
    return int(httpx.get(base + "/connections").text)


async def measure(base: str, files: list[Path]) -> dict[str, object]:
    urls = [f"{base}/{f.name}" for f in files]  # as PhotoHost.photo_url names them
    sizes = [f.stat().st_size for f in files]
    fetcher = ImageFetcher(FetchPolicy(allow_private=True))
    plain = httpx.AsyncClient(trust_env=False)
    bare = aiohttp.ClientSession()

    async def via_fetcher(url: str) -> int:
        return len((await fetcher.fetch(url)).data)

    async def via_httpx(url: str) -> int:
        async with plain.stream("GET", url) as response:
            return sum([len(chunk) async for chunk in response.aiter_raw()])

    async def via_bare(url: str) -> int:
        async with bare.get(url) as response:
            return len(await response.read())

    ways: dict[str, Fetch] = {"fetcher": via_fetcher, "bare": via_bare, "httpx_default": via_httpx}
    cpu: dict[str, list[float]] = {name: [] for name in ways}
    opened: dict[str, int] = {}
    try:
        for fetch in ways.values():  # warm-up: connections, caches
            await cpu_ms_per_download(fetch, urls[:CONCURRENCY], sizes[:CONCURRENCY])
        for _ in range(ROUNDS):
            for name, fetch in ways.items():
                before = connections_opened(base)
                cpu[name].append(await cpu_ms_per_download(fetch, urls, sizes))
                # Less the connection of the probe that read ``before``.
                opened[name] = connections_opened(base) - before - 1
    finally:
        await fetcher.aclose()
        await plain.aclose()
        await bare.close()
    median = {name: statistics.median(values) for name, values in cpu.items()}
    return {
        "name": "fetch",
        "ratio": round(median["bare"] / median["fetcher"], 3),
        "cpu_ms_per_download": {name: round(value, 3) for name, value in median.items()},
        "connections_per_download": {
            name: round(count / len(urls), 3) for name, count in opened.items()
        },
        "downloads": len(urls),
        "concurrency": CONCURRENCY,
        "mean_kb": round(statistics.mean(sizes) / 1024, 1),
    }


def main() -> int:
    files = photos()
    with photo_server() as host:
        print(json.dumps(uvloop.run(measure(host.base, files))), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
