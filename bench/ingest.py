"""Ingest throughput: the running service against the bare in-process pipeline.

The bare baseline runs the service's own ImageAnalyzer (hash, decode, models) over the
evaluation photos read from disk on a thread pool of the same size as the service's
executor: no HTTP, no fetch, no database. The service labels the same photos fetched from
a local HTTP server at concurrency 1, 4 and 16 (a fresh database for each level, so every
photo is analysed). Prints JSON lines: ``ingest`` (ratio = service / bare images/s at the
best concurrency), ``ingest_components`` (mean ms per stage inside the service) and
``cold_start``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from bench.detection_map import model_dir
from bench.harness import database, photo_server, photos, service
from service.analysis import ImageAnalyzer
from service.infer.models import load_detector
from service.settings import Settings

CONCURRENCY = (1, 4, 16)


def bare_images_per_second(files: list[Path], settings: Settings) -> float:
    analyzer = ImageAnalyzer(
        load_detector(settings),
        min_confidence=settings.min_confidence,
        max_pixels=settings.max_pixels,
    )
    blobs = [f.read_bytes() for f in files]

    def work(data: bytes) -> None:
        hashlib.sha256(data).hexdigest()
        analyzer.analyze(data)

    with ThreadPoolExecutor(settings.workers) as pool:
        list(pool.map(work, blobs[:8]))  # warm-up
        start = time.perf_counter()
        list(pool.map(work, blobs))
        return len(blobs) / (time.perf_counter() - start)


async def post_all(base: str, urls: list[str], concurrency: int) -> tuple[float, list[float]]:
    limit = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    async with httpx.AsyncClient(base_url=base, timeout=120) as client:

        async def one(url: str) -> None:
            async with limit:
                start = time.perf_counter()
                response = await client.post("/v1/labels", json={"url": url})
                latencies.append(time.perf_counter() - start)
                if response.status_code != 201:
                    raise RuntimeError(f"{url}: {response.status_code} {response.text[:200]}")

        start = time.perf_counter()
        await asyncio.gather(*(one(url) for url in urls))
        return len(urls) / (time.perf_counter() - start), latencies


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def stage_means_ms(metrics_text: str) -> dict[str, float]:
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    for line in metrics_text.splitlines():
        for suffix, into in (("_sum", sums), ("_count", counts)):
            prefix = f'labelsvc_stage_duration_seconds{suffix}{{stage="'
            if line.startswith(prefix):
                stage = line[len(prefix) :].split('"', 1)[0]
                into[stage] = float(line.rsplit(" ", 1)[1])
    return {k: round(1000 * sums[k] / counts[k], 2) for k in sums if counts.get(k)}


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def main() -> int:
    files = photos()
    settings = Settings(model_dir=model_dir())
    bare = bare_images_per_second(files, settings)
    levels = {}
    components: dict[str, float] = {}
    rss = 0.0
    cold_start = 0.0
    with database() as db, photo_server() as server:
        urls = [server.photo_url(f.name) for f in files]
        for concurrency in CONCURRENCY:
            started = time.perf_counter()
            with service(db.uri, mongodb_db=f"ingest_{concurrency}") as (base, proc):
                cold_start = cold_start or time.perf_counter() - started
                rate, latencies = asyncio.run(post_all(base, urls, concurrency))
                components = stage_means_ms(httpx.get(base + "/metrics").text)
                rss = max(rss, peak_rss_mb(proc.pid))
            levels[concurrency] = {
                "images_per_s": round(rate, 2),
                "p50_ms": round(1000 * statistics.median(latencies), 1),
                "p95_ms": round(1000 * percentile(latencies, 95), 1),
            }
    best = max(levels, key=lambda c: levels[c]["images_per_s"])
    at16 = levels[16]
    fair_p95_ms = 2 * 16 / at16["images_per_s"] * 1000
    print(
        json.dumps(
            {
                "name": "ingest",
                "ratio": round(levels[best]["images_per_s"] / bare, 3),
                "bare_images_per_s": round(bare, 2),
                "best_concurrency": best,
                "levels": levels,
                "p95_at_16_ms": at16["p95_ms"],
                "fair_share_p95_bound_ms": round(fair_p95_ms, 1),
                "p95_within_fair_share": at16["p95_ms"] <= fair_p95_ms,
                "peak_rss_mb": round(rss, 1),
                "images": len(files),
                "workers": settings.workers,
            }
        )
    )
    print(json.dumps({"name": "ingest_components", "ratio": 1.0, "mean_ms": components}))
    print(
        json.dumps({"name": "cold_start", "ratio": 1.0, "seconds_to_ready": round(cold_start, 2)})
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
