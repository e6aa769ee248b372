"""HEAD on every GET route, as RFC 9110 asks of a general-purpose server.

The router only answers the methods a route names, so HEAD got 405. This wrapper, around the
whole application, runs a HEAD request as the GET it mirrors and sends that response's
status and headers (``Content-Length`` included) without its body. The GET runs on a copy of
the scope: the server reads the method from the original to know that no body follows.

It also sets ``Allow`` where the router sends one (405s, the 204 to ``OPTIONS``): from the
matched route's methods when it knows them, since the framework's ``OPTIONS`` answer names
only the methods of the first handler registered on a path, and with HEAD wherever GET is.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from litestar.datastructures import MutableScopeHeaders
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send


def head_as_get(app: ASGIApp, methods: Mapping[str, Collection[str]]) -> ASGIApp:
    """``methods``: the methods of each route, by path template."""

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await app(scope, receive, send)
            return
        if scope["method"] != "HEAD":
            await app(scope, receive, _allowing(send, scope, methods))
            return
        as_get = scope.copy()
        as_get["method"] = "GET"

        async def without_body(message: Message) -> None:
            if message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        try:
            await app(as_get, receive, without_body)
        finally:
            # The route the router matched, for the request metrics around this wrapper.
            if "path_template" in as_get:
                scope["path_template"] = as_get["path_template"]

    return wrapped


def _allowing(send: Send, scope: Scope, methods: Mapping[str, Collection[str]]) -> Send:
    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start" and message["status"] in (204, 405):
            headers = MutableScopeHeaders.from_message(message)
            if "allow" in headers:  # the router's answer, not a handler's 204
                named = headers["allow"].split(",")
                route = methods.get(scope.get("path_template", ""))  # none on a 405
                allowed = {m.strip() for m in (named if route is None else route) if m.strip()}
                if "GET" in allowed:
                    allowed.add("HEAD")
                headers["allow"] = ", ".join(sorted(allowed))
        await send(message)

    return sending
