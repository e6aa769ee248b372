"""What the benchmarks run against: a local database server, a local photo server and the
service as users run it (``python -m service serve``), all on 127.0.0.1."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager as ContextManager
from contextlib import contextmanager
from pathlib import Path
from subprocess import Popen

import httpx

from bench.detection_map import evalset_dir, model_dir
from service.analysis import ImageAnalyzer
from service.dbserver import LocalDatabaseServer, free_port
from service.executor import BlockingExecutor
from service.infer.batching import BatchPolicy
from service.infer.models import load_models
from service.settings import Settings
from tests.support.process import db_server_command, live_service

REPO = Path(__file__).resolve().parents[1]


def bare_analyzer(settings: Settings, executor: BlockingExecutor | None = None) -> ImageAnalyzer:
    """The service's analysis of one image, models loaded as ``settings`` say: no HTTP, no
    database. With ``executor``, detector batches form on it as in the service."""
    return ImageAnalyzer(
        load_models(settings),
        min_confidence=settings.min_confidence,
        max_pixels=settings.max_pixels,
        batch_runner=None if executor is None else executor.run_admitted,
        detect_batch=BatchPolicy(settings.detect_batch_size, settings.detect_batch_wait_ms),
    )


def photos() -> list[Path]:
    return sorted((evalset_dir() / "images").glob("*.jpg"))


@contextmanager
def database() -> Iterator[LocalDatabaseServer]:
    with tempfile.TemporaryDirectory(prefix="labelsvc-bench-") as tmp:
        server = LocalDatabaseServer(db_server_command(), Path(tmp) / "db")
        server.start()
        try:
            yield server
        finally:
            server.stop()


class PhotoHost:
    """A static file server for the evaluation photos in its own process, like a real host."""

    def __init__(self, base: str, pid: int) -> None:
        self.base = base
        self.pid = pid

    def photo_url(self, name: str) -> str:
        return f"{self.base}/{name}"

    def tagged_url(self, name: str) -> str:
        """The photo with a strong ETag, revalidated with If-None-Match (304 when unchanged)."""
        return f"{self.base}/tagged/{name}"

    def warm_up_url(self, name: str) -> str:
        """The photo as other bytes: a service that labeled it already labels these anew."""
        return f"{self.base}/warm-up/{name}"


@contextmanager
def photo_server() -> Iterator[PhotoHost]:
    port = free_port()
    command = [sys.executable, "-m", "bench.photo_host", str(port), str(evalset_dir() / "images")]
    with subprocess.Popen(
        command,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    ) as proc:
        host = PhotoHost(f"http://127.0.0.1:{port}", proc.pid)
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    httpx.head(host.base + "/", timeout=1)
                    break
                except httpx.TransportError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            yield host
        finally:
            proc.terminate()
            proc.wait(10)


def service(mongodb_uri: str, **settings: str) -> ContextManager[tuple[str, Popen[bytes]]]:
    """The service in its own process, ready; yields its base URL and process."""
    return live_service(
        mongodb_uri=mongodb_uri,
        mongodb_db=settings.pop("mongodb_db", f"bench_{time.time_ns()}"),
        model_dir=str(model_dir()),
        allow_private_urls="1",
        log_level="warning",
        label_rate_per_client="",
        execution_provider="auto",  # CUDA where present, as the bare pipeline runs
        **settings,
    )
