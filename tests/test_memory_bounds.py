"""Hostile bodies do not grow the service's memory: downloads stop at the byte cap and
bombs are refused from their header, in a real service process."""

from __future__ import annotations

import httpx

from bench.usage import peak_rss_mb
from service.dbserver import LocalDatabaseServer
from tests.support.image_server import ImageServer
from tests.support.process import live_service

CAP = 20_000_000
ROUNDS = 6


def test_hostile_bodies_keep_memory_bounded(
    db_server: LocalDatabaseServer, image_server: ImageServer
) -> None:
    with (
        live_service(
            mongodb_uri=db_server.uri,
            mongodb_db="memory",
            allow_private_urls="1",
            max_image_bytes=str(CAP),
            label_rate_per_client="",
            log_level="warning",
        ) as (base, process),
        httpx.Client(base_url=base, timeout=60) as client,
    ):
        client.post("/v1/labels", json={"url": image_server.photo_url("000000000139.jpg")})
        baseline = peak_rss_mb(process.pid)
        for _ in range(ROUNDS):
            for path, status in (
                ("/endless", 413),
                ("/huge-declared", 413),
                ("/bomb.png", 413),
            ):
                response = client.post("/v1/labels", json={"url": image_server.url(path)})
                assert response.status_code == status, response.text
        peak = peak_rss_mb(process.pid)
        assert client.get("/readyz").status_code == 200
    # One capped download in flight at a time: the peak may grow by a small multiple of
    # the cap (the chunks, the HTTP client's buffers, allocator slack), never with the
    # bytes offered (each /endless response offers gigabytes).
    print(f"\npeak RSS {baseline:.0f} MB before, {peak:.0f} MB after {ROUNDS * 3} hostile bodies")
    assert peak - baseline < 5 * CAP / 1e6
