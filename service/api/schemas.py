"""Wire schemas of the HTTP API (requests refuse unknown fields)."""

from __future__ import annotations

from typing import Annotated

import msgspec

from service.domain.records import Record

UrlOrId = Annotated[str, msgspec.Meta(min_length=1, max_length=8192)]


class LabelRequest(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Give either ``url`` (an http(s) image URL) or ``id`` (a stored record's ``_id``)."""

    url: UrlOrId | None = None
    id: UrlOrId | None = None


class UploadRequest(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Cortex-compatible labeling request: a URL or a stored record id."""

    url_or_id: UrlOrId


class RecordPage(msgspec.Struct, frozen=True):
    output: list[Record]
    length: int
    page: int
    per_page: int


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
