"""Walking the records in ``_id`` order a batch at a time, resumable after any id: the
maintenance commands (``backfill``, ``relabel``) read the collection this way."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Final, Self

from pymongo.asynchronous.collection import AsyncCollection

from service.query.bson_order import following
from service.store.errors import within
from service.store.records import Document


class _Position(Enum):
    START = "start"


# Where a walk with no ``after`` begins. Not None: a record may have the id null (MongoDB allows
# one), and resuming after it must not start over.
FROM_START: Final = _Position.START
# Failed records named in the progress lines; all of them are counted.
MAX_FAILED_IDS = 100


@dataclass(slots=True)
class WalkProgress:
    """How far a walk has come, and the records it could not bring up to date (the walk
    goes on past them)."""

    scanned: int = 0
    last_id: Any = None
    failed: int = 0
    failed_ids: list[Any] = field(default_factory=list)

    @classmethod
    def starting_after(cls, after: Any) -> Self:
        """No record walked yet; ``last_id`` reports ``after`` until a batch passes (None
        for a walk from the start)."""
        return cls(last_id=None if after is FROM_START else after)

    def passed(self, batch: list[Document]) -> None:
        """Count a finished batch: the walk resumes after its last record."""
        self.scanned += len(batch)
        self.last_id = batch[-1]["_id"]

    def count_failure(self, record_id: Any) -> None:
        self.failed += 1
        if len(self.failed_ids) < MAX_FAILED_IDS:
            self.failed_ids.append(record_id)


async def batches(
    records: AsyncCollection[Document],
    projection: dict[str, int],
    size: int,
    *,
    after: Any = FROM_START,
    seconds: float | None = None,
) -> AsyncIterator[list[Document]]:
    """The records in ``_id`` order after ``after``, ``size`` at a time. ``seconds``: how long
    each batch's read may take (``within``), so that a database that holds it ends the walk
    with an error instead of a hang."""
    position = after
    while True:
        async with within(seconds):
            batch = await batch_after(records, position, projection, size)
        if not batch:
            return
        yield batch
        position = batch[-1]["_id"]


async def batch_after(
    records: AsyncCollection[Document], last_id: Any, projection: dict[str, int], size: int
) -> list[Document]:
    """The next ``size`` records in ``_id`` order after ``last_id`` (``FROM_START``: the
    first ones)."""

    async def walk(query: dict[str, Any]) -> list[Document]:
        return await records.find(query, projection).sort("_id", 1).limit(size).to_list()

    if last_id is FROM_START:
        return await walk({})
    # $gt compares within one BSON type: imported ids of a later type (ObjectIds after
    # strings) come from a query for those types.
    for after in following("_id", last_id, 1):
        batch = await walk(after)
        if batch:
            return batch
    return []
