"""What gzip costs the query endpoint: the same page, gzipped and not, from one client.

On loopback the bytes gzip saves cost nothing to send, so this is its price alone; across a
network, the smaller page is what a bulk client gains.
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx

GZIP = {"Accept-Encoding": "gzip"}
IDENTITY = {"Accept-Encoding": "identity"}


async def _pages_per_second(
    http: httpx.AsyncClient, params: dict[str, str], coding: dict[str, str], seconds: float
) -> float:
    n, started = 0, time.perf_counter()
    while n < 3 or time.perf_counter() - started < seconds:
        response = await http.get("/v1/records", params=params, headers=coding)
        response.raise_for_status()
        n += 1
    return n / (time.perf_counter() - started)


async def _sent_bytes(
    http: httpx.AsyncClient, params: dict[str, str], coding: dict[str, str]
) -> int:
    async with http.stream("GET", "/v1/records", params=params, headers=coding) as response:
        return sum([len(chunk) async for chunk in response.aiter_raw()])


async def gzip_cost(
    http: httpx.AsyncClient, classname: str, seconds: float, rounds: int
) -> dict[str, Any]:
    """Pages of 100 records of ``classname``, gzipped against not: pages/s and bytes."""
    params = {"q": json.dumps({"classes": classname}), "per_page": "100"}
    gzipped = plain = 0.0
    for _ in range(rounds):  # interleaved, so that load from elsewhere hits both
        gzipped += await _pages_per_second(http, params, GZIP, seconds)
        plain += await _pages_per_second(http, params, IDENTITY, seconds)
    line = {
        "name": "query_gzip",
        "ratio": round(gzipped / plain, 3),
        "gzip_pages_per_s": round(gzipped / rounds, 1),
        "identity_pages_per_s": round(plain / rounds, 1),
        "gzip_bytes": await _sent_bytes(http, params, GZIP),
        "identity_bytes": await _sent_bytes(http, params, IDENTITY),
    }
    print(json.dumps(line), flush=True)
    return line
