"""Several serving processes on one port (``LABELSVC_PROCESSES`` above 1).

Where the models are fast (a GPU), one process is held back by its interpreter's lock: its
event loop and its workers' pre- and post-processing take turns at it. Each serving process
here has its own models, executor and event loop, and its own set of listening sockets on the
one port (``SO_REUSEPORT``: the kernel spreads new connections over the sets), bound by the
launcher and kept by the supervisor, which hands a process's set to its replacement: the
connections that arrive for it meanwhile wait in that set's backlog, not refused.

uvicorn's supervisor runs them: spawned, never forked (CUDA does not survive a fork),
restarted when one dies or stops answering its health check, and all stopped when one fails
to start (its models, say), since every restart would fail the same way. A hangup stops
them all, as it stops one process. Their metrics are written to a directory of files that any
of them reads back whole when scraped; the launcher removes it when they have stopped, or, when
the launcher was killed, the last of them to stop does.
"""

from __future__ import annotations

import fcntl
import functools
import logging
import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

import uvicorn
from litestar import Litestar
from prometheus_client.multiprocess import mark_process_dead
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors.multiprocess import Multiprocess, Process

from service.listen import ListenError, bind_alike
from service.logs import configure_logging
from service.observability import SHARED_DIR_VARIABLE
from service.parent_death import signal_on_parent_death
from service.settings import Settings

log = logging.getLogger(__name__)


def serving_app(settings: Settings, launcher: int) -> Litestar:
    """The app of one serving process; its models load (and warm up) in its lifespan.
    ``launcher``: the pid of the process that started it."""
    from service.app import create_app

    configure_logging(settings.log_level, settings.log_format)
    _stop_with_the_launcher(launcher)
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
        # A closed terminal hangs up every process of `make run`: stop gracefully, as the
        # launcher does, rather than at once (the default).
        signal.signal(signal.SIGHUP, lambda *_: signal.raise_signal(signal.SIGTERM))
    app = create_app(settings)
    app.on_shutdown.append(functools.partial(leave_no_metrics_behind, launcher))  # runs last
    return app


def _stop_with_the_launcher(launcher: int) -> None:
    """SIGTERM this process when the launcher dies (SIGKILL, the OOM killer): its processes
    would otherwise go on holding the port, and the next start could not bind it."""
    try:
        signal_on_parent_death(signal.SIGTERM)
    except OSError as exc:
        log.warning("cannot tie this process to the launcher: errno %d", exc.errno)
        return
    if os.getppid() != launcher:  # it died before the tie was made
        signal.raise_signal(signal.SIGTERM)


def leave_no_metrics_behind(launcher: int) -> None:
    """Once the launcher is gone (killed: it removes the metrics directory itself when it
    stops), the last serving process to stop removes it. Each takes its turn under a lock:
    it removes its own files, and the directory too when no file of a live process is left
    (those of processes that died before are of no use to anyone now)."""
    directory = os.environ.get(SHARED_DIR_VARIABLE)
    if directory is None or os.getppid() == launcher:
        return
    try:
        lock = os.open(os.path.join(directory, "exit.lock"), os.O_CREAT | os.O_RDWR, 0o600)
    except FileNotFoundError:  # another process removed it already
        return
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            names = os.listdir(directory)
        except FileNotFoundError:  # removed while this one waited (it had written nothing)
            return
        others = set()
        for name in names:  # prometheus_client names them <kind>_<pid>.db
            stem, suffix = os.path.splitext(name)
            pid = stem.rsplit("_", 1)[-1]
            if suffix != ".db" or not pid.isdigit():
                continue
            if int(pid) == os.getpid():
                os.unlink(os.path.join(directory, name))
            elif _alive(int(pid)):
                others.add(int(pid))
        if not others:
            shutil.rmtree(directory, ignore_errors=True)
    finally:
        os.close(lock)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:  # gone, or the pid is another user's process now
        return False
    return True


