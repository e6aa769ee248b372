"""The service as users run it: a real process with its own database server, over real HTTP."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from service.dbserver import free_port
from tests.conftest import API_KEY, CAT_PHOTO, ROOT
from tests.support.image_server import ImageServer


def start_service(env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "service", "serve"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def wait_ready(base: str, process: subprocess.Popen[bytes], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = process.stdout.read().decode() if process.stdout else ""
            raise AssertionError(f"service exited with {process.returncode}:\n{output}")
        try:
            if httpx.get(base + "/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise AssertionError("service did not become ready")


def stop(process: subprocess.Popen[bytes]) -> int:
    process.send_signal(signal.SIGTERM)
    return process.wait(timeout=60)


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_serve_sigterm_and_restart_keep_the_data(
    tmp_path: Path, model_dir: Path, image_server: ImageServer
) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "LABELSVC_PORT": str(port),
        "LABELSVC_DATA_DIR": str(tmp_path / "var"),
        "LABELSVC_MODEL_DIR": str(model_dir),
        "LABELSVC_ALLOW_PRIVATE_URLS": "1",
        "LABELSVC_BOOTSTRAP_API_KEY": API_KEY,
        "LABELSVC_DB_SERVER": os.environ.get(
            "LABELSVC_DB_SERVER", str(ROOT / ".venv-db" / "bin" / "secantusd-py")
        ),
    }
    env.pop("LABELSVC_MONGODB_URI", None)
    url = image_server.photo_url(CAT_PHOTO, alias="restart")

    with start_service(env) as process:
        try:
            wait_ready(base, process)
            created = httpx.post(base + "/upload", json={"url_or_id": url}, timeout=60)
            assert created.status_code == 200, created.text
            record = created.json()
        finally:
            assert stop(process) == 0
        assert process.stdout is not None
        output = process.stdout.read().decode()
    started = re.search(r"mongodb://127\.0\.0\.1:(\d+)", output)
    assert started, output
    assert not port_open(int(started.group(1))), "the database server outlived the service"

    with start_service(env) as process:
        try:
            wait_ready(base, process)
            again = httpx.get(
                base + f"/v1/records/{record['_id']}", headers={"X-API-Key": API_KEY}, timeout=10
            )
            assert again.status_code == 200
            assert again.json() == record
            relabel = httpx.post(base + "/v1/labels", json={"url": url}, timeout=60)
            assert relabel.status_code == 200 and relabel.json()["_id"] == record["_id"]
        finally:
            assert stop(process) == 0
    assert not port_open(port)
