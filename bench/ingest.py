"""Ingest throughput: the running service against the bare in-process pipeline.

The bare baseline (``bench.baseline``) runs the service's own ImageAnalyzer (hash, decode,
every model, score, caption) over the evaluation photos held in memory, on an executor of the
same size as the service's, at the same concurrency levels (the best one counts): no HTTP, no
fetch, no database. The service labels the same photos fetched from a local HTTP server at
concurrency 1, 4 and 16 (a fresh database for each run, so every photo is analysed).

That first pass only picks each side's best concurrency. Both sides are then measured
``REPEATS`` times afresh at it, alternately, and the ratio compares the medians of those runs:
on a noisy shared machine one run of either side can be off by several percent, and reusing
the run that won the pick would favour the side whose levels lie closer together.

Each side is warmed up the same way before it is timed: ``WARM_UP_PHOTOS`` photos at the
run's concurrency (for the service, the photos as other bytes, so the timed photos are still
new to it), so that neither pays its first connections and first uses inside the timing.

The load generator is aiohttp (``bench.load``).

Prints JSON lines: ``ingest`` (ratio = service / bare images/s at the best concurrency, with
the CPU milliseconds per image of each process involved: the service's event loop and its
blocking work, the database, the photo host, the HTTP client, and ``cpu_ratio``: the bare
pipeline's CPU per image over the service's in the runs the ratio compares),
``ingest_batch`` (the same photos 16 to a ``POST /v1/labels/batch`` request, one request at
a time, against the same bare figure), ``ingest_upload`` (the same photos sent as the bodies of
``POST /v1/labels/upload`` at concurrency 16, against the same bare figure: no download),
``ingest_components`` (mean
ms per stage inside the service), ``cold_start``, ``second_scale_cost`` (throughput and latency
with ``LABELSVC_SECOND_SCALE=1``, against the default), ``labeling_latency`` (median latency at
concurrency 1 with every analysis on, over the same service running detection only) and
``detection_alone`` (the detector by itself on the decoded photos, on the same executor:
images/s, against which the service's end-to-end images/s are set). Each line that measures
models names the execution provider they ran on (``RUNTIME=gpu`` runs them on CUDA).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path
from typing import Any

import httpx

from bench.baseline import (
    WARM_UP_PHOTOS,
    bare_images_per_second,
    detection_alone_images_per_second,
)
from bench.detection_map import model_dir
from bench.harness import PhotoHost, database, photo_server, photos, service
from bench.load import post_all, post_batches, upload_all, warm_up
from bench.usage import CpuMeter, peak_rss_mb, pss_mb
from service.api.schemas import MAX_BATCH_ITEMS
from service.dbserver import LocalDatabaseServer
from service.settings import Settings

CONCURRENCY = (1, 4, 16)
# Alternating runs of the service and the bare pipeline at their best concurrency.
REPEATS = 5


def service_provider(base: str) -> str:
    """The execution provider of the running service's detector, as ``/readyz`` reports it."""
    models = httpx.get(base + "/readyz").json()["models"]
    return str(models[0]["provider"])


