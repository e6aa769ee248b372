"""Connecting to the database: the service's client options, the URI check made at start,
and the connection of the command-line tools (``keys``, ``backfill``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from pymongo import AsyncMongoClient, MongoClient
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError

from service.settings import Settings
from service.store.records import Document

NO_DATABASE = "set LABELSVC_MONGODB_URI to the database the service uses"


def client_options(settings: Settings) -> dict[str, Any]:
    """The service's client options beside its URI."""
    return {
        "serverSelectionTimeoutMS": settings.db_timeout_ms,
        "connectTimeoutMS": settings.db_timeout_ms,
        "tz_aware": True,
        # MongoDB stores dates outside years 1-9999 (an imported record's), which Python's
        # datetime cannot hold: decoded as they are, every page and walk holding one would
        # fail. They are read as the nearest date it can hold instead.
        "datetime_conversion": "DATETIME_CLAMP",
        "appname": "labelsvc",
    }


def uri_problem(uri: str, settings: Settings) -> str | None:
    """Why the driver would refuse to build the service's client for ``uri``, or ``None``.
    Nothing connects (nor is a ``mongodb+srv`` name resolved); options the driver only warns
    about pass, as they would at start."""
    try:
        MongoClient(uri, connect=False, **client_options(settings)).close()
    except (PyMongoError, ValueError, OSError) as exc:  # OSError: an unreadable tlsCAFile
        return str(exc)
    return None


@asynccontextmanager
async def tool_database(uri: str, settings: Settings) -> AsyncIterator[AsyncDatabase[Document]]:
    """The service's database at ``uri``, closed on exit."""
    client: AsyncMongoClient[Document] = AsyncMongoClient(uri, **client_options(settings))
    try:
        yield client[settings.mongodb_db]
    finally:
        await client.close()
