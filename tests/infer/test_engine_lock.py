"""One process at a time loads models into a TensorRT engine cache; the others wait for it."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from service.infer.engine_lock import LOCK_FILE, engine_cache_lock
from service.infer.manifest import ModelError

# Exits 0 when it gets the lock at once, 1 when another holder has it.
TRY_LOCK = """
import fcntl, sys
with open(sys.argv[1], "a") as lock:
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        sys.exit(1)
"""


def other_process_gets_it(cache: Path) -> bool:
    tried = subprocess.run([sys.executable, "-c", TRY_LOCK, str(cache / LOCK_FILE)], check=False)
    assert tried.returncode in (0, 1), tried
    return tried.returncode == 0


def test_another_process_cannot_take_the_lock_while_it_is_held(tmp_path: Path) -> None:
    cache = tmp_path / "tensorrt"  # created on first use
    with engine_cache_lock(cache):
        assert not other_process_gets_it(cache)
    assert other_process_gets_it(cache)


def test_a_second_holder_waits_for_the_first_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="service.infer.engine_lock")
    order: list[str] = []
    held = threading.Event()
    release = threading.Event()

    def first() -> None:
        with engine_cache_lock(tmp_path):
            held.set()
            release.wait(10)
            order.append("first done")

    def second() -> None:
        with engine_cache_lock(tmp_path):
            order.append("second in")

    one = threading.Thread(target=first)
    one.start()
    assert held.wait(10)
    two = threading.Thread(target=second)
    two.start()
    two.join(0.5)
    assert two.is_alive() and order == []  # waiting
    release.set()
    one.join(10)
    two.join(10)
    assert order == ["first done", "second in"]
    assert f"waiting for another process building TensorRT engines in {tmp_path}" in caplog.text


def test_without_tensorrt_there_is_no_lock(tmp_path: Path) -> None:
    with engine_cache_lock(None):
        pass
    assert list(tmp_path.iterdir()) == []


def test_a_cache_that_cannot_be_created_is_a_model_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    refused = pytest.raises(ModelError, match=r"^cannot lock the TensorRT engine cache .*/file/t/")
    with refused, engine_cache_lock(tmp_path / "file" / "t"):
        pass
