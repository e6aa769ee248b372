"""The records collection, over pymongo's native async client.

Database failures become ``DatabaseUnavailable`` (503) and server-side time limits
``ServiceUnavailable`` here, so callers never see driver exceptions.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

from pymongo import ASCENDING, DESCENDING, IndexModel, ReturnDocument, WriteConcern
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import (
    ConnectionFailure,
    DuplicateKeyError,
    ExecutionTimeout,
    OperationFailure,
    PyMongoError,
)

from service.errors import DatabaseUnavailable, InvalidQuery, ServiceUnavailable

Document = dict[str, Any]
DURABLE = WriteConcern(j=True)

# Every field the query API filters or sorts on is indexed: the hash makes ingestion
# idempotent, `classes` is the flat twin of the nested detections.
RECORD_INDEXES = [
    IndexModel([("hash", ASCENDING)], name="hash_unique", unique=True),
    IndexModel([("url", ASCENDING)], name="url"),
    IndexModel([("urls", ASCENDING)], name="urls"),
    IndexModel([("datetime", DESCENDING)], name="datetime"),
    IndexModel([("classes", ASCENDING)], name="classes"),
    IndexModel([("width", ASCENDING)], name="width"),
    IndexModel([("height", ASCENDING)], name="height"),
    IndexModel([("label_quality_estimation", ASCENDING)], name="label_quality"),
]


@asynccontextmanager
async def database_errors() -> AsyncIterator[None]:
    """Translate driver failures into the service's errors."""
    try:
        yield
    except ExecutionTimeout:
        raise ServiceUnavailable(
            "the query took longer than the server-side time limit; narrow the filter",
            retry_after=1,
            extra={"reason": "query_timeout"},
        ) from None
    except ConnectionFailure:
        raise DatabaseUnavailable(
            "the database is not reachable", retry_after=2, extra={"reason": "database"}
        ) from None
    except OperationFailure as exc:
        if exc.code in (2, 9, 14):  # BadValue, FailedToParse, TypeMismatch
            raise InvalidQuery(f"the database refused the query: {exc.details}") from None
        raise


class RecordStore:
    def __init__(self, database: AsyncDatabase[Document], *, max_time_ms: int) -> None:
        # Journaled writes: a record is acknowledged only once it survives a database crash.
        self._records: AsyncCollection[Document] = database.get_collection(
            "records", write_concern=DURABLE
        )
        self._max_time_ms = max_time_ms

    async def ensure_indexes(self) -> None:
        async with database_errors():
            await self._records.create_indexes(RECORD_INDEXES)

    async def get(self, record_id: str) -> Document | None:
        async with database_errors():
            return await self._records.find_one({"_id": record_id})

    async def find_by_hash(self, digest: str) -> Document | None:
        async with database_errors():
            return await self._records.find_one({"hash": digest})

    async def remember_url(self, digest: str, url: str) -> Document | None:
        """Add ``url`` to the record with this content hash; returns the updated record."""
        async with database_errors():
            return await self._records.find_one_and_update(
                {"hash": digest},
                {"$addToSet": {"urls": url}},
                return_document=ReturnDocument.AFTER,
            )

    async def insert(self, document: Document) -> Document:
        """Insert a new record; when another writer stored the same bytes first, return theirs."""
        async with database_errors():
            try:
                await self._records.insert_one(document)
            except DuplicateKeyError:
                existing = await self.remember_url(document["hash"], document["url"])
                if existing is None:  # deleted in between: nothing to merge with
                    raise
                return existing
            return document

    async def find_page(
        self,
        filt: Mapping[str, Any],
        *,
        skip: int,
        limit: int,
        sort: Sequence[tuple[str, int]] = (("_id", ASCENDING),),
        projection: Mapping[str, Any] | None = None,
    ) -> list[Document]:
        async with database_errors():
            cursor = (
                self._records.find(filt, projection)
                .sort(list(sort))
                .skip(skip)
                .limit(limit)
                .max_time_ms(self._max_time_ms)
            )
            return await cursor.to_list(length=limit)

    async def count(self, filt: Mapping[str, Any]) -> int:
        async with database_errors():
            return await self._records.count_documents(filt, maxTimeMS=self._max_time_ms)


async def ping(database: AsyncDatabase[Document]) -> bool:
    try:
        await database.command("ping")
    except PyMongoError:
        return False
    return True
