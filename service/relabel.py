"""Labeling stored records again after a model change (``python -m service relabel``).

A record is stale when its lineage (``analyses``) names other models, weights, versions or
settings than the service would use now (``service.lineage``). Stale records are labeled again
in place from their own URLs (``LabelingPipeline.relabel``): the same id, URLs, first-seen time
and content hash, so that clients' references and deduplication hold. Walks in ``_id`` order
like ``backfill``; safe while the service runs, and resumable after the last id reported.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection

from service.errors import DatabaseUnavailable, ServiceError
from service.lineage import current_key, is_stale
from service.pipeline import LabelingPipeline, Relabeled
from service.store.records import Document
from service.store.walk import FROM_START, WalkProgress, batches

PROJECTION = {"_id": 1, "hash": 1, "url": 1, "urls": 1, "analyses": 1}


@dataclass(slots=True)
class RelabelProgress(WalkProgress):
    stale: int = 0  # of the scanned: labeled with other models or settings, or no lineage
    relabeled: int = 0
    unreachable: int = 0  # no URL of the record answered with an image
    changed: int = 0  # its URLs serve other bytes now: left as it is
    deleted: int = 0  # deleted while it was analysed
    unverifiable: int = 0  # stale but without a content hash to check the bytes against


async def relabel_stale(
    records: AsyncCollection[Document],
    pipeline: LabelingPipeline,
    *,
    batch_size: int = 100,
    concurrency: int = 2,
    dry_run: bool = False,
    after: Any = FROM_START,
    operation_timeout: float = 10.0,
    on_batch: Callable[[RelabelProgress], None] | None = None,
    on_failure: Callable[[Any, str], None] | None = None,
) -> RelabelProgress:
    """Label again every stale record with an ``_id`` above ``after``, ``concurrency`` at a
    time; a dry run only counts them. Each batch is finished before the next is read, so
    the last id reported is a safe place to resume. ``operation_timeout``: seconds a batch's
    read may take; each record's own reads and writes have the service's limits."""
    if batch_size < 1 or concurrency < 1:
        raise ValueError("batch_size and concurrency must be >= 1")
    current = current_key(pipeline.analyzer)
    progress = RelabelProgress.starting_after(after)
    slots = asyncio.Semaphore(concurrency)

    async def relabel(document: Document) -> None:
        async with slots:
            try:
                outcome = await pipeline.relabel(document)
            except DatabaseUnavailable:
                raise  # every record would fail alike: stop, to be resumed
            except ServiceError as exc:  # the analysis failed
                progress.count_failure(document["_id"])
                if on_failure is not None:
                    on_failure(document["_id"], exc.detail)
                return
        match outcome:
            case Relabeled.RELABELED:
                progress.relabeled += 1
            case Relabeled.UNREACHABLE:
                progress.unreachable += 1
            case Relabeled.CHANGED:
                progress.changed += 1
            case Relabeled.DELETED:
                progress.deleted += 1

    async for batch in batches(
        records, PROJECTION, batch_size, after=after, seconds=operation_timeout
    ):
        stale = [document for document in batch if is_stale(document, current)]
        progress.stale += len(stale)
        hashed = [document for document in stale if isinstance(document.get("hash"), str)]
        progress.unverifiable += len(stale) - len(hashed)
        if not dry_run:
            await asyncio.gather(*map(relabel, hashed))
        progress.passed(batch)
        if on_batch is not None:
            on_batch(progress)
    return progress
