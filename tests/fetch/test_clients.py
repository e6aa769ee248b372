"""Host clients: one keep-alive pool per host name, a bounded number of them."""

from __future__ import annotations

import asyncio

import httpx

from service.fetch.clients import HostClients
from service.fetch.policy import Target, parse_target

from .test_download import LOCAL


async def test_host_clients_are_bounded_and_busy_ones_are_never_closed() -> None:
    made: list[httpx.AsyncClient] = []

    def make(keep_alive: bool) -> httpx.AsyncClient:
        keepalive = httpx.Limits(max_keepalive_connections=4 if keep_alive else 0)
        made.append(httpx.AsyncClient(limits=keepalive))
        return made[-1]

    def target(host: str) -> Target:
        return parse_target(f"http://{host}/x.jpg", LOCAL)

    clients = HostClients(make, max_hosts=2)
    unpooled = made[0]
    async with clients.client_for(target("a.example")) as a:
        async with clients.client_for(target("a.example")) as again:
            assert again is a
        async with clients.client_for(target("b.example")) as b:
            assert b is not a and clients.hosts == 2
            async with clients.client_for(target("c.example")) as c:
                assert c is unpooled  # both pooled clients busy: neither is closed
        assert clients.hosts == 2 and not a.is_closed
    async with clients.client_for(target("c.example")) as c:
        assert c is not unpooled and clients.hosts == 2
    assert a.is_closed  # the least recently used idle client made room
    assert not b.is_closed
    await clients.aclose()
    assert all(client.is_closed for client in made)


async def test_a_new_host_client_is_not_evicted_while_the_one_it_replaces_closes() -> None:
    class SlowToClose(httpx.AsyncClient):
        async def aclose(self) -> None:
            await asyncio.sleep(0.05)
            await super().aclose()

    clients = HostClients(lambda _: SlowToClose(), max_hosts=2)

    async def use(host: str) -> httpx.AsyncClient:
        async with clients.client_for(parse_target(f"http://{host}/x.jpg", LOCAL)) as client:
            await asyncio.sleep(0)
            return client

    async with clients.client_for(parse_target("http://a.example/x.jpg", LOCAL)):
        await use("b.example")  # pooled, then idle
        # c evicts b and waits for it to close; meanwhile d finds c busy, not idle.
        c, d = await asyncio.gather(use("c.example"), use("d.example"))
    assert c is not d and not c.is_closed
    await clients.aclose()
