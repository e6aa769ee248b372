"""The fields a record keeps only so that indexes can serve queries, derived from its content.

``classes`` (the flat twin of ``object_analysis``), ``keywords`` (search) and ``phash_bands``
(near-duplicates) are computed here and nowhere else: when a record is built, and by
``python -m service backfill`` for records stored before a field existed, imported from
elsewhere, or written under older rules (a changed stop-word list, say).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from service.query.keywords import keywords_for
from service.query.similar import is_phash, phash_bands

DERIVED_FIELDS = ("classes", "keywords", "phash_bands")
# What a stored record's derived fields are computed from (a projection for the backfill).
SOURCE_FIELDS = ("object_analysis", "tags", "caption", "image_properties.phash")


def derive(
    classes: Iterable[str],
    tag_names: Iterable[str],
    caption_texts: Iterable[str],
    phash: str | None,
) -> dict[str, list[str]]:
    """``classes``, ``keywords`` and ``phash_bands`` of one record."""
    distinct = sorted(set(classes))
    return {
        "classes": distinct,
        "keywords": keywords_for(distinct, tag_names, caption_texts),
        "phash_bands": phash_bands(phash.lower()) if is_phash(phash) else [],
    }


def derive_from_document(document: Mapping[str, Any]) -> dict[str, list[str]]:
    """The derived fields of a stored record, read from its own content.

    Tolerant of what older or imported records hold: missing fields, and entries of the
    wrong type, simply contribute nothing.
    """
    return derive(
        _classnames(document.get("object_analysis")),
        [
            name
            for tag in _mappings(document.get("tags"))
            if isinstance(name := tag.get("name"), str)
        ],
        _caption_texts(document.get("caption")),
        phash_of(document),
    )


def _mappings(value: Any) -> list[Mapping[str, Any]]:
    return [item for item in value if isinstance(item, Mapping)] if isinstance(value, list) else []


def _classnames(object_analysis: Any) -> list[str]:
    # The Cortex shape: a list of lists of boxes.
    inner_lists = object_analysis if isinstance(object_analysis, list) else []
    names = []
    for inner in inner_lists:
        for box in _mappings(inner):
            name = box.get("classname")
            # The Cortex filter {"classname": "zebra"} also matches a list holding "zebra":
            # ``classes``, which answers it, must hold those names too.
            names += [n for n in (name if isinstance(name, list) else [name]) if isinstance(n, str)]
    return names


def _caption_texts(caption: Any) -> list[str]:
    if not isinstance(caption, Mapping):
        return []
    return [text for key in ("title", "description") if isinstance(text := caption.get(key), str)]


def phash_of(document: Mapping[str, Any]) -> str | None:
    """A stored record's ``image_properties.phash``, when it is a string."""
    properties = document.get("image_properties")
    phash = properties.get("phash") if isinstance(properties, Mapping) else None
    return phash if isinstance(phash, str) else None
