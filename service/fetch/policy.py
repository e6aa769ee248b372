"""Which URLs the service may fetch: shape checks on the URL, then checks on every address."""

from __future__ import annotations

import ipaddress
import logging
import re
from dataclasses import dataclass
from importlib import metadata
from typing import TYPE_CHECKING
from urllib.parse import quote, urlsplit

import idna

from service.errors import UpstreamError, UrlRejected
from service.fetch.names import LookupFailed, NameResolver

if TYPE_CHECKING:
    from service.settings import Settings

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

DEFAULT_PORTS = {"http": 80, "https": 443}

_net = ipaddress.ip_network

# Metadata services sit inside ranges an operator may allow (100.64/10, ULA), so they are
# listed by address and refused first.
METADATA_ADDRESSES: frozenset[IPAddress] = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean, Oracle
        "169.254.170.2",  # AWS ECS task metadata
        "169.254.170.23",  # AWS EKS pod identity
        "100.100.100.200",  # Alibaba Cloud
        "192.0.0.192",  # Oracle Cloud (legacy)
        "fd00:ec2::254",  # AWS IMDS over IPv6
        "fd00:ec2::23",  # AWS EKS pod identity over IPv6
        "168.63.129.16",  # Azure WireServer (a public address every Azure VM reaches)
        "fd20:ce::254",  # GCP metadata over IPv6
        "169.254.42.42",  # Scaleway
        "fd00:42::42",  # Scaleway over IPv6
    )
)

_THIS_NETWORK = _net("0.0.0.0/8")
_LOOPBACK = (_net("127.0.0.0/8"), _net("::1/128"))
_PRIVATE = (_net("10.0.0.0/8"), _net("172.16.0.0/12"), _net("192.168.0.0/16"), _net("fc00::/7"))
_SHARED = _net("100.64.0.0/10")
_NAT64 = (_net("64:ff9b::/96"), _net("64:ff9b:1::/48"))

_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
_PORT = re.compile(r"[0-9]{1,5}")
_IPV4_PART = re.compile(r"0[xX][0-9a-fA-F]*|[0-9]+")


@dataclass(frozen=True, slots=True)
class FetchPolicy:
    allow_private: bool = False
    max_bytes: int = 20_000_000
    max_redirects: int = 5
    max_url_length: int = 2048
    connect_timeout: float = 5.0
    read_timeout: float = 10.0
    total_timeout: float = 30.0
    user_agent: str = "labelsvc/0.1"
    allowed_hosts: tuple[str, ...] = ()  # empty: any host; "example.com" also admits subdomains

    @classmethod
    def from_settings(cls, settings: Settings) -> FetchPolicy:
        try:
            version = metadata.version("labelsvc")
        except metadata.PackageNotFoundError:
            version = "0"
        return cls(
            allow_private=settings.allow_private_urls,
            max_bytes=settings.max_image_bytes,
            max_redirects=settings.max_redirects,
            max_url_length=settings.max_url_length,
            connect_timeout=settings.fetch_connect_timeout,
            read_timeout=settings.fetch_read_timeout,
            total_timeout=settings.fetch_total_timeout,
            user_agent=f"labelsvc/{version}",
            allowed_hosts=allowed_host_entries(settings.fetch_allowed_hosts),
        )


@dataclass(frozen=True, slots=True)
class Target:
    """A URL that passed the shape checks, split into what a request needs."""

    url: str  # normalised: lower-case ASCII host, no default port, no fragment
    scheme: str  # "http" or "https"
    host: str  # ASCII host without brackets or trailing dot; canonical form for IP literals
    port: int
    path: str  # path and query as sent in the request line
    address: IPAddress | None  # set when the host is an IP literal

    @property
    def host_header(self) -> str:
        return _authority(self.scheme, self.host, self.port)


def _authority(scheme: str, host: str, port: int) -> str:
    bracketed = f"[{host}]" if ":" in host else host
    return bracketed if port == DEFAULT_PORTS[scheme] else f"{bracketed}:{port}"


def _reject(detail: str, reason: str, **extra: object) -> UrlRejected:
    return UrlRejected(detail, extra={"reason": reason, **extra})


def _legacy_ipv4(host: str) -> ipaddress.IPv4Address | None:
    """Parse the forms inet_aton and browsers accept: 2130706433, 0177.0.0.1, 0x7f.1, 127.1."""
    parts = host.split(".")
    if not all(_IPV4_PART.fullmatch(p) for p in parts):
        return None
    if len(parts) > 4:
        raise _reject(f"host {host!r} is not a valid IPv4 address", "host")
    numbers: list[int] = []
    try:  # an octal part with an 8 or 9, or decimal digits past Python's 4300-digit limit
        for part in parts:
            if part[:2].lower() == "0x":
                numbers.append(int(part[2:] or "0", 16))
            elif len(part) > 1 and part.startswith("0"):
                numbers.append(int(part, 8))
            else:
                numbers.append(int(part))
    except ValueError:
        raise _reject(f"host {host!r} is not a valid IPv4 address", "host") from None
    *leading, last = numbers
    # The last part fills every byte the earlier parts left: 127.1 is 127.0.0.1.
    if any(n > 255 for n in leading) or last >= 256 ** (5 - len(numbers)):
        raise _reject(f"host {host!r} is not a valid IPv4 address", "host")
    packed = bytes(leading) + last.to_bytes(5 - len(numbers), "big")
    return ipaddress.IPv4Address(packed)


