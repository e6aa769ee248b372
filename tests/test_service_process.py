"""The service as users run it: a real process with its own database server, over real HTTP."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from service.dbserver import LocalDatabaseServer, free_port
from tests.conftest import API_KEY, CAT_PHOTO
from tests.infer.test_captioner import FIXTURES as CAPTIONERS
from tests.support.image_server import ImageServer
from tests.support.process import (
    ROOT,
    fail_upstream,
    live_service,
    serve_until_exit,
    service_env,
    start_service,
    stop,
    wait_ready,
)


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def assert_stopped_cleanly(output: str) -> None:
    """No request failed inside the server, and the database it started is gone too."""
    assert "Exception in ASGI application" not in output
    started = re.search(r"mongodb://127\.0\.0\.1:(\d+)", output)
    assert started, output
    assert not port_open(int(started.group(1))), "the database server outlived the service"


def test_serve_sigterm_and_restart_keep_the_data(
    tmp_path: Path, model_dir: Path, image_server: ImageServer
) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = service_env(
        port,
        data_dir=str(tmp_path / "var"),
        model_dir=str(model_dir),
        allow_private_urls="1",
        bootstrap_api_key=API_KEY,
    )
    url = image_server.photo_url(CAT_PHOTO, alias="restart")

    with start_service(env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as process:
        try:
            wait_ready(base, process)
            created = httpx.post(base + "/upload", json={"url_or_id": url}, timeout=60)
            assert created.status_code == 200, created.text
            record = created.json()
            # A Cortex-style client: query with the RapidAPI header, read output and length.
            page = httpx.get(
                base + "/get-labeled-data",
                params={
                    "page": 1,
                    "q": '{"object_analysis": {"$elemMatch": {"$elemMatch": '
                    '{"classname": "cat"}}}}',
                },
                headers={"X-RapidAPI-Key": API_KEY},
                timeout=10,
            ).json()
            assert page["length"] == 1 and page["output"][0]["_id"] == record["_id"]
            fail_upstream(base, image_server.url("/no-such-photo.jpg"), "restart-502")
        finally:
            assert stop(process) == 0
        assert process.stdout is not None
        output = process.stdout.read().decode()
        assert_stopped_cleanly(output)
        assert f"serving the API on http://127.0.0.1:{port}\n" in output
        # Its log lines about a request end with the request's id.
        assert "POST /v1/labels -> 502 upstream-error (request restart-502)\n" in output

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


def test_sighup_stops_the_service_and_its_database(tmp_path: Path, model_dir: Path) -> None:
    # The terminal of `make run` closing: nothing may be left holding the data directory.
    port = free_port()
    env = service_env(port, data_dir=str(tmp_path / "var"), model_dir=str(model_dir))
    with start_service(env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as process:
        wait_ready(f"http://127.0.0.1:{port}", process)
        # HEAD, then GET on the same kept-alive connection: the server knew no body followed.
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            head = client.head("/healthz")
            assert head.status_code == 200 and head.content == b""
            assert client.get("/healthz").status_code == 200
        process.send_signal(signal.SIGHUP)
        assert process.wait(timeout=60) == 0
        assert process.stdout is not None
        assert_stopped_cleanly(process.stdout.read().decode())


def test_a_sigkilled_launcher_takes_its_database_server_with_it(
    tmp_path: Path, model_dir: Path
) -> None:
    """SIGKILL (the OOM killer) gives the launcher no chance to stop its database server: the
    kernel stops it instead, and the next start finds the storage free."""
    port = free_port()
    env = service_env(port, data_dir=str(tmp_path / "var"), model_dir=str(model_dir))
    base = f"http://127.0.0.1:{port}"
    with start_service(env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as process:
        wait_ready(base, process)
        database = int((tmp_path / "var" / "db.pid").read_text())
        process.kill()
        process.wait(timeout=30)
    deadline = time.monotonic() + 30
    while Path(f"/proc/{database}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not Path(f"/proc/{database}").exists(), "the database server outlived the launcher"
    with start_service(env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as process:
        try:
            wait_ready(base, process)
        finally:
            assert stop(process) == 0
        assert process.stdout is not None
        assert_stopped_cleanly(process.stdout.read().decode())


def test_a_second_start_on_the_same_storage_is_refused(tmp_path: Path, model_dir: Path) -> None:
    """`make run` typed twice: the second start must leave the first service's database
    alone, and say why it does not start."""
    first_port = free_port()
    data_dir = str(tmp_path / "var")
    base = f"http://127.0.0.1:{first_port}"
    with start_service(service_env(first_port, data_dir=data_dir, model_dir=str(model_dir))) as a:
        try:
            wait_ready(base, a)
            # Port 0: a port picked here, unbound, could meanwhile go to the first
            # service's database, and the refusal would then be for the port.
            second = serve_until_exit(service_env(0, data_dir=data_dir, model_dir=str(model_dir)))
            assert second.returncode == 1
            assert "another service is running on the database storage" in second.stderr
            assert httpx.get(base + "/readyz", timeout=10).status_code == 200
        finally:
            assert stop(a) == 0


def test_a_service_started_under_nohup_outlives_a_hangup(tmp_path: Path, model_dir: Path) -> None:
    port = free_port()
    env = service_env(port, data_dir=str(tmp_path / "var"), model_dir=str(model_dir))
    base = f"http://127.0.0.1:{port}"

    with start_service(env, hangups_ignored=True) as process:
        try:
            wait_ready(base, process)
            process.send_signal(signal.SIGHUP)
            time.sleep(1)
            assert process.poll() is None
            assert httpx.get(base + "/readyz", timeout=10).status_code == 200
        finally:
            assert stop(process) == 0


def test_a_missing_model_is_one_line_before_anything_starts(tmp_path: Path) -> None:
    refused = serve_until_exit(
        service_env(free_port(), data_dir=str(tmp_path / "var"), model_dir=str(tmp_path))
    )
    assert refused.returncode == 2
    assert refused.stderr.startswith("configuration error: model file yolox_nano.onnx not found")
    assert refused.stderr.count("\n") == 1, refused.stderr
    assert not (tmp_path / "var").exists()  # no database was started


def test_forwarded_addresses_are_believed_only_from_configured_proxies(
    db_server: LocalDatabaseServer, model_dir: Path
) -> None:
    """uvicorn would believe X-Forwarded-For from loopback: a client behind a same-host proxy
    that passes the header through could then pick its own rate-limit bucket."""

    def statuses(base: str) -> list[int]:
        # Refused after the rate limit (400), or by it (429); each "from" a new address.
        return [
            httpx.post(
                base + "/v1/labels",
                json={"url": "ftp://example.com/a.jpg"},
                headers={"X-Forwarded-For": f"198.51.100.{i}"},
                timeout=10,
            ).status_code
            for i in range(3)
        ]

    settings = {
        "mongodb_uri": db_server.uri,
        "model_dir": str(model_dir),
        "label_rate_per_client": "1/min",
        "log_level": "warning",
    }
    with live_service(**settings) as (base, _):
        assert statuses(base) == [400, 429, 429]  # one client: the peer
    # A network written with its host bits (as `ip addr` prints it) is that network.
    trusted = "10.9.9.9, 127.0.0.1/8"
    with live_service(**settings, forwarded_allow_ips=trusted) as (base, _):
        assert statuses(base) == [400, 400, 400]  # a trusted proxy: three clients


@pytest.mark.parametrize("processes", ["1", "2"])
def test_a_port_in_use_is_one_line_before_the_database_starts(
    tmp_path: Path, model_dir: Path, processes: str
) -> None:
    """The API's port is bound before the local database server picks a free one, so the
    two can never collide, and a taken port stops the start before a database is spawned.
    Several processes, which share the port among themselves, share it with nothing else."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = service_env(
            port, data_dir=str(tmp_path / "var"), model_dir=str(model_dir), processes=processes
        )
        refused = serve_until_exit(env)
    assert refused.returncode == 1, refused.stderr[-2000:]
    errors = [line for line in refused.stderr.splitlines() if "error" in line.lower()]
    assert errors == [f"error: cannot listen on 127.0.0.1:{port}: Address already in use"]
    assert not (tmp_path / "var").exists()  # no database was started


