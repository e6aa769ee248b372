"""The database connection of the command-line tools (``keys``, ``backfill``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from service.settings import Settings
from service.store.records import Document

NO_DATABASE = "set LABELSVC_MONGODB_URI to the database the service uses"


@asynccontextmanager
async def tool_database(uri: str, settings: Settings) -> AsyncIterator[AsyncDatabase[Document]]:
    """The service's database at ``uri``, closed on exit."""
    client: AsyncMongoClient[Document] = AsyncMongoClient(
        uri, serverSelectionTimeoutMS=settings.db_timeout_ms
    )
    try:
        yield client[settings.mongodb_db]
    finally:
        await client.close()
