"""HEAD on every GET route, as RFC 9110 asks of a general-purpose server.

The router only answers the methods a route names, so HEAD got 405. This wrapper, around the
whole application, runs a HEAD request as the GET it mirrors and sends that response's
status and headers (``Content-Length`` included) without its body. The scope is changed in
place, as the router itself does, so that wrappers outside see the route it matched.
"""

from __future__ import annotations

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send


def head_as_get(app: ASGIApp) -> ASGIApp:
    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP or scope["method"] != "HEAD":
            await app(scope, receive, send)
            return
        scope["method"] = "GET"

        async def without_body(message: Message) -> None:
            if message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        await app(scope, receive, without_body)

    return wrapped