class Supervisor(Multiprocess):
    """uvicorn's supervisor, with a set of listening sockets for each process (given to its
    replacement too), which also forgets the gauges of each process that is gone and
    remembers whether one failed to start.

    uvicorn's one shared list of sockets (``self.sockets``) stays empty. Its ``restart_all``,
    which would use it, is only reached through its SIGHUP handler, replaced here."""

    # How long a stopping process gets before it is killed: the longest graceful stop (10 s
    # for requests in progress, 10 s for analyses to be stored, 10 s for key usage) and a
    # margin for model runs already started; under the compose file's stop_grace_period.
    stop_seconds = 40.0

    def __init__(
        self,
        config: uvicorn.Config,
        listeners: list[list[socket.socket]],
        metrics: str,
        *,
        stopped: bool = False,
    ):
        hangups_ignored = signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
        super().__init__(config, [])
        self.listeners = list(listeners)  # the set of self.processes[i] is self.listeners[i]
        # A stop takes effect at once, not at the next round of health checks (up to
        # seconds), when processes killed by the same signal would be replaced first. A
        # hangup stops too, as with one process, rather than uvicorn's one-by-one
        # replacement; under nohup it is ignored, here and in the processes.
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            if signum != signal.SIGHUP or not hangups_ignored:
                signal.signal(signum, self._stop)
        if hangups_ignored:
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
        self.metrics = metrics
        self.failed_to_start = False
        if stopped:  # a stop signal came in before this supervisor existed
            self.should_exit.set()

    def init_processes(self) -> None:
        with _deaf_to_interrupts():
            self.processes = [self._start(sockets) for sockets in self.listeners]

    def _start(self, sockets: list[socket.socket]) -> Process:
        process = Process(self.config, sockets)
        process.start()
        return process

    def _stop(self, signum: int, _: FrameType | None) -> None:
        self.should_exit.set()
        self.signal_queue.append(signum)  # logged by uvicorn's handler

    def terminate_all(self) -> None:
        # Its copies of the sockets first: the processes close theirs as they begin to stop,
        # and while any copy is open the kernel goes on completing connections nobody will
        # accept (they hang until the last process is out). Closed, new ones are refused.
        self.close_listeners()
        super().terminate_all()

    def join_all(self) -> None:
        """uvicorn's waits for each process as long as it takes: one that cannot stop (stuck
        in a driver call, say) would hold the launcher, and outlive it holding the port when
        the launcher is killed in turn. Past ``stop_seconds`` it is killed."""
        deadline = time.monotonic() + self.stop_seconds
        for process in self.processes:
            self._join_by(process, deadline)

    def _join_by(self, process: Process, deadline: float) -> None:
        process.process.join(max(0.0, deadline - time.monotonic()))
        if process.exitcode is None:
            log.error(
                "serving process [%s] did not stop within %g s; killing it",
                process.pid,
                self.stop_seconds,
            )
            process.kill()
            process.process.join()

    def handle_hup(self) -> None:
        log.info("hangup: stopping the serving processes")

    def keep_subprocess_alive(self) -> None:
        """uvicorn's health round: a process that died or does not answer is replaced, on its
        own sockets; one that failed to start stops them all."""
        with self._forgetting_the_gone(), _deaf_to_interrupts():
            for index, process in enumerate(self.processes):
                if self.should_exit.is_set():
                    return
                if process.is_alive(timeout=self.config.timeout_worker_healthcheck):
                    continue
                process.kill()  # it may only be hung
                process.join()
                if process.exitcode == STARTUP_FAILURE:
                    log.error("serving process [%s] failed to start; stopping", process.pid)
                    self.should_exit.set()
                    return
                if self.should_exit.is_set() or signal.SIGINT in signal.sigpending():
                    return  # stopping: a Ctrl-C that came in meanwhile waits, blocked, above
                log.info("serving process [%s] died; starting another in its place", process.pid)
                self.processes[index] = self._start(self.listeners[index])

    def handle_ttin(self) -> None:
        log.info("SIGTTIN: starting one more serving process")
        try:
            sockets = bind_alike(self.listeners[0])
        except ListenError as exc:
            log.error("cannot start one more serving process: %s", exc)
            return
        with _deaf_to_interrupts():
            self.processes.append(self._start(sockets))
        self.listeners.append(sockets)
        self.processes_num += 1

    def handle_ttou(self) -> None:
        if self.processes_num <= 1:
            log.info("SIGTTOU: one serving process left; keeping it")
            return
        log.info("SIGTTOU: stopping one serving process")
        self.processes_num -= 1
        # Its sockets first, so that the kernel stops handing them connections as soon as the
        # process has closed its own copies; those still waiting in their backlog are reset.
        for sock in self.listeners.pop():
            sock.close()
        with self._forgetting_the_gone():
            process = self.processes.pop()
            process.terminate()
            self._join_by(process, time.monotonic() + self.stop_seconds)

    def close_listeners(self) -> None:
        for sockets in self.listeners:
            for sock in sockets:
                sock.close()

    @contextmanager
    def _forgetting_the_gone(self) -> Iterator[None]:
        before = list(self.processes)
        yield
        for process in before:
            if process.exitcode is not None and process.pid is not None:  # joined: it is gone
                self.failed_to_start |= process.exitcode == STARTUP_FAILURE
                mark_process_dead(process.pid, self.metrics)  # type: ignore[no-untyped-call]


@contextmanager
def _deaf_to_interrupts() -> Iterator[None]:
    """Processes spawned in here start with SIGINT ignored.

    Ctrl-C at a terminal interrupts its whole process group, and a serving process still
    importing its modules would die of it with a traceback. Ignored, it leaves the stop to
    the supervisor, which stops them all; once serving, uvicorn handles SIGINT there itself.
    The supervisor's own SIGINT meanwhile waits, blocked (Linux keeps a blocked signal
    pending even while it is ignored), for its handler to be back. Blocked in every thread,
    that is: a thread that did not block it would take it and drop it, and the supervisor
    would never stop. The threads libraries start are started with it blocked (see
    ``service.__main__``).
    """
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        handler = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, handler)
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def serve_processes(
    settings: Settings,
    listeners: list[list[socket.socket]],
    stopped: Callable[[], bool],
    **uvicorn_options: Any,
) -> int:
    """Serve with ``settings.processes`` processes until stopped: 0, or 1 when one of them
    failed to start. ``listeners``: a set of sockets for each process (``bind_listener_sets``);
    ``stopped``: whether a stop signal has come in already."""
    metrics = tempfile.mkdtemp(prefix="labelsvc-metrics-")
    # Read by prometheus_client as the processes import it, so set before they start.
    os.environ[SHARED_DIR_VARIABLE] = metrics
    try:
        config = uvicorn.Config(
            functools.partial(serving_app, settings, os.getpid()),
            factory=True,
            workers=settings.processes,
            **uvicorn_options,
        )
        supervisor = Supervisor(config, listeners, metrics, stopped=stopped())
        try:
            supervisor.run()
        finally:
            supervisor.close_listeners()
        if supervisor.failed_to_start:
            log.error("a serving process failed to start (its error is above); stopped")
            return 1
        return 0
    finally:
        del os.environ[SHARED_DIR_VARIABLE]
        shutil.rmtree(metrics, ignore_errors=True)
