"""The downloader against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import socket
import ssl
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.errors import PayloadTooLarge, UpstreamError, UpstreamTimeout, UrlRejected
from service.fetch import download
from service.fetch.download import Fetched, ImageFetcher, build_request
from service.fetch.policy import FetchPolicy, IPAddress, Target, parse_target
from tests.support.name_server import SILENT, NameServer

from .conftest import JPEG, Server

CAP = 64 * 1024
LOCAL = FetchPolicy(
    allow_private=True,
    max_bytes=CAP,
    max_redirects=3,
    connect_timeout=1.0,
    read_timeout=1.0,
    total_timeout=5.0,
    user_agent="labelsvc/test",
)

MakeFetcher = Callable[..., ImageFetcher]


@pytest.fixture
async def make_fetcher() -> AsyncIterator[MakeFetcher]:
    made: list[ImageFetcher] = []

    def make(
        verify: ssl.SSLContext | bool = True, name_servers: Sequence[str] = (), **changes: Any
    ) -> ImageFetcher:
        fields = {name: getattr(LOCAL, name) for name in LOCAL.__slots__} | changes
        fetcher = ImageFetcher(FetchPolicy(**fields), verify=verify, name_servers=name_servers)
        made.append(fetcher)
        return fetcher

    yield make
    for fetcher in made:
        await fetcher.aclose()


@pytest.fixture
def fetcher(make_fetcher: MakeFetcher) -> ImageFetcher:
    return make_fetcher()


async def test_fetches_bytes_and_sends_headers(fetcher: ImageFetcher, server: Server) -> None:
    result = await fetcher.fetch(server.url("/ok.jpg"))
    assert result == Fetched(
        data=JPEG,
        url=server.url("/ok.jpg"),
        content_type="image/jpeg",
        redirects=(),
        sha256=hashlib.sha256(JPEG).hexdigest(),
    )
    [seen] = server.seen
    assert seen.headers["Host"] == f"127.0.0.1:{server.port}"
    assert seen.headers["User-Agent"] == "labelsvc/test"
    assert seen.headers["Accept"] == "image/*"
    assert seen.headers["Accept-Encoding"] == "identity"


async def test_host_name_is_kept_in_host_header(fetcher: ImageFetcher, server: Server) -> None:
    url = f"http://localhost:{server.port}/ok.jpg"
    result = await fetcher.fetch(url)
    assert (result.data, result.url) == (JPEG, url)
    assert server.seen[-1].headers["Host"] == f"localhost:{server.port}"


async def test_tries_checked_addresses_in_order(
    fetcher: ImageFetcher, server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def resolve(target: Target, policy: FetchPolicy, _: object) -> list[IPAddress]:
        # Nothing listens on 127.0.0.2 (the server is bound to 127.0.0.1 only).
        return [ipaddress.IPv4Address("127.0.0.2"), ipaddress.IPv4Address("127.0.0.1")]

    monkeypatch.setattr(download, "resolve_target", resolve)
    result = await fetcher.fetch(f"http://images.example:{server.port}/ok.jpg")
    assert result.data == JPEG
    assert server.seen[-1].headers["Host"] == f"images.example:{server.port}"


async def test_the_url_is_requested_as_the_client_wrote_it(
    server: Server, fetcher: ImageFetcher
) -> None:
    """Percent-escapes are kept: %2F and / differ to a host (signed URLs sign the text)."""
    await fetcher.fetch(server.url("/ok.jpg?s=%2F%3F%26%3D&t=a%20b"))
    assert server.seen[-1].path == "/ok.jpg?s=%2F%3F%26%3D&t=a%20b"


async def test_lookups_a_silent_name_server_holds_stall_no_other_fetch(
    server: Server, name_server: NameServer, make_fetcher: MakeFetcher
) -> None:
    """Lookups that get no answer hold no thread, in flight or after their fetches gave up:
    with a blocking lookup each would hold one past its fetch's deadline, and a few dozen
    URLs on such a domain would leave every other fetch waiting for a thread."""
    name_server.table |= {f"h{i}.slow.test": SILENT for i in range(64)}
    name_server.table["images.test"] = ["127.0.0.1"]
    fetcher = make_fetcher(total_timeout=1.0, name_servers=[name_server.address])
    url = f"http://images.test:{server.port}/ok.jpg"
    slow = [asyncio.create_task(fetcher.fetch(f"http://h{i}.slow.test/x.jpg")) for i in range(64)]
    await asyncio.sleep(0.1)
    # Each fetch has 1 s: one held up behind the silent lookups would time out too.
    assert (await fetcher.fetch(url)).data == JPEG
    assert not any(task.done() for task in slow)
    for task in slow:
        with pytest.raises(UpstreamTimeout):
            await task
    # Their lookups are still unanswered: the name server has not said a word.
    name_server.table["again.test"] = ["127.0.0.1"]
    fetched = await fetcher.fetch(f"http://again.test:{server.port}/ok.jpg")
    assert fetched.data == JPEG


async def test_a_name_that_does_not_exist_is_a_dns_error(
    name_server: NameServer, make_fetcher: MakeFetcher
) -> None:
    fetcher = make_fetcher(name_servers=[name_server.address])
    with pytest.raises(UpstreamError) as info:
        await fetcher.fetch("http://nowhere.test/x.jpg")
    assert (info.value.status, info.value.extra) == (502, {"reason": "dns"})
    assert info.value.detail == "could not resolve host nowhere.test"


async def test_connection_refused_is_connect_error(fetcher: ImageFetcher) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(UpstreamError) as info:
        await fetcher.fetch(f"http://127.0.0.1:{port}/ok.jpg")
    assert type(info.value) is UpstreamError
    assert info.value.status == 502
    assert info.value.extra == {"reason": "connect"}


async def test_private_address_refused_before_connecting(
    make_fetcher: MakeFetcher, server: Server
) -> None:
    fetcher = make_fetcher(allow_private=False)
    for url in (server.url("/ok.jpg"), f"http://localhost:{server.port}/ok.jpg"):
        with pytest.raises(UrlRejected) as info:
            await fetcher.fetch(url)
        assert info.value.extra["reason"] == "address"
        if "localhost" in url:  # what a name resolves to is not told
            assert "resolves to an address" in info.value.detail
            assert "127.0.0.1" not in info.value.detail
        else:
            assert "address 127.0.0.1 is loopback" in info.value.detail
    assert server.connections == 0


async def test_follows_absolute_redirect(fetcher: ImageFetcher, server: Server) -> None:
    result = await fetcher.fetch(server.url("/redirect"))
    assert result.data == JPEG
    assert result.url == server.url("/ok.jpg")
    assert result.redirects == (server.url("/redirect"),)
    assert [seen.path for seen in server.seen] == ["/redirect", "/ok.jpg"]
    assert all(seen.headers["User-Agent"] == "labelsvc/test" for seen in server.seen)


async def test_follows_relative_redirect(fetcher: ImageFetcher, server: Server) -> None:
    result = await fetcher.fetch(server.url("/relative-redirect"))
    assert result.url == server.url("/ok.jpg?via=relative")
    assert result.redirects == (server.url("/relative-redirect"),)
    assert result.data == JPEG


async def test_redirect_chain_up_to_the_limit(fetcher: ImageFetcher, server: Server) -> None:
    result = await fetcher.fetch(server.url("/redirect-chain/3"))
    assert result.data == JPEG
    assert result.url == server.url("/redirect-chain/0")
    assert result.redirects == tuple(server.url(f"/redirect-chain/{n}") for n in (3, 2, 1))


async def test_too_many_redirects(fetcher: ImageFetcher, server: Server) -> None:
    with pytest.raises(UpstreamError) as info:
        await fetcher.fetch(server.url("/redirect-chain/4"))
    assert type(info.value) is UpstreamError
    assert info.value.extra["reason"] == "redirects"
    assert info.value.detail == "more than 3 redirects"
    assert len(server.seen) == 4  # the fifth hop is never requested


async def test_zero_redirects_allowed(make_fetcher: MakeFetcher, server: Server) -> None:
    with pytest.raises(UpstreamError) as info:
        await make_fetcher(max_redirects=0).fetch(server.url("/redirect"))
    assert info.value.extra["reason"] == "redirects"


async def test_redirect_loop(fetcher: ImageFetcher, server: Server) -> None:
    with pytest.raises(UpstreamError) as info:
        await fetcher.fetch(server.url("/loop-a"))
    assert type(info.value) is UpstreamError
    assert info.value.extra["reason"] == "redirect_loop"
    assert [seen.path for seen in server.seen] == ["/loop-a", "/loop-b"]


@pytest.mark.parametrize("status", [404, 500])
async def test_error_status(fetcher: ImageFetcher, server: Server, status: int) -> None:
    with pytest.raises(UpstreamError) as info:
        await fetcher.fetch(server.url(f"/{status}"))
    assert type(info.value) is UpstreamError
    assert info.value.status == 502
    assert info.value.extra == {"reason": "upstream_status", "upstream_status": status}
    assert "secret" not in info.value.detail


async def test_redirect_without_location_is_a_status_error(
    fetcher: ImageFetcher, server: Server
) -> None:
    with pytest.raises(UpstreamError) as info:
        await fetcher.fetch(server.url("/redirect-no-location"))
    assert info.value.extra == {"reason": "upstream_status", "upstream_status": 302}


async def test_redirect_to_metadata_refused_even_with_allow_private(
    fetcher: ImageFetcher, server: Server
) -> None:
    with pytest.raises(UrlRejected) as info:
        await fetcher.fetch(server.url("/redirect-to-metadata"))
    assert info.value.extra["reason"] == "address"
    assert info.value.detail == (
        "redirect refused: address 169.254.169.254 is a cloud metadata address"
    )


@pytest.mark.parametrize(
    ("location", "reason"),
    [
        ("file:///etc/passwd", "scheme"),
        ("gopher://127.0.0.1/", "scheme"),
        ("http://user:pw@127.0.0.1/", "credentials"),
        ("http://[::ffff:a9fe:a9fe]/", "address"),
    ],
)
async def test_redirect_targets_go_through_the_policy(
    fetcher: ImageFetcher, server: Server, location: str, reason: str
) -> None:
    url = str(httpx.URL(server.url("/redirect-to"), params={"location": location}))
    with pytest.raises(UrlRejected) as info:
        await fetcher.fetch(url)
    assert info.value.extra["reason"] == reason
    assert info.value.detail.startswith("redirect refused: ")
    assert len(server.seen) == 1


async def test_a_space_in_a_redirect_is_followed_as_browsers_follow_it(
    fetcher: ImageFetcher, server: Server
) -> None:
    url = str(httpx.URL(server.url("/redirect-to"), params={"location": " /ok.jpg?name=a photo"}))
    assert (await fetcher.fetch(url)).data == JPEG
    assert server.seen[-1].path == "/ok.jpg?name=a%20photo"


@pytest.mark.parametrize(
    "location",
    [
        "http://a]/",
        "//a[b]/",
        "mailto:x@y",
        "data:,x",
        "http:a.jpg",
        "urn:isbn:1",
        "http://xn--zz.com/",  # not a valid IDNA label
        "http://xn--/",
        ":https://]https://https://[",  # a broken IPv6 literal once joined
        "/ok.jpg\x85x",  # a control character (C1) the header's parser lets through
    ],
)
async def test_malformed_redirect_is_the_hosts_error(
    fetcher: ImageFetcher, server: Server, location: str
) -> None:
    url = str(httpx.URL(server.url("/redirect-to"), params={"location": location}))
    with pytest.raises(UpstreamError) as info:
        await fetcher.fetch(url)
    assert info.value.status == 502
    assert info.value.extra == {"reason": "bad_redirect"}


@pytest.mark.parametrize(
    ("coding", "body"),
    [
        ("gzip", "ok"),
        ("x-gzip", "ok"),
        ("deflate", "ok"),
        ("gzip", "members"),  # a gzip body may be several members, one after the other
        ("gzip", "padded"),  # bytes after the end are dropped, as browsers drop them
        ("deflate", "padded"),
    ],
)
async def test_a_compressed_body_is_decoded(
    fetcher: ImageFetcher, server: Server, coding: str, body: str
) -> None:
    """Sent compressed despite Accept-Encoding: identity: the image is the decoded bytes."""
    result = await fetcher.fetch(server.url(f"/encoded?coding={coding}&body={body}"))
    assert result.data == JPEG
    assert result.sha256 == hashlib.sha256(JPEG).hexdigest()


@pytest.mark.parametrize(
    ("query", "error", "reason"),
    [
        ("coding=gzip&body=bomb", PayloadTooLarge, "too_large"),  # the cap is on decoded bytes
        ("coding=gzip&body=cut", UpstreamError, "protocol"),
        ("coding=gzip&body=bad", UpstreamError, "content_encoding"),
        ("coding=br&body=ok", UpstreamError, "content_encoding"),
        # Neither may be read until the deadline: bytes dropped after the end, or decoding
        # to nothing, still count against the cap.
        ("coding=gzip&body=trailing", PayloadTooLarge, "too_large"),
        ("coding=gzip&body=empty_blocks", PayloadTooLarge, "too_large"),
    ],
)
async def test_a_compressed_body_that_cannot_be_used_is_refused(
    fetcher: ImageFetcher, server: Server, query: str, error: type[Exception], reason: str
) -> None:
    with pytest.raises(error) as info:
        await fetcher.fetch(server.url(f"/encoded?{query}"))
    assert info.value.extra["reason"] == reason  # type: ignore[attr-defined]


async def test_declared_length_over_cap_refused_early(
    fetcher: ImageFetcher, server: Server
) -> None:
    with pytest.raises(PayloadTooLarge) as info:
        await fetcher.fetch(server.url("/big"))
    assert info.value.status == 413
    assert info.value.extra == {"reason": "too_large", "max_bytes": CAP}


@pytest.mark.parametrize("path", ["/endless", "/endless-close"])
async def test_streamed_body_stops_at_cap(fetcher: ImageFetcher, server: Server, path: str) -> None:
    started = time.monotonic()
    with pytest.raises(PayloadTooLarge) as info:
        await fetcher.fetch(server.url(path))
    assert info.value.extra["reason"] == "too_large"
    assert time.monotonic() - started < 2


async def test_a_body_in_a_flood_of_tiny_chunks_is_refused(
    fetcher: ImageFetcher, server: Server
) -> None:
    """Each chunk costs the event loop a few microseconds and 1-byte chunks never reach the
    byte cap: the number of tiny pieces is bounded instead of the total deadline."""
    started = time.monotonic()
    with pytest.raises(UpstreamError, match="pieces") as info:
        await fetcher.fetch(server.url("/tiny-chunks"))
    assert info.value.extra == {"reason": "protocol"}
    assert time.monotonic() - started < 2


@pytest.mark.parametrize("size", [1, 256, 100_000])
async def test_a_chunked_body_is_read_whole(
    fetcher: ImageFetcher, server: Server, size: int
) -> None:
    assert (await fetcher.fetch(server.url(f"/chunked?size={size}"))).data == JPEG


async def test_exact_cap_is_allowed(make_fetcher: MakeFetcher, server: Server) -> None:
    assert (await make_fetcher(max_bytes=len(JPEG)).fetch(server.url("/ok.jpg"))).data == JPEG
    with pytest.raises(PayloadTooLarge):
        await make_fetcher(max_bytes=len(JPEG) - 1).fetch(server.url("/ok.jpg"))


async def test_drip_hits_total_deadline(make_fetcher: MakeFetcher, server: Server) -> None:
    fetcher = make_fetcher(read_timeout=5.0, total_timeout=1.5)
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout) as info:
        await fetcher.fetch(server.url("/drip"))
    elapsed = time.monotonic() - started
    assert info.value.status == 504
    assert info.value.extra == {"reason": "timeout"}
    assert "longer than 1.5 s" in info.value.detail
    assert 1.4 < elapsed < 2.5


async def test_silent_server_hits_read_timeout(make_fetcher: MakeFetcher, server: Server) -> None:
    fetcher = make_fetcher(read_timeout=0.5, total_timeout=5.0)
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout) as info:
        await fetcher.fetch(server.url("/stall"))
    assert info.value.extra == {"reason": "timeout"}
    assert "sent nothing for 0.5 s" in info.value.detail
    assert time.monotonic() - started < 2


async def test_empty_body_is_returned(fetcher: ImageFetcher, server: Server) -> None:
    result = await fetcher.fetch(server.url("/empty"))
    assert result.data == b""
    assert result.content_type == "image/jpeg"


async def test_url_refused_before_any_request(fetcher: ImageFetcher, server: Server) -> None:
    with pytest.raises(UrlRejected) as info:
        await fetcher.fetch(f"ftp://127.0.0.1:{server.port}/ok.jpg")
    assert info.value.extra["reason"] == "scheme"
    assert server.connections == 0


def test_https_request_targets_the_ip_with_real_name_for_tls() -> None:
    client = httpx.AsyncClient()
    target = parse_target("https://images.example:8443/a.jpg?x=1", LOCAL)
    request = build_request(client, target, ipaddress.IPv6Address("2606:4700::1"), LOCAL)
    assert str(request.url) == "https://[2606:4700::1]:8443/a.jpg?x=1"
    assert request.headers["Host"] == "images.example:8443"
    assert request.extensions["sni_hostname"] == "images.example"
    plain_target = parse_target("http://a.example/", LOCAL)
    plain = build_request(client, plain_target, ipaddress.IPv4Address("93.184.216.34"), LOCAL)
    assert str(plain.url) == "http://93.184.216.34/"
    assert plain.headers["Host"] == "a.example"
    assert "sni_hostname" not in plain.extensions


async def test_tls_verifies_the_host_name_not_the_ip(
    make_fetcher: MakeFetcher, tls_server: Server, certificate: Path
) -> None:
    fetcher = make_fetcher(verify=ssl.create_default_context(cafile=certificate / "cert.pem"))
    result = await fetcher.fetch(f"https://localhost:{tls_server.port}/ok.jpg")
    assert result.data == JPEG
    assert tls_server.seen[-1].headers["Host"] == f"localhost:{tls_server.port}"
    # The certificate names only "localhost", so the bare IP must fail verification.
    with pytest.raises(UpstreamError) as info:
        await fetcher.fetch(tls_server.url("/ok.jpg"))
    assert info.value.extra == {"reason": "connect"}


async def test_keep_alive_never_shares_a_connection_between_host_names(
    make_fetcher: MakeFetcher, server: Server
) -> None:
    fetcher = make_fetcher()
    for _ in range(3):
        assert (await fetcher.fetch(server.url("/keep.jpg"))).data == JPEG
    assert server.connections == 1  # one connection served all three
    # Same address, another host name: a connection of its own, and the right Host header.
    await fetcher.fetch(f"http://localhost:{server.port}/keep.jpg")
    assert server.connections == 2
    assert server.seen[-1].headers["Host"] == f"localhost:{server.port}"
    await fetcher.fetch(server.url("/keep.jpg"))
    assert server.connections == 2
    assert server.seen[-1].headers["Host"] == f"127.0.0.1:{server.port}"
    await fetcher.aclose()  # before the server stops: it waits for open connections to end


async def test_a_verified_connection_is_not_reused_for_another_host_name(
    make_fetcher: MakeFetcher, tls_server: Server, certificate: Path
) -> None:
    fetcher = make_fetcher(verify=ssl.create_default_context(cafile=certificate / "cert.pem"))
    await fetcher.fetch(f"https://localhost:{tls_server.port}/keep.jpg")
    await fetcher.fetch(f"https://localhost:{tls_server.port}/keep.jpg")
    assert tls_server.connections == 1
    # The open connection to this address was verified for "localhost" only.
    with pytest.raises(UpstreamError) as info:
        await fetcher.fetch(tls_server.url("/keep.jpg"))
    assert info.value.extra == {"reason": "connect"}
    await fetcher.aclose()  # before the server stops: it waits for open connections to end


async def test_cookies_are_neither_kept_nor_sent(server: Server, fetcher: ImageFetcher) -> None:
    # One fetcher serves every client: a cookie one fetch was given must not ride along on
    # another client's fetch from the same host. (These tests take the server first, so the
    # fetcher and its kept-alive connections close before the server waits for them to end.)
    await fetcher.fetch(server.url("/set-cookie.jpg"))
    await fetcher.fetch(server.url("/keep.jpg"))
    assert [("Cookie" in seen.headers) for seen in server.seen] == [False, False]


@pytest.mark.parametrize(
    "path",
    [
        "/garbage",  # not HTTP at all
        "/short",  # the body ends before its Content-Length
        "/interim-flood",  # "100 Continue" forever: bytes keep coming, the read never times out
    ],
)
async def test_a_broken_reply_is_a_protocol_error(
    server: Server, fetcher: ImageFetcher, path: str
) -> None:
    with pytest.raises(UpstreamError) as info:
        await fetcher.fetch(server.url(path))
    assert info.value.extra == {"reason": "protocol"}


async def test_interim_responses_before_the_image_are_passed_over(
    server: Server, fetcher: ImageFetcher
) -> None:
    fetched = await fetcher.fetch(server.url("/interim-then-ok.jpg"))
    assert fetched.data == JPEG


async def test_a_burst_to_one_host_reuses_its_connections(
    server: Server, fetcher: ImageFetcher
) -> None:
    # Concurrent fetches from one host open at most one connection each, and later bursts
    # reuse them: no reconnect (and no new TLS handshake) per image.
    burst = 8
    for _ in range(3):
        results = await asyncio.gather(
            *(fetcher.fetch(server.url("/keep.jpg")) for _ in range(burst))
        )
        assert all(result.data == JPEG for result in results)
    assert server.connections <= burst


@pytest.mark.parametrize(
    ("error", "detail"),
    [
        (httpx.ReadTimeout, "img.example sent nothing for 10 s"),
        (httpx.WriteTimeout, "img.example took in nothing of the request for 10 s"),
        (httpx.ConnectTimeout, "connecting to img.example timed out"),
        (httpx.PoolTimeout, "connecting to img.example timed out"),
    ],
)
def test_each_timeout_says_what_timed_out(error: type[httpx.TimeoutException], detail: str) -> None:
    target = parse_target("http://img.example/a.jpg", FetchPolicy())
    mapped = download._transport_error(error("timed out"), target, FetchPolicy())
    assert mapped.status == 504 and mapped.detail == detail
    assert mapped.extra == {"reason": "timeout"}