def _parse_host(raw: str) -> tuple[str, IPAddress | None]:
    if raw.startswith("["):
        inner = raw[1:-1] if raw.endswith("]") else ""
        if "%" in inner:
            raise _reject("IPv6 zone identifiers are not allowed", "host")
        try:
            v6 = ipaddress.IPv6Address(inner)
        except ValueError:
            raise _reject(f"host {raw!r} is not a valid IPv6 address", "host") from None
        return str(v6), v6
    host = raw.lower()
    if not host.isascii():
        # After UTS 46 mapping, fullwidth digits and dots can spell an IPv4 address.
        try:
            host = idna.encode(host, uts46=True).decode("ascii")
        except idna.IDNAError:
            raise _reject(f"host {raw!r} is not a valid domain name", "host") from None
    host = host.removesuffix(".")
    if not host:
        raise _reject("URL has no host", "host")
    v4 = _legacy_ipv4(host)
    if v4 is not None:
        return str(v4), v4
    labels = host.split(".")
    if len(host) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise _reject(f"host {raw!r} is not a valid domain name", "host")
    # Browsers treat a host whose last label is numeric as IPv4 (1.2.3.4.5, 1.0x): never a name.
    if _IPV4_PART.fullmatch(labels[-1]):
        raise _reject(f"host {raw!r} is not a valid IPv4 address", "host")
    return host, None


def allowed_host_entries(value: str) -> tuple[str, ...]:
    """``LABELSVC_FETCH_ALLOWED_HOSTS`` (comma-separated) in the form a URL's host takes
    here, so that the two can match: ``Bücher.Example.`` is ``xn--bcher-kva.example``,
    ``[2001:DB8::1]`` is ``2001:db8::1``. ValueError naming an entry that is not a host
    alone: with a scheme, port or path, or not a valid host."""
    entries = []
    for entry in (part.strip() for part in value.split(",")):
        if not entry:
            continue
        try:
            host, port = _split_netloc(entry)
            if port is not None or any(mark in entry for mark in "/?#@\\"):
                raise ValueError(
                    f"{entry!r} is not a host alone (no scheme, port or path; IPv6 in brackets)"
                )
            entries.append(_parse_host(host)[0])
        except UrlRejected:
            raise ValueError(f"{entry!r} is not a valid host name or address") from None
    if value.strip() and not entries:  # "," would mean any public host, as empty does
        raise ValueError("it lists no host (leave it empty to allow any public host)")
    return tuple(entries)


def has_unsafe_characters(text: str) -> bool:
    """Whitespace or control characters, which parsers silently strip or split on."""
    return any(ch.isspace() or ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0 for ch in text)


def _host_allowed(host: str, allowed: tuple[str, ...]) -> bool:
    return any(host == entry or host.endswith("." + entry) for entry in allowed)


def _split_netloc(netloc: str) -> tuple[str, str | None]:
    """The host (an IPv6 address in its brackets) and the port text, None without a colon."""
    if netloc.startswith("["):
        close = netloc.find("]")
        raw_host, rest = (netloc, "") if close < 0 else (netloc[: close + 1], netloc[close + 1 :])
        if rest and not rest.startswith(":"):
            raise _reject(f"host {netloc!r} is not valid", "host")
        return raw_host, rest[1:] if rest else None
    raw_host, colon, raw_port = netloc.partition(":")
    return raw_host, raw_port if colon else None


def parse_target(url: str, policy: FetchPolicy) -> Target:
    """Check the URL's shape (no DNS); raise ``UrlRejected`` naming what is wrong."""
    if len(url) > policy.max_url_length:
        raise _reject(
            f"URL is longer than {policy.max_url_length} characters",
            "url_too_long",
            max_url_length=policy.max_url_length,
        )
    if has_unsafe_characters(url):
        raise _reject("URL contains whitespace or control characters", "characters")
    try:
        parts = urlsplit(url)
    except ValueError:
        raise _reject("URL could not be parsed", "invalid") from None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        if not scheme:
            raise _reject("URL has no scheme; use http or https", "scheme")
        raise _reject(f"scheme {scheme!r} is not allowed; use http or https", "scheme")
    netloc = parts.netloc
    if "@" in netloc:
        raise _reject("URLs with credentials are not allowed", "credentials")
    if "\\" in netloc:
        raise _reject("URL host contains a backslash", "host")

    raw_host, raw_port = _split_netloc(netloc)
    if raw_port:
        if not _PORT.fullmatch(raw_port) or not 1 <= int(raw_port) <= 65535:
            raise _reject(f"port {raw_port!r} is not a number from 1 to 65535", "port")
        port = int(raw_port)
    else:
        port = DEFAULT_PORTS[scheme]

    host, address = _parse_host(raw_host)
    if policy.allowed_hosts and not _host_allowed(host, policy.allowed_hosts):
        raise _reject(f"host {host!r} is not on this service's allow-list", "host_not_allowed")
    path = quote(parts.path or "/", safe="/%:@!$&'()*+,;=-._~")
    if parts.query:
        path += "?" + quote(parts.query, safe="/?%:@!$&'()*+,;=-._~")
    return Target(
        url=f"{scheme}://{_authority(scheme, host, port)}{path}",
        scheme=scheme,
        host=host,
        port=port,
        path=path,
        address=address,
    )


