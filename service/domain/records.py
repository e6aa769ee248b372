"""The labeled-image record: what is stored in MongoDB and returned to clients.

The field names and the string-typed ``*_processed`` flags follow the Cortex record shape that
existing clients query; fields beyond it are additive. No I/O here.
"""

from __future__ import annotations

import logging
import re
import threading
from typing import Annotated, Any, TypeVar

import msgspec
from bson import ObjectId

log = logging.getLogger(__name__)
RECORD_ID_PREFIX = "PT::"
RECORD_ID_PATTERN = re.compile(r"^PT::[0-9a-f]{24}$")

Confidence = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]


def new_record_id() -> str:
    """``PT::`` and 24 hex digits; ObjectId hex keeps ids roughly time-ordered."""
    return RECORD_ID_PREFIX + str(ObjectId())


def is_record_id(value: str) -> bool:
    return RECORD_ID_PATTERN.fullmatch(value) is not None


def flag(value: bool) -> str:
    """Cortex clients query the processed flags as the strings "true" and "false"."""
    return "true" if value else "false"


class Box(msgspec.Struct, forbid_unknown_fields=True, frozen=True, omit_defaults=True):
    """One detection, in integer pixels of the upright, full-resolution image.

    ``quality``: the estimated probability that this box is right (a true positive).
    """

    classname: str
    conf: Confidence
    x1: int
    y1: int
    x2: int
    y2: int
    quality: Confidence | None = None


class Color(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    hex: str
    fraction: Confidence


class ImageProperties(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """What the pixels say about an image, independent of any model.

    ``brightness`` and ``contrast`` are the mean and standard deviation of luma in [0, 1];
    ``sharpness`` is the variance of the Laplacian of the 0-255 grey image downscaled to
    at most 256 px (below ~50 reads as blurred); ``colorfulness`` is Hasler and
    Suesstrunk's metric on 0-255 RGB (0 grey, ~33 moderate, >80 highly colourful);
    ``phash`` is a 64-bit DCT perceptual hash as 16 hex digits.
    """

    width: int
    height: int
    dominant_colors: list[Color]
    brightness: float
    contrast: float
    sharpness: float
    colorfulness: float
    phash: str


class Tag(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """A scene/object tag from the image classifier (an ImageNet lemma)."""

    name: str
    conf: Confidence


class Caption(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Three tiers of text, and which captioner wrote them."""

    title: str
    description: str
    scene_analysis: str
    model: str


class LabelQuality(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """The label-quality estimate with the signals behind it."""

    score: Confidence
    components: dict[str, float]
    model: str


class Analysis(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Lineage of one analysis on the record: which model, which weights, which settings."""

    name: str
    model: str
    version: str
    sha256: str | None
    params: dict[str, float | int | str | bool]
    processed_at: str


class Record(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    id: str = msgspec.field(name="_id")
    url: str | None  # null for bytes uploaded before any URL served them
    urls: list[str]
    datetime: str
    type: str = "image"
    object_analysis_processed: str
    pose_estimation_processed: str = "false"
    face_analysis_processed: str = "false"
    width: int
    height: int
    hash: str
    format: str | None = None
    bytes: int | None = None
    object_analysis: list[list[Box]]
    classes: list[str] = []
    label_quality_estimation: Confidence
    label_quality: LabelQuality | None = None
    tags: list[Tag] = []
    caption: Caption | None = None
    image_properties: ImageProperties | None = None
    dominant_colors: list[Color] = []
    analyses: list[Analysis] = []
    # Derived for querying: search terms (service.query.keywords) and pHash bands
    # (service.query.similar), each behind a multikey index.
    keywords: list[str] = []
    phash_bands: list[str] = []


_WARNED_AS_STORED = threading.Event()

# A stored record as it is in the database, served when it does not fit ``Record``.
StoredDocument = dict[str, Any]
R = TypeVar("R", bound=Record)


def record_from_document(document: dict[str, Any]) -> Record | StoredDocument:
    """The record; or the document as stored when it does not fit the current schema."""
    return as_record(document, Record)


def as_record(document: dict[str, Any], kind: type[R]) -> R | StoredDocument:
    """``document`` as a ``kind``, or as stored when it does not fit.

    Records imported from a Cortex export, or written by an older version, may lack fields
    this version requires (box corners, a scene analysis), or hold more (a Cortex
    ``face_analysis``). They are served as stored, every field kept: one such record must not
    turn every answer that includes it into an error, nor read differently alone and beside
    others on a page.
    """
    try:
        return msgspec.convert(document, kind)
    except msgspec.ValidationError as exc:
        # One warning a process: an import may hold millions of such records.
        level = logging.DEBUG if _WARNED_AS_STORED.is_set() else logging.WARNING
        _WARNED_AS_STORED.set()
        log.log(
            level,
            "records in another shape are served as stored, e.g. %s: %s",
            document.get("_id"),
            exc,
        )
        return document


def as_records(documents: list[dict[str, Any]], kind: type[R]) -> list[R] | None:
    """Every document as a ``kind``; None when one of them does not fit (``as_record``), in
    which case the caller serves them all as stored."""
    records = [as_record(document, kind) for document in documents]
    typed = [record for record in records if isinstance(record, kind)]
    return typed if len(typed) == len(records) else None


def record_to_document(record: Record) -> dict[str, object]:
    document: dict[str, object] = msgspec.to_builtins(record)
    return document
