"""Several serving processes behind one port (``LABELSVC_PROCESSES``), run as users run them."""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import uvicorn
from uvicorn.supervisors.multiprocess import SIGNALS
from uvicorn.supervisors.multiprocess import Process as UvicornProcess

from service.app import create_app
from service.dbserver import free_port
from service.observability import SHARED_DIR_VARIABLE
from service.processes import Supervisor, leave_no_metrics_behind
from service.settings import ConfigError, Settings
from tests.support.image_server import ImageServer
from tests.support.process import serve_until_exit, service_env, start_service, stop, wait_ready
from tests.test_service_process import assert_stopped_cleanly, captioner_the_runtime_refuses


def serving_processes(pid: int) -> set[int]:
    """The serving processes the service ``pid`` started (not its database or helpers)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    serving = set()
    for child in map(int, children):
        try:
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                serving.add(child)
        except FileNotFoundError:  # gone meanwhile
            pass
    return serving


def wait_for(condition: object, timeout: float = 60) -> None:
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def metrics_dirs(tmp: Path) -> set[Path]:
    """The directories where serving processes share their metrics (``TMPDIR=tmp``)."""
    return set(tmp.glob("labelsvc-metrics-*"))


def connections_by_process(port: int, pids: set[int]) -> dict[int, int]:
    """How many established connections to ``port`` each of ``pids`` holds (from /proc)."""
    established = set()
    tables = [Path(table) for table in ("/proc/net/tcp", "/proc/net/tcp6")]
    for table in filter(Path.exists, tables):  # tcp6 is missing where IPv6 is turned off
        for row in table.read_text().splitlines()[1:]:
            fields = row.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "01":
                established.add(f"socket:[{fields[9]}]")
    counts = {}
    for pid in pids:
        counts[pid] = 0
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(FileNotFoundError):  # closed meanwhile
                counts[pid] += os.readlink(fd) in established
    return counts


def spread_of_connections(base: str, port: int, pids: set[int], count: int = 16) -> dict[int, int]:
    """Opens ``count`` connections, each answered once, and counts them by the process holding
    it."""
    clients = [httpx.Client(base_url=base, timeout=30) for _ in range(count)]
    try:
        with ThreadPoolExecutor(count) as pool:
            statuses = list(pool.map(lambda client: client.get("/readyz").status_code, clients))
        assert statuses == [200] * count
        return connections_by_process(port, pids)
    finally:
        for client in clients:
            client.close()


def records_created(base: str) -> float:
    text = httpx.get(base + "/metrics", timeout=10).text
    found = re.search(r"^labelsvc_records_created_total (\S+)$", text, re.MULTILINE)
    assert found, text
    return float(found.group(1))


def two_processes(tmp_path: Path, model_dir: Path) -> tuple[int, str, dict[str, str]]:
    """A free port, its base URL, and the environment of a service of two processes on it
    that may fetch images from this machine."""
    port = free_port()
    env = service_env(
        port,
        data_dir=str(tmp_path / "var"),
        model_dir=str(model_dir),
        allow_private_urls="1",
        processes="2",
    )
    return port, f"http://127.0.0.1:{port}", env


def test_processes_share_the_port_and_the_metrics_and_one_that_dies_is_replaced(
    tmp_path: Path, model_dir: Path, evalset_dir: Path, image_server: ImageServer
) -> None:
    port, base, env = two_processes(tmp_path, model_dir)
    env["TMPDIR"] = str(tmp_path)
    photos = sorted(p.name for p in (evalset_dir / "images").glob("*.jpg"))[:7]
    urls = [image_server.photo_url(name) for name in photos]

    def label(url: str) -> int:
        return httpx.post(base + "/v1/labels", json={"url": url}, timeout=60).status_code

    with start_service(env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as process:
        try:
            wait_ready(base, process)
            assert len(metrics_dirs(tmp_path)) == 1
            wait_for(lambda: len(serving_processes(process.pid)) == 2)
            with ThreadPoolExecutor(6) as pool:
                assert list(pool.map(label, urls[:6])) == [201] * 6
            # Whichever process answers the scrape counts what every process did.
            assert [records_created(base) for _ in range(4)] == [6.0] * 4
            # Each process has its own sockets on the port, and the kernel spreads connections
            # over them: one of two getting none of 16 by chance is 1 in 2^15.
            first = serving_processes(process.pid)
            spread = spread_of_connections(base, port, first)
            assert sum(spread.values()) == 16 and min(spread.values()) > 0, spread

            os.kill(min(first), signal.SIGKILL)
            wait_for(lambda: len(serving_processes(process.pid) - first) == 1)
            wait_ready(base, process)
            assert label(urls[6]) == 201
            # The replacement accepts on the sockets of the process it replaces: connections
            # hashed to them are answered, none waits on sockets nobody accepts on.
            spread = spread_of_connections(base, port, serving_processes(process.pid))
            assert sum(spread.values()) == 16 and min(spread.values()) > 0, spread
            # The killed process's counts stay in the totals.
            assert [records_created(base) for _ in range(4)] == [7.0] * 4
            survivors = serving_processes(process.pid)
        finally:
            assert stop(process) == 0
        assert process.stdout is not None
        output = process.stdout.read().decode()
    assert_stopped_cleanly(output)
    assert f"starting 2 serving processes on http://127.0.0.1:{port}\n" in output
    for pid in survivors:
        assert not Path(f"/proc/{pid}").exists()
    assert not metrics_dirs(tmp_path)


def test_ttin_adds_a_process_on_sockets_of_its_own_and_ttou_takes_one_away(
    tmp_path: Path, model_dir: Path
) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = service_env(port, data_dir=str(tmp_path / "var"), model_dir=str(model_dir), processes="2")
    with start_service(env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as process:
        try:
            wait_ready(base, process)
            wait_for(lambda: len(serving_processes(process.pid)) == 2)
            os.kill(process.pid, signal.SIGTTIN)
            wait_for(lambda: len(serving_processes(process.pid)) == 3)
            # One of three getting none of 48 connections by chance: about 1 in 10^8.
            spread = spread_of_connections(base, port, serving_processes(process.pid), 48)
            assert sum(spread.values()) == 48 and min(spread.values()) > 0, spread

            os.kill(process.pid, signal.SIGTTOU)
            wait_for(lambda: len(serving_processes(process.pid)) == 2)
            # The sockets of the process taken away are closed: no connection waits on them.
            spread = spread_of_connections(base, port, serving_processes(process.pid))
            assert sum(spread.values()) == 16 and min(spread.values()) > 0, spread
        finally:
            assert stop(process) == 0
        assert process.stdout is not None
        output = process.stdout.read().decode()
    assert_stopped_cleanly(output)
    assert "SIGTTIN: starting one more serving process" in output
    assert "SIGTTOU: stopping one serving process" in output


def test_a_process_that_fails_to_start_stops_the_service(tmp_path: Path, model_dir: Path) -> None:
    """A captioner whose files check out but that the runtime refuses: only the serving
    processes load it, so it fails there, and every restart would fail the same way."""
    export = captioner_the_runtime_refuses(tmp_path)
    env = service_env(
        free_port(),
        data_dir=str(tmp_path / "var"),
        model_dir=str(model_dir),
        captioner_dir=str(export),
        processes="2",
    )
    refused = serve_until_exit(env, timeout=120)
    assert refused.returncode == 1, refused.stderr[-3000:]
    assert "a serving process failed to start" in refused.stderr
    assert f"cannot load model {export / 'decoder.onnx'}" in refused.stderr
    assert_stopped_cleanly(refused.stderr)


def test_a_missing_detector_is_one_line_before_any_process_starts(tmp_path: Path) -> None:
    refused = serve_until_exit(
        service_env(
            free_port(), data_dir=str(tmp_path / "var"), model_dir=str(tmp_path), processes="2"
        )
    )
    assert refused.returncode == 2
    assert refused.stderr.startswith("configuration error: model file yolox_nano.onnx not found")
    assert refused.stderr.count("\n") == 1, refused.stderr
    assert not (tmp_path / "var").exists()


def altered_second_opinion(tmp_path: Path, model_dir: Path) -> dict[str, str]:
    models = tmp_path / "models"
    models.mkdir()
    for file in model_dir.iterdir():
        (models / file.name).symlink_to(file)
    (models / "nanodet_g_416.onnx").unlink()
    (models / "nanodet_g_416.onnx").write_bytes(b"not the published file")
    return {"model_dir": str(models)}


@pytest.mark.parametrize(
    ("refusal", "message"),
    [
        (altered_second_opinion, "model file nanodet_g_416.onnx in directory .* has sha256"),
        (lambda *_: {"execution_provider": "cuda"}, "execution provider 'cuda' needs"),
        (lambda tmp, _: {"captioner_dir": str(tmp / "none")}, "captioner"),
    ],
)
def test_what_the_processes_would_refuse_is_one_line_before_any_starts(
    tmp_path: Path,
    model_dir: Path,
    refusal: Callable[[Path, Path], dict[str, str]],
    message: str,
) -> None:
    env = service_env(free_port(), data_dir=str(tmp_path / "var"), processes="2")
    env.update({f"LABELSVC_{k.upper()}": v for k, v in refusal(tmp_path, model_dir).items()})
    refused = serve_until_exit(env)
    assert refused.returncode == 2, refused.stderr
    assert re.match(f"configuration error: {message}", refused.stderr), refused.stderr
    assert refused.stderr.count("\n") == 1, refused.stderr
    assert not (tmp_path / "var").exists()


def test_process_count_is_checked_and_shares_the_cores() -> None:
    for bad in ("0", "65"):
        with pytest.raises(ConfigError, match=r"processes must be in \[1, 64\]"):
            Settings.from_env({"LABELSVC_PROCESSES": bad})
    one = Settings(workers=1, processes=1)
    two = Settings(workers=1, processes=2)
    assert two.ort_threads == max(1, one.ort_threads // 2)


async def test_with_several_processes_one_serves_once_its_database_is_ready(
    make_settings: Callable[..., Settings],
) -> None:
    # /readyz is answered by whichever process accepts: none may take requests (and answer
    # 503) just after another one reported ready.
    app = create_app(make_settings(processes=2))
    async with app.lifespan():
        assert app.state.resources.indexes_ready.is_set()


async def test_with_several_processes_a_database_down_delays_serving_a_little(
    make_settings: Callable[..., Settings],
) -> None:
    down = make_settings(
        processes=2, mongodb_uri=f"mongodb://127.0.0.1:{free_port()}/", db_timeout_ms=300
    )
    app = create_app(down)
    started = time.monotonic()
    async with app.lifespan():
        assert not app.state.resources.indexes_ready.is_set()
        assert time.monotonic() - started < 10


def test_a_hangup_stops_every_process_unless_under_nohup(tmp_path: Path, model_dir: Path) -> None:
    # The terminal of `make run` closing hangs up its whole process group.
    for nohup in (True, False):
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        env = service_env(
            port, data_dir=str(tmp_path / f"var{nohup}"), model_dir=str(model_dir), processes="2"
        )
        with start_service(
            env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            hangups_ignored=nohup,
        ) as process:
            try:
                wait_ready(base, process)
                wait_for(lambda: len(serving_processes(process.pid)) == 2)
                serving = serving_processes(process.pid)
                os.killpg(process.pid, signal.SIGHUP)
                if nohup:
                    time.sleep(2)
                    assert serving_processes(process.pid) == serving
                    assert httpx.get(base + "/readyz", timeout=10).status_code == 200
                    assert stop(process) == 0
                else:
                    assert process.wait(timeout=60) == 0
            finally:
                if process.poll() is None:  # failed: leave nothing running
                    os.killpg(process.pid, signal.SIGKILL)
            assert process.stdout is not None
            output = process.stdout.read().decode()
        assert_stopped_cleanly(output)
        assert "Traceback" not in output
        assert not [pid for pid in serving if Path(f"/proc/{pid}").exists()]


def test_once_stopping_several_processes_refuse_new_connections(
    tmp_path: Path, model_dir: Path, image_server: ImageServer
) -> None:
    # A stop waits for the requests in flight (up to 10 s). Meanwhile a new connection must be
    # refused, as one process refuses it, so that clients and balancers go elsewhere at once,
    # not accepted by the kernel and left unanswered until the last process is out.
    _, base, env = two_processes(tmp_path, model_dir)
    with (
        start_service(env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as process,
        ThreadPoolExecutor(1) as pool,
    ):
        try:
            wait_ready(base, process)
            wait_for(lambda: len(serving_processes(process.pid)) == 2)
            slow = pool.submit(
                httpx.post, base + "/v1/labels", json={"url": image_server.url("/drip")}, timeout=60
            )
            wait_for(lambda: any(path == "/drip" for path, _ in image_server.requests))
            process.send_signal(signal.SIGTERM)
            time.sleep(1)  # the processes close their sockets as they begin to stop
            # On either process's sockets, by the hash of the addresses: refused, or reset if
            # it came while a process was still closing them (a busy machine), but never left
            # waiting (httpx.ReadTimeout, as before the supervisor closed its copies first).
            for _ in range(8):
                with pytest.raises((httpx.ConnectError, httpx.ReadError)):
                    httpx.get(base + "/healthz", timeout=3)
            assert process.poll() is None, "it stopped without waiting for the request"
            answer = slow.result()
            assert answer.status_code == 503 and answer.json()["reason"] == "shutting_down"
            assert process.wait(timeout=60) == 0
        finally:
            if process.poll() is None:  # failed: leave nothing running
                process.kill()
        assert process.stdout is not None
        assert_stopped_cleanly(process.stdout.read().decode())


@pytest.mark.parametrize("when", ["starting", "serving"])
def test_ctrl_c_stops_every_process_without_a_traceback(
    tmp_path: Path, model_dir: Path, when: str
) -> None:
    # Ctrl-C interrupts the terminal's whole process group: the launcher and every serving
    # process, which may be still importing or loading its models.
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = service_env(port, data_dir=str(tmp_path / "var"), model_dir=str(model_dir), processes="2")
    with start_service(
        env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    ) as process:
        assert process.stdout is not None
        output = ""
        try:
            if when == "starting":
                while "serving processes on" not in output:
                    line = process.stdout.readline().decode()
                    assert line, output
                    output += line
                wait_for(lambda: len(serving_processes(process.pid)) == 2)
            else:
                wait_ready(base, process)
            serving = serving_processes(process.pid)
            os.killpg(process.pid, signal.SIGINT)
            assert process.wait(timeout=60) == 0
        finally:
            if process.poll() is None:  # failed: leave nothing running
                os.killpg(process.pid, signal.SIGKILL)
        output += process.stdout.read().decode()
    assert_stopped_cleanly(output)
    assert "Traceback" not in output and "KeyboardInterrupt" not in output, output
    assert not [pid for pid in serving if Path(f"/proc/{pid}").exists()]


def test_the_command_line_starts_no_library_threads_before_serve_blocks_ctrl_c() -> None:
    """``serve`` blocks SIGINT before the libraries that start threads are imported (see
    ``service.__main__``): a thread started earlier can take a Ctrl-C and drop it. Importing
    the command line alone must therefore import none of them."""
    check = (
        "import sys, threading, service.__main__;"
        " loaded = {'numpy', 'onnxruntime', 'PIL'} & set(sys.modules);"
        " assert not loaded and threading.active_count() == 1, (loaded, threading.enumerate())"
    )
    subprocess.run([sys.executable, "-c", check], check=True, cwd=Path(__file__).parents[1])


def test_ctrl_c_during_a_health_check_still_stops_the_service(
    tmp_path: Path, model_dir: Path
) -> None:
    """The supervisor ignores SIGINT while it checks on its processes (it spawns any
    replacement in there). A Ctrl-C that comes meanwhile must wait for it, not be dropped by
    one of the threads its libraries started, or the service would go on serving."""
    port = free_port()
    env = service_env(port, data_dir=str(tmp_path / "var"), model_dir=str(model_dir), processes="2")
    with start_service(
        env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    ) as process:
        wait_ready(f"http://127.0.0.1:{port}", process)
        wait_for(lambda: len(serving_processes(process.pid)) == 2)
        stopped = min(serving_processes(process.pid))
        os.kill(stopped, signal.SIGSTOP)  # its health check now waits seconds for an answer
        try:
            time.sleep(1.5)
            os.killpg(process.pid, signal.SIGINT)
            assert process.wait(timeout=60) == 0
        except BaseException:  # the supervisor did not kill it: a stopped process outlives us
            with contextlib.suppress(ProcessLookupError):
                os.kill(stopped, signal.SIGKILL)
            raise
        assert process.stdout is not None
        output = process.stdout.read().decode()
    assert_stopped_cleanly(output)
    assert "starting another in its place" not in output


def test_serving_processes_stop_when_the_launcher_is_killed(
    tmp_path: Path, model_dir: Path
) -> None:
    """SIGKILL (the OOM killer) gives the launcher no chance to stop them: they must not go
    on holding the port, or the next start could not bind it. The last of them to stop
    removes the directory they shared their metrics in, as the launcher would have."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = service_env(port, data_dir=str(tmp_path / "var"), model_dir=str(model_dir), processes="2")
    env["TMPDIR"] = str(tmp_path)
    with start_service(env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as process:
        wait_ready(base, process)
        wait_for(lambda: len(serving_processes(process.pid)) == 2)
        serving = serving_processes(process.pid)
        assert len(metrics_dirs(tmp_path)) == 1
        process.kill()
        process.wait(timeout=30)
        wait_for(lambda: not [pid for pid in serving if Path(f"/proc/{pid}").exists()], 30)
    assert metrics_dirs(tmp_path) == set()
    with start_service(env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as process:
        try:
            wait_ready(base, process)  # the port is free, the database left running stopped
        finally:
            assert stop(process) == 0
        assert process.stdout is not None
        assert_stopped_cleanly(process.stdout.read().decode())


def test_the_last_serving_process_out_removes_the_metrics_of_a_killed_launcher(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = tmp_path / "metrics"
    shared.mkdir()
    monkeypatch.setenv(SHARED_DIR_VARIABLE, str(shared))
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as other:
        try:
            dead = int(
                subprocess.check_output([sys.executable, "-c", "print(__import__('os').getpid())"])
            )
            for pid in (os.getpid(), other.pid, dead):
                (shared / f"counter_{pid}.db").touch()
                (shared / f"gauge_livesum_{pid}.db").touch()

            leave_no_metrics_behind(os.getppid())  # the launcher lives: nothing to do
            assert len(list(shared.glob("*.db"))) == 6

            leave_no_metrics_behind(launcher=-1)  # it was killed; another process still runs
            assert sorted(p.name for p in shared.glob("*.db")) == sorted(
                f"{kind}_{pid}.db"
                for kind in ("counter", "gauge_livesum")
                for pid in (other.pid, dead)
            )
        finally:
            other.kill()
    leave_no_metrics_behind(launcher=-1)  # the last one out: the dead one's files go too
    assert not shared.exists()
    leave_no_metrics_behind(launcher=-1)  # one more after it finds nothing to do


def test_the_supervisor_stops_at_once_on_a_signal_or_one_that_came_before_it(
    tmp_path: Path,
) -> None:
    config = uvicorn.Config(lambda: None, workers=2)
    saved = {signum: signal.getsignal(signum) for signum in SIGNALS}  # it takes them all
    try:
        assert Supervisor(config, [], str(tmp_path), stopped=True).should_exit.is_set()
        supervisor = Supervisor(config, [], str(tmp_path))
        assert not supervisor.should_exit.is_set()
        signal.raise_signal(signal.SIGTERM)  # not only queued for the next health checks
        assert supervisor.should_exit.is_set()
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)


def _sleep(deaf: bool) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN if deaf else signal.SIG_DFL)
    time.sleep(60)


def test_a_process_that_does_not_stop_is_killed_past_the_deadline(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A serving process stuck where SIGTERM cannot reach it would hold the launcher for
    good, then outlive it holding the port: past the deadline it is killed, while one that
    stops in time is only waited for."""
    config = uvicorn.Config(lambda: None, workers=2)
    saved = {signum: signal.getsignal(signum) for signum in SIGNALS}
    forked = multiprocessing.get_context("fork")
    try:
        supervisor = Supervisor(config, [], str(tmp_path))
        supervisor.stop_seconds = 1.0
        stuck, stopping = UvicornProcess(config, []), UvicornProcess(config, [])
        stuck.process = forked.Process(target=_sleep, args=(True,))
        stopping.process = forked.Process(target=_sleep, args=(False,))
        supervisor.processes = [stuck, stopping]
        for process in supervisor.processes:
            process.start()
        time.sleep(0.5)  # their handlers are set by now
        started = time.monotonic()
        supervisor.terminate_all()
        supervisor.join_all()
        assert time.monotonic() - started < 5
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)
    assert stuck.exitcode == -signal.SIGKILL
    assert stopping.exitcode == -signal.SIGTERM
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == [
        f"serving process [{stuck.pid}] did not stop within 1 s; killing it"
    ]
