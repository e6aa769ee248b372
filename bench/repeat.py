"""Repeated requests: URLs the service labeled before, against the least work they need.

A client that POSTs a URL again is answered from the database, but the URL may serve other
bytes now, so the service asks its host again. Two hosts, two lines:

- ``repeat``: a host without entity tags. The bytes are downloaded and hashed again; the bare
  baseline does only that, plus one ``find_one`` by hash (pymongo) for the stored document.
- ``repeat_revalidated``: the same photos with strong ``ETag`` s. The service sends each tag
  back in ``If-None-Match`` and the host answers ``304 Not Modified``; the bare baseline sends
  the same conditional GET and one ``find_one`` by the hash it knows.

The bare side runs in one process on uvloop with no checks, against the same photo host and
database at the same concurrency; the service answers each request with its record (200).
Both sides run ``ROUNDS`` times, alternately, over every evalset photo ``PASSES`` times; the
medians count. Each line: ``{"name", "ratio": service / bare requests/s, ...}`` with the CPU
milliseconds per request of each process on the machine.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import statistics
import time
from typing import Any

import aiohttp
import uvloop
from pymongo import AsyncMongoClient

from bench.harness import database, photo_server, photos, service
from bench.load import post_all
from bench.usage import CpuMeter

CONCURRENCY = 16
ROUNDS = 5
PASSES = 2
DATABASE = "bench_repeat"
PROCESSES = ("service_event_loop", "database", "photo_host", "http_client")


async def bare_requests_per_second(
    mongodb_uri: str,
    urls: list[str],
    tags: dict[str, tuple[str, str]],
    pids: tuple[int, int, int],
) -> tuple[float, CpuMeter]:
    """For every URL, ``CONCURRENCY`` at a time: download and hash it, or with its ``tags``
    entry (entity tag, SHA-256) ask whether it changed; then find its record. With the CPU
    meter of the timed requests, started after the warm-up as the service's is (``pids``:
    the service's, the database's and the photo host's)."""
    limit = asyncio.Semaphore(CONCURRENCY)
    mongo: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(mongodb_uri)
    records = mongo[DATABASE]["records"]
    async with aiohttp.ClientSession() as http:

        async def one(url: str) -> None:
            async with limit:
                tagged = tags.get(url)
                headers = {} if tagged is None else {"If-None-Match": tagged[0]}
                async with http.get(url, headers=headers) as response:
                    data = await response.read()
                if tagged is not None and response.status != 304:
                    raise RuntimeError(f"{url} was not revalidated: {response.status}")
                digest = hashlib.sha256(data).hexdigest() if tagged is None else tagged[1]
                if await records.find_one({"hash": digest}) is None:
                    raise RuntimeError(f"no record for {url}")

        try:
            await asyncio.gather(*(one(url) for url in urls[:CONCURRENCY]))  # connections
            meter = CpuMeter(*pids)
            start = time.perf_counter()
            await asyncio.gather(*(one(url) for url in urls))
            return len(urls) / (time.perf_counter() - start), meter
        finally:
            await mongo.close()


async def entity_tags(urls: list[str]) -> dict[str, tuple[str, str]]:
    """Each URL's entity tag and the SHA-256 of its bytes."""
    async with aiohttp.ClientSession() as http:
        tags = {}
        for url in urls:
            async with http.get(url) as response:
                tags[url] = (
                    response.headers["ETag"],
                    hashlib.sha256(await response.read()).hexdigest(),
                )
        return tags


def compare(
    name: str,
    base: str,
    mongodb_uri: str,
    urls: list[str],
    tags: dict[str, tuple[str, str]],
    pids: tuple[int, int, int],
) -> dict[str, Any]:
    """Alternate runs of the service at ``base`` and the bare baseline over ``urls``: one
    JSON line. ``pids``: the service's, the database's and the photo host's."""
    service_pid, db_pid, host_pid = pids
    rates: dict[str, list[float]] = {"service": [], "bare": []}
    cpu: dict[str, list[dict[str, float]]] = {"service": [], "bare": []}
    requests = urls * PASSES
    asyncio.run(post_all(base, urls[:CONCURRENCY], CONCURRENCY, expected=200))  # warm-up
    for _ in range(ROUNDS):
        meter = CpuMeter(service_pid, db_pid, host_pid)
        rate, _ = asyncio.run(post_all(base, requests, CONCURRENCY, expected=200))
        rates["service"].append(rate)
        cpu["service"].append(meter.per_image_ms(len(requests)))
        rate, meter = uvloop.run(bare_requests_per_second(mongodb_uri, requests, tags, pids))
        rates["bare"].append(rate)
        cpu["bare"].append(meter.per_image_ms(len(requests)))
    median = {side: statistics.median(values) for side, values in rates.items()}
    return {
        "name": name,
        "ratio": round(median["service"] / median["bare"], 3),
        "requests_per_s": round(median["service"], 1),
        "bare_requests_per_s": round(median["bare"], 1),
        "runs": {side: [round(r, 1) for r in values] for side, values in rates.items()},
        # The bare side runs in the client's process: its CPU is that of "http_client".
        "cpu_ms_per_request": {
            side: {
                name: round(statistics.median(run[name] for run in runs), 2) for name in PROCESSES
            }
            for side, runs in cpu.items()
        },
        "concurrency": CONCURRENCY,
        "requests_per_run": len(requests),
    }


def main() -> int:
    files = photos()
    with (
        database() as db,
        photo_server() as host,
        service(db.uri, mongodb_db=DATABASE) as (base, proc),
    ):
        assert db.pid is not None
        pids = (proc.pid, db.pid, host.pid)
        plain = [host.photo_url(f.name) for f in files]
        asyncio.run(post_all(base, plain, CONCURRENCY))  # each photo labeled once
        print(json.dumps(compare("repeat", base, db.uri, plain, {}, pids)), flush=True)
        tagged = [host.tagged_url(f.name) for f in files]
        asyncio.run(post_all(base, tagged, CONCURRENCY, expected=200))  # their tags learned
        tags = asyncio.run(entity_tags(tagged))
        print(
            json.dumps(compare("repeat_revalidated", base, db.uri, tagged, tags, pids)), flush=True
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
