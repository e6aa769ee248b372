"""What the processes of a benchmark spend: CPU time, per process or per thread, and
memory, read from /proc (Linux)."""

from __future__ import annotations

import contextlib
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


def process_tree(pid: int) -> list[int]:
    """The process and its descendants (a service with several serving processes)."""
    tree = [pid]
    for process in tree:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):  # gone meanwhile
            for task in Path(f"/proc/{process}/task").iterdir():
                tree.extend(int(child) for child in (task / "children").read_text().split())
    return tree


def _tree_cpu_seconds(pid: int, *, main_threads: bool = False) -> float:
    """CPU of a process tree; with ``main_threads``, of each process's main thread only."""
    total = 0.0
    for process in process_tree(pid):
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):  # gone meanwhile
            total += cpu_seconds(process, thread=process if main_threads else None)
    return total


class CpuMeter:
    """CPU per labeled image of everything the service run uses on this machine.

    The bare baseline has none of the database, the photo host or the HTTP client, and on a
    2-core machine every millisecond they take is taken from the models.
    """

    def __init__(self, service_pid: int, database_pid: int, host_pid: int) -> None:
        self._read = {
            "service_event_loop": lambda: _tree_cpu_seconds(service_pid, main_threads=True),
            "service_total": lambda: _tree_cpu_seconds(service_pid),
            "database": lambda: cpu_seconds(database_pid),
            "photo_host": lambda: cpu_seconds(host_pid),
            "http_client": process_cpu_seconds,
        }
        self._start = {name: read() for name, read in self._read.items()}
        self._service_pid = service_pid
        self._children_start = _children_cpu_seconds(service_pid)

    def per_image_ms(self, images: int) -> dict[str, float]:
        spent = {name: read() - self._start[name] for name, read in self._read.items()}
        spent["service_blocking_work"] = spent["service_total"] - spent["service_event_loop"]
        processes = ("service_total", "database", "photo_host", "http_client")
        spent["total"] = sum(spent[name] for name in processes)
        return {name: round(1000 * value / images, 1) for name, value in spent.items()}

    def serving_process_shares(self) -> list[float]:
        """Each of several serving processes' share of the CPU they spent since the start,
        largest first: how evenly their connections fell on them. [] for one process."""
        now = _children_cpu_seconds(self._service_pid)
        spent = [now[pid] - self._children_start.get(pid, 0.0) for pid in now]
        total = sum(spent)
        shares = sorted((value / total for value in spent if total > 0), reverse=True)
        # The launcher's other children (multiprocessing's resource tracker) spend next to none.
        serving = [round(share, 3) for share in shares if share >= 0.01]
        return serving if len(serving) > 1 else []


def _children_cpu_seconds(pid: int) -> dict[int, float]:
    """CPU of each child process of ``pid`` (with its own descendants)."""
    spent = {}
    for child in process_tree(pid)[1:]:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):  # gone meanwhile
            ppid = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[1]
            if ppid == str(pid):
                spent[child] = _tree_cpu_seconds(child)
    return spent


def peak_rss_mb(pid: int) -> float:
    """Peak resident memory of a process and its descendants, summed: pages they share
    (the interpreter, libraries) count once for each, so for several processes this bounds
    their memory from above (``pss_mb`` shares them out)."""
    return sum(_kb_field(f"/proc/{process}/status", "VmHWM") for process in process_tree(pid))


def pss_mb(pid: int) -> float:
    """Memory of a process and its descendants now, each shared page divided among the
    processes that map it (proportional set size)."""
    return sum(_kb_field(f"/proc/{process}/smaps_rollup", "Pss") for process in process_tree(pid))


def _kb_field(path: str, field: str) -> float:
    """A ``Field: N kB`` line of a /proc file, in MB; 0 for a process gone (or a zombie)."""
    try:
        text = Path(path).read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return 0.0
    for line in text.splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return 0.0
