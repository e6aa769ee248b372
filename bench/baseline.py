"""The in-process baselines the running service is measured against (``bench.ingest``).

The bare pipeline is the service's own ImageAnalyzer (hash, decode, every model, score,
caption) over photos held in memory, on an executor of the service's size: no HTTP, no fetch,
no database. Detection alone is the detector by itself over photos decoded beforehand.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from pathlib import Path
from typing import Any

from bench.harness import bare_analyzer
from bench.usage import process_cpu_seconds
from service.decode.image import decode_image
from service.executor import BlockingExecutor, start_request
from service.settings import Settings

# Photos each side (the service or the bare pipeline) labels, untimed, before it is timed.
WARM_UP_PHOTOS = 8


def bare_images_per_second(
    files: list[Path], settings: Settings, concurrency: int
) -> tuple[float, float]:
    """The same analysis on the same sized executor, fed from memory: no HTTP, no database.

    Returns images/s and the CPU milliseconds this process spent per image.
    """
    executor = BlockingExecutor(settings.workers, max_pending=10_000)
    analyzer = bare_analyzer(settings, executor)
    blobs = [f.read_bytes() for f in files]

    async def run_all(batch: list[bytes]) -> float:
        limit = asyncio.Semaphore(concurrency)

        async def one(data: bytes) -> None:
            async with limit:
                start_request()  # as the service does for each labeling request
                hashlib.sha256(data).hexdigest()
                await analyzer.analyze(data, executor)

        start = time.perf_counter()
        await asyncio.gather(*(one(data) for data in batch))
        return time.perf_counter() - start

    try:
        asyncio.run(run_all(blobs[:WARM_UP_PHOTOS]))
        cpu = process_cpu_seconds()
        rate = len(blobs) / asyncio.run(run_all(blobs))
        return rate, 1000 * (process_cpu_seconds() - cpu) / len(blobs)
    finally:
        executor.shutdown()


def detection_alone_images_per_second(
    files: list[Path], settings: Settings, concurrency: int
) -> tuple[float, str]:
    """The detector by itself over the photos decoded beforehand, on an executor of the
    service's size, ``settings.detect_batch_size`` images per run: images/s, and the
    execution provider it ran on."""
    analyzer = bare_analyzer(settings)
    detector, floor = analyzer.detector, analyzer.detection_floor
    images = [
        decode_image(
            f.read_bytes(), max_pixels=settings.max_pixels, target_size=detector.input_size
        ).image
        for f in files
    ]
    executor = BlockingExecutor(settings.workers, max_pending=10_000)

    async def run_all(batch: list[Any]) -> float:
        limit = asyncio.Semaphore(concurrency)

        async def one(images: list[Any]) -> None:
            async with limit:
                await executor.run(detector.detect_batch, images, floor)

        size = settings.detect_batch_size
        start = time.perf_counter()
        await asyncio.gather(*(one(batch[i : i + size]) for i in range(0, len(batch), size)))
        return time.perf_counter() - start

    try:
        asyncio.run(run_all(images[:8]))  # warm-up
        return len(images) / asyncio.run(run_all(images)), detector.provider
    finally:
        executor.shutdown()
