"""The API's sockets are bound as uvicorn binds a host, and exclusively, before anything starts."""

from __future__ import annotations

import gc
import socket
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from service.listen import ListenError, bind_listeners


@contextmanager
def listening(host: str, port: int = 0) -> Iterator[list[socket.socket]]:
    sockets = bind_listeners(host, port)
    try:
        yield sockets
    finally:
        for sock in sockets:
            sock.close()


def connects(address: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as client:
        client.settimeout(2)
        return client.connect_ex((address, port)) == 0


def test_an_ipv4_address_gets_one_listening_socket() -> None:
    with listening("127.0.0.1") as sockets:
        [sock] = sockets
        port = sock.getsockname()[1]
        # Listening already: a client that comes before the app is up waits in the backlog.
        assert connects("127.0.0.1", port)


def test_the_ipv6_wildcard_serves_ipv6_only() -> None:
    with listening("::") as sockets:
        [sock] = sockets
        assert sock.family == socket.AF_INET6
        assert sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
        port = sock.getsockname()[1]
        assert connects("::1", port)
        assert not connects("127.0.0.1", port)


def test_the_empty_host_serves_both_families() -> None:
    with listening("") as sockets:
        assert {sock.family for sock in sockets} == {socket.AF_INET, socket.AF_INET6}
        for sock in sockets:
            address = "::1" if sock.family == socket.AF_INET6 else "127.0.0.1"
            assert connects(address, sock.getsockname()[1])


def test_a_port_already_listened_on_is_refused_though_both_reuse_addresses() -> None:
    with listening("127.0.0.1") as [first]:
        port = first.getsockname()[1]
        with pytest.raises(ListenError, match=rf"^cannot listen on 127\.0\.0\.1:{port}: "):
            bind_listeners("127.0.0.1", port)


def test_a_host_that_does_not_resolve_is_a_listen_error() -> None:
    with pytest.raises(ListenError, match=r"^cannot listen on no-such-host\.invalid:8080: "):
        bind_listeners("no-such-host.invalid", 8080)


@pytest.mark.parametrize(
    "host",
    ["foo..bar", "a" * 64 + ".example", "b\udcffad.example"],  # \udcff: a non-UTF-8 byte
    ids=["empty-label", "long-label", "non-utf8"],
)
def test_a_host_name_that_cannot_be_encoded_is_a_listen_error(host: str) -> None:
    with pytest.raises(ListenError, match=r":8080: not a valid host name$"):
        bind_listeners(host, 8080)


def test_an_ipv6_address_this_system_lacks_is_one_line_in_brackets() -> None:
    with pytest.raises(
        ListenError, match=r"^cannot listen on \[2001:db8::1\]:0: Cannot assign requested address$"
    ):
        bind_listeners("2001:db8::1", 0)  # a documentation address: on no interface


def test_an_ipv6_address_skipped_for_the_other_family_is_closed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A name with an IPv4 address and an IPv6 one this system lacks is served on IPv4 alone,
    and the IPv6 socket given up is closed, not left for the garbage collector."""
    resolve = socket.getaddrinfo

    def both_families(host: str, port: int, *args: int, **kwargs: int) -> list[Any]:
        return [
            resolve(address, port, *args, **kwargs)[0] for address in ("127.0.0.1", "2001:db8::1")
        ]

    monkeypatch.setattr(socket, "getaddrinfo", both_families)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with listening("dual.example") as sockets:
            gc.collect()
            assert [sock.family for sock in sockets] == [socket.AF_INET]
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)], caught
