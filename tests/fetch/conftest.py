"""A real HTTP server on 127.0.0.1 with the routes the downloader tests need."""

from __future__ import annotations

import gzip
import ssl
import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import trustme

from bench.photo_host import not_modified
from tests.support.name_server import NameServer, running_name_server

JPEG = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4 + b"\xff\xd9"
BIG = 1_000_000  # Content-Length /big announces; tests use a much smaller cap


@dataclass
class Seen:
    path: str
    headers: dict[str, str]


@dataclass
class Server:
    base: str
    port: int
    seen: list[Seen] = field(default_factory=list)
    connections: int = 0

    def url(self, path: str) -> str:
        return self.base + path


class _HTTPServer(ThreadingHTTPServer):
    # Handler threads are joined in server_close(), so none outlives the fixture.
    daemon_threads = False
    block_on_close = True
    request_queue_size = 64  # the standard library's 5 drops connections of a burst

    def __init__(self, record: Server | None, stopping: threading.Event) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.record = record
        self.stopping = stopping

    def verify_request(self, request: Any, client_address: Any) -> bool:
        if self.record is not None:
            self.record.connections += 1
        return True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients hang up on /endless and /drip on purpose


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _head(self, status: int, headers: dict[str, str], *, keep_alive: bool = False) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        if not keep_alive:
            self.send_header("Connection", "close")
        self.end_headers()

    def _body(
        self,
        status: int,
        body: bytes,
        content_type: str = "image/jpeg",
        *,
        keep_alive: bool = False,
    ) -> None:
        headers = {"Content-Type": content_type, "Content-Length": str(len(body))}
        self._head(status, headers, keep_alive=keep_alive)
        self.wfile.write(body)

    def _redirect(self, location: str, status: int = 302) -> None:
        self._head(status, {"Location": location, "Content-Length": "0"})

    def do_GET(self) -> None:
        record = self.server.record
        if record is not None:
            record.seen.append(Seen(self.path, dict(self.headers.items())))
        with suppress(ConnectionError, TimeoutError):
            self._route()

    def _route(self) -> None:
        stopping = self.server.stopping
        parts = urlsplit(self.path)
        path = parts.path
        if path == "/ok.jpg":
            self._body(200, JPEG)
        elif path == "/keep.jpg":  # the connection stays open for the next request
            self._body(200, JPEG, keep_alive=True)
        elif path == "/set-cookie.jpg":  # a host that hands every client a session cookie
            self._head(
                200,
                {
                    "Content-Type": "image/jpeg",
                    "Content-Length": str(len(JPEG)),
                    "Set-Cookie": "session=from-an-earlier-fetch; Path=/",
                },
                keep_alive=True,
            )
            self.wfile.write(JPEG)
        elif path == "/tagged.jpg":  # ?etag=…: its ETag; 304 when If-None-Match names it
            etag = parse_qs(parts.query)["etag"][0]
            if not not_modified(self, etag):
                headers = {"Content-Type": "image/jpeg", "Content-Length": str(len(JPEG))}
                self._head(200, headers | {"ETag": etag}, keep_alive=True)
                self.wfile.write(JPEG)
        elif path == "/garbage":  # not HTTP at all
            self.wfile.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
            self.close_connection = True
        elif path == "/interim-flood":  # "100 Continue" forever, never a response
            while not stopping.is_set():
                self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n" * 256)
        elif path == "/interim-then-ok.jpg":  # interim answers, then the image
            self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            self.wfile.write(b"HTTP/1.1 103 Early Hints\r\nLink: </ok.jpg>\r\n\r\n")
            self._body(200, JPEG)
        elif path == "/short":  # the body ends before its declared length
            self._head(200, {"Content-Type": "image/jpeg", "Content-Length": str(2 * len(JPEG))})
            self.wfile.write(JPEG)
        elif path == "/redirect":
            host = self.headers.get("Host", "")
            self._redirect(f"http://{host}/ok.jpg")
        elif path == "/relative-redirect":
            self._redirect("ok.jpg?via=relative")
        elif path.startswith("/redirect-chain/"):
            n = int(path.rsplit("/", 1)[1])
            if n > 0:
                self._redirect(f"/redirect-chain/{n - 1}", status=307)
            else:
                self._body(200, JPEG)
        elif path == "/loop-a":
            self._redirect("/loop-b")
        elif path == "/loop-b":
            self._redirect("/loop-a")
        elif path == "/redirect-to":
            self._redirect(parse_qs(parts.query)["location"][0])
        elif path == "/redirect-to-metadata":
            self._redirect("http://169.254.169.254/latest/meta-data/")
        elif path == "/redirect-no-location":
            self._head(302, {"Content-Length": "0"})
        elif path == "/404":
            self._body(404, b"secret upstream body", "text/plain")
        elif path == "/500":
            self._body(500, b"secret upstream body", "text/plain")
        elif path == "/empty":
            self._body(200, b"")
        elif path == "/big":
            self._head(200, {"Content-Type": "image/jpeg", "Content-Length": str(BIG)})
            self.wfile.write(JPEG)
        elif path == "/endless":
            self._head(200, {"Content-Type": "image/jpeg", "Transfer-Encoding": "chunked"})
            chunk = b"x" * 4096
            while not stopping.is_set():
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        elif path == "/chunked":  # ?size=N: the image in chunks of N bytes
            size = int(parse_qs(parts.query)["size"][0])
            self._head(200, {"Content-Type": "image/jpeg", "Transfer-Encoding": "chunked"})
            for start in range(0, len(JPEG), size):
                piece = JPEG[start : start + size]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")
        elif path == "/tiny-chunks":  # 1-byte chunks, flushed a few at a time, never ending
            self._head(200, {"Content-Type": "image/jpeg", "Transfer-Encoding": "chunked"})
            while not stopping.is_set():
                self.wfile.write(b"1\r\nx\r\n" * 64)
                self.wfile.flush()
        elif path == "/endless-close":
            self._head(200, {"Content-Type": "image/jpeg"})  # close-delimited body
            while not stopping.is_set():
                self.wfile.write(b"x" * 4096)
        elif path == "/drip":
            self._head(200, {"Content-Type": "image/jpeg", "Content-Length": "100"})
            for _ in range(100):
                self.wfile.write(b"x")
                self.wfile.flush()
                if stopping.wait(1.0):
                    return
        elif path == "/encoded":  # ?coding=…&body=ok|bomb|cut|bad|members|padded|trailing|…
            query = parse_qs(parts.query)
            coding, body = query["coding"][0], query["body"][0]
            self._head(200, {"Content-Type": "image/jpeg", "Content-Encoding": coding})
            if body in ENDLESS_ENCODED:  # a prefix, then the same bytes until the client leaves
                prefix, repeated = ENDLESS_ENCODED[body]
                self.wfile.write(prefix)
                while not stopping.is_set():
                    self.wfile.write(repeated * 1024)
            else:
                self.wfile.write(_encoded(coding, body))
        elif path == "/stall":
            stopping.wait(10.0)
        else:
            self._body(404, b"", "text/plain")


