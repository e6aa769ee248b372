"""The records collection, over pymongo's native async client.

Database failures become the service's errors here (``service.store.errors``), so callers
never see driver exceptions. Every read runs under ``maxTimeMS`` and,
in case the server does not answer at all, a client-side deadline a little longer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import bson
from pymongo import ASCENDING, IndexModel, WriteConcern
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import (
    DuplicateKeyError,
    ExecutionTimeout,
    OperationFailure,
    PyMongoError,
)

from service.errors import RecordTooLarge, ServiceUnavailable
from service.query.plan import IndexedFields
from service.store.errors import (
    BSON_OBJECT_TOO_LARGE,
    DOCUMENT_TOO_LARGE,
    ResultTooLarge,
    database_errors,
    unresponsive,
    within,
)
from service.store.ids import id_filter

log = logging.getLogger(__name__)

Document = dict[str, Any]
DURABLE = WriteConcern(j=True)
INDEX_EXISTS_UNDER_ANOTHER_NAME = 85  # IndexOptionsConflict

# Every field the query API filters or sorts on is indexed: the hash makes ingestion
# idempotent, `classes` is the flat twin of the nested detections, `keywords` serves search
# and `phash_bands` near-duplicate lookup. Sort keys are indexed with `_id`, the tiebreak
# of every sort, so that sorted pages and cursor walks read the index in order.
RECORD_INDEXES = [
    IndexModel([("hash", ASCENDING)], name="hash_unique", unique=True),
    IndexModel([("url", ASCENDING)], name="url"),
    IndexModel([("urls", ASCENDING)], name="urls"),
    IndexModel([("classes", ASCENDING)], name="classes"),
    IndexModel([("tags.name", ASCENDING)], name="tags_name"),
    IndexModel([("keywords", ASCENDING)], name="keywords"),
    IndexModel([("phash_bands", ASCENDING)], name="phash_bands"),
    IndexModel([("datetime", ASCENDING), ("_id", ASCENDING)], name="datetime_id"),
    IndexModel([("width", ASCENDING), ("_id", ASCENDING)], name="width_id"),
    IndexModel([("height", ASCENDING), ("_id", ASCENDING)], name="height_id"),
    IndexModel(
        [("label_quality_estimation", ASCENDING), ("_id", ASCENDING)], name="label_quality_id"
    ),
]
INDEXED = IndexedFields(
    fields=frozenset({"_id", *(next(iter(m.document["key"])) for m in RECORD_INDEXES)}),
    point=frozenset({"_id", "hash", "url", "urls"}),
)
# The URLs kept per record: anyone can serve the same bytes from new URLs (a query string
# is enough), and without a bound the list would grow to the 16 MiB document limit.
MAX_URLS = 100
# Beyond the server-side limit, how long the client waits for a reply before giving up.
CLIENT_GRACE_SECONDS = 2.0
SCAN_BATCH_SIZE = 5_000
COUNT_CACHE_SIZE = 1024
PING_SECONDS = 2.0
INSERT_ATTEMPTS = 3


def records_collection(database: AsyncDatabase[Document]) -> AsyncCollection[Document]:
    """The records, written with journaled acknowledgement: an acknowledged record survives a
    database crash."""
    return database.get_collection("records", write_concern=DURABLE)


def _serves(index: IndexModel, present: Mapping[str, Any]) -> bool:
    """Whether ``present`` (``index_information()``) holds ``index``, or one of the same keys
    and uniqueness under another name."""
    wanted = index.document
    return wanted["name"] in present or any(
        list(existing["key"]) == list(wanted["key"].items())
        and existing.get("unique", False) == wanted.get("unique", False)
        and "partialFilterExpression" not in existing
        for existing in present.values()
    )


class RecordStore:
    def __init__(
        self,
        database: AsyncDatabase[Document],
        *,
        max_time_ms: int,
        operation_timeout_ms: int = 10_000,
    ) -> None:
        self._records = records_collection(database)
        self._max_time_ms = max_time_ms
        self._operation_timeout = operation_timeout_ms / 1000
        self._counts: dict[bytes, tuple[float, int | None]] = {}

    async def ensure_indexes(self) -> None:
        """All the indexes in one command, as a rule. When that fails, each on its own, so
        that one the data cannot have (the unique hash index over imported records that share
        a hash, or lack one) does not keep the others, which queries need, from being built.
        Raises the first failure once all were tried."""
        failures: list[OperationFailure] = []
        async with database_errors():
            try:
                await self._records.create_indexes(RECORD_INDEXES)
                return
            except OperationFailure as exc:
                if exc.timeout:
                    raise
            for index in RECORD_INDEXES:
                try:
                    await self._records.create_indexes([index])
                except OperationFailure as exc:
                    if exc.timeout:
                        raise
                    if exc.code == INDEX_EXISTS_UNDER_ANOTHER_NAME and _serves(
                        index, await self._records.index_information()
                    ):
                        continue  # made by hand or by an import: it serves all the same
                    failures.append(exc)
            if failures:
                raise failures[0]

    async def missing_indexes(self) -> list[str]:
        """The names of the record indexes the database lacks (under any name)."""
        async with database_errors():
            present = await self._records.index_information()
        return [m.document["name"] for m in RECORD_INDEXES if not _serves(m, present)]

    def _labeling(self) -> AbstractAsyncContextManager[None]:
        return within(self._operation_timeout)

    async def get(self, record_id: str) -> Document | None:
        async with self._labeling():
            return await self._records.find_one(id_filter(record_id))

    async def delete(self, record_id: str, *, unchanged_from: Document | None = None) -> bool:
        """Delete the record with this id (journaled); False when no record had it.

        With ``unchanged_from`` (the record as read before), only while it is still that
        document, field for field: False when it changed or went in between."""
        filt = id_filter(record_id)
        if unchanged_from is not None:
            filt = {
                "_id": unchanged_from["_id"],
                "$expr": {"$eq": ["$$ROOT", {"$literal": unchanged_from}]},
            }
        async with self._labeling():
            result = await self._records.delete_one(filt)
            return result.deleted_count == 1

    async def remember_url(self, digest: str, url: str | None) -> Document | None:
        """The record with this content hash, with ``url`` added to its ``urls`` unless it
        holds it or ``MAX_URLS`` already (and made its ``url`` if it had none: bytes uploaded
        first); None when there is no such record. ``url`` None (an upload) adds nothing.

        The record is read first: bytes labeled before from this URL, or uploaded, cost one
        indexed read and write nothing, and repeated requests are the common case."""
        async with self._labeling():
            document = await self._records.find_one({"hash": digest})
            if document is None or url is None:
                return document
            if "urls" not in document:
                # Imported with a url alone: urls is made, holding that url first.
                own = document.get("url")
                return await self._add_urls(document, [own, url] if isinstance(own, str) else [url])
            urls = document["urls"]
            if not isinstance(urls, list):
                # An imported record whose urls is not an array: $addToSet cannot add to it.
                # Its labels are served all the same; the URL is not kept.
                log.warning("record with sha256 %s: urls is not an array, no URL added", digest)
                return document
            if document.get("url") is not None and (url in urls or len(urls) >= MAX_URLS):
                return document
            return await self._add_urls(document, [url])

    async def _add_urls(self, found: Document, urls: list[str]) -> Document | None:
        """``remember_url``'s write, for a record ``found`` lacking the last of ``urls``:
        another request may have added URLs, filled the list or deleted the record since."""
        digest = found["hash"]
        try:
            await self._records.update_one(
                {"hash": digest, f"urls.{MAX_URLS - 1}": {"$exists": False}},
                {"$addToSet": {"urls": {"$each": urls}}},
            )
        except OperationFailure as exc:
            if exc.code not in DOCUMENT_TOO_LARGE:
                raise
            # An imported record at the document limit: served all the same, URL not kept.
            log.warning("record with sha256 %s is at the size limit, no URL added", digest)
            return found
        document = await self._records.find_one({"hash": digest})
        if document is None:  # deleted
            return None
        if document.get("url") is None:
            # Bytes uploaded before any URL served them. A race between two such URLs
            # leaves the first one written, each in urls.
            await self._records.update_one(
                {"_id": document["_id"], "url": None}, {"$set": {"url": urls[-1]}}
            )
            return await self._records.find_one({"_id": document["_id"]})
        return document

    async def insert(self, document: Document) -> Document:
        """Insert a new record; when another writer stored the same bytes first, return theirs."""
        async with self._labeling():
            for _ in range(INSERT_ATTEMPTS):
                try:
                    await self._records.insert_one(document)
                except DuplicateKeyError:
                    existing = await self.remember_url(document["hash"], document["url"])
                    if existing is not None:
                        return existing
                    continue  # that record was deleted in between: the bytes are free again
                return document
        raise ServiceUnavailable(
            "the record for these bytes was being replaced; retry",
            retry_after=1,
            extra={"reason": "write_conflict"},
        )

    async def replace_labels(
        self, record_id: Any, digest: str, fields: Document, *, urls: list[str] | None = None
    ) -> bool:
        """Overwrite ``fields`` of the record with this id as long as it still holds these
        bytes, and add ``urls`` to its ``urls`` (made when missing); False when it is gone
        (deleted meanwhile). ``RecordTooLarge`` when the database refuses the rewrite."""
        update: Document = {"$set": fields}
        if urls is not None:
            update["$addToSet"] = {"urls": {"$each": urls}}
        async with self._labeling():
            try:
                result = await self._records.update_one({"_id": record_id, "hash": digest}, update)
            except OperationFailure as exc:
                if exc.code not in DOCUMENT_TOO_LARGE:
                    raise
                raise RecordTooLarge(
                    "the stored record cannot hold the new labels: it would pass the"
                    " database's 16 MiB document limit (imported fields take most of it)",
                    extra={"reason": "document_limit"},
                ) from None
            return result.matched_count == 1

    @property
    def indexed(self) -> IndexedFields:
        return INDEXED

    @asynccontextmanager
    async def _reading(self, max_time_ms: int | None) -> AsyncIterator[int]:
        """A read under a server-side limit, and a client-side one should the server hang.

        A read past the server's own limit is the query's doing (``query_timeout``: narrow
        it); no answer even ``CLIENT_GRACE_SECONDS`` after that limit is the database's.
        """
        limit = max_time_ms or self._max_time_ms
        try:
            async with asyncio.timeout(limit / 1000 + CLIENT_GRACE_SECONDS), database_errors():
                yield limit
        except TimeoutError:
            raise unresponsive() from None

    async def find_one(
        self, filt: Mapping[str, Any], projection: Mapping[str, Any] | None = None
    ) -> Document | None:
        async with self._reading(None) as limit:
            return await self._records.find_one(filt, projection, max_time_ms=limit)

    async def find(
        self,
        filt: Mapping[str, Any],
        *,
        sort: Sequence[tuple[str, int]],
        limit: int,
        skip: int = 0,
        projection: Mapping[str, Any] | None = None,
        max_time_ms: int | None = None,
    ) -> list[Document]:
        async with self._reading(max_time_ms) as budget:
            cursor = (
                self._records.find(filt, projection)
                .sort(list(sort))
                .skip(skip)
                .limit(limit)
                .max_time_ms(budget)
            )
            return await cursor.to_list(length=limit)

    async def scan(
        self,
        filt: Mapping[str, Any],
        *,
        sort: Sequence[tuple[str, int]],
        projection: Mapping[str, Any],
        max_time_ms: int | None = None,
    ) -> AsyncIterator[Document]:
        """Every match, fetched a batch at a time: for reading more (small, projected)
        records than should be held at once. The whole scan runs under one time limit."""
        async with self._reading(max_time_ms) as budget:
            cursor = (
                self._records.find(filt, projection)
                .sort(list(sort))
                .batch_size(SCAN_BATCH_SIZE)
                .max_time_ms(budget)
            )
            async for document in cursor:
                yield document

    async def count(
        self, filt: Mapping[str, Any], *, max_time_ms: int, max_age: float = 0.0
    ) -> int | None:
        """The exact number of matches, or ``None`` when counting takes over ``max_time_ms``.

        With ``max_age`` (seconds), a count this process made that recently is reused.
        """
        key = bson.encode(filt)
        cached = self._counts.get(key)
        if cached is not None and time.monotonic() - cached[0] <= max_age:
            return cached[1]
        async with self._reading(max_time_ms) as budget:
            try:
                counted: int | None = await self._records.count_documents(filt, maxTimeMS=budget)
            except ExecutionTimeout:
                counted = None
        self.note_count(filt, counted)
        return counted

    def note_count(self, filt: Mapping[str, Any], counted: int | None) -> None:
        """Remember the number of matches of ``filt``, however it was counted, for
        ``count``'s ``max_age``."""
        if len(self._counts) >= COUNT_CACHE_SIZE:
            self._counts.clear()
        self._counts[bson.encode(filt)] = (time.monotonic(), counted)

    async def estimated_count(self) -> int:
        """The collection's size from its metadata: no scan."""
        async with self._reading(None) as budget:
            return await self._records.estimated_document_count(maxTimeMS=budget)

    async def aggregate(
        self, pipeline: Sequence[Mapping[str, Any]], *, max_time_ms: int | None = None
    ) -> list[Document]:
        async with self._reading(max_time_ms) as budget:
            try:
                cursor = await self._records.aggregate(list(pipeline), maxTimeMS=budget)
                return await cursor.to_list()
            except OperationFailure as exc:
                if exc.code == BSON_OBJECT_TOO_LARGE:
                    raise ResultTooLarge((exc.details or {}).get("errmsg", "")) from None
                raise


def unreached(database: AsyncDatabase[Document]) -> bool:
    """Whether the driver has tried every server it knows and reached none (connection
    refused, no such host): known within moments of the first operation, where an operation
    waits out its server selection (``LABELSVC_DB_TIMEOUT_MS``) before it fails."""
    servers = database.client.topology_description.server_descriptions().values()
    return bool(servers) and all(server.error is not None for server in servers)


async def ping(database: AsyncDatabase[Document]) -> bool:
    """Whether the database answers within ``PING_SECONDS``: readiness probes give up after
    a few seconds, and a hung server must read as not ready before they do."""
    try:
        async with asyncio.timeout(PING_SECONDS):
            await database.command("ping")
    except (PyMongoError, TimeoutError):
        return False
    return True
