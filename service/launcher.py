"""``python -m service serve``: the database (when none is configured) plus uvicorn.

SIGTERM, SIGINT or SIGHUP stops uvicorn gracefully, then the database server this process
started. Settings are checked, models loaded and the API's port bound before anything starts,
so an operator's mistake is one line of error, not a half-started service. With several
serving processes (service.processes) each loads its own models: here only the detector's
files are checked, and another model that fails to load stops the service after its start.
"""

from __future__ import annotations

import logging
import signal
import socket
from types import FrameType
from typing import Any

import msgspec
import uvicorn

from service.app import create_app
from service.dbserver import LocalDatabaseServer
from service.infer.models import check_models, load_models
from service.listen import bind_listener_sets, bind_listeners, url_host
from service.logs import UVICORN_LOGGING, configure_logging
from service.processes import serve_processes
from service.settings import Settings

log = logging.getLogger("service.launcher")
# How long uvicorn waits for requests in progress on a stop, before the app's own shutdown.
GRACEFUL_SHUTDOWN_SECONDS = 10


def serve(settings: Settings) -> int:
    configure_logging(settings.log_level, settings.log_format)
    received: list[int] = []
    server: uvicorn.Server | None = None

    def remember(signum: int, _: FrameType | None) -> None:
        received.append(signum)
        if server is not None:  # uvicorn handles SIGTERM and SIGINT only once it runs
            server.should_exit = True

    # uvicorn re-raises the signal that stopped it; our handler turns that into a clean exit.
    # SIGHUP (the terminal of `make run` closed) stops the service too: the database server
    # runs in a session of its own and would otherwise outlive it. Unless hangups are ignored
    # (`nohup`): the operator asked for the service to outlive the terminal.
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        if signum != signal.SIGHUP or signal.getsignal(signum) is not signal.SIG_IGN:
            signal.signal(signum, remember)

    # Loaded (verified, and warmed up) here rather than at application startup, where a
    # missing or altered file, an absent provider or a model the runtime refuses would be a
    # traceback, after the database started. Several serving processes load their own: what
    # they will load is checked here.
    models = load_models(settings) if settings.processes == 1 else None
    if models is None:
        check_models(settings)
    if received:
        return 0
    if models is None:
        listener_sets = bind_listener_sets(settings.host, settings.port, settings.processes)
    else:
        listener_sets = [bind_listeners(settings.host, settings.port)]
    database: LocalDatabaseServer | None = None
    try:
        if settings.mongodb_uri is None:
            database = LocalDatabaseServer(settings.db_server, settings.data_dir.resolve() / "db")
            log.info("starting the local database server (storage %s)", database.storage)
            settings = msgspec.structs.replace(settings, mongodb_uri=database.start())
            log.info("the local database server is on %s", database.uri)
        if received:  # stopped while the database was starting
            return 0
        options: dict[str, Any] = {
            "host": settings.host,
            "port": settings.port,
            "log_level": settings.log_level,
            **UVICORN_LOGGING,
            "lifespan": "on",
            "timeout_graceful_shutdown": GRACEFUL_SHUTDOWN_SECONDS,
            # uvicorn believes X-Forwarded-For from loopback unless told otherwise: behind a
            # same-host proxy that passes the client's header through, clients would choose
            # their own address (and rate-limit bucket). Only configured proxies are believed.
            "proxy_headers": bool(settings.trusted_proxies),
            "forwarded_allow_ips": settings.trusted_proxies or None,
            # Room for a filter of 8,192 characters, percent-encoded, in the request line, should
            # uvicorn parse with h11 (httptools, installed with it here, has no such limit).
            "h11_max_incomplete_event_size": 128 * 1024,
        }
        if models is None:
            for sock in listener_sets[0]:
                log.info("starting %d serving processes on %s", settings.processes, _url(sock))
            return serve_processes(settings, listener_sets, lambda: bool(received), **options)
        server = _Server(uvicorn.Config(create_app(settings, models), **options))
        if received:  # stopped while the app was being built
            return 0
        server.run(sockets=listener_sets[0])
    finally:
        for listeners in listener_sets:
            for listener in listeners:
                listener.close()
        if database is not None:
            log.info("stopping the local database server")
            database.stop()
    return 0


class _Server(uvicorn.Server):
    """uvicorn says where it serves only on sockets it bound itself; these are ours."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if not self.started:
            return
        for sock in sockets or []:
            log.info("serving the API on %s", _url(sock))


def _url(sock: socket.socket) -> str:
    """The address bound, with the port the system chose when configured as 0."""
    host, port = sock.getsockname()[:2]
    return f"http://{url_host(sock.family, host)}:{port}"
