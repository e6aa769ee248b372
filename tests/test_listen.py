"""The API's sockets are bound as uvicorn binds a host, and exclusively, before anything starts."""

from __future__ import annotations

import gc
import socket
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from service.listen import ListenError, bind_alike, bind_listener_sets, bind_listeners


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


@contextmanager
def listening_sets(host: str, count: int, port: int = 0) -> Iterator[list[list[socket.socket]]]:
    sets = bind_listener_sets(host, port, count)
    try:
        yield sets
    finally:
        for sockets in sets:
            for sock in sockets:
                sock.close()


def accepted(sock: socket.socket) -> int:
    """How many connections wait in ``sock``'s backlog (accepted and closed here)."""
    sock.setblocking(False)
    count = 0
    while True:
        try:
            connection, _ = sock.accept()
        except BlockingIOError:
            return count
        connection.close()
        count += 1


def test_each_process_gets_a_set_of_sockets_on_one_port_and_connections_spread_over_them() -> None:
    with listening_sets("127.0.0.1", 3) as sets:
        assert [len(sockets) for sockets in sets] == [1, 1, 1]
        [port] = {sockets[0].getsockname()[1] for sockets in sets}
        for [sock] in sets:
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
        clients = [socket.create_connection(("127.0.0.1", port), timeout=2) for _ in range(48)]
        try:
            counts = [accepted(sock) for [sock] in sets]
        finally:
            for client in clients:
                client.close()
    # Every one accepted, and hashed over the sets: that one of three gets none of 48 by
    # chance is about 1 in 10^8.
    assert sum(counts) == 48
    assert min(counts) > 0, counts


def test_the_empty_host_gets_both_families_in_every_set() -> None:
    with listening_sets("", 2) as sets:
        for sockets in sets:
            assert {sock.family for sock in sockets} == {socket.AF_INET, socket.AF_INET6}
        ports = {sock.family: sock.getsockname()[1] for sock in sets[0]}
        for sock in sets[1]:
            assert sock.getsockname()[1] == ports[sock.family]


def test_sets_refuse_a_port_already_listened_on_and_no_one_shares_theirs() -> None:
    with listening("127.0.0.1") as [plain]:
        port = plain.getsockname()[1]
        with pytest.raises(ListenError, match=rf"^cannot listen on 127\.0\.0\.1:{port}: "):
            bind_listener_sets("127.0.0.1", port, 2)
    with listening_sets("127.0.0.1", 2) as sets:
        port = sets[0][0].getsockname()[1]
        # Not another instance's sets (which would pass SO_REUSEPORT alone), nor a plain socket.
        with pytest.raises(ListenError, match=rf"^cannot listen on 127\.0\.0\.1:{port}: "):
            bind_listener_sets("127.0.0.1", port, 2)
        with pytest.raises(ListenError, match=rf"^cannot listen on 127\.0\.0\.1:{port}: "):
            bind_listeners("127.0.0.1", port)


def test_one_more_set_joins_the_port_and_gets_connections() -> None:
    with listening_sets("127.0.0.1", 1) as sets:
        [extra] = bind_alike(sets[0])
        try:
            port = sets[0][0].getsockname()[1]
            assert extra.getsockname()[1] == port
            clients = [socket.create_connection(("127.0.0.1", port), timeout=2) for _ in range(32)]
            try:
                assert accepted(extra) > 0
            finally:
                for client in clients:
                    client.close()
        finally:
            extra.close()


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
