"""What the benchmarks run against: a local database server, a local photo server and the
service as users run it (``python -m service serve``), all on 127.0.0.1."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from bench.detection_map import evalset_dir, model_dir
from service.dbserver import LocalDatabaseServer, free_port

REPO = Path(__file__).resolve().parents[1]


def db_server_command() -> str:
    return os.environ.get("LABELSVC_DB_SERVER", str(REPO / ".venv-db" / "bin" / "secantusd-py"))


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

    def __init__(self, base: str) -> None:
        self.base = base

    def photo_url(self, name: str) -> str:
        return f"{self.base}/{name}"


@contextmanager
def photo_server() -> Iterator[PhotoHost]:
    port = free_port()
    command = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"]
    with subprocess.Popen(
        command,
        cwd=evalset_dir() / "images",
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    ) as proc:
        host = PhotoHost(f"http://127.0.0.1:{port}")
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


@contextmanager
def service(mongodb_uri: str, **settings: str) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """The service in its own process; yields its base URL once ``/readyz`` answers 200."""
    port = free_port()
    env = {
        **os.environ,
        "LABELSVC_PORT": str(port),
        "LABELSVC_MONGODB_URI": mongodb_uri,
        "LABELSVC_MONGODB_DB": f"bench_{port}",
        "LABELSVC_MODEL_DIR": str(model_dir()),
        "LABELSVC_ALLOW_PRIVATE_URLS": "1",
        "LABELSVC_LOG_LEVEL": "warning",
        **{f"LABELSVC_{key.upper()}": value for key, value in settings.items()},
    }
    base = f"http://127.0.0.1:{port}"
    with subprocess.Popen([sys.executable, "-m", "service", "serve"], cwd=REPO, env=env) as proc:
        try:
            wait_ready(base, proc)
            yield base, proc
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)


def wait_ready(base: str, proc: subprocess.Popen[bytes], timeout: float = 120) -> float:
    """Seconds until ``/readyz`` answered 200."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"the service exited with {proc.returncode}")
        try:
            if httpx.get(base + "/readyz", timeout=2).status_code == 200:
                return time.monotonic() - start
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise RuntimeError("the service did not become ready")