# Where RFC 6052 puts the IPv4 address for each NAT64 prefix length: the byte positions
# (byte 8 is always skipped). The well-known prefix is a /96; a network's own prefix in
# 64:ff9b:1::/48 may be any of these lengths, which cannot be told from the address.
_NAT64_LAYOUTS = {
    48: (6, 7, 9, 10),
    56: (7, 9, 10, 11),
    64: (9, 10, 11, 12),
    96: (12, 13, 14, 15),
}


def _embedded_ipv4(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address may reach through mapping, 6to4, NAT64 or Teredo."""
    if address.ipv4_mapped is not None:
        return [address.ipv4_mapped]
    if address.sixtofour is not None:
        return [address.sixtofour]
    if address.teredo is not None:
        return [address.teredo[1]]  # the client's address; the server part is public anyway
    if address in _NAT64[0]:
        return [ipaddress.IPv4Address(address.packed[-4:])]
    if address in _NAT64[1]:
        packed = address.packed
        candidates = (
            ipaddress.IPv4Address(bytes(packed[i] for i in layout))
            for layout in _NAT64_LAYOUTS.values()
        )
        # A layout that reads 0.x.x.x cannot be the one in use: nothing is reached there.
        return [candidate for candidate in candidates if candidate not in _THIS_NETWORK]
    return []


def address_category(address: IPAddress, *, allow_private: bool) -> str | None:
    """Why ``address`` may not be fetched from, as a phrase, or None when it may."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        for inner_address in embedded:
            inner = address_category(inner_address, allow_private=allow_private)
            if inner is not None:
                return f"mapped to {inner_address}, which is {inner}"
        if embedded and (address.ipv4_mapped is not None or any(address in n for n in _NAT64)):
            return None  # ::ffff:8.8.8.8 and 64:ff9b::808:808 reach 8.8.8.8
    if address in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if address.is_unspecified or address in _THIS_NETWORK:
        return "unspecified"
    if address.is_link_local:
        return "link-local"
    if address.is_multicast:
        return "multicast"
    if any(address in net for net in _LOOPBACK):
        return None if allow_private else "loopback"
    if any(address in net for net in _PRIVATE):
        return None if allow_private else "private"
    if address in _SHARED:
        return None if allow_private else "in the shared address space (100.64.0.0/10)"
    if address.is_reserved or (
        isinstance(address, ipaddress.IPv6Address) and address.is_site_local
    ):
        return "reserved"
    if not address.is_global:
        return "not globally routable"
    return None


def check_address(address: IPAddress, policy: FetchPolicy, *, name: str | None = None) -> None:
    """Raise ``UrlRejected`` when the policy refuses ``address``: the one the client wrote,
    or the one host ``name`` resolved to."""
    category = address_category(address, allow_private=policy.allow_private)
    if category is None:
        return
    if name is None:
        raise _reject(f"address {address} is {category}", "address", address=str(address))
    # What a name resolves to stays in the log: in the answer, it would let anyone map the
    # names and addresses of the network the service runs in.
    log.info("refused host %s: its address %s is %s", name, address, category)
    raise _reject(f"host {name} resolves to an address this service may not fetch from", "address")


def _unmapped(address: IPAddress) -> IPAddress:
    """::ffff:a.b.c.d as a.b.c.d, so it connects over IPv4 even where IPv6 is off."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


async def resolve_target(
    target: Target, policy: FetchPolicy, resolver: NameResolver
) -> list[IPAddress]:
    """Every address the host resolves to, in resolver order; refused if any one is refused."""
    if target.address is not None:
        check_address(target.address, policy)
        return [_unmapped(target.address)]
    try:
        found = await resolver.addresses(target.host)
    except LookupFailed:
        raise UpstreamError(
            f"could not resolve host {target.host}", extra={"reason": "dns"}
        ) from None
    addresses: list[IPAddress] = []
    for address in map(_unmapped, found):
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise UpstreamError(f"host {target.host} has no addresses", extra={"reason": "dns"})
    for address in addresses:
        check_address(address, policy, name=target.host)
    return addresses
