"""One id per HTTP request, in its ``X-Request-ID`` response header and its log lines.

A client (or the proxy in front) may send its own id, which is kept when it is safe to log:
1 to ``MAX_LENGTH`` characters from ``ALLOWED``. Any other value, or none, gets a new UUID.
A bad id never fails the request: it only correlates lines, so it is replaced instead.

The id lives in a context variable for the request's task and for the tasks it starts (an
analysis that outlives its client logs under the id of the request that started it).
"""

from __future__ import annotations

import logging
import re
import uuid
from contextvars import ContextVar

from litestar.datastructures import MutableScopeHeaders
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

HEADER = "X-Request-ID"
MAX_LENGTH = 200
ALLOWED = "A-Z a-z 0-9 - _ . : / + = @"
_SAFE = re.compile(rf"[A-Za-z0-9\-_.:/+=@]{{1,{MAX_LENGTH}}}")

current: ContextVar[str | None] = ContextVar("request_id", default=None)


def request_id_for(sent: str | None) -> str:
    """The client's id when it is safe to log, else a new one."""
    if sent is not None and _SAFE.fullmatch(sent):
        return sent
    return str(uuid.uuid4())


def request_ids(app: ASGIApp) -> ASGIApp:
    """Gives every HTTP request an id (see the module) and answers with it."""

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await app(scope, receive, send)
            return
        sent = [v for k, v in scope["headers"] if k == b"x-request-id"]
        request_id = request_id_for(sent[0].decode("latin-1") if len(sent) == 1 else None)

        async def with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableScopeHeaders.from_message(message)[HEADER] = request_id
            await send(message)

        token = current.set(request_id)
        try:
            await app(scope, receive, with_id)
        finally:
            current.reset(token)

    return wrapped


class RequestIdFilter(logging.Filter):
    """Gives each log record ``request_id`` (None outside a request) and ``request``:
    `` (request ID)`` while a request is handled, else nothing, for a text format that ends
    in ``%(request)s``."""

    def filter(self, record: logging.LogRecord) -> bool:
        request_id = current.get()
        record.request_id = request_id
        record.request = f" (request {request_id})" if request_id else ""
        return True
