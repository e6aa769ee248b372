"""Repeated requests: URLs the service labeled before, against the least work they need.

A client that POSTs a URL again is answered from the database, but the bytes must still be
downloaded and hashed, since the URL may serve other bytes now. The bare baseline does only
that, in one process on uvloop and with no checks: download (aiohttp), SHA-256, and one
``find_one`` by hash (pymongo) for the stored document, against the same photo host and
database, at the same concurrency. The service answers each request with its record (200).

Both sides run ``ROUNDS`` times, alternately, over every evalset photo ``PASSES`` times; the
medians count. Prints one JSON line: ``{"name": "repeat", "ratio": service / bare
requests/s, ...}`` with the CPU milliseconds per request of each process on the machine.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import statistics
import time

import aiohttp
import uvloop
from pymongo import AsyncMongoClient

from bench.harness import database, photo_server, photos, service
from bench.ingest import post_all
from bench.usage import CpuMeter

CONCURRENCY = 16
ROUNDS = 5
PASSES = 2
DATABASE = "bench_repeat"


async def bare_requests_per_second(mongodb_uri: str, urls: list[str]) -> float:
    """Download, hash and look up every URL's record, ``CONCURRENCY`` at a time."""
    limit = asyncio.Semaphore(CONCURRENCY)
    mongo: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(mongodb_uri)
    records = mongo[DATABASE]["records"]
    async with aiohttp.ClientSession() as http:

        async def one(url: str) -> None:
            async with limit:
                async with http.get(url) as response:
                    data = await response.read()
                digest = hashlib.sha256(data).hexdigest()
                if await records.find_one({"hash": digest}) is None:
                    raise RuntimeError(f"no record for {url}")

        try:
            await asyncio.gather(*(one(url) for url in urls[:CONCURRENCY]))  # connections
            start = time.perf_counter()
            await asyncio.gather(*(one(url) for url in urls))
            return len(urls) / (time.perf_counter() - start)
        finally:
            await mongo.close()


def main() -> int:
    files = photos()
    rates: dict[str, list[float]] = {"service": [], "bare": []}
    cpu: dict[str, list[dict[str, float]]] = {"service": [], "bare": []}
    with (
        database() as db,
        photo_server() as host,
        service(db.uri, mongodb_db=DATABASE) as (base, proc),
    ):
        assert db.pid is not None
        urls = [host.photo_url(f.name) for f in files]
        asyncio.run(post_all(base, urls, CONCURRENCY))  # each photo labeled once
        asyncio.run(post_all(base, urls[:CONCURRENCY], CONCURRENCY, expected=200))  # warm-up
        for _ in range(ROUNDS):
            meter = CpuMeter(proc.pid, db.pid, host.pid)
            rate, _ = asyncio.run(post_all(base, urls * PASSES, CONCURRENCY, expected=200))
            rates["service"].append(rate)
            cpu["service"].append(meter.per_image_ms(len(urls) * PASSES))
            meter = CpuMeter(proc.pid, db.pid, host.pid)
            rates["bare"].append(uvloop.run(bare_requests_per_second(db.uri, urls * PASSES)))
            cpu["bare"].append(meter.per_image_ms(len(urls) * PASSES))
    median = {side: statistics.median(values) for side, values in rates.items()}
    print(
        json.dumps(
            {
                "name": "repeat",
                "ratio": round(median["service"] / median["bare"], 3),
                "requests_per_s": round(median["service"], 1),
                "bare_requests_per_s": round(median["bare"], 1),
                "runs": {
                    side: [round(rate, 1) for rate in values] for side, values in rates.items()
                },
                # The bare side runs in the client's process: its CPU is that of "http_client".
                "cpu_ms_per_request": {
                    side: {
                        name: round(statistics.median(run[name] for run in runs), 2)
                        for name in ("service_event_loop", "database", "photo_host", "http_client")
                    }
                    for side, runs in cpu.items()
                },
                "concurrency": CONCURRENCY,
                "requests_per_run": len(urls) * PASSES,
            }
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
