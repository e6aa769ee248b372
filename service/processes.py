"""Several serving processes on one port (``LABELSVC_PROCESSES`` above 1).

Where the models are fast (a GPU), one process is held back by its interpreter's lock: its
event loop and its workers' pre- and post-processing take turns at it. Each serving process
here has its own models, executor and event loop. The launcher binds the listening sockets
once and every process accepts on them, so the kernel hands each connection to one process.

uvicorn's supervisor runs them: spawned, never forked (CUDA does not survive a fork),
restarted when one dies or stops answering its health check, and all stopped when one fails
to start (its models, say), since every restart would fail the same way. A hangup stops
them all, as it stops one process. Their metrics are written to a directory of files that any
of them reads back whole when scraped.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import signal
import socket
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

import uvicorn
from litestar import Litestar
from prometheus_client.multiprocess import mark_process_dead
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors.multiprocess import Multiprocess

from service.observability import SHARED_DIR_VARIABLE, configure_logging
from service.parent_death import signal_on_parent_death
from service.settings import Settings

log = logging.getLogger(__name__)


def serving_app(settings: Settings, launcher: int) -> Litestar:
    """The app of one serving process; its models load (and warm up) in its lifespan.
    ``launcher``: the pid of the process that started it."""
    from service.app import create_app

    configure_logging(settings.log_level)
    _stop_with_the_launcher(launcher)
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
        # A closed terminal hangs up every process of `make run`: stop gracefully, as the
        # launcher does, rather than at once (the default).
        signal.signal(signal.SIGHUP, lambda *_: signal.raise_signal(signal.SIGTERM))
    return create_app(settings)


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


class Supervisor(Multiprocess):
    """uvicorn's supervisor, which also forgets the gauges of each process that is gone and
    remembers whether one failed to start."""

    def __init__(
        self,
        config: uvicorn.Config,
        sockets: list[socket.socket],
        metrics: str,
        *,
        stopped: bool = False,
    ):
        hangups_ignored = signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
        super().__init__(config, sockets)
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
            super().init_processes()

    def _stop(self, signum: int, _: FrameType | None) -> None:
        self.should_exit.set()
        self.signal_queue.append(signum)  # logged by uvicorn's handler

    def handle_hup(self) -> None:
        log.info("hangup: stopping the serving processes")

    def keep_subprocess_alive(self) -> None:
        with self._forgetting_the_gone(), _deaf_to_interrupts():
            super().keep_subprocess_alive()

    def handle_ttin(self) -> None:
        with _deaf_to_interrupts():
            super().handle_ttin()

    def handle_ttou(self) -> None:
        with self._forgetting_the_gone():
            super().handle_ttou()

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
    pending even while it is ignored), for its handler to be back.
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
    listeners: list[socket.socket],
    stopped: Callable[[], bool],
    **uvicorn_options: Any,
) -> int:
    """Serve with ``settings.processes`` processes until stopped: 0, or 1 when one of them
    failed to start. ``stopped``: whether a stop signal has come in already."""
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
        supervisor.run()
        if supervisor.failed_to_start:
            log.error("a serving process failed to start (its error is above); stopped")
            return 1
        return 0
    finally:
        del os.environ[SHARED_DIR_VARIABLE]
        shutil.rmtree(metrics, ignore_errors=True)
