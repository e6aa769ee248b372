"""Crash safety under load: 2,000 labeling requests at concurrency 32 over the evaluation
photos, the service killed with SIGKILL mid-run and restarted on the same database.

Every acknowledged POST must be in the database afterwards (the record, and the URL on
it), with one record per distinct image. Requests cut off by the kill were never
acknowledged; they are sent again after the restart, as a client would.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from pymongo import MongoClient

from service.dbserver import LocalDatabaseServer, free_port
from tests.conftest import database_server
from tests.support.image_server import ImageServer
from tests.support.process import service_env, start_service, wait_ready

TOTAL = int(os.environ.get("LABELSVC_SOAK_REQUESTS", "2000"))
CONCURRENCY = 32
KILL_AFTER = TOTAL // 2


@dataclass
class Tally:
    acknowledged: dict[str, str] = field(default_factory=dict)  # url -> record id
    unavailable: int = 0  # 503s: backpressure or the database, both with Retry-After
    interrupted: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    sent: int = 0


async def send(base: str, urls: list[str], tally: Tally, kill_at: int | None, pid: int) -> None:
    queue: asyncio.Queue[str] = asyncio.Queue()
    for url in urls:
        queue.put_nowait(url)
    limits = httpx.Limits(max_connections=CONCURRENCY)
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as client:

        async def worker() -> None:
            while not queue.empty():
                url = queue.get_nowait()
                tally.sent += 1
                if kill_at is not None and tally.sent == kill_at:
                    os.kill(pid, signal.SIGKILL)
                try:
                    response = await client.post("/v1/labels", json={"url": url})
                except httpx.TransportError:
                    tally.interrupted.append(url)  # the service is gone: stop this worker
                    return
                if response.status_code in (200, 201):
                    tally.acknowledged[url] = response.json()["_id"]
                elif response.status_code == 503:
                    tally.unavailable += 1
                    queue.put_nowait(url)  # deliberate 503: retry later, as a client would
                    await asyncio.sleep(0.05)
                else:
                    tally.errors.append(f"{url}: {response.status_code} {response.text[:200]}")

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))


@pytest.fixture
def fresh_db_server(tmp_path: Path) -> Iterator[LocalDatabaseServer]:
    """A database server of its own. After the rest of the suite has run against the shared
    development server, its writes under this load stall for tens of seconds after the kill
    (threads queued on its per-collection lock while the one holding it waits inside the
    storage engine); that server's state, not the service, would set this test's duration."""
    with database_server(tmp_path / "db") as server:
        yield server


def test_kill_mid_run_loses_no_acknowledged_record(
    fresh_db_server: LocalDatabaseServer, image_server: ImageServer, evalset_dir: Path
) -> None:
    photos = sorted(p.name for p in (evalset_dir / "images").glob("*.jpg"))
    urls = [image_server.photo_url(photos[i % len(photos)], alias=f"r{i}") for i in range(TOTAL)]
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    database = f"soak_{port}"
    env = service_env(
        port,
        mongodb_uri=fresh_db_server.uri,
        mongodb_db=database,
        allow_private_urls="1",
        log_level="warning",
        label_rate_per_client="",
    )
    tally = Tally()
    started = time.monotonic()

    with start_service(env) as first:
        wait_ready(base, first)
        asyncio.run(send(base, urls, tally, kill_at=KILL_AFTER, pid=first.pid))
        assert first.wait(10) == -signal.SIGKILL
    with start_service(env) as second:
        try:
            restart = wait_ready(base, second)
            retry = [u for u in urls if u not in tally.acknowledged]
            asyncio.run(send(base, retry, tally, kill_at=None, pid=second.pid))
        finally:
            second.send_signal(signal.SIGTERM)
            second.wait(60)
    elapsed = time.monotonic() - started

    with MongoClient(fresh_db_server.uri) as client:
        records = list(client[database]["records"].find({}, {"hash": 1, "urls": 1}))
    by_id = {r["_id"]: r for r in records}
    lost = [
        u for u, rid in tally.acknowledged.items() if u not in by_id.get(rid, {}).get("urls", [])
    ]
    summary = {
        "sent": tally.sent,
        "acknowledged": len(tally.acknowledged),
        "answered 503 (retried)": tally.unavailable,
        "cut off by the kill": len(tally.interrupted),
        "stored records": len(records),
        "lost": len(lost),
        "errors": len(tally.errors),
        "restart to ready s": round(restart, 2),
        "seconds in all": round(elapsed, 1),
    }
    print("\nsoak: " + ", ".join(f"{k} {v}" for k, v in summary.items()))
    assert tally.errors == []
    assert len(tally.acknowledged) == TOTAL
    assert lost == []
    assert len(records) == len({r["hash"] for r in records}) == len(photos)
