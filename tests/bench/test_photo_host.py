"""The benchmarks' image host: files over HTTP/1.1 keep-alive, a burst of connections served."""

from __future__ import annotations

import functools
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bench.photo_host import BACKLOG, PhotoHost, QuietHandler

PHOTO = b"\xff\xd8\xff\xe0 not really a jpeg"


@pytest.fixture
def host(tmp_path: Path) -> Iterator[str]:
    (tmp_path / "a.jpg").write_bytes(PHOTO)
    server = PhotoHost(("127.0.0.1", 0), functools.partial(QuietHandler, directory=tmp_path))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_serves_files_on_one_kept_alive_connection(host: str) -> None:
    with httpx.Client(base_url=host) as client:
        first = client.get("/a.jpg")
        second = client.get("/a.jpg")
        missing = client.get("/b.jpg")
    assert first.content == second.content == PHOTO
    assert first.http_version == "HTTP/1.1"
    assert first.headers["content-length"] == str(len(PHOTO))
    assert missing.status_code == 404


def test_serves_each_photo_as_other_bytes_for_warming_up(host: str) -> None:
    with httpx.Client(base_url=host) as client:
        warm = client.get("/warm-up/a.jpg")
        missing = client.get("/warm-up/b.jpg")
    assert warm.content == PHOTO + b"\0"  # past the end of the picture: the same one
    assert warm.headers["content-length"] == str(len(PHOTO) + 1)
    assert missing.status_code == 404


def test_listens_with_a_real_backlog(host: str) -> None:
    assert PhotoHost.request_queue_size == BACKLOG >= 128
    # More connection attempts at once than the standard library's backlog of 5: all are
    # accepted and each is answered.
    port = int(host.rsplit(":", 1)[1])
    sockets = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(32)]
    try:
        for sock in sockets:
            sock.sendall(b"GET /a.jpg HTTP/1.1\r\nHost: photos\r\nConnection: close\r\n\r\n")
        for sock in sockets:
            answer = b""
            while chunk := sock.recv(4096):
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 200")
            assert answer.endswith(PHOTO)
    finally:
        for sock in sockets:
            sock.close()


def test_counts_the_connections_it_accepted(host: str) -> None:
    with httpx.Client(base_url=host) as client:
        client.get("/a.jpg")
        client.get("/a.jpg")
        assert client.get("/connections").text == "1"
    with httpx.Client(base_url=host) as client:
        assert client.get("/connections").text == "2"
