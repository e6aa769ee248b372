"""Host names to addresses, asynchronously: no thread waits on a slow name server.

``socket.getaddrinfo`` blocks a thread until the name server answers or the system's
resolver gives up, which can be well past a fetch's deadline, and a blocked call cannot be
cancelled. Anyone can post URLs on a domain whose name server never answers, so each such
URL would hold a thread long after its fetch had failed, and the lookups of every other
fetch would wait behind them. c-ares (through aiodns) runs every lookup on one event thread
instead, reads the hosts file and ``/etc/resolv.conf`` as the system's resolver does, and
an abandoned lookup costs a pending query until the resolver's own timeout, not a thread.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Sequence

import aiodns


class LookupFailed(Exception):
    """The name did not resolve: no such host, no answer in time, or no name server."""


class NameResolver:
    """Resolves host names on the running event loop; safe to share between tasks.

    ``name_servers`` ("address" or "address:port") replaces the system's list, e.g. to
    resolve through a filtering resolver, or a test's own name server.
    """

    def __init__(self, name_servers: Sequence[str] = ()) -> None:
        self._name_servers = list(name_servers)
        self._resolver: aiodns.DNSResolver | None = None

    def _channel(self) -> aiodns.DNSResolver:
        # Made on first use, so inside the process and the event loop that use it.
        if self._resolver is None:
            self._resolver = aiodns.DNSResolver(
                nameservers=self._name_servers or None, loop=asyncio.get_running_loop()
            )
        return self._resolver

    async def addresses(self, host: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        """The host's addresses in the resolver's order (empty when it has none)."""
        try:
            result = await self._channel().getaddrinfo(
                host, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
            )
        except aiodns.error.DNSError as exc:
            raise LookupFailed(str(exc)) from None
        return [
            _address(node.addr[0])
            for node in result.nodes
            if node.family in (socket.AF_INET, socket.AF_INET6)
        ]

    async def aclose(self) -> None:
        if self._resolver is not None:
            await self._resolver.close()
            self._resolver = None


def _address(text: bytes | str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """pycares gives addresses as ASCII bytes; an IPv6 one may carry a "%zone"."""
    if isinstance(text, bytes):
        text = text.decode("ascii")
    return ipaddress.ip_address(text.partition("%")[0])
