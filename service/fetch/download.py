"""Download an image from an untrusted URL: checked addresses, hand-followed redirects, caps."""

from __future__ import annotations

import asyncio
import http.cookiejar
import ipaddress
import re
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urljoin

import httpx

from service.errors import (
    ServiceError,
    UpstreamError,
    UpstreamTimeout,
    UrlRejected,
)
from service.fetch.body import (
    MANY_PIECES,
    MIN_MEAN_PIECE_BYTES,
    declared_length,
    fragmented,
    image_cap,
)
from service.fetch.clients import HostClients
from service.fetch.coding import BodyDecoder
from service.fetch.names import NameResolver
from service.fetch.policy import (
    FetchPolicy,
    IPAddress,
    Target,
    has_unsafe_characters,
    parse_target,
    resolve_target,
)
from service.fetch.transport import AiohttpTransport

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# Keep-alive: how long idle connections are kept.
KEEPALIVE_SECONDS = 5.0


# The longest entity tag kept for revalidation; S3's and most servers' are under 70 bytes.
MAX_ETAG_LENGTH = 256
# RFC 9110 section 8.8.3, less its obs-text (bytes over 0x7e): sent back as a header value.
_STRONG_ETAG = re.compile(r'"[\x21\x23-\x7e]*"')


@dataclass(frozen=True, slots=True)
class Fetched:
    data: bytes
    url: str  # final URL after redirects
    content_type: str | None
    sha256: str  # of ``data``, computed while streaming (no second pass over the bytes)
    redirects: tuple[str, ...]  # the URLs that redirected, in order
    # The response's strong entity tag when it came from the URL asked for (no redirect):
    # what ``ImageFetcher.revalidate`` can later ask with.
    etag: str | None = None


def strong_etag(value: str | None) -> str | None:
    """``value`` when it is one strong entity tag, else None. A strong tag changes whenever
    the bytes do (RFC 9110 section 8.8.1); a weak one (``W/"..."``) may stay the same for
    other bytes that mean the same, and a record is the labels of exact bytes."""
    if value is None:
        return None
    value = value.strip()
    if len(value) > MAX_ETAG_LENGTH or _STRONG_ETAG.fullmatch(value) is None:
        return None
    return value


def build_request(
    client: httpx.AsyncClient,
    target: Target,
    address: IPAddress,
    policy: FetchPolicy,
    if_none_match: str | None = None,
) -> httpx.Request:
    """A GET for ``target`` that connects to ``address`` and nowhere else; conditional on
    ``if_none_match`` (an entity tag) when given.

    The URL names the checked IP so nothing resolves the host again (no DNS-rebinding
    window); the Host header and TLS SNI/verification still use the real host name.
    """
    host = f"[{address}]" if isinstance(address, ipaddress.IPv6Address) else str(address)
    extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
    headers = {
        "Host": target.host_header,
        "User-Agent": policy.user_agent,
        "Accept": "image/*",
        "Accept-Encoding": "identity",
    }
    if if_none_match is not None:
        headers["If-None-Match"] = if_none_match
    return client.build_request(
        "GET",
        f"{target.scheme}://{host}:{target.port}{target.path}",
        headers=headers,
        extensions=extensions,
        timeout=_timeouts(policy),
    )


def _timeouts(policy: FetchPolicy) -> httpx.Timeout:
    return httpx.Timeout(
        connect=policy.connect_timeout,
        read=policy.read_timeout,
        write=policy.read_timeout,
        pool=policy.connect_timeout,
    )


def _transport_error(
    exc: httpx.TransportError, target: Target, policy: FetchPolicy
) -> ServiceError:
    if isinstance(exc, httpx.WriteTimeout):
        return UpstreamTimeout(
            f"{target.host} took in nothing of the request for {policy.read_timeout:g} s",
            extra={"reason": "timeout"},
        )
    if isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout):
        return UpstreamTimeout(
            f"connecting to {target.host} timed out", extra={"reason": "timeout"}
        )
    if isinstance(exc, httpx.TimeoutException):
        return UpstreamTimeout(
            f"{target.host} sent nothing for {policy.read_timeout:g} s",
            extra={"reason": "timeout"},
        )
    if isinstance(exc, httpx.ProtocolError):
        return UpstreamError(
            f"{target.host} sent an invalid HTTP response", extra={"reason": "protocol"}
        )
    return UpstreamError(f"the connection to {target.host} failed", extra={"reason": "connect"})