# A whole gzip member followed by junk; a gzip header followed by empty stored deflate blocks
# (5 bytes each, decoding to nothing, never final).
ENDLESS_ENCODED = {
    "trailing": (gzip.compress(b"image"), b"junk"),
    "empty_blocks": (gzip.compress(b"")[:10], b"\x00\x00\x00\xff\xff"),
}


def _encoded(coding: str, body: str) -> bytes:
    plain = b"\0" * (10 * BIG) if body == "bomb" else JPEG
    data = gzip.compress(plain) if coding in ("gzip", "x-gzip") else zlib.compress(plain)
    half = len(JPEG) // 2
    return {
        "ok": data,
        "bomb": data,
        "cut": data[: len(data) // 2],
        "bad": b"\x1f\x8bnot",
        "members": gzip.compress(JPEG[:half]) + gzip.compress(JPEG[half:]),  # RFC 1952 2.2
        "padded": data + b"\0\0\r\n",
    }[body]


@contextmanager
def _running(context: ssl.SSLContext | None = None) -> Iterator[Server]:
    stopping = threading.Event()
    httpd = _HTTPServer(None, stopping)
    if context is not None:
        httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    port = httpd.server_address[1]
    scheme = "https" if context is not None else "http"
    record = Server(base=f"{scheme}://127.0.0.1:{port}", port=port)
    httpd.record = record
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield record
    finally:
        stopping.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join()


@pytest.fixture
def server() -> Iterator[Server]:
    with _running() as record:
        yield record


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with cert.pem, a test CA for clients to trust, and server.pem, a key and
    certificate chain that CA issued for the name "localhost" only."""
    directory = tmp_path_factory.mktemp("tls")
    authority = trustme.CA()
    authority.cert_pem.write_to_path(str(directory / "cert.pem"))
    issued = authority.issue_cert("localhost")
    issued.private_key_and_cert_chain_pem.write_to_path(str(directory / "server.pem"))
    return directory


@pytest.fixture
def tls_server(certificate: Path) -> Iterator[Server]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certificate / "server.pem")
    with _running(context) as record:
        yield record


@pytest.fixture
def name_server() -> Iterator[NameServer]:
    """A name server on 127.0.0.1 for names this offline machine cannot resolve."""
    with running_name_server() as record:
        yield record
