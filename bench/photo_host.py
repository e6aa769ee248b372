"""``python -m bench.photo_host PORT DIRECTORY``: the benchmarks' image host.

A threaded static file server speaking HTTP/1.1 (connections kept open between requests,
as image hosts and CDNs do). Unlike ``python -m http.server`` it listens with a real
backlog: the standard library's is 5, so a burst of new connections from a service
fetching 16 photos at once overflows it, and the dropped connection attempts are retried
by the kernel only after a second, which shows up as second-long outliers in the latency
figures that no real host would cause.
"""

from __future__ import annotations

import functools
import sys
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

BACKLOG = 1024


class PhotoHost(ThreadingHTTPServer):
    request_queue_size = BACKLOG


class QuietHandler(SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

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
