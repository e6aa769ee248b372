"""Run the service as users do (``python -m service serve``) in a child process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from service.dbserver import free_port

ROOT = Path(__file__).resolve().parents[2]


def db_server_command() -> str:
    default = f"{ROOT / '.venv-db' / 'bin' / 'secantusd-py'} --standalone"
    return os.environ.get("LABELSVC_DB_SERVER", default)


def service_env(port: int, **settings: str) -> dict[str, str]:
    """The environment for a service on ``port``: ``LABELSVC_<NAME>`` for each setting.

    Its models run on the CPU unless ``execution_provider`` says otherwise (see
    ``make_settings``).
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("LABELSVC_")}
    env["LABELSVC_EXECUTION_PROVIDER"] = "cpu"
    env["LABELSVC_DB_SERVER"] = db_server_command()
    env["LABELSVC_MODEL_DIR"] = os.environ.get(
        "LABELSVC_MODEL_DIR", str(ROOT.parent / "shared" / "models")
    )
    env["LABELSVC_PORT"] = str(port)
    env.update({f"LABELSVC_{key.upper()}": value for key, value in settings.items()})
    return env


@contextmanager
def start_service(
    env: dict[str, str], *, hangups_ignored: bool = False, **popen: object
) -> Iterator[subprocess.Popen[bytes]]:
    """``python -m service serve``, started as from a terminal, or as ``nohup`` starts it
    (``hangups_ignored``) whatever the test run itself ignores: a run under ``nohup`` or in
    the background of a script would otherwise hand its ignored signals down. Killed at the
    end if a failed test left it running, rather than waited for."""

    def as_started_from_a_terminal() -> None:
        signal.signal(signal.SIGHUP, signal.SIG_IGN if hangups_ignored else signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    process = subprocess.Popen(  # type: ignore[call-overload]
        [sys.executable, "-m", "service", "serve"],
        cwd=ROOT,
        env=env,
        preexec_fn=as_started_from_a_terminal,
        **popen,
    )
    with process:
        try:
            yield process
        finally:
            if process.poll() is None:
                process.kill()


def serve_until_exit(env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``python -m service serve`` expected to exit by itself (a refused start): its output."""
    return subprocess.run(
        [sys.executable, "-m", "service", "serve"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def wait_ready(base: str, process: subprocess.Popen[bytes], timeout: float = 90) -> float:
    """Seconds until ``/readyz`` answered 200; fails if the process exits first."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if process.poll() is not None:
            output = process.stdout.read().decode() if process.stdout else ""
            raise RuntimeError(f"the service exited with {process.returncode}:\n{output}")
        try:
            if httpx.get(base + "/readyz", timeout=2).status_code == 200:
                return time.monotonic() - start
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise RuntimeError("the service did not become ready")


def stop(process: subprocess.Popen[bytes], timeout: float = 60) -> int:
    process.send_signal(signal.SIGTERM)
    return process.wait(timeout=timeout)


@contextmanager
def live_service(**settings: str) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A ready service on a free port; yields its base URL and process, stops it after."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with start_service(service_env(port, **settings)) as process:
        try:
            wait_ready(base, process)
            yield base, process
        finally:
            stop(process)


def fail_upstream(base: str, missing_photo_url: str, request_id: str) -> None:
    """A labeling request the service answers 502 (the image host answers 404), under
    ``request_id``: it leaves a warning about that request in the service's log."""
    failed = httpx.post(
        base + "/v1/labels",
        json={"url": missing_photo_url},
        headers={"X-Request-ID": request_id},
        timeout=30,
    )
    assert failed.status_code == 502, failed.text
