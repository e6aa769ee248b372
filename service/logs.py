"""Where log lines go and how they read: one handler on stderr for the service's own lines and
uvicorn's (its startup, errors and access lines) alike, as text or as JSON objects.

Text: ``2026-11-22 10:00:00,000 INFO logger: message (request ID)``. JSON, one object a line
for log collectors: ``time`` (ISO 8601, UTC), ``level``, ``logger``, ``message``,
``request_id`` (null outside a request), ``exc_info`` when there is a traceback, and on
access lines ``client``, ``method``, ``path`` (with its query string) and ``status``.
"""

from __future__ import annotations

import logging
from typing import Any, TextIO

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

from service.request_ids import RequestIdFilter

TEXT = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s%(request)s")
ACCESS_LOGGER = "uvicorn.access"


class AccessFields(logging.Filter):
    """Gives uvicorn's access lines their parts as fields (its message is
    ``'%s - "%s %s HTTP/%s" %d'``: client, method, path, HTTP version, status)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if record.name == ACCESS_LOGGER and isinstance(args, tuple) and len(args) == 5:
            record.client, record.method, record.path, _, record.status = args
        return True


def json_formatter() -> logging.Formatter:
    return JsonFormatter(
        ["levelname", "name", "message", "request_id"],
        rename_fields={"levelname": "level", "name": "logger"},
        timestamp="time",
        # The text format's request suffix (the object has request_id instead), and
        # uvicorn's message with terminal colours.
        reserved_attrs=[*RESERVED_ATTRS, "request", "color_message"],
    )


def log_handler(log_format: str = "text", stream: TextIO | None = None) -> logging.Handler:
    """A handler writing to ``stream`` (stderr) as ``log_format`` says (text or json)."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(json_formatter() if log_format.lower() == "json" else TEXT)
    handler.addFilter(RequestIdFilter())
    handler.addFilter(AccessFields())
    return handler


def configure_logging(level: str, log_format: str = "text") -> None:
    """Every line to stderr (``log_handler``); the lines written while a request is handled
    carry its id. uvicorn must be started with ``UVICORN_LOGGING`` for its lines to come
    here rather than to its own handlers."""
    logging.basicConfig(level=level.upper(), handlers=[log_handler(log_format)])
    # One line per outgoing fetch is noise at INFO; failures are counted in metrics instead.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger().level))


# uvicorn's options that leave its loggers to the root handler above.
UVICORN_LOGGING: dict[str, Any] = {"log_config": None}
