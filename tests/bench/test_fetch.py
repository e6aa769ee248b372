"""The download bench against the real photo host, on a few evaluation photos."""

from __future__ import annotations

import pytest
import uvloop

from bench.fetch import measure
from bench.harness import photo_server, photos


def test_reports_cpu_and_connections_of_each_client() -> None:
    files = photos()[:8]
    with photo_server() as host:
        result = uvloop.run(measure(host.base, files))
    assert result["name"] == "fetch"
    cpu = result["cpu_ms_per_download"]
    assert isinstance(cpu, dict) and set(cpu) == {"fetcher", "bare", "httpx_default"}
    assert all(value > 0 for value in cpu.values())
    assert result["ratio"] == pytest.approx(cpu["bare"] / cpu["fetcher"], abs=0.01)
    connections = result["connections_per_download"]
    assert isinstance(connections, dict)
    # Three rounds after a warm-up: kept-alive connections, not one per download.
    assert connections["fetcher"] < 1
