"""The derived fields: one computation for new records and for the backfill."""

from __future__ import annotations

from typing import Any

from service.query.derived import derive, derive_from_document
from service.query.keywords import keywords_for
from service.query.similar import phash_bands

PHASH = "9f3a04c2ffee0123"


def test_derive_matches_its_parts() -> None:
    derived = derive(["dog", "sofa", "dog"], ["golden retriever"], ["A dog", "on a sofa"], PHASH)
    assert derived == {
        "classes": ["dog", "sofa"],
        "keywords": keywords_for(["dog", "sofa"], ["golden retriever"], ["A dog", "on a sofa"]),
        "phash_bands": phash_bands(PHASH),
    }
    assert derive([], [], [], None) == {"classes": [], "keywords": [], "phash_bands": []}


def test_from_a_stored_record_in_the_cortex_shape() -> None:
    document = {
        "object_analysis": [
            [{"classname": "cat", "conf": 0.9}, {"classname": "tvmonitor", "conf": 0.4}],
            [{"classname": "cat", "conf": 0.3}],
        ],
        "tags": [{"name": "tabby", "conf": 0.7}],
        "caption": {"title": "A cat", "description": "A cat watching television", "model": "x"},
        "image_properties": {"phash": PHASH.upper()},
    }
    assert derive_from_document(document) == derive(
        ["cat", "tvmonitor"], ["tabby"], ["A cat", "A cat watching television"], PHASH
    )


def test_odd_and_missing_content_contributes_nothing() -> None:
    odd: dict[str, Any] = {
        "object_analysis": [[{"conf": 0.9}, "box", {"classname": 7}], {"classname": "cat"}],
        "tags": ["tabby", {"name": None}],
        "caption": "a caption string",
        "image_properties": {"phash": "not-a-hash"},
    }
    empty = {"classes": [], "keywords": [], "phash_bands": []}
    assert derive_from_document(odd) == empty
    assert derive_from_document({}) == empty
    assert derive_from_document({"object_analysis": None, "image_properties": None}) == empty


def test_a_list_of_classnames_gives_each_name() -> None:
    """MongoDB's {"classname": "zebra"} matches a list holding "zebra", so ``classes``, which
    answers the Cortex filter, holds each string of such a list."""
    document = {"object_analysis": [[{"classname": ["zebra", "horse", 3]}, {"classname": "dog"}]]}
    assert derive_from_document(document)["classes"] == ["dog", "horse", "zebra"]
