"""One HTTP client, with its own keep-alive pool, per scheme, host name and port."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx

from service.fetch.policy import Target

# Host names whose connections are kept open at once.
MAX_POOLED_HOSTS = 64


@dataclass(slots=True)
class _Pool:
    client: httpx.AsyncClient
    active: int = 0


class HostClients:
    """One HTTP client, with its own keep-alive pool, per scheme, host name and port.

    Requests name the checked IP, and a client pools connections by the URL's host, so one
    client shared by all host names could reuse a connection made (and TLS-verified) for
    ``a.example`` for a request to ``b.example`` on the same address. Here no connection is
    ever shared between host names. Every connection in a pool went to an address checked
    when it was opened, and every request is checked again before it is sent.

    At most ``max_hosts`` clients are kept; the least recently used idle one is closed to
    make room, and when all are busy the request goes through a client that keeps no
    connection (so one serves every host name).
    """

    def __init__(
        self, make: Callable[[bool], httpx.AsyncClient], *, max_hosts: int = MAX_POOLED_HOSTS
    ) -> None:
        """``make(keep_alive)``: a new client, keeping its connections open or not."""
        self._make = make
        self._max_hosts = max_hosts
        self._pools: OrderedDict[tuple[str, str, int], _Pool] = OrderedDict()
        self._unpooled = make(False)  # keeps no connection, so it can serve any host name

    @asynccontextmanager
    async def client_for(self, target: Target) -> AsyncIterator[httpx.AsyncClient]:
        key = (target.scheme, target.host, target.port)
        pool, evicted = self._pools.get(key), None
        if pool is None:
            pool, evicted = self._open(key)
        if pool is None:
            yield self._unpooled
            return
        self._pools.move_to_end(key)
        pool.active += 1  # before any await, so that no other request evicts this pool
        try:
            if evicted is not None:
                await evicted.aclose()
            yield pool.client
        finally:
            pool.active -= 1

    def _open(self, key: tuple[str, str, int]) -> tuple[_Pool | None, httpx.AsyncClient | None]:
        """A new pool for ``key``, and the idle client evicted to make room (to be closed)."""
        evicted = None
        if len(self._pools) >= self._max_hosts:
            idle = next((k for k, pool in self._pools.items() if pool.active == 0), None)
            if idle is None:
                return None, None
            evicted = self._pools.pop(idle).client
        pool = self._pools[key] = _Pool(self._make(True))
        return pool, evicted

    @property
    def hosts(self) -> int:
        return len(self._pools)

    async def aclose(self) -> None:
        pools, self._pools = list(self._pools.values()), OrderedDict()
        for pool in pools:
            await pool.client.aclose()
        await self._unpooled.aclose()
