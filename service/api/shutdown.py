"""Requests the server cancels at the end of its graceful shutdown get a 503, not a 500.

On SIGTERM uvicorn stops accepting, waits ``timeout_graceful_shutdown`` for requests in
progress, then cancels the rest; a cancelled request that has not started its response
would get the server's plain-text 500. Labeling can outlast the grace (a download may take
30 s), and its analysis is kept and stored by the lifespan's drain, so the honest answer is
503 with Retry-After: the retry finds the record.
"""

from __future__ import annotations

import asyncio

import msgspec
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from service.api.headers import security_headers
from service.api.problems import PROBLEM_JSON, problem_document, write_server_error
from service.errors import ServiceUnavailable
from service.observability import Metrics
from service.repeated_logs import RepeatedLines

SHUTTING_DOWN = ServiceUnavailable(
    "the service is shutting down; retry shortly", retry_after=1, extra={"reason": "shutting_down"}
)


def unavailable_when_cancelled(
    metrics: Metrics, repeated_lines: RepeatedLines, app: ASGIApp
) -> ASGIApp:
    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await app(scope, receive, send)
            return
        started = False

        async def tracking(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await app(scope, receive, tracking)
        except asyncio.CancelledError:
            if started:
                raise
            # The request task ends here: nothing awaits it after the server cancelled it.
            metrics.problems.labels(str(SHUTTING_DOWN.status), SHUTTING_DOWN.type).inc()
            write_server_error(repeated_lines, SHUTTING_DOWN, f"{scope['method']} {scope['path']}")
            await _send_unavailable(scope["path"], tracking)

    return wrapped


async def _send_unavailable(path: str, send: Send) -> None:
    body = msgspec.json.encode(
        problem_document(
            SHUTTING_DOWN.status,
            SHUTTING_DOWN.type,
            SHUTTING_DOWN.title,
            SHUTTING_DOWN.detail,
            path,
            SHUTTING_DOWN.extra,
        )
    )
    headers = security_headers(path) | {
        "Content-Type": PROBLEM_JSON,
        "Content-Length": str(len(body)),
        "Retry-After": str(SHUTTING_DOWN.retry_after),
        "Connection": "close",
    }
    await send(
        {
            "type": "http.response.start",
            "status": ServiceUnavailable.status,
            "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})
