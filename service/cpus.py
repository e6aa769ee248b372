"""How many CPUs this process may use: its CPU affinity, capped by its cgroup's CPU quota.

``os.cpu_count()`` counts the host's CPUs. A container limited to two of them (``docker run
--cpus 2``, a Kubernetes CPU limit) or a process pinned with ``taskset`` would size its workers
and ONNX Runtime thread pools for the whole host, and be throttled.
"""

from __future__ import annotations

import math
import os
from pathlib import Path, PurePosixPath

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")


def usable_cpus(cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> int:
    """CPUs this process may run on, at least 1; a fractional quota counts as the next whole."""
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        count = os.cpu_count() or 1
    quota = cpu_quota(cgroup_root, proc_cgroup)
    if quota is not None:
        count = min(count, math.ceil(quota))
    return max(1, count)


def cpu_quota(cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> float | None:
    """The tightest CPU quota (in CPUs) on this process's cgroup and its ancestors; None if
    there is none or it cannot be read. cgroup v2 (``cpu.max``) or v1 (``cpu.cfs_quota_us``)."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    quotas = []
    for line in lines:
        _, controllers, path = line.split(":", 2) if line.count(":") >= 2 else ("", "-", "")
        if controllers == "":  # cgroup v2, the unified hierarchy
            quotas += [_v2_quota(d) for d in _up_from(cgroup_root, path)]
        elif "cpu" in controllers.split(","):  # v1: mounted as "cpu,cpuacct", or "cpu"
            mount = cgroup_root / controllers
            mount = mount if mount.is_dir() else cgroup_root / "cpu"
            quotas += [_v1_quota(d) for d in _up_from(mount, path)]
    found = [quota for quota in quotas if quota is not None]
    return min(found, default=None)


def _up_from(mount: Path, path: str) -> list[Path]:
    """The cgroup's directory under ``mount`` and each parent's, up to ``mount`` itself."""
    relative = PurePosixPath(path.strip()).relative_to("/")
    return [mount / part for part in (relative, *relative.parents)]


def _v2_quota(directory: Path) -> float | None:
    try:
        quota, period = (directory / "cpu.max").read_text().split()
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        return None


def _v1_quota(directory: Path) -> float | None:
    try:
        quota = int((directory / "cpu.cfs_quota_us").read_text())
        period = int((directory / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None
