"""Bringing the derived fields of stored records up to date (``python -m service backfill``).

Walks the records in ``_id`` order a batch at a time, recomputes each one's derived fields
(``service.query.derived``) from its own content and writes only those that differ, and only
while that content is as it was read. It touches nothing else, so it is safe while the service
runs (a record labeled or relabeled meanwhile is already up to date), and safe to interrupt:
run it again, or resume after the last id it reported.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pymongo import UpdateOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError

from service.query.derived import DERIVED_FIELDS, SOURCE_FIELDS, derive_from_document
from service.store.errors import within
from service.store.records import Document
from service.store.walk import FROM_START, WalkProgress, batches


@dataclass(slots=True)
class BackfillProgress(WalkProgress):
    updated: int = 0  # records whose derived fields differed (and were rewritten unless dry)


async def backfill_derived_fields(
    records: AsyncCollection[Document],
    *,
    batch_size: int = 500,
    dry_run: bool = False,
    after: Any = FROM_START,
    operation_timeout: float | None = None,
    on_batch: Callable[[BackfillProgress], None] | None = None,
    on_failure: Callable[[Any, str], None] | None = None,
) -> BackfillProgress:
    """Recompute and store the derived fields of every record with an ``_id`` above ``after``.

    A record whose rewrite the database refuses (one at the 16 MiB document limit, say) is
    counted, passed to ``on_failure`` with the database's message, and skipped: one record
    must not stop the walk for the others. ``operation_timeout``: seconds each batch's read
    and each batch's write may take (``within``), so a database that holds them ends the
    walk with an error instead of a hang."""
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    projection = dict.fromkeys((*SOURCE_FIELDS, *DERIVED_FIELDS), 1)
    progress = BackfillProgress.starting_after(after)
    async for batch in batches(
        records, projection, batch_size, after=after, seconds=operation_timeout
    ):
        updates, ids = [], []
        for document in batch:
            derived = derive_from_document(document)
            changed = {k: v for k, v in derived.items() if document.get(k) != v}
            if changed:
                updates.append(UpdateOne(_unchanged(document), {"$set": changed}))
                ids.append(document["_id"])
        refused: list[tuple[Any, str]] = []
        written = len(updates)
        if updates and not dry_run:
            try:
                async with within(operation_timeout):
                    written = (await records.bulk_write(updates, ordered=False)).matched_count
            except BulkWriteError as exc:
                if exc.details.get("writeConcernErrors"):
                    raise
                refused = [(ids[e["index"]], e["errmsg"]) for e in exc.details["writeErrors"]]
                written = exc.details["nMatched"]
        for record_id, message in refused:
            progress.count_failure(record_id)
            if on_failure is not None:
                on_failure(record_id, message)
        progress.updated += written
        progress.passed(batch)
        if on_batch is not None:
            on_batch(progress)
    return progress


def _unchanged(document: Document) -> Document:
    """The record as read, as far as its derived fields come from it: a relabel between the
    read and the write has written derived fields of its own, which must stay."""
    filt: Document = {"_id": document["_id"]}
    for field in SOURCE_FIELDS:
        value = _at(document, field)
        # Plain equality ($eq takes its operand as a literal), not $expr: the development
        # database uses no index for a filter with a top-level $expr, so each update would
        # read the whole collection. On an array $eq also matches an array holding the value
        # as an element, which the service's record shapes never do.
        filt[field] = {"$exists": False} if value is _MISSING else {"$eq": value}
    return filt


_MISSING = object()


def _at(document: Document, path: str) -> Any:
    value: Any = document
    for key in path.split("."):
        if not isinstance(value, dict) or key not in value:
            return _MISSING
        value = value[key]
    return value
