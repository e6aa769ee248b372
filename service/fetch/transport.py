"""The downloader's HTTP/1.1 I/O: an httpx transport whose connections and parsing are aiohttp's.

httpx stays the fetcher's interface (requests, responses, timeouts, errors); only the layer
under it changes. httpcore 1.0, httpx's own transport, closes idle connections whenever a
host has more connections open than its keep-alive count, so a burst of URLs from one host
reconnects (and, over TLS, handshakes again) for most images; and it spends about twice the
CPU per download of aiohttp's C parser and pool (``python -m bench.fetch``).

Errors come out as the httpx exceptions httpcore would raise for the same failure, so the
downloader's messages do not depend on the transport.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

import aiohttp
import httpx
import yarl
from aiohttp.http_exceptions import BadHttpMessage

# Interim (1xx) answers a host may send before its response; aiohttp reads any number, so a
# host streaming "100 Continue" kept the event loop parsing until the total deadline, the
# read timeout never running out while bytes came.
MAX_INTERIM_RESPONSES = 8


class _BoundedInterimResponse(aiohttp.ClientResponse):
    async def start(self, connection: aiohttp.connector.Connection) -> aiohttp.ClientResponse:
        protocol = connection.protocol
        assert protocol is not None
        read = protocol.read  # each call: one message; aiohttp's start loops past 1xx ones
        messages = 0

        async def bounded_read():  # type: ignore[no-untyped-def]
            nonlocal messages
            messages += 1
            if messages > MAX_INTERIM_RESPONSES + 1:
                raise BadHttpMessage(f"more than {MAX_INTERIM_RESPONSES} interim responses")
            return await read()

        protocol.read = bounded_read  # type: ignore[method-assign]
        try:
            return await super().start(connection)
        finally:
            del protocol.read  # the class's again, for the connection's next response


class AiohttpTransport(httpx.AsyncBaseTransport):
    """Connections per (address, port, TLS), kept alive for ``keepalive_expiry`` seconds, or
    closed after each response when ``keep_alive`` is false.

    Requests name a literal IP address (the downloader pins the addresses it checked), so
    nothing is resolved here; the ``sni_hostname`` request extension names the host for TLS
    verification and SNI. aiohttp does not tell connections apart by that name, so a
    transport must only ever serve one host name when it keeps connections alive.
    """

    def __init__(
        self, *, verify: ssl.SSLContext, keep_alive: bool = True, keepalive_expiry: float = 5.0
    ) -> None:
        self._verify = verify
        self._keep_alive = keep_alive
        self._keepalive_expiry = keepalive_expiry
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        # Made on first use: an aiohttp session belongs to the running event loop.
        if self._session is None:
            connector = aiohttp.TCPConnector(
                ssl=self._verify,
                limit=0,  # the service bounds concurrent fetches itself
                force_close=not self._keep_alive,
                keepalive_timeout=self._keepalive_expiry if self._keep_alive else None,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                cookie_jar=aiohttp.DummyCookieJar(),
                response_class=_BoundedInterimResponse,
                auto_decompress=False,
                trust_env=False,
                # Only the headers the request carries: no default Accept-Encoding or agent.
                skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent"),
            )
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeout = request.extensions.get("timeout", {})
        headers = [
            (name.decode("latin-1"), value.decode("latin-1")) for name, value in request.headers.raw
        ]
        with _as_httpx_errors(request):
            response = await self._open().request(
                request.method,
                # As httpx encoded it: yarl would decode %2F and %3F in the query again.
                yarl.URL(str(request.url), encoded=True),
                headers=headers,
                data=request.content or None,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(
                    total=None,
                    connect=timeout.get("pool"),
                    sock_connect=timeout.get("connect"),
                    sock_read=timeout.get("read"),
                ),
                server_hostname=request.extensions.get("sni_hostname"),
            )
        return httpx.Response(
            response.status,
            headers=list(response.raw_headers),
            stream=_Body(response, request),
            request=request,
            extensions={"http_version": b"HTTP/1.1"},
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class _Body(httpx.AsyncByteStream):
    def __init__(self, response: aiohttp.ClientResponse, request: httpx.Request) -> None:
        self._response = response
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        """Each HTTP chunk of a chunked body as a piece of its own (or less): the downloader
        bounds how many tiny pieces it takes."""
        with _as_httpx_errors(self._request):
            async for chunk, _ in self._response.content.iter_chunks():
                if chunk:
                    yield chunk

    async def aclose(self) -> None:
        # Back to the pool when the body was read to its end; closed otherwise.
        self._response.release()


@contextmanager
def _as_httpx_errors(request: httpx.Request) -> Iterator[None]:
    try:
        yield
    except aiohttp.ConnectionTimeoutError as exc:  # connecting, or waiting for the pool
        raise httpx.ConnectTimeout(str(exc), request=request) from exc
    except (aiohttp.ServerTimeoutError, TimeoutError) as exc:  # no bytes for ``read`` s
        raise httpx.ReadTimeout(str(exc), request=request) from exc
    except aiohttp.ClientConnectorError as exc:  # refused, unreachable, TLS verification
        raise httpx.ConnectError(str(exc), request=request) from exc
    except (
        aiohttp.ServerDisconnectedError,
        aiohttp.ClientPayloadError,
        aiohttp.ClientResponseError,
    ) as exc:  # not HTTP, or a message cut short
        raise httpx.RemoteProtocolError(str(exc), request=request) from exc
    except (aiohttp.ClientError, OSError) as exc:  # reset, broken pipe
        raise httpx.ReadError(str(exc), request=request) from exc
