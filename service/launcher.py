"""``python -m service serve``: the database (when none is configured) plus uvicorn.

SIGTERM or SIGINT stops uvicorn gracefully, then the database server this process started.
"""

from __future__ import annotations

import logging
import signal
from types import FrameType

import msgspec
import uvicorn

from service.app import create_app
from service.dbserver import LocalDatabaseServer
from service.observability import configure_logging
from service.settings import Settings

log = logging.getLogger("service.launcher")


def serve(settings: Settings) -> int:
    configure_logging(settings.log_level)
    received: list[int] = []

    def remember(signum: int, _: FrameType | None) -> None:
        received.append(signum)

    # uvicorn re-raises the signal that stopped it; our handler turns that into a clean exit.
    signal.signal(signal.SIGTERM, remember)
    signal.signal(signal.SIGINT, remember)

    database: LocalDatabaseServer | None = None
    if settings.mongodb_uri is None:
        database = LocalDatabaseServer(settings.db_server, settings.data_dir.resolve() / "db")
        log.info("starting the local database server on %s", database.uri)
        settings = msgspec.structs.replace(settings, mongodb_uri=database.start())
    try:
        config = uvicorn.Config(
            create_app(settings),
            host=settings.host,
            port=settings.port,
            log_level=settings.log_level,
            lifespan="on",
            timeout_graceful_shutdown=10,
            # Room for a filter of 8,192 characters, percent-encoded, in the request line.
            h11_max_incomplete_event_size=128 * 1024,
        )
        uvicorn.Server(config).run()
    finally:
        if database is not None:
            log.info("stopping the local database server")
            database.stop()
    return 0
