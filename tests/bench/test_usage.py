"""The benchmarks' CPU accounting, on real processes."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from bench.usage import CpuMeter, process_tree

# Two children that wait for GO, each burn their share of CPU, say so, then idle until killed.
PARENT = """
import subprocess, sys, time
go, *burns = sys.argv[1:]
child = '''
import os, sys, time
go, burn = sys.argv[1], float(sys.argv[2])
while not os.path.exists(go):
    time.sleep(0.01)
start = time.process_time()
while time.process_time() - start < burn:
    pass
open(f"{go}.{burn}.done", "w").close()
time.sleep(60)
'''
children = [subprocess.Popen([sys.executable, "-c", child, go, burn]) for burn in burns]
time.sleep(60)
"""


def wait_for(condition: object, what: str, timeout: float = 60) -> None:
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_serving_process_shares_are_each_child_share_of_their_cpu(tmp_path: Path) -> None:
    go = tmp_path / "go"
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(go), "0.6", "0.3"])
    try:
        wait_for(lambda: len(process_tree(parent.pid)) == 3, "the children did not start")
        time.sleep(0.5)  # past their interpreters' start-up, which is not what is measured
        meter = CpuMeter(parent.pid, parent.pid, parent.pid)
        go.touch()
        done = [tmp_path / f"go.{burn}.done" for burn in ("0.6", "0.3")]
        wait_for(lambda: all(path.exists() for path in done), "the children did not burn")
        big, small = meter.serving_process_shares()
        assert abs(big - 2 / 3) < 0.06 and abs(small - 1 / 3) < 0.06, (big, small)
    finally:
        for pid in process_tree(parent.pid)[1:]:
            subprocess.run(["kill", str(pid)], check=False)
        parent.kill()
        parent.wait()


def test_one_serving_process_has_no_shares() -> None:
    alone = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert CpuMeter(alone.pid, alone.pid, alone.pid).serving_process_shares() == []
    finally:
        alone.kill()
        alone.wait()
