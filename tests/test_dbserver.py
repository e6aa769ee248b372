"""The local database server: a port taken between picking it and binding it is not fatal,
and a start that cannot be made is one line of error."""

from __future__ import annotations

import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pymongo import MongoClient

from service import dbserver
from service.dbserver import DatabaseServerError, LocalDatabaseServer, command_words, free_port
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


def not_executable(path: Path) -> Path:
    path.write_text("#!/bin/sh\n")
    return path


def not_a_program(path: Path) -> Path:
    path.write_text("neither an interpreter line nor an executable\n")
    path.chmod(0o755)
    return path


@pytest.mark.parametrize(
    ("command", "reason"),
    [(not_executable, "Permission denied"), (not_a_program, "Exec format error")],
)
def test_a_command_that_cannot_run_is_one_line(
    tmp_path: Path, command: Callable[[Path], Path], reason: str
) -> None:
    program = command(tmp_path / "server")
    server = LocalDatabaseServer(str(program), tmp_path / "db")
    with pytest.raises(DatabaseServerError) as refused:
        server.start()
    assert str(refused.value).startswith(
        f"cannot run the database server command {str(program)!r}: {reason}; "
    )


@pytest.mark.parametrize(("suffix", "what"), [("lock", "lock file"), ("log", "log")])
def test_a_file_beside_the_storage_that_cannot_be_opened_is_one_line(
    tmp_path: Path, suffix: str, what: str
) -> None:
    (tmp_path / f"db.{suffix}").mkdir()  # a directory where the file should be
    server = LocalDatabaseServer(db_server_command(), tmp_path / "db")
    with pytest.raises(DatabaseServerError, match=f"^cannot open the .*{what} {tmp_path}/db"):
        server.start()
    assert server.pid is None


def test_a_database_server_already_on_the_port_is_not_taken_for_ours(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another server answers on the port before ours fails to bind it: the service must not
    read and write that server's databases."""
    with LocalDatabaseServer(db_server_command(), tmp_path / "other") as other:
        given = LocalDatabaseServer(db_server_command(), tmp_path / "given", port=other.port)
        with pytest.raises(DatabaseServerError, match=f"^port {other.port} is in use by another"):
            given.start()

        picks = iter([other.port])
        monkeypatch.setattr(
            dbserver, "free_port", lambda host: next(picks, None) or free_port(host)
        )
        with LocalDatabaseServer(db_server_command(), tmp_path / "picked") as picked:
            assert picked.port != other.port
            with MongoClient(picked.uri, serverSelectionTimeoutMS=5000) as client:
                assert client.admin.command("serverStatus")["pid"] == picked.pid


def test_a_server_an_earlier_run_left_on_the_storage_is_stopped_at_start(tmp_path: Path) -> None:
    """A launcher whose server was not tied to it (its tie failed, or it died before the tie
    was made) leaves the server holding the storage: the next start stops that server."""
    storage = tmp_path / "db"
    storage.mkdir()
    port = free_port()
    command = [*command_words(db_server_command()), "--host", "127.0.0.1", "--port", str(port)]
    with subprocess.Popen([*command, "--storage-path", str(storage)]) as left:
        (tmp_path / "db.pid").write_text(str(left.pid))
        # Reaped as soon as it exits, as the orphan it would be is reaped by init.
        reaper = threading.Thread(target=left.wait)
        reaper.start()
        with LocalDatabaseServer(db_server_command(), storage):
            reaper.join(timeout=30)
            assert left.returncode is not None


def test_the_test_server_is_a_standalone_as_production_runs(
    db_server: LocalDatabaseServer,
) -> None:
    """deploy/compose.yaml runs MongoDB as a standalone. A replica set would make the driver
    number every write for retries, and the server record each number: other work, and
    other figures, than production's."""
    with MongoClient(db_server.uri, serverSelectionTimeoutMS=5000) as client:
        hello = client.admin.command("hello")
        assert "setName" not in hello
        assert client.topology_description.topology_type_name == "Single"
