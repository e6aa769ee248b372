"""The aiohttp transport under httpx, on its own, against the real test server."""

from __future__ import annotations

import socket
import ssl
from collections.abc import AsyncIterator, Callable

import httpx
import pytest

from service.fetch.transport import AiohttpTransport

from .conftest import JPEG, Server

TIMEOUT = httpx.Timeout(1.0).as_dict()
MakeTransport = Callable[[bool], AiohttpTransport]


@pytest.fixture
async def make_transport() -> AsyncIterator[MakeTransport]:
    made: list[AiohttpTransport] = []

    def make(keep_alive: bool) -> AiohttpTransport:
        made.append(AiohttpTransport(verify=ssl.create_default_context(), keep_alive=keep_alive))
        return made[-1]

    yield make
    for transport in made:
        await transport.aclose()


async def get(transport: AiohttpTransport, url: str) -> tuple[int, bytes]:
    request = httpx.Request("GET", url, extensions={"timeout": TIMEOUT})
    response = await transport.handle_async_request(request)
    try:
        return response.status_code, b"".join([chunk async for chunk in response.aiter_raw()])
    finally:
        await response.aclose()


@pytest.mark.parametrize(("keep_alive", "connections"), [(True, 1), (False, 3)])
async def test_keeps_connections_alive_only_when_asked(
    server: Server, make_transport: MakeTransport, keep_alive: bool, connections: int
) -> None:
    transport = make_transport(keep_alive)
    for _ in range(3):
        assert await get(transport, server.url("/keep.jpg")) == (200, JPEG)
    await transport.aclose()  # before the server stops: it waits for open connections to end
    assert server.connections == connections


async def test_sends_the_request_headers_as_given(
    server: Server, make_transport: MakeTransport
) -> None:
    request = httpx.Request(
        "GET",
        server.url("/ok.jpg"),
        headers={"Host": "photos.example", "User-Agent": "labelsvc/test"},
        extensions={"timeout": TIMEOUT},
    )
    response = await make_transport(False).handle_async_request(request)
    await response.aread()
    [seen] = server.seen
    assert seen.headers["Host"] == "photos.example"
    assert seen.headers["User-Agent"] == "labelsvc/test"
    assert "Cookie" not in seen.headers and "Accept-Encoding" not in seen.headers


async def test_errors_are_the_httpx_errors_of_the_same_failure(
    server: Server, make_transport: MakeTransport
) -> None:
    transport = make_transport(False)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    with pytest.raises(httpx.ConnectError):
        await get(transport, f"http://127.0.0.1:{closed_port}/ok.jpg")
    with pytest.raises(httpx.ReadTimeout):
        await get(transport, server.url("/stall"))
    with pytest.raises(httpx.RemoteProtocolError):
        await get(transport, server.url("/garbage"))
    with pytest.raises(httpx.RemoteProtocolError):
        await get(transport, server.url("/short"))
