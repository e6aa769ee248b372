"""A database call the server holds: it answers heartbeats but never this call (a backup's
lock, a write concern never met)."""

from __future__ import annotations

import asyncio
from typing import Any


async def never_answers(*args: Any, **kwargs: Any) -> Any:
    await asyncio.Event().wait()