def service_images_per_second(
    db: LocalDatabaseServer,
    host: PhotoHost,
    files: list[Path],
    concurrency: int,
    run: str,
    **settings: str,
) -> tuple[float, float]:
    """A fresh service on a fresh database, warmed up, labeling every photo: images/s, and
    the CPU milliseconds per image of every process the run uses (``CpuMeter``)."""
    assert db.pid is not None
    with service(db.uri, mongodb_db=f"ingest_{concurrency}_{run}", **settings) as (base, proc):
        warm_up(base, host, files, concurrency)
        urls = [host.photo_url(f.name) for f in files]
        meter = CpuMeter(proc.pid, db.pid, host.pid)
        rate = asyncio.run(post_all(base, urls, concurrency))[0]
        return rate, meter.per_image_ms(len(urls))["total"]


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Ingest throughput: service against bare.")
    parser.add_argument(
        "--detect-batch-size",
        type=int,
        default=1,
        help="LABELSVC_DETECT_BATCH_SIZE for the service and the bare pipeline alike",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=Settings().workers,
        help="LABELSVC_WORKERS (executor threads) for the service and the bare pipeline alike",
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        help="LABELSVC_PROCESSES for the service (the bare pipeline stays one process)",
    )
    parser.add_argument(
        "--second-opinion-int8",
        action="store_true",
        help="LABELSVC_SECOND_OPINION_INT8 for the service and the bare pipeline alike",
    )
    args = parser.parse_args(argv)
    files = photos()
    settings = Settings(
        model_dir=model_dir(),
        detect_batch_size=args.detect_batch_size,
        workers=args.workers,
        second_opinion_int8=args.second_opinion_int8,
    )
    serving = {
        "detect_batch_size": str(args.detect_batch_size),
        "workers": str(args.workers),
        "processes": str(args.processes),
        "second_opinion_int8": "1" if args.second_opinion_int8 else "0",
    }
    bare_runs = {c: bare_images_per_second(files, settings, c) for c in CONCURRENCY}
    detect_rate, detect_provider = detection_alone_images_per_second(files, settings, 16)
    provider = ""
    full_ms, detect_ms, scaled_ms, scaled_rate = 0.0, 0.0, 0.0, 0.0
    levels: dict[int, dict[str, Any]] = {}
    components: dict[str, float] = {}
    rss = pss = 0.0
    cold_start = 0.0
    with database() as db, photo_server() as server:
        assert db.pid is not None
        urls = [server.photo_url(f.name) for f in files]
        for concurrency in CONCURRENCY:
            started = time.perf_counter()
            with service(db.uri, mongodb_db=f"ingest_{concurrency}", **serving) as (base, proc):
                cold_start = cold_start or time.perf_counter() - started
                provider = provider or service_provider(base)
                warm_up(base, server, files, concurrency)
                meter = CpuMeter(proc.pid, db.pid, server.pid)
                rate, latencies = asyncio.run(post_all(base, urls, concurrency))
                cpu = meter.per_image_ms(len(urls))
                shares = meter.serving_process_shares()
                components = stage_means_ms(httpx.get(base + "/metrics").text)
                rss = max(rss, peak_rss_mb(proc.pid))
                pss = max(pss, pss_mb(proc.pid))
            if concurrency == 1:
                full_ms = statistics.median(latencies) * 1000
                only = {
                    "mongodb_db": "ingest_detect_only",
                    "second_opinion": "0",
                    "scene_tags": "0",
                }
                with service(db.uri, **only, **serving) as (base, _):
                    warm_up(base, server, files, 1)
                    _, detect_latencies = asyncio.run(post_all(base, urls, 1))
                detect_ms = statistics.median(detect_latencies) * 1000
                # The optional second scale for the label-quality estimate: what it costs.
                scaled = {"mongodb_db": "ingest_second_scale", "second_scale": "1"}
                with service(db.uri, **scaled, **serving) as (base, _):
                    warm_up(base, server, files, 1)
                    _, scaled_latencies = asyncio.run(post_all(base, urls, 1))
                scaled["mongodb_db"] = "ingest_second_scale_16"
                with service(db.uri, **scaled, **serving) as (base, _):
                    warm_up(base, server, files, 16)
                    scaled_rate, _ = asyncio.run(post_all(base, urls, 16))
                scaled_ms = statistics.median(scaled_latencies) * 1000
            levels[concurrency] = {
                "images_per_s": round(rate, 2),
                "p50_ms": round(1000 * statistics.median(latencies), 1),
                "p95_ms": round(1000 * percentile(latencies, 95), 1),
                "cpu_ms_per_image": cpu,
            }
            if shares:
                levels[concurrency]["serving_process_cpu_shares"] = shares
        # The batch endpoint: 16 images a request, one request at a time.
        with service(db.uri, mongodb_db="ingest_batch", **serving) as (base, proc):
            warm_up(base, server, files, MAX_BATCH_ITEMS)
            meter = CpuMeter(proc.pid, db.pid, server.pid)
            batch_rate, batch_latencies = asyncio.run(post_batches(base, urls, MAX_BATCH_ITEMS))
            batch_cpu = meter.per_image_ms(len(urls))
        # Uploads: the same photos as request bodies, sent from memory, at concurrency 16.
        with service(db.uri, mongodb_db="ingest_upload", **serving) as (base, proc):
            warm_bodies = [f.read_bytes() + b"\0" for f in files[:WARM_UP_PHOTOS]]
            asyncio.run(upload_all(base, warm_bodies, 16))
            meter = CpuMeter(proc.pid, db.pid, server.pid)
            upload_rate, upload_latencies = asyncio.run(
                upload_all(base, [f.read_bytes() for f in files], 16)
            )
            upload_cpu = meter.per_image_ms(len(files))
        best = max(levels, key=lambda c: levels[c]["images_per_s"])
        best_bare = max(bare_runs, key=lambda c: bare_runs[c][0])
        service_runs: list[tuple[float, float]] = []
        bare_runs_at_best: list[tuple[float, float]] = []
        for repeat in range(REPEATS):
            bare_runs_at_best.append(bare_images_per_second(files, settings, best_bare))
            service_runs.append(
                service_images_per_second(db, server, files, best, f"again_{repeat}", **serving)
            )
    service_rates = [rate for rate, _ in service_runs]
    bare_rates = [rate for rate, _ in bare_runs_at_best]
    service_rate = statistics.median(service_rates)
    bare = statistics.median(bare_rates)
    service_cpu = statistics.median(cpu for _, cpu in service_runs)
    bare_cpu = statistics.median(cpu for _, cpu in bare_runs_at_best)
    at16 = levels[16]
    fair_p95_ms = 2 * 16 / at16["images_per_s"] * 1000
    print(
        json.dumps(
            {
                "name": "ingest",
                "ratio": round(service_rate / bare, 3),
                "images_per_s": round(service_rate, 2),
                "bare_images_per_s": round(bare, 2),
                "best_concurrency": best,
                "bare_best_concurrency": best_bare,
                "runs_at_best": {
                    "service": [round(rate, 2) for rate in service_rates],
                    "bare": [round(rate, 2) for rate in bare_rates],
                },
                "levels": levels,
                "bare_levels": {c: round(rate, 2) for c, (rate, _) in bare_runs.items()},
                "p95_at_16_ms": at16["p95_ms"],
                "fair_share_p95_bound_ms": round(fair_p95_ms, 1),
                "p95_within_fair_share": at16["p95_ms"] <= fair_p95_ms,
                "bare_cpu_ms_per_image_at_16": round(bare_runs[16][1], 1),
                # CPU per image of every process involved, medians over the same runs as the
                # ratio: with every core busy on both sides, the ratio follows this one.
                "cpu_ms_per_image_at_best": {
                    "service": round(service_cpu, 1),
                    "bare": round(bare_cpu, 1),
                },
                "cpu_ratio": round(bare_cpu / service_cpu, 3),
                "peak_rss_mb": round(rss, 1),
                # With several processes the peak above counts shared pages once per process.
                "pss_mb_after_load": round(pss, 1),
                "images": len(files),
                "workers": settings.workers,
                "processes": args.processes,
                "detect_batch_size": settings.detect_batch_size,
                "second_opinion_int8": settings.second_opinion_int8,
                "provider": provider,
            }
        )
    )
    print(
        json.dumps(
            {
                "name": "ingest_batch",
                "ratio": round(batch_rate / bare, 3),
                "images_per_s": round(batch_rate, 2),
                "bare_images_per_s": round(bare, 2),
                "single_requests_at_16_images_per_s": at16["images_per_s"],
                "items_per_batch": MAX_BATCH_ITEMS,
                "p50_ms_per_batch": round(1000 * statistics.median(batch_latencies), 1),
                "cpu_ms_per_image": batch_cpu,
            }
        )
    )
    print(
        json.dumps(
            {
                "name": "ingest_upload",
                "ratio": round(upload_rate / bare, 3),
                "images_per_s": round(upload_rate, 2),
                "bare_images_per_s": round(bare, 2),
                "url_requests_at_16_images_per_s": at16["images_per_s"],
                "concurrency": 16,
                "p50_ms": round(1000 * statistics.median(upload_latencies), 1),
                "p95_ms": round(1000 * percentile(upload_latencies, 95), 1),
                "cpu_ms_per_image": upload_cpu,
            }
        )
    )
    print(json.dumps({"name": "ingest_components", "ratio": 1.0, "mean_ms": components}))
    print(
        json.dumps(
            {
                "name": "detection_alone",
                "ratio": round(levels[16]["images_per_s"] / detect_rate, 3),
                "images_per_s": round(detect_rate, 2),
                "end_to_end_images_per_s_at_16": levels[16]["images_per_s"],
                "concurrency": 16,
                "provider": detect_provider,
            }
        )
    )
    print(
        json.dumps({"name": "cold_start", "ratio": 1.0, "seconds_to_ready": round(cold_start, 2)})
    )
    print(
        json.dumps(
            {
                "name": "labeling_latency",
                "ratio": round(full_ms / detect_ms, 3),
                "p50_ms_everything": round(full_ms, 1),
                "p50_ms_detection_only": round(detect_ms, 1),
                "concurrency": 1,
            }
        )
    )
    print(
        json.dumps(
            {
                "name": "second_scale_cost",
                "ratio": round(scaled_rate / levels[16]["images_per_s"], 3),
                "images_per_s_at_16": round(scaled_rate, 2),
                "images_per_s_at_16_default": levels[16]["images_per_s"],
                "p50_ms_at_1": round(scaled_ms, 1),
                "latency_over_detection_only": round(scaled_ms / detect_ms, 3),
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
