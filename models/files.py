"""The mode of what the model tools write."""

from __future__ import annotations

import os
from pathlib import Path


def as_created(path: Path) -> None:
    """Give ``path``, made by ``mkstemp`` or ``mkdtemp`` (owner-only), the mode a plain
    ``open()`` or ``mkdir()`` would have given it: the service may run as another user
    than the one who fetched or exported its models (the container image's does)."""
    umask = os.umask(0)
    os.umask(umask)
    path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)
