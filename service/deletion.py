"""Deleting a stored record, unconditionally or only in the version the client read."""

from __future__ import annotations

import logging
from collections.abc import Callable

from service.domain.records import Record, StoredDocument, record_from_document
from service.errors import DatabaseUnavailable, PreconditionFailed, RecordNotFound
from service.observability import Metrics
from service.store.records import RecordStore

log = logging.getLogger(__name__)

Precondition = Callable[[Record | StoredDocument], bool]


async def delete_record(
    store: RecordStore,
    metrics: Metrics,
    record_id: str,
    *,
    key: str,
    precondition: Precondition | None = None,
) -> None:
    """Delete a stored record, logged with the name of the API ``key`` that asked: the next
    request for its bytes labels them afresh.

    With a ``precondition`` (the client's If-Match or If-None-Match) the record is read first
    and deleted only if the precondition holds for it and it is still that document when
    deleted."""
    read = None
    if precondition is not None:
        read = await store.get(record_id)
        if read is None:
            raise RecordNotFound(f"no record has id {record_id!r}")
        if not precondition(record_from_document(read)):
            raise PreconditionFailed(
                f"record {record_id!r} changed since the client read it: GET it again for its"
                " current ETag"
            )
    try:
        deleted = await store.delete(record_id, unchanged_from=read)
    except DatabaseUnavailable as exc:  # the request may have reached the database
        log.warning("record %s: deletion with key %s unconfirmed by the database", record_id, key)
        raise DatabaseUnavailable(
            f"{exc.detail}; the deletion may have been applied: a retry answers 404 if so",
            retry_after=exc.retry_after,
            extra=exc.extra,
        ) from None
    if not deleted:
        if read is not None and await store.get(record_id) is not None:
            raise PreconditionFailed(
                f"record {record_id!r} changed while it was being deleted: GET it again for"
                " its current ETag"
            )
        raise RecordNotFound(f"no record has id {record_id!r}")
    metrics.records_deleted.inc()
    log.info("record %s deleted with key %s", record_id, key)
