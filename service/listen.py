"""The API's listening sockets, bound before anything else starts.

Bound first so that the free port the local database server is given can never be the API's
own, and so that a port already in use is one line of error before a database is started.
They are bound the way asyncio's ``create_server`` (and so uvicorn) binds a host: every address
it resolves to, IPv6 sockets IPv6-only, and ``""`` for every interface of both families.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Sequence
from contextlib import ExitStack
from typing import Any

BACKLOG = 2048  # uvicorn's default


class ListenError(OSError):
    """The configured host and port cannot be bound."""


def url_host(family: int, address: str) -> str:
    """``address`` as a URL writes it: an IPv6 one in brackets."""
    return f"[{address}]" if family == socket.AF_INET6 else address


def bind_listeners(host: str, port: int) -> list[socket.socket]:
    """Listening TCP sockets for ``host``:``port``; uvicorn serves them once the app is up, and
    clients that connect before then wait in the backlog.

    Listening at once, not only binding, makes the port exclusive now: two sockets with
    ``SO_REUSEADDR`` may both bind one port as long as neither listens."""
    return _bind(host, port, listen=True)


def bind_listener_sets(host: str, port: int, count: int) -> list[list[socket.socket]]:
    """``count`` sets of listening sockets for ``host``:``port``, one set per serving process.

    The sets share the port with ``SO_REUSEPORT``, so the kernel hands each new connection to
    one of them by a hash of its addresses. Processes accepting on one shared socket take
    connections in bursts instead (whichever wakes first takes all that are pending), and a
    client that keeps a few connections open can find them all on one process. (A hash
    spreads a few connections only by chance, but many evenly.)

    The port stays this service's alone: its addresses are first bound without
    ``SO_REUSEPORT``, which fails where anything listens already (another instance's sets
    included), and held, not listening, while the sets bind beside them. Only two starts in
    the same instant could both pass that check."""
    with ExitStack() as probing:
        probes = _bind(host, port, listen=False)
        for probe in probes:
            probing.callback(probe.close)
        with ExitStack() as binding:
            sets = []
            for _ in range(count):
                sockets = bind_alike(probes)
                for sock in sockets:
                    binding.callback(sock.close)
                sets.append(sockets)
            binding.pop_all()
    return sets


def bind_alike(bound: Sequence[socket.socket]) -> list[socket.socket]:
    """One more set of listening sockets, with ``SO_REUSEPORT``, on the addresses ``bound``
    (a set of ``bind_listener_sets`` or its probes) are bound to."""
    with ExitStack() as opened:
        sockets = []
        for template in bound:
            address = template.getsockname()
            sock = opened.enter_context(socket.socket(template.family, template.type))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            try:
                _bind_one(sock, address, listen=True)
            except OSError as exc:
                raise ListenError(_cannot_listen(_shown(sock.family, address), exc)) from exc
            sockets.append(sock)
        opened.pop_all()
    return sockets


def _bind(host: str, port: int, *, listen: bool) -> list[socket.socket]:
    try:
        addresses = socket.getaddrinfo(
            host or None, port, socket.AF_UNSPEC, socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise ListenError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    except UnicodeError:  # a name IDNA cannot encode: an empty or long label, a stray byte
        raise ListenError(f"cannot listen on {host}:{port}: not a valid host name") from None
    with ExitStack() as opened:
        sockets = []
        skipped: tuple[str, OSError] | None = None  # the last address given up, and why
        for family, kind, proto, _, address in dict.fromkeys(addresses):  # once each
            try:
                sock = opened.enter_context(socket.socket(family, kind, proto))
            except OSError:
                continue  # a family this system does not have (as asyncio skips it)
            shown = _shown(family, address)
            try:
                _bind_one(sock, address, listen=listen)
            except OSError as exc:
                if family == socket.AF_INET6 and exc.errno == errno.EADDRNOTAVAIL:
                    sock.close()  # IPv6 turned off here: serve the other family, as asyncio does
                    skipped = shown, exc
                    continue
                raise ListenError(_cannot_listen(shown, exc)) from exc
            sockets.append(sock)
        if not sockets and skipped is not None:
            shown, reason = skipped
            raise ListenError(_cannot_listen(shown, reason)) from reason
        if not sockets:
            raise ListenError(f"cannot listen on {host}:{port}: no address of it can be bound")
        opened.pop_all()
    return sockets


def _bind_one(sock: socket.socket, address: Any, *, listen: bool) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if sock.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    sock.bind(address)
    if listen:
        sock.listen(BACKLOG)


def _shown(family: int, address: Any) -> str:
    return f"{url_host(family, str(address[0]))}:{address[1]}"


def _cannot_listen(shown: str, exc: OSError) -> str:
    return f"cannot listen on {shown}: {exc.strerror or exc}"
