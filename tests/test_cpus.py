"""Workers and thread pools are sized for the CPUs the process may use, not the host's."""

from __future__ import annotations

import os
from pathlib import Path

from service.cpus import cpu_quota, usable_cpus
from service.settings import Settings


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_a_cgroup_v2_quota_on_the_cgroup_or_an_ancestor_counts(tmp_path: Path) -> None:
    proc = tmp_path / "proc-cgroup"
    write(proc, "0::/kubepods/pod1/ctr\n")
    root = tmp_path / "cgroup"
    write(root / "kubepods/pod1/ctr/cpu.max", "max 100000\n")
    assert cpu_quota(root, proc) is None
    write(root / "kubepods/pod1/cpu.max", "150000 100000\n")  # the pod's limit: 1.5 CPUs
    write(root / "kubepods/cpu.max", "800000 100000\n")
    assert cpu_quota(root, proc) == 1.5


def test_a_cgroup_v1_quota_is_read_from_the_cpu_hierarchy(tmp_path: Path) -> None:
    proc = tmp_path / "proc-cgroup"
    write(proc, "4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n1:name=systemd:/docker/abc\n")
    root = tmp_path / "cgroup"
    # Inside a container the hierarchy is mounted at the container's own cgroup: the path
    # from /proc does not exist there, and the mount's root holds the quota.
    write(root / "cpu,cpuacct/cpu.cfs_quota_us", "200000\n")
    write(root / "cpu,cpuacct/cpu.cfs_period_us", "100000\n")
    assert cpu_quota(root, proc) == 2.0
    write(root / "cpu,cpuacct/cpu.cfs_quota_us", "-1\n")  # no quota
    assert cpu_quota(root, proc) is None


def test_no_readable_cgroup_means_no_quota(tmp_path: Path) -> None:
    assert cpu_quota(tmp_path, tmp_path / "missing") is None
    write(tmp_path / "odd", "garbage\n0::/\n")
    write(tmp_path / "cpu.max", "not numbers\n")
    assert cpu_quota(tmp_path, tmp_path / "odd") is None


def test_usable_cpus_is_the_affinity_capped_by_the_quota(tmp_path: Path) -> None:
    affinity = len(os.sched_getaffinity(0))
    proc = tmp_path / "proc-cgroup"
    write(proc, "0::/\n")
    assert usable_cpus(tmp_path, proc) == affinity
    write(tmp_path / "cpu.max", "50000 100000\n")  # half a CPU still gets one thread
    assert usable_cpus(tmp_path, proc) == 1


def test_a_process_pinned_to_one_cpu_gets_one_worker_and_one_thread() -> None:
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(before)})
    try:
        settings = Settings()
        assert (settings.workers, settings.ort_threads) == (1, 1)
    finally:
        os.sched_setaffinity(0, before)
