"""The local database server: a port taken between picking it and binding it is not fatal."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from pymongo import MongoClient

from service import dbserver
from service.dbserver import DatabaseServerError, LocalDatabaseServer, free_port
from tests.support.process import db_server_command


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback port held by a listener that is not a database server."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_a_picked_port_taken_before_the_server_binds_it_is_given_up(
    tmp_path: Path, taken_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    picks = iter([taken_port])
    monkeypatch.setattr(dbserver, "free_port", lambda host: next(picks, None) or free_port(host))
    server = LocalDatabaseServer(db_server_command(), tmp_path / "db")
    assert server.port == taken_port
    with server:
        assert server.port != taken_port
        with MongoClient(server.uri, serverSelectionTimeoutMS=5000) as client:
            assert client.admin.command("ping")["ok"] == 1
        # Restarts keep the port the first start settled on: clients hold its URI.
        settled = server.port
        server.stop()
        server.start()
        assert server.port == settled


def test_a_port_given_explicitly_is_not_moved(tmp_path: Path, taken_port: int) -> None:
    server = LocalDatabaseServer(db_server_command(), tmp_path / "db", port=taken_port)
    with pytest.raises(DatabaseServerError, match=f"port {taken_port} is in use"):
        server.start()
    assert server.port == taken_port
    # Nothing is left holding the storage: another server can have it at once.
    with LocalDatabaseServer(db_server_command(), tmp_path / "db") as again:
        assert again.port != taken_port
