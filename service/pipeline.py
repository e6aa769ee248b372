"""Labeling: URL, upload or id -> fetch -> hash -> decode -> detect -> describe -> score -> store.

The same bytes are one record whichever URL they came from: the content hash is checked
before any inference, concurrent requests for one image share a single analysis (and the
unique index on ``hash`` settles races between processes). The analysis runs as its own
task, so a client that disconnects does not waste the work or leave a half-made record.
A URL labeled before whose host gave a strong ``ETag`` is asked for with ``If-None-Match``:
a 304 answer means the same bytes, so their record is the answer and nothing is downloaded.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from functools import partial
from typing import Any, TypeVar

from service.admission import Admission, slot_taken
from service.analysis import ImageAnalysis, ImageAnalyzer
from service.domain.records import (
    Record,
    StoredDocument,
    flag,
    is_record_id,
    new_record_id,
    record_from_document,
    record_to_document,
)
from service.errors import (
    BadRequest,
    RecordNotFound,
    RequestTimeout,
    ServiceError,
    ServiceUnavailable,
    UpstreamTimeout,
)
from service.executor import BlockingExecutor, start_request
from service.fetch.body import Content
from service.fetch.download import Fetched, ImageFetcher
from service.fetch.revalidation import EntityTags
from service.lineage import current_key, is_stale
from service.observability import Metrics
from service.query.derived import derive
from service.store.ids import is_object_id_hex
from service.store.records import RecordStore

log = logging.getLogger(__name__)
T = TypeVar("T")

# Analyses of one request's bytes when each record made for them is deleted before this
# request can answer with it; past this, 503 write_conflict.
LABEL_ATTEMPTS = 3
# What relabeling leaves as it was: the record's identity and provenance, and the flags of
# analyses this service does not run (an imported record's face analysis stays true to them).
KEPT_ON_RELABEL = frozenset(
    {
        "_id",
        "url",
        "urls",
        "datetime",
        "hash",
        "type",
        "pose_estimation_processed",
        "face_analysis_processed",
    }
)


class Relabeled(StrEnum):
    """How relabeling one stored record ended."""

    RELABELED = "relabeled"
    UNREACHABLE = "unreachable"  # no URL of the record gave an image
    CHANGED = "changed"  # its URLs serve other bytes now
    DELETED = "deleted"  # deleted while it was analysed


@dataclass(frozen=True, slots=True)
class LabelOutcome:
    record: Record | StoredDocument
    created: bool

    @property
    def record_id(self) -> str:
        record = self.record
        return record.id if isinstance(record, Record) else str(record["_id"])

    @property
    def urls(self) -> list[str]:
        record = self.record
        return record.urls if isinstance(record, Record) else list(record.get("urls") or [])


def names_record(url_or_id: str) -> bool:
    """Whether a Cortex ``url_or_id`` names a stored record rather than an image to fetch."""
    value = url_or_id.strip()
    return is_record_id(value) or is_object_id_hex(value)


def _log_unstored(digest: str, task: asyncio.Task[LabelOutcome]) -> None:
    """Say so when an analysis ends without a stored record: its requests answer with the
    error, but nobody hears it when every client has left (or was cut short at shutdown).
    Bytes that are no image, or a broken one, are the client's matter: an info line, so that
    a client sending such bytes over and over does not fill the warnings."""
    exc = None if task.cancelled() else task.exception()
    if isinstance(exc, ServiceError):
        level = logging.WARNING if exc.status >= 500 else logging.INFO
        log.log(level, "the analysis of sha256 %s was not stored: %s", digest, exc.detail)
    elif exc is not None:
        log.error("the analysis of sha256 %s failed", digest, exc_info=exc)


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class LabelingPipeline:
    def __init__(
        self,
        *,
        fetcher: ImageFetcher,
        executor: BlockingExecutor,
        analyzer: ImageAnalyzer,
        store: RecordStore,
        metrics: Metrics,
        max_inflight: int,
    ) -> None:
        self._fetcher = fetcher
        self._executor = executor
        self._analyzer = analyzer
        self._store = store
        self._metrics = metrics
        self._analyses_by_hash: dict[str, asyncio.Task[LabelOutcome]] = {}
        self._admission = Admission(executor, metrics, max_inflight)
        self._etags = EntityTags()

    async def drain(self) -> None:
        """Wait for the analyses in progress to be stored (or to fail)."""
        running = list(self._analyses_by_hash.values())
        if running:
            await asyncio.wait(running)

    @property
    def analyzer(self) -> ImageAnalyzer:
        return self._analyzer

    @property
    def admitted(self) -> int:
        """Labeling requests in progress (fetching, analysing or storing)."""
        return self._admission.admitted

    async def label(self, url_or_id: str) -> LabelOutcome:
        """Label a URL, or return the stored record when given a record id."""
        value = url_or_id.strip()
        if names_record(value):
            return await self.label_id(value)
        if "://" in value:
            return await self.label_url(value)
        raise BadRequest(
            "url_or_id is neither an http(s) URL nor a record id (PT:: and 24 hex digits, or"
            " the 24 hex digits of an imported record's ObjectId)"
        )

    async def label_id(self, record_id: str) -> LabelOutcome:
        """A labeling request naming a record already stored: that record, counted as reused."""
        return self._answered(LabelOutcome(await self.get(record_id), created=False))

    async def get(self, record_id: str) -> Record | StoredDocument:
        document = await self._store.get(record_id)
        if document is None:
            raise RecordNotFound(f"no record has id {record_id!r}")
        return record_from_document(document)

    async def label_url(self, url: str) -> LabelOutcome:
        with self._admission.slot():
            return self._answered(await self._label_url(url))

    async def label_upload(
        self, receive: Callable[[], Coroutine[Any, Any, Content]], *, relabel_stale: bool = False
    ) -> LabelOutcome:
        """Label an image sent as the request body, read by ``receive`` once the request is
        admitted. Its record has no URL (``url`` null, ``urls`` empty) until the same bytes
        are labeled from one. With ``relabel_stale``, bytes labeled before by other models or
        settings are labeled again in place: the service keeps no bytes, so for a record
        that has no URL this is the only way to bring its labels up to date."""
        with self._admission.slot():
            content = await self._admission.intake(
                receive(), "upload", slot_taken(RequestTimeout, "the client")
            )
            outcome = await self._label_content(content.data, content.sha256, None)
            if relabel_stale and not outcome.created:
                outcome = await self._relabel_if_stale(outcome, content)
            return self._answered(outcome)

    def _answered(self, outcome: LabelOutcome) -> LabelOutcome:
        """The answer of a labeling request, counted as new or reused by what it finally
        was (a record found, then deleted under a relabel, is made afresh: new)."""
        if not outcome.created:
            self._metrics.records_reused.inc()
        return outcome

    async def _label_url(self, url: str) -> LabelOutcome:
        known = self._etags.get(url)
        if known is None:
            fetched = await self._fetch(url)
        else:
            revalidated = await self._download(self._fetcher.revalidate(url, known.etag))
            if revalidated is None:  # 304: the bytes labeled before, not sent again
                reused = await self._reuse(known.sha256, url)
                if reused is not None:
                    self._metrics.fetches_not_modified.inc()
                    return reused
                # Their record was deleted: the bytes are needed to label them afresh.
                revalidated = await self._fetch(url)
            fetched = revalidated
        self._etags.remember(url, fetched.etag, fetched.sha256)
        return await self._label_content(fetched.data, fetched.sha256, url)

    async def _label_content(self, data: bytes, digest: str, url: str | None) -> LabelOutcome:
        """The record of these bytes: the stored one (``url``, when given, added to it), or a
        new one. ``url`` is None for an upload."""
        reused = await self._reuse(digest, url)
        if reused is not None:
            return reused
        for _ in range(LABEL_ATTEMPTS):
            task = self._analyses_by_hash.get(digest)
            joined = task is not None
            if task is None:
                task = asyncio.create_task(self._create(data, url, digest))
                self._analyses_by_hash[digest] = task
                task.add_done_callback(lambda _: self._analyses_by_hash.pop(digest, None))
                task.add_done_callback(partial(_log_unstored, digest))
            outcome = await asyncio.shield(task)
            if url is None or url in outcome.urls:
                # Another request created the record, or another process stored these bytes
                # first (the insert gave back its record): this one found it (200).
                if joined or not outcome.created:
                    return LabelOutcome(outcome.record, created=False)
                return outcome
            reused = await self._reuse(digest, url)
            if reused is not None:
                return reused
            # Created by another request and deleted since: label these bytes afresh.
        raise ServiceUnavailable(
            "the record for these bytes was deleted each time it was made; retry",
            retry_after=1,
            extra={"reason": "write_conflict"},
        )

    async def relabel(self, document: dict[str, Any]) -> Relabeled:
        """Analyse a stored record's bytes again with the models loaded now and overwrite its
        labels in place; everything in ``KEPT_ON_RELABEL`` stays. The bytes are downloaded
        again from the record's URLs in turn, and used only if they are the ones it holds
        (``hash``): other bytes at its URLs leave it ``CHANGED``, none at all
        ``UNREACHABLE``. Errors of the analysis itself (a format refused now) are raised."""
        start_request()
        digest = document["hash"]
        urls = document.get("urls")
        candidates = urls if isinstance(urls, list) else [document.get("url")]
        changed = False
        for url in dict.fromkeys(u for u in candidates if isinstance(u, str)):
            try:
                fetched = await self._fetch(url)
            except ServiceError:
                continue
            if fetched.sha256 != digest:
                changed = True
                continue
            if not await self._rewrite_labels(document, fetched.data, digest, url):
                return Relabeled.DELETED
            return Relabeled.RELABELED
        return Relabeled.CHANGED if changed else Relabeled.UNREACHABLE

    async def _rewrite_labels(
        self, document: dict[str, Any], data: bytes, digest: str, url: str | None
    ) -> bool:
        """Analyse ``data`` (the record's bytes, got from ``url`` or uploaded) and overwrite
        the record's labels in place, keeping ``KEPT_ON_RELABEL``; False when the record is
        gone."""
        analysis = await self._analyzer.analyze(data, self._executor)
        record = record_to_document(self._build_record(analysis, len(data), url, digest))
        fields = {k: v for k, v in record.items() if k not in KEPT_ON_RELABEL}
        urls = None
        if "urls" not in document:  # imported with a url alone: the shape records have now
            kept = document.get("url")  # kept, whichever way the bytes came this time
            # Added, not set: a request may have made urls since the record was read.
            urls = [kept] if isinstance(kept, str) else []
        return await self._store.replace_labels(document["_id"], digest, fields, urls=urls)

    async def _relabel_if_stale(self, outcome: LabelOutcome, content: Content) -> LabelOutcome:
        """The stored record of uploaded bytes, labeled again from them in place when its
        labels were made by other models or settings than these (``service.lineage``)."""
        record = outcome.record
        document = record_to_document(record) if isinstance(record, Record) else record
        if not is_stale(document, current_key(self._analyzer)):
            return outcome
        if await self._rewrite_labels(document, content.data, content.sha256, None):
            self._metrics.records_relabeled.inc()
            rewritten = await self._store.get(str(document["_id"]))
            if rewritten is not None:
                return LabelOutcome(record_from_document(rewritten), created=False)
        # Deleted meanwhile (before the rewrite, or right after it): these bytes have no
        # record any more, so label them afresh.
        return await self._label_content(content.data, content.sha256, None)

    async def _reuse(self, digest: str, url: str | None) -> LabelOutcome | None:
        """The stored record for these bytes, with ``url`` (if any) added; ``None`` when there
        is none (never made, or deleted)."""
        document = await self._store.remember_url(digest, url)
        if document is None:
            return None
        return LabelOutcome(record_from_document(document), created=False)

    async def _fetch(self, url: str) -> Fetched:
        return await self._download(self._fetcher.fetch(url))

    async def _download(self, receiving: Coroutine[Any, Any, T]) -> T:
        try:
            return await self._admission.intake(
                receiving, "fetch", slot_taken(UpstreamTimeout, "the image host")
            )
        except ServiceError as exc:
            self._metrics.fetch_failures.labels(exc.extra.get("reason", exc.type)).inc()
            raise

    async def _create(self, data: bytes, url: str | None, digest: str) -> LabelOutcome:
        analysis = await self._analyzer.analyze(data, self._executor)
        record = self._build_record(analysis, len(data), url, digest)
        with self._metrics.stage("store"):
            stored = await self._store.insert(record_to_document(record))
        created = stored["_id"] == record.id
        if created:
            self._metrics.records_created.inc()
            self._metrics.record_labels(
                analysis.quality.model,
                analysis.quality.score,
                (b.classname for b in analysis.boxes),
            )
        return LabelOutcome(record if created else record_from_document(stored), created)

    def _build_record(
        self, analysis: ImageAnalysis, size: int, url: str | None, digest: str
    ) -> Record:
        now = utc_now()
        decoded, boxes = analysis.decoded, analysis.boxes
        caption = analysis.caption
        derived = derive(
            (box.classname for box in boxes),
            [tag.name for tag in analysis.tags],
            [caption.title, caption.description],
            analysis.properties.phash,
        )
        return Record(
            id=new_record_id(),
            url=url,
            urls=[] if url is None else [url],
            datetime=now,
            object_analysis_processed=flag(True),
            width=decoded.width,
            height=decoded.height,
            hash=digest,
            format=decoded.format,
            bytes=size,
            object_analysis=[boxes],
            classes=derived["classes"],
            label_quality_estimation=analysis.quality.score,
            label_quality=analysis.quality,
            tags=analysis.tags,
            caption=caption,
            image_properties=analysis.properties,
            dominant_colors=analysis.properties.dominant_colors,
            analyses=self._analyzer.lineage(now, caption_by=analysis.captioned_by),
            keywords=derived["keywords"],
            phash_bands=derived["phash_bands"],
        )
