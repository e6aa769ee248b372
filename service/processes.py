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
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn
from litestar import Litestar
from prometheus_client.multiprocess import mark_process_dead
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors.multiprocess import Multiprocess

from service.observability import SHARED_DIR_VARIABLE, configure_logging
from service.settings import Settings

log = logging.getLogger(__name__)


def serving_app(settings: Settings) -> Litestar:
    """The app of one serving process; its models load (and warm up) in its lifespan."""
    from service.app import create_app

    configure_logging(settings.log_level)
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
        # A closed terminal hangs up every process of `make run`: stop gracefully, as the
        # launcher does, rather than at once (the default).
        signal.signal(signal.SIGHUP, lambda *_: signal.raise_signal(signal.SIGTERM))
    return create_app(settings)


class Supervisor(Multiprocess):
    """uvicorn's supervisor, which also forgets the gauges of each process that is gone and
    remembers whether one failed to start."""

    def __init__(self, config: uvicorn.Config, sockets: list[socket.socket], metrics: str):
        hangups_ignored = signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
        super().__init__(config, sockets)
        if hangups_ignored:  # under nohup: so do the processes, which inherit it
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
        self.metrics = metrics
        self.failed_to_start = False

    def handle_hup(self) -> None:
        # Stop, as with one process, rather than uvicorn's one-by-one replacement.
        log.info("hangup: stopping the serving processes")
        self.should_exit.set()

    def keep_subprocess_alive(self) -> None:
        with self._forgetting_the_gone():
            super().keep_subprocess_alive()

    def restart_all(self) -> None:
        with self._forgetting_the_gone():
            super().restart_all()

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


def serve_processes(
    settings: Settings, listeners: list[socket.socket], **uvicorn_options: Any
) -> int:
    """Serve with ``settings.processes`` processes until stopped: 0, or 1 when one of them
    failed to start."""
    metrics = tempfile.mkdtemp(prefix="labelsvc-metrics-")
    # Read by prometheus_client as the processes import it, so set before they start.
    os.environ[SHARED_DIR_VARIABLE] = metrics
    try:
        config = uvicorn.Config(
            functools.partial(serving_app, settings),
            factory=True,
            workers=settings.processes,
            **uvicorn_options,
        )
        supervisor = Supervisor(config, listeners, metrics)
        supervisor.run()
        if supervisor.failed_to_start:
            log.error("a serving process failed to start (its error is above); stopped")
            return 1
        return 0
    finally:
        del os.environ[SHARED_DIR_VARIABLE]
        shutil.rmtree(metrics, ignore_errors=True)