def captioner_export_with(tmp_path: Path, name: str, content: bytes) -> Path:
    """The tiny test captioner export with file ``name`` replaced, and listed with its new
    digest: the export checks out, so only loading or running it can tell."""
    export = tmp_path / "captioner"
    shutil.copytree(CAPTIONERS / "vit-gpt2-tiny", export)
    (export / name).write_bytes(content)
    info = json.loads((export / "captioner.json").read_text())
    info["files"][name] = hashlib.sha256(content).hexdigest()
    (export / "captioner.json").write_text(json.dumps(info))
    return export


def captioner_the_runtime_refuses(tmp_path: Path) -> Path:
    return captioner_export_with(tmp_path, "decoder.onnx", b"not an onnx graph")


def captioner_that_fails_its_first_run(tmp_path: Path) -> Path:
    """Its preprocessor.json sizes images for another encoder (which takes 32x32)."""
    preprocessor = json.loads((CAPTIONERS / "vit-gpt2-tiny" / "preprocessor.json").read_text())
    preprocessor["width"] = preprocessor["height"] = 48
    return captioner_export_with(tmp_path, "preprocessor.json", json.dumps(preprocessor).encode())


@pytest.mark.parametrize(
    ("broken", "error", "detail"),
    [
        (
            captioner_the_runtime_refuses,
            "cannot load model {export}/decoder.onnx",
            "Protobuf parsing failed",
        ),
        (
            captioner_that_fails_its_first_run,
            "captioner {export} on CPUExecutionProvider failed its warm-up run:",
            "Expected: 32",
        ),
    ],
)
def test_a_captioner_that_cannot_load_or_run_is_one_line_before_the_database_starts(
    tmp_path: Path, model_dir: Path, broken: Callable[[Path], Path], error: str, detail: str
) -> None:
    export = broken(tmp_path)
    env = service_env(
        free_port(),
        data_dir=str(tmp_path / "var"),
        model_dir=str(model_dir),
        captioner_dir=str(export),
    )
    refused = serve_until_exit(env)
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert "Traceback" not in refused.stderr, refused.stderr[-2000:]
    errors = [line for line in refused.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, refused.stderr[-2000:]
    assert errors[0].startswith("configuration error: " + error.format(export=export))
    assert detail in errors[0]  # the runtime's own words, on the same line
    assert not (tmp_path / "var").exists()  # no database was started


def test_a_sigterm_while_the_app_is_built_stops_the_service(
    db_server: LocalDatabaseServer, model_dir: Path
) -> None:
    """A stop issued right after a start (a restart loop, `compose up` then `down`) lands
    before uvicorn has its own handlers: the launcher must not go on to serve."""
    script = (
        "import os, signal, sys\n"
        "import service.launcher as launcher\n"
        "build = launcher.create_app\n"
        "def build_then_stopped(*args):\n"
        "    app = build(*args)\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    return app\n"
        "launcher.create_app = build_then_stopped\n"
        "from service.__main__ import main\n"
        "sys.exit(main(['serve']))\n"
    )
    env = service_env(free_port(), mongodb_uri=db_server.uri, model_dir=str(model_dir))
    stopped = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, timeout=60
    )
    assert stopped.returncode == 0, stopped.stderr.decode()[-2000:]
    assert b"serving the API on" not in stopped.stderr
