"""A real HTTP server on 127.0.0.1 serving evalset photos and hostile responses."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from bench.photo_host import not_modified

Route = Callable[[BaseHTTPRequestHandler], None]


def _send(handler: BaseHTTPRequestHandler, status: int, body: bytes, ctype: str) -> None:
    handler.send_response(status)
    handler.send_header("Content-Type", ctype)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def static(body: bytes, ctype: str = "image/jpeg", status: int = 200) -> Route:
    return lambda h: _send(h, status, body, ctype)


def tagged(body: bytes, etag: str) -> Route:
    """``body`` with ``etag`` as its ETag; 304 Not Modified when If-None-Match names it."""

    def route(handler: BaseHTTPRequestHandler) -> None:
        if not_modified(handler, etag):
            return
        handler.send_response(200)
        handler.send_header("Content-Type", "image/jpeg")
        handler.send_header("Content-Length", str(len(body)))
        handler.send_header("ETag", etag)
        handler.end_headers()
        handler.wfile.write(body)

    return route


def redirect(location: str, status: int = 302) -> Route:
    def route(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(status)
        handler.send_header("Location", location)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    return route


def drip(interval: float = 1.0, total: int = 60) -> Route:
    def route(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "image/jpeg")
        handler.send_header("Content-Length", str(total))
        handler.end_headers()
        try:
            for _ in range(total):
                handler.wfile.write(b"\xff")
                handler.wfile.flush()
                time.sleep(interval)
        except OSError:
            pass

    return route


def endless() -> Route:
    def route(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "image/jpeg")
        handler.send_header("Connection", "close")
        handler.end_headers()
        chunk = b"\xff" * 65536
        try:
            for _ in range(100_000):  # bounded: at most about 6.5 GB offered
                handler.wfile.write(chunk)
        except OSError:
            pass

    return route


def declared_length(size: int) -> Route:
    """Announces ``size`` bytes and sends a little: refused from the header alone."""

    def route(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "image/jpeg")
        handler.send_header("Content-Length", str(size))
        handler.end_headers()
        with contextlib.suppress(OSError):
            handler.wfile.write(b"\xff" * 1024)

    return route


class _Server(ThreadingHTTPServer):
    # The standard library's backlog of 5 drops SYNs of a 32-request burst; the client
    # retries them after 1 s, then 3 s, against fetch deadlines of 5 s.
    request_queue_size = 128


@dataclass
class ImageServer:
    photos: Path
    routes: dict[str, Route] = field(default_factory=dict)
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None

    @property
    def base(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def url(self, path: str) -> str:
        return self.base + path

    def photo_url(self, name: str, alias: str = "") -> str:
        """URL of an evalset photo; different ``alias`` values give different URLs, same bytes."""
        return self.url(f"/photos/{name}" + (f"?alias={alias}" if alias else ""))

    def start(self) -> ImageServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                server.requests.append((self.path, dict(self.headers.items())))
                path = self.path.split("?", 1)[0]
                if path in server.routes:
                    server.routes[path](self)
                elif path.startswith("/photos/"):
                    file = server.photos / path.removeprefix("/photos/")
                    if file.is_file() and file.parent == server.photos:
                        _send(self, 200, file.read_bytes(), "image/jpeg")
                    else:
                        _send(self, 404, b"not found", "text/plain")
                else:
                    _send(self, 404, b"not found", "text/plain")

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = _Server(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
