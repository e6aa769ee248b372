"""The URL policy: shape checks and address checks. Nothing here opens a connection."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

import pytest

from service.errors import UpstreamError, UrlRejected
from service.fetch.names import NameResolver
from service.fetch.policy import (
    FetchPolicy,
    IPAddress,
    parse_target,
    resolve_target,
)
from service.settings import Settings
from tests.support.name_server import NameServer

DEFAULT = FetchPolicy()
PRIVATE_OK = FetchPolicy(allow_private=True)


async def check(url: str, policy: FetchPolicy, name_servers: Sequence[str] = ()) -> list[IPAddress]:
    resolver = NameResolver(name_servers)
    try:
        return await resolve_target(parse_target(url, policy), policy, resolver)
    finally:
        await resolver.aclose()


async def refused(url: str, policy: FetchPolicy, name_servers: Sequence[str] = ()) -> UrlRejected:
    with pytest.raises(UrlRejected) as info:
        await check(url, policy, name_servers)
    assert info.value.status == 400
    return info.value


REFUSED_ADDRESSES = [
    ("http://127.0.0.1/", "address 127.0.0.1 is loopback"),
    ("http://127.0.0.1:8080/x.jpg", "address 127.0.0.1 is loopback"),
    ("http://0.0.0.0/", "address 0.0.0.0 is unspecified"),
    ("http://0/", "address 0.0.0.0 is unspecified"),
    ("http://[::]/", "address :: is unspecified"),
    ("http://10.1.2.3/", "address 10.1.2.3 is private"),
    ("http://172.16.0.1/", "address 172.16.0.1 is private"),
    ("http://172.31.255.255/", "address 172.31.255.255 is private"),
    ("http://192.168.1.1/", "address 192.168.1.1 is private"),
    ("http://[fc00::1]/", "address fc00::1 is private"),
    ("http://100.64.0.1/", "address 100.64.0.1 is in the shared address space"),
    ("http://169.254.169.254/", "address 169.254.169.254 is a cloud metadata address"),
    ("http://100.100.100.200/", "address 100.100.100.200 is a cloud metadata address"),
    ("http://168.63.129.16/", "address 168.63.129.16 is a cloud metadata address"),
    ("http://[fd00:ec2::254]/", "address fd00:ec2::254 is a cloud metadata address"),
    ("http://169.254.1.1/", "address 169.254.1.1 is link-local"),
    ("http://[fe80::1]/", "address fe80::1 is link-local"),
    ("http://[::1]/", "address ::1 is loopback"),
    ("http://[::ffff:127.0.0.1]/", "mapped to 127.0.0.1, which is loopback"),
    ("http://[::ffff:169.254.169.254]/", "which is a cloud metadata address"),
    ("http://[2002:7f00:1::]/", "mapped to 127.0.0.1, which is loopback"),  # 6to4
    ("http://[64:ff9b::a9fe:a9fe]/", "which is a cloud metadata address"),  # NAT64
    # A local NAT64 prefix (64:ff9b:1::/48) may embed the IPv4 address at any RFC 6052
    # position: here 10.0.0.7 where a /48 prefix puts it.
    ("http://[64:ff9b:1:a00:0:700::]/", "mapped to 10.0.0.7, which is private"),
    ("http://2130706433/", "address 127.0.0.1 is loopback"),
    ("http://0177.0.0.1/", "address 127.0.0.1 is loopback"),
    ("http://0x7f.0.0.1/", "address 127.0.0.1 is loopback"),
    ("http://0x7f000001/", "address 127.0.0.1 is loopback"),
    ("http://127.1/", "address 127.0.0.1 is loopback"),
    ("http://127.0.0.1./", "address 127.0.0.1 is loopback"),
    (
        "http://\uff11\uff12\uff17\u3002\uff10\u3002\uff10\u3002\uff11/",
        "address 127.0.0.1 is loopback",
    ),
    # For a name, what it resolves to is not told (it would map the service's network).
    ("http://localhost/", "host localhost resolves to an address this service may not fetch"),
    ("http://LOCALHOST:8000/", "resolves to an address this service may not fetch from"),
    ("http://224.0.0.1/", "address 224.0.0.1 is multicast"),
    ("http://[ff02::1]/", "address ff02::1 is multicast"),
    ("http://240.0.0.1/", "address 240.0.0.1 is reserved"),
    ("http://255.255.255.255/", "address 255.255.255.255 is reserved"),
    ("http://192.0.2.10/", "address 192.0.2.10 is not globally routable"),
    ("http://[2001:db8::1]/", "address 2001:db8::1 is not globally routable"),
]


@pytest.mark.parametrize(("url", "message"), REFUSED_ADDRESSES)
async def test_refuses_non_public_addresses(url: str, message: str) -> None:
    error = await refused(url, DEFAULT)
    assert error.extra["reason"] == "address"
    assert message in error.detail


REFUSED_SHAPES = [
    ("file:///etc/passwd", "scheme", "scheme 'file' is not allowed"),
    ("ftp://example.com/a.jpg", "scheme", "scheme 'ftp' is not allowed"),
    ("data:image/png;base64,AAAA", "scheme", "scheme 'data' is not allowed"),
    ("gopher://example.com/", "scheme", "scheme 'gopher' is not allowed"),
    ("javascript:alert(1)", "scheme", "scheme 'javascript' is not allowed"),
    ("example.com/a.jpg", "scheme", "no scheme"),
    ("http://user:pass@example.com/", "credentials", "credentials"),
    ("http://user@example.com/", "credentials", "credentials"),
    ("http://example.com\\@127.0.0.1/", "credentials", "credentials"),
    ("http://example.com/" + "a" * 2048, "url_too_long", "longer than 2048"),
    ("http://example.com:99999/", "port", "port '99999'"),
    ("http://example.com:abc/", "port", "port 'abc'"),
    ("http://example.com:0/", "port", "port '0'"),
    ("http://example.com:-1/", "port", "port '-1'"),
    ("http://example.com:+80/", "port", "port '+80'"),
    ("http://example.com/a b.jpg", "characters", "whitespace"),
    ("http://exa\tmple.com/", "characters", "whitespace"),
    ("http://example.com/\x00", "characters", "control"),
    ("http://example.com/\r\nX-Injected: 1", "characters", "control"),
    ("http:///a.jpg", "host", "no host"),
    ("http://", "host", "no host"),
    ("http://:80/", "host", "no host"),
    ("http://256.0.0.1/", "host", "not a valid IPv4"),
    ("http://1.2.3.4.5/", "host", "not a valid IPv4"),
    ("http://08.0.0.1/", "host", "not a valid IPv4"),
    ("http://example.123/", "host", "not a valid IPv4"),
    ("http://[::1%25lo]/", "host", "zone"),
    ("http://[127.0.0.1]/", "invalid", "could not be parsed"),
    ("http://[::1/", "invalid", "could not be parsed"),
    ("http://[v1.x]/", "host", "not a valid IPv6"),
    ("http://exa%6dple.com/", "host", "not a valid domain"),
    ("http://-bad-.com/", "host", "not a valid domain"),
]


@pytest.mark.parametrize(("url", "reason", "message"), REFUSED_SHAPES)
def test_refuses_bad_shapes(url: str, reason: str, message: str) -> None:
    with pytest.raises(UrlRejected) as info:
        parse_target(url, DEFAULT)
    assert info.value.extra["reason"] == reason
    assert message in info.value.detail


def test_a_decimal_host_longer_than_python_converts_is_refused() -> None:
    # int() refuses decimal strings over 4300 digits; a long URL limit lets one through.
    url = "http://" + "9" * 4400 + "/"
    with pytest.raises(UrlRejected) as info:
        parse_target(url, FetchPolicy(max_url_length=8192))
    assert info.value.extra["reason"] == "host"
    assert "not a valid IPv4" in info.value.detail


def test_url_length_comes_from_the_policy() -> None:
    url = "http://example.com/" + "a" * 20
    parse_target(url, DEFAULT)
    with pytest.raises(UrlRejected) as info:
        parse_target(url, FetchPolicy(max_url_length=len(url) - 1))
    assert info.value.extra["reason"] == "url_too_long"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://127.0.0.1/", "127.0.0.1"),
        ("http://10.0.0.1/", "10.0.0.1"),
        ("http://172.16.0.1/", "172.16.0.1"),
        ("http://192.168.0.1/", "192.168.0.1"),
        ("http://100.64.0.1/", "100.64.0.1"),
        ("http://[::1]/", "::1"),
        ("http://[fc00::1]/", "fc00::1"),
        ("http://[::ffff:10.0.0.1]/", "10.0.0.1"),
        ("http://127.1/", "127.0.0.1"),
        ("http://0x7f.0.0.1/", "127.0.0.1"),
    ],
)
async def test_allow_private_allows_loopback_and_private(url: str, expected: str) -> None:
    assert await check(url, PRIVATE_OK) == [ipaddress.ip_address(expected)]


async def test_allow_private_allows_localhost() -> None:
    addresses = await check("http://localhost/", PRIVATE_OK)
    assert ipaddress.ip_address("127.0.0.1") in addresses
    assert all(address.is_loopback for address in addresses)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://169.254.169.254/latest/meta-data/", "a cloud metadata address"),
        ("http://[fd00:ec2::254]/", "a cloud metadata address"),
        ("http://100.100.100.200/", "a cloud metadata address"),  # inside the allowed 100.64/10
        ("http://[::ffff:169.254.169.254]/", "a cloud metadata address"),
        ("http://[fd20:ce::254]/", "a cloud metadata address"),  # GCP, inside the allowed ULA
        ("http://[fd00:42::42]/", "a cloud metadata address"),  # Scaleway
        ("http://168.63.129.16/", "a cloud metadata address"),  # Azure, a public address
        ("http://169.254.1.1/", "link-local"),
        ("http://[fe80::1]/", "link-local"),
        ("http://0.0.0.0/", "unspecified"),
        ("http://0.1.2.3/", "unspecified"),
        ("http://[::]/", "unspecified"),
        ("http://224.0.0.1/", "multicast"),
        ("http://240.0.0.1/", "reserved"),
        ("http://198.18.0.1/", "not globally routable"),
    ],
)
async def test_allow_private_still_refuses(url: str, message: str) -> None:
    error = await refused(url, PRIVATE_OK)
    assert error.extra["reason"] == "address"
    assert message in error.detail


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://93.184.216.34/", "93.184.216.34"),
        ("https://8.8.8.8:8443/a.jpg", "8.8.8.8"),
        ("http://134744072/", "8.8.8.8"),
        ("http://[2606:4700:4700::1111]/", "2606:4700:4700::1111"),
        ("http://[::ffff:8.8.8.8]/", "8.8.8.8"),
        ("http://[64:ff9b::808:808]/", "64:ff9b::808:808"),
        ("http://[64:ff9b:1::808:808]/", "64:ff9b:1::808:808"),
    ],
)
async def test_public_literals_pass_without_dns(url: str, expected: str) -> None:
    assert await check(url, DEFAULT) == [ipaddress.ip_address(expected)]


def test_parse_normalises() -> None:
    target = parse_target("HTTP://Example.COM:80/a%20b/ü.jpg?q=1#frag", DEFAULT)
    assert target.scheme == "http"
    assert target.host == "example.com"
    assert target.port == 80
    assert target.path == "/a%20b/%C3%BC.jpg?q=1"
    assert target.host_header == "example.com"
    assert target.url == "http://example.com/a%20b/%C3%BC.jpg?q=1"
    assert target.address is None


@pytest.mark.parametrize(
    ("url", "host", "port", "host_header", "normalised"),
    [
        ("https://example.com", "example.com", 443, "example.com", "https://example.com/"),
        (
            "https://example.com:8443/x",
            "example.com",
            8443,
            "example.com:8443",
            "https://example.com:8443/x",
        ),
        (
            "http://bücher.de/",
            "xn--bcher-kva.de",
            80,
            "xn--bcher-kva.de",
            "http://xn--bcher-kva.de/",
        ),
        ("http://[2606:4700::1]:81/", "2606:4700::1", 81, "[2606:4700::1]:81", None),
        ("http://0x08.8.8.8/", "8.8.8.8", 80, "8.8.8.8", "http://8.8.8.8/"),
    ],
)
def test_parse_hosts(
    url: str, host: str, port: int, host_header: str, normalised: str | None
) -> None:
    target = parse_target(url, DEFAULT)
    assert (target.host, target.port, target.host_header) == (host, port, host_header)
    if normalised is not None:
        assert target.url == normalised


async def test_refused_when_any_resolved_address_is_refused(
    name_server: NameServer, caplog: pytest.LogCaptureFixture
) -> None:
    name_server.table["mixed.example"] = ["93.184.216.34", "10.0.0.7"]
    caplog.set_level("INFO", "service.fetch.policy")
    error = await refused("http://mixed.example/", DEFAULT, [name_server.address])
    # The client learns that the name is refused, not the internal address behind it.
    assert error.detail == (
        "host mixed.example resolves to an address this service may not fetch from"
    )
    assert error.extra == {"reason": "address"}
    assert "refused host mixed.example: its address 10.0.0.7 is private" in caplog.text


async def test_resolved_addresses_are_unmapped_without_repeats(name_server: NameServer) -> None:
    name_server.table["cdn.example"] = [
        "2606:4700::1",
        "93.184.216.34",
        "::ffff:1.1.1.1",
        "1.1.1.1",
    ]
    addresses = await check("http://cdn.example/", DEFAULT, [name_server.address])
    # In the order the resolver sorts them in (RFC 6724, which depends on the routes).
    assert sorted(map(str, addresses)) == ["1.1.1.1", "2606:4700::1", "93.184.216.34"]


async def test_resolution_failure_is_upstream_dns(name_server: NameServer) -> None:
    with pytest.raises(UpstreamError) as info:
        await check("http://nowhere.example/", DEFAULT, [name_server.address])
    assert info.value.extra == {"reason": "dns"}
    assert info.value.detail == "could not resolve host nowhere.example"


def test_from_settings() -> None:
    settings = Settings(
        allow_private_urls=True,
        max_image_bytes=1234,
        max_redirects=2,
        max_url_length=99,
        fetch_connect_timeout=1.5,
        fetch_read_timeout=2.5,
        fetch_total_timeout=3.5,
    )
    policy = FetchPolicy.from_settings(settings)
    assert policy == FetchPolicy(
        allow_private=True,
        max_bytes=1234,
        max_redirects=2,
        max_url_length=99,
        connect_timeout=1.5,
        read_timeout=2.5,
        total_timeout=3.5,
        user_agent=policy.user_agent,
    )
    assert policy.user_agent.startswith("labelsvc/")
    assert FetchPolicy.from_settings(Settings()).allow_private is False


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("http://images.example.com/a.jpg", True),
        ("http://example.com/a.jpg", True),
        ("http://EXAMPLE.com./a.jpg", True),
        ("http://badexample.com/a.jpg", False),
        ("http://example.org/a.jpg", False),
        ("http://93.184.216.34/a.jpg", False),
    ],
)
def test_host_allow_list(url: str, allowed: bool) -> None:
    policy = FetchPolicy(allowed_hosts=("example.com",))
    if allowed:
        assert parse_target(url, policy).host.endswith("example.com")
    else:
        with pytest.raises(UrlRejected) as caught:
            parse_target(url, policy)
        assert caught.value.extra["reason"] == "host_not_allowed"


@pytest.mark.parametrize(
    "url",
    [
        "http://bücher.example/a.jpg",
        "http://xn--bcher-kva.example/a.jpg",
        "http://images.BÜCHER.example./a.jpg",
        "http://[2001:db8::1]/a.jpg",
        "http://[2001:db8:0::1]:8080/a.jpg",
        "http://0x7f.1/a.jpg",
    ],
)
def test_allow_list_entries_match_in_the_form_url_hosts_take(url: str) -> None:
    """Entries are normalised as URL hosts are: IDNA, brackets, case, the trailing dot."""
    settings = Settings(fetch_allowed_hosts=" Bücher.Example. ,[2001:DB8::1], 127.0.0.1")
    assert parse_target(url, FetchPolicy.from_settings(settings))
