"""``python -m bench.photo_host PORT DIRECTORY``: the benchmarks' image host.

A threaded static file server speaking HTTP/1.1 (connections kept open between requests,
as image hosts and CDNs do). Unlike ``python -m http.server`` it listens with a real
backlog: the standard library's is 5, so a burst of new connections from a service
fetching 16 photos at once overflows it, and the dropped connection attempts are retried
by the kernel only after a second, which shows up as second-long outliers in the latency
figures that no real host would cause.

``GET /connections`` answers how many connections the host has accepted, so a benchmark can
tell whether its client kept them alive. ``GET /warm-up/NAME`` serves photo NAME with one
byte more after its end: other bytes (a record of their own in the service, which labels
bytes it has seen once only) that decode to the same picture, for warming a service up.
``GET /tagged/NAME`` serves photo NAME with a strong ``ETag`` (its modification time and
size, as nginx makes them) and answers ``304 Not Modified`` to an ``If-None-Match`` naming it.
"""

from __future__ import annotations

import functools
import sys
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

BACKLOG = 1024
WARM_UP = "/warm-up/"
TAGGED = "/tagged/"


def not_modified(handler: BaseHTTPRequestHandler, etag: str) -> bool:
    """Answer 304 Not Modified when the request's If-None-Match names ``etag`` (compared as
    sent: this host sends one strong tag per file); whether it did."""
    if handler.headers.get("If-None-Match") != etag:
        return False
    handler.send_response(304)
    handler.send_header("ETag", etag)
    handler.end_headers()
    return True


class PhotoHost(ThreadingHTTPServer):
    request_queue_size = BACKLOG
    accepted = 0

    def verify_request(self, request: Any, client_address: Any) -> bool:
        self.accepted += 1  # the serving thread, before a handler thread starts
        return True


class QuietHandler(SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: PhotoHost

    def do_GET(self) -> None:
        if self.path == "/connections":
            self._answer(str(self.server.accepted).encode(), "text/plain")
        elif self.path.startswith(WARM_UP):
            photo = Path(self.directory, Path(self.path.removeprefix(WARM_UP)).name)
            if photo.is_file():
                self._answer(photo.read_bytes() + b"\0", "image/jpeg")
            else:
                self.send_error(404)
        elif self.path.startswith(TAGGED):
            self._tagged(Path(self.directory, Path(self.path.removeprefix(TAGGED)).name))
        else:
            super().do_GET()

    def _tagged(self, photo: Path) -> None:
        if not photo.is_file():
            self.send_error(404)
            return
        stat = photo.stat()
        etag = f'"{stat.st_mtime_ns:x}-{stat.st_size:x}"'
        if not_modified(self, etag):
            return
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(stat.st_size))
        self.send_header("ETag", etag)
        self.end_headers()
        with photo.open("rb") as source:
            self.copyfile(source, self.wfile)

    def _answer(self, body: bytes, content_type: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def copyfile(self, source: Any, outputfile: Any) -> None:
        # sendfile(2), as static file servers do: no copy of each photo through Python.
        self.connection.sendfile(source)

    def log_message(self, format: str, *args: object) -> None:
        pass


def main(argv: list[str]) -> int:
    port, directory = int(argv[0]), argv[1]
    handler = functools.partial(QuietHandler, directory=directory)
    with PhotoHost(("127.0.0.1", port), handler) as server:
        server.serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