def _cookies_refused() -> http.cookiejar.CookieJar:
    """A jar that keeps no cookie: one fetcher serves every client, so a cookie that a host
    set on one client's fetch must not go out with another's."""
    return http.cookiejar.CookieJar(http.cookiejar.DefaultCookiePolicy(allowed_domains=()))


class ImageFetcher:
    """Fetches image bytes under a ``FetchPolicy``; safe to share between tasks.

    ``verify`` is TLS verification as httpx takes it (an ``ssl.SSLContext`` for a private CA).
    """

    def __init__(
        self,
        policy: FetchPolicy,
        *,
        verify: ssl.SSLContext | bool = True,
        name_servers: Sequence[str] = (),
    ) -> None:
        """``name_servers`` resolve the URLs' hosts in place of the system's (``NameResolver``)."""
        self._policy = policy
        self._resolver = NameResolver(name_servers)
        # One TLS context for every client: building one loads the CA bundle.
        context = (
            verify
            if isinstance(verify, ssl.SSLContext)
            else httpx.create_ssl_context(verify, trust_env=False)
        )

        def make(keep_alive: bool) -> httpx.AsyncClient:
            return httpx.AsyncClient(
                follow_redirects=False,
                trust_env=False,
                timeout=_timeouts(policy),
                transport=AiohttpTransport(
                    verify=context, keep_alive=keep_alive, keepalive_expiry=KEEPALIVE_SECONDS
                ),
                cookies=_cookies_refused(),
            )

        self._clients = HostClients(make)

    async def aclose(self) -> None:
        await self._clients.aclose()
        await self._resolver.aclose()

    async def fetch(self, url: str) -> Fetched:
        fetched = await self._within_deadline(url, None)
        assert fetched is not None  # only a conditional request is answered "not modified"
        return fetched

    async def revalidate(self, url: str, etag: str) -> Fetched | None:
        """Fetch ``url`` unless it still serves the bytes that came with ``etag`` (a strong
        entity tag it answered with before): None when its host says so (304 Not
        Modified), and no body is transferred. A redirect is followed without the tag,
        which belongs to ``url``."""
        return await self._within_deadline(url, etag)

    async def _within_deadline(self, url: str, etag: str | None) -> Fetched | None:
        try:
            async with asyncio.timeout(self._policy.total_timeout):
                return await self._fetch(url, etag)
        except TimeoutError:
            raise UpstreamTimeout(
                f"fetching the image took longer than {self._policy.total_timeout:g} s",
                extra={"reason": "timeout"},
            ) from None

    async def _fetch(self, url: str, etag: str | None) -> Fetched | None:
        policy = self._policy
        target = parse_target(url, policy)
        redirects: list[str] = []
        while True:
            addresses = await self._resolve(target, redirected=bool(redirects))
            async with self._clients.client_for(target) as client:
                response = await self._connect(client, target, addresses, etag)
                try:
                    if etag is not None and response.status_code == 304:
                        return None
                    location = response.headers.get("location")
                    if response.status_code not in REDIRECT_STATUSES or location is None:
                        return await self._read(target, response, tuple(redirects))
                except httpx.TransportError as exc:
                    raise _transport_error(exc, target, policy) from None
                finally:
                    await response.aclose()
            redirects.append(target.url)
            target = self._next_hop(target, location, redirects)
            etag = None

    async def _resolve(self, target: Target, *, redirected: bool) -> list[IPAddress]:
        try:
            return await resolve_target(target, self._policy, self._resolver)
        except UrlRejected as exc:
            if not redirected:
                raise
            raise UrlRejected(f"redirect refused: {exc.detail}", extra=exc.extra) from None

    def _next_hop(self, current: Target, location: str, redirects: list[str]) -> Target:
        policy = self._policy
        # A space inside, as a browser follows it (WHATWG URL: %20); any other whitespace or
        # control character is the host's error, not the client's.
        location = location.strip(" ").replace(" ", "%20")
        if has_unsafe_characters(location):
            raise UpstreamError(
                f"the host redirected to a URL with control characters: {location[:200]!r}",
                extra={"reason": "bad_redirect"},
            )
        try:
            joined = urljoin(current.url, location)
        except ValueError:  # e.g. "http://a]/": not a URL at all, the host's fault
            raise UpstreamError(
                f"the host redirected to a malformed URL: {location[:200]!r}",
                extra={"reason": "bad_redirect"},
            ) from None
        try:
            target = parse_target(joined, policy)
        except UrlRejected as exc:
            raise UrlRejected(f"redirect refused: {exc.detail}", extra=exc.extra) from None
        if target.url in redirects:
            raise UpstreamError(
                f"redirect loop: {target.url} was already visited",
                extra={"reason": "redirect_loop"},
            )
        if len(redirects) > policy.max_redirects:
            raise UpstreamError(
                f"more than {policy.max_redirects} redirects",
                extra={"reason": "redirects", "max_redirects": policy.max_redirects},
            )
        return target

    async def _connect(
        self,
        client: httpx.AsyncClient,
        target: Target,
        addresses: list[IPAddress],
        if_none_match: str | None,
    ) -> httpx.Response:
        """Send to each checked address in turn until one accepts the connection."""
        timed_out = 0
        for address in addresses:
            request = build_request(client, target, address, self._policy, if_none_match)
            try:
                return await client.send(request, stream=True, follow_redirects=False)
            except httpx.ConnectTimeout:
                timed_out += 1
            except httpx.ConnectError:
                pass
            except httpx.TransportError as exc:
                raise _transport_error(exc, target, self._policy) from None
            except (httpx.InvalidURL, ValueError):
                # httpx resolves a redirect's Location even when not following it, and
                # fails on one with a scheme but no host (mailto:, data:, http:a.jpg), an
                # invalid IDNA label (http://xn--zz.com/: UnicodeError) or a broken IPv6
                # literal (ValueError).
                raise UpstreamError(
                    f"{target.host} redirected to a URL that cannot be fetched",
                    extra={"reason": "bad_redirect"},
                ) from None
        if timed_out == len(addresses):
            raise UpstreamTimeout(
                f"connecting to {target.host} timed out", extra={"reason": "timeout"}
            )
        raise UpstreamError(f"could not connect to {target.host}", extra={"reason": "connect"})

    async def _read(
        self, target: Target, response: httpx.Response, redirects: tuple[str, ...]
    ) -> Fetched:
        policy = self._policy
        status = response.status_code
        if not 200 <= status < 300:
            raise UpstreamError(
                f"{target.host} answered HTTP {status}",
                extra={"reason": "upstream_status", "upstream_status": status},
            )
        body = image_cap(policy.max_bytes)
        body.check_declared(declared_length(response.headers.get("content-length")))
        decoder = BodyDecoder.for_coding(response.headers.get("content-encoding"), target.host)
        received = pieces = 0
        async for raw in response.aiter_raw():
            received += len(raw)
            pieces += 1
            if fragmented(pieces, received):
                raise UpstreamError(
                    f"{target.host} sent the body in over {MANY_PIECES} pieces of under"
                    f" {MIN_MEAN_PIECE_BYTES} bytes on average",
                    extra={"reason": "protocol"},
                )
            chunk = raw
            if decoder is not None:  # the cap holds for the decoded bytes: no zip bombs
                # and for the compressed ones (empty blocks decode to nothing)
                chunk = decoder.decode(raw, policy.max_bytes - body.size + 1)
                if received > policy.max_bytes:
                    raise body.too_large()
            body.add(chunk)
        if decoder is not None and not decoder.complete:
            raise UpstreamError(
                f"{target.host} sent a compressed body cut short", extra={"reason": "protocol"}
            )
        content = body.content()
        return Fetched(
            data=content.data,
            url=target.url,
            content_type=response.headers.get("content-type"),
            sha256=content.sha256,
            redirects=redirects,
            etag=None if redirects else strong_etag(response.headers.get("etag")),
        )
