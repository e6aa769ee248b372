"""Driving the app at the ASGI level, where a test needs to decide what the client does
between messages (disconnect mid-body, go away while it waits)."""

from __future__ import annotations

from typing import Any


def json_post_scope(path: str, content_length: int) -> dict[str, Any]:
    """The HTTP scope of a ``POST`` of a JSON body announcing ``content_length`` bytes."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"testserver"),
            (b"content-type", b"application/json"),
            (b"content-length", str(content_length).encode()),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
