"""One process at a time builds TensorRT engines into a cache directory.

Several serving processes (``LABELSVC_PROCESSES``), or several services on one host, that
start together with an empty cache would each build every engine (minutes on the GPU they
share) and write the same engine files at once, where one of them may read another's
half-written file. Holding this lock while its models load and warm up, the first process
builds and saves the engines; the others wait, then load them from the cache.
"""

from __future__ import annotations

import fcntl
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from service.infer.manifest import ModelError

log = logging.getLogger(__name__)
LOCK_FILE = ".lock"


@contextmanager
def engine_cache_lock(engine_cache: Path | None) -> Iterator[None]:
    """Held exclusively, across processes, while in the block; nothing when ``engine_cache``
    is None (no TensorRT)."""
    if engine_cache is None:
        yield
        return
    path = engine_cache / LOCK_FILE
    try:
        engine_cache.mkdir(parents=True, exist_ok=True)
        lock = path.open("a")
    except OSError as exc:
        raise ModelError(f"cannot lock the TensorRT engine cache {path}: {exc.strerror}") from exc
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another process building TensorRT engines in %s", engine_cache)
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
