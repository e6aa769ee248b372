"""What the processes of a benchmark spend: CPU time, per process or per thread, and peak
memory, read from /proc (Linux)."""

from __future__ import annotations

import os
import resource
from pathlib import Path


def process_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def cpu_seconds(pid: int, thread: int | None = None) -> float:
    """User + system CPU of a process (all its threads), or of one of its threads."""
    path = Path(f"/proc/{pid}/stat" if thread is None else f"/proc/{pid}/task/{thread}/stat")
    fields = path.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU per labeled image of everything the service run uses on this machine.

    The bare baseline has none of the database, the photo host or the HTTP client, and on a
    2-core machine every millisecond they take is taken from the models.
    """

    def __init__(self, service_pid: int, database_pid: int, host_pid: int) -> None:
        self._read = {
            "service_event_loop": lambda: cpu_seconds(service_pid, thread=service_pid),
            "service_total": lambda: cpu_seconds(service_pid),
            "database": lambda: cpu_seconds(database_pid),
            "photo_host": lambda: cpu_seconds(host_pid),
            "http_client": process_cpu_seconds,
        }
        self._start = {name: read() for name, read in self._read.items()}

    def per_image_ms(self, images: int) -> dict[str, float]:
        spent = {name: read() - self._start[name] for name, read in self._read.items()}
        spent["service_blocking_work"] = spent["service_total"] - spent["service_event_loop"]
        processes = ("service_total", "database", "photo_host", "http_client")
        spent["total"] = sum(spent[name] for name in processes)
        return {name: round(1000 * value / images, 1) for name, value in spent.items()}


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise ValueError(f"no VmHWM for process {pid}")
