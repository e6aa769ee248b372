"""Wire schemas of the HTTP API (requests refuse unknown fields)."""

from __future__ import annotations

from typing import Annotated, Any, TypedDict

import msgspec

from service.api.problems import Problem
from service.domain.records import Record, StoredDocument
from service.settings import MAX_URL_LENGTH

UrlOrId = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_URL_LENGTH)]


class LabelRequest(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Give either ``url`` (an http(s) image URL) or ``id`` (a stored record's ``_id``)."""

    url: UrlOrId | None = None
    id: UrlOrId | None = None


# A record as the API serves it: a ``Record``, or a stored document that does not fit one
# (an import, say). Typed as Any: an OpenAPI response type, not a class.
RECORD_AS_SERVED: Any = Record | StoredDocument

# As many images as one batch of Google Cloud Vision's images:annotate takes.
MAX_BATCH_ITEMS = 16


class BatchLabelRequest(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Up to 16 labeling requests, each as the body of ``POST /v1/labels`` would be."""

    items: Annotated[list[LabelRequest], msgspec.Meta(min_length=1, max_length=MAX_BATCH_ITEMS)]


class _ItemStatus(TypedDict):
    status: int


# TypedDicts, not Structs: a record may be a stored document that does not fit ``Record``,
# and msgspec unions take one object type only. (``total=False``, as ``NotRequired`` is not
# seen under postponed annotations.)
class BatchItemResult(_ItemStatus, total=False):
    """One item's outcome: ``status`` as ``POST /v1/labels`` would have answered it (201 new
    record, 200 labeled before, or an error status), with the ``record`` or the ``problem``.
    A 429 or 503 problem carries ``retry_after`` (seconds)."""

    record: Record | StoredDocument
    problem: Problem


class BatchLabelResponse(TypedDict):
    """The items' outcomes, in the order of the request's items."""

    results: list[BatchItemResult]


class UploadRequest(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Cortex-compatible labeling request: a URL or a stored record id."""

    url_or_id: UrlOrId


class PageInfo(msgspec.Struct, frozen=True, kw_only=True):
    """``length``: all matches (the collection's size when ``length_is_estimate``);
    ``page``: null for a page reached by cursor; ``next_cursor``: null on the last page."""

    length: int
    length_is_estimate: bool = False
    page: int | None
    per_page: int
    next_cursor: str | None = None


class RecordPage(PageInfo, frozen=True, kw_only=True):
    output: list[Record]


class ProjectedRecordPage(PageInfo, frozen=True, kw_only=True):
    """A page of records holding only the requested ``fields`` (and ``_id``)."""

    output: list[dict[str, Any]]


class SimilarRecord(Record, frozen=True, kw_only=True):
    distance: int  # pHash Hamming distance to the record asked about, in bits


class SimilarPageInfo(msgspec.Struct, frozen=True, kw_only=True):
    """``length``: every record within ``max_distance``. ``length_is_estimate`` is always
    false (every candidate is compared), kept for the shape shared with other pages."""

    length: int
    length_is_estimate: bool = False
    page: int
    per_page: int
    max_distance: int


class SimilarPage(SimilarPageInfo, frozen=True, kw_only=True):
    output: list[SimilarRecord]


class StoredSimilarPage(SimilarPageInfo, frozen=True, kw_only=True):
    """A page holding records in an older shape, each as stored, with its ``distance``."""

    output: list[StoredDocument]


class Health(msgspec.Struct, frozen=True):
    status: str


class ModelStatus(msgspec.Struct, frozen=True):
    name: str
    provider: str
    sha256: str | None


class Readiness(msgspec.Struct, frozen=True):
    status: str
    database: str
    models: list[ModelStatus]
