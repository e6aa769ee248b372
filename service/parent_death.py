"""Processes that stop when the process that started them dies (SIGKILL, the OOM killer),
rather than run on, reparented, holding a port or a storage (Linux only)."""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Callable

PR_SET_PDEATHSIG = 1  # linux/prctl.h

# Looked up once, here: a child between fork and exec (Popen's preexec_fn) then only calls it.
_prctl: Callable[..., int] | None = (
    ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None
)


def signal_on_parent_death(signum: int) -> None:
    """Have the kernel send this process ``signum`` when its parent dies; nothing outside
    Linux. The kernel sends it when the *thread* that started this process ends, even with
    the parent process still running, and again each time another of the parent's threads,
    which this process then passed to, ends. OSError when the kernel refuses."""
    if _prctl is None:
        return
    if _prctl(PR_SET_PDEATHSIG, signum) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
