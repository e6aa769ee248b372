"""The API's listening socket, bound before anything else starts.

Bound first so that the free port the local database server is given can never be the API's
own, and so that a port already in use is one line of error before a database is started.
"""

from __future__ import annotations

import socket


class ListenError(OSError):
    """The configured host and port cannot be bound."""


def bind_listener(host: str, port: int) -> socket.socket:
    """A bound (not yet listening) TCP socket; uvicorn starts listening once the app is up,
    so a client that connects earlier is refused rather than left waiting."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ListenError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    return sock
