"""Generated filters against the live service and the real database: what they match, the
order pages and cursor walks give it in, and what ``fields`` leaves of each record.

Each filter is built from the operators and fields clients use, with ``$and``/``$or``/``$nor``
two deep, ``$elemMatch`` on arrays of objects and Cortex's ``$elemMatch`` in an ``$elemMatch``
on the detections. Half are well formed throughout, their operands drawn from values that
tell the labeled photos apart; the other half have malformed parts here and there (any JSON
value as an operand, operators where they do not belong). The service must answer 200 or a
400 problem, never a server error; and a 200 must hold exactly the records that the same
filter, as the client wrote it, finds through the driver: the rewrites that let indexes serve
a filter (``service.query.hints``) may change how it runs, never what it matches.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pymongo import MongoClient
from pymongo.collection import Collection

from service.dbserver import LocalDatabaseServer
from tests.api.test_errors import assert_problem
from tests.conftest import API_KEY
from tests.support.process import live_service

DATABASE = "filter_fuzz"
PHOTOS = 8
SORTS = [None, "-datetime", "width", "-height", "label_quality_estimation", "-_id"]

CLASS_NAMES = st.sampled_from(["person", "chair", "diningtable", "dog", "refrigerator", "cup"])
TAG_NAMES = st.sampled_from(["dining table", "refrigerator", "toilet seat", "plate", "tripod"])
SIDES = st.integers(min_value=320, max_value=660)
SHARES = st.floats(min_value=0.0, max_value=1.0)
# Well-formed patterns that match some of those names.
PATTERNS = st.sampled_from(["^c", "o", "e$", "chair|dog", "^(dog|cup)$", "table", "^re"])
# Fields with values that tell the labeled photos apart, by kind: numbers are compared with
# ranges, names with sets and patterns.
NUMBERS: dict[str, st.SearchStrategy[Any]] = {
    "bytes": st.integers(min_value=40_000, max_value=250_000),
    "width": SIDES,
    "height": SIDES,
    "tags.conf": SHARES,
    "object_analysis.0.0.conf": SHARES,
    "label_quality_estimation": SHARES,
    "label_quality.components.expected_f1": SHARES,
    "image_properties.brightness": SHARES,
    "dominant_colors.fraction": SHARES,
}
NAMES: dict[str, st.SearchStrategy[Any]] = {
    "classes": CLASS_NAMES,
    "keywords": CLASS_NAMES,
    "tags.name": TAG_NAMES,
    "object_analysis.classname": CLASS_NAMES,
    "analyses.name": st.sampled_from(["object_detection", "scene_tags"]),
    "format": st.sampled_from(["JPEG", "jpeg"]),
}
# Fields that only loose filters name: ids, hashes, URLs, and one no record has.
OTHERS = ["_id", "hash", "url", "urls", "datetime", "not_a_field.below"]
# Arrays of objects and the fields of their elements (numbers, names), for $elemMatch and
# $all. The boxes in object_analysis are matched as Cortex clients do, an $elemMatch in an
# $elemMatch (which the service rewrites).
ARRAYS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "tags": ({"conf": SHARES}, {"name": TAG_NAMES}),
    "dominant_colors": ({"fraction": SHARES}, {}),
}
BOXES = ({"conf": SHARES}, {"classname": CLASS_NAMES})
# Paths for ``fields``: whole fields, paths inside documents and arrays of them, and paths
# inside the sort keys and ``_id`` (which hold none: scalars project to nothing).
PROJECTED = [
    "url",
    "width",
    "width.x",
    "height.z",
    "datetime",
    "datetime.y",
    "label_quality_estimation.v",
    "label_quality.score",
    "tags.name",
    "image_properties.brightness",
    "caption.title",
    "object_analysis.classname",
    "_id.x",
]

SCALARS = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
    st.booleans(),
    st.none(),
)
# Any JSON value: also arrays, and objects that may name operators by mistake.
LITERALS = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.sampled_from(["name", "conf", "$eq", "$gt"]), inner, max_size=2),
    ),
    max_leaves=5,
)
# Patterns the validator refuses or may: bad syntax, other dialects, backtracking.
REGEXES = st.one_of(
    st.sampled_from(["(", "a{2,1}", "(a+)+$", r"\p{L}", r"\d+", ".*"]),
    st.text(alphabet="ab()[]{}*+?|^$.\\-,01", max_size=8),
)
TYPES = st.one_of(
    st.sampled_from(["string", "int", "double", "number", "array", "object", "null", "bool"]),
    st.sampled_from(["date", "long", "objectId", "minKey", "nonsense"]),
    st.integers(min_value=-3, max_value=130),
)
RANGES = st.sampled_from(["$gt", "$gte", "$lt", "$lte"])
MALFORMED = st.one_of(
    st.tuples(st.sampled_from(["$in", "$all"]), st.lists(REGEXES.map(lambda r: {"$regex": r}))),
    st.tuples(st.sampled_from(["$exists", "$size", "$regex", "$not", "$in", "$gt"]), LITERALS),
    st.tuples(st.just("$type"), st.one_of(TYPES, st.lists(TYPES, max_size=3))),
    st.tuples(st.just("$regex"), REGEXES),
    st.tuples(st.just("$options"), st.sampled_from(["i", "u"])),
)
Operator = st.SearchStrategy[tuple[str, Any]]


def _on_numbers(values: st.SearchStrategy[Any]) -> Operator:
    return st.one_of(
        st.tuples(RANGES, values),
        st.tuples(RANGES, values),
        st.tuples(RANGES, values),
        st.tuples(st.just("$ne"), values),
        st.tuples(st.sampled_from(["$in", "$nin"]), st.lists(values, min_size=1, max_size=3)),
        st.tuples(st.just("$not"), st.tuples(RANGES, values).map(lambda op: dict([op]))),
        st.tuples(st.just("$exists"), st.booleans()),
        st.tuples(st.just("$type"), st.sampled_from(["number", "double", "int", "string"])),
    )


def _on_names(values: st.SearchStrategy[Any]) -> Operator:
    some = st.lists(values, min_size=1, max_size=3)
    return st.one_of(
        st.tuples(st.sampled_from(["$eq", "$ne"]), values),
        st.tuples(st.sampled_from(["$in", "$nin"]), some),
        st.tuples(st.sampled_from(["$in", "$nin"]), some),
        st.tuples(st.just("$all"), st.lists(values, min_size=1, max_size=2)),
        st.tuples(st.just("$regex"), PATTERNS),
        st.tuples(st.just("$not"), some.map(lambda names: {"$in": names})),
        st.tuples(st.just("$size"), st.integers(min_value=0, max_value=4)),
        st.tuples(st.just("$exists"), st.booleans()),
    )


def _matching(
    values: st.SearchStrategy[Any], operator: Operator, loose: bool, *, alone: bool = True
) -> Any:
    """What a field is compared with: a value (when ``alone``), or one or two operators.
    ``loose``: any JSON value now and then, and malformed operators."""
    if loose:
        values = st.one_of(values, values, LITERALS)
        operator = st.one_of(operator, operator, MALFORMED)
    operators = st.lists(operator, min_size=1, max_size=2).map(dict)
    return st.one_of(values, operators, operators, operators) if alone or loose else operators


def _field_of(
    fields: dict[str, Any], operator: Callable[[Any], Operator], loose: bool, *, alone: bool
) -> st.SearchStrategy[tuple[str, Any]]:
    return st.sampled_from(sorted(fields)).flatmap(
        lambda name: st.tuples(
            st.just(name), _matching(fields[name], operator(fields[name]), loose, alone=alone)
        )
    )


def _conditions(
    numbers: dict[str, Any], names: dict[str, Any], loose: bool
) -> st.SearchStrategy[tuple[str, Any]]:
    """A field of ``numbers`` or ``names`` and what it must match. A number drawn at random is
    seldom one a record holds, so numbers are compared by ranges, not alone."""
    choices = []
    if numbers:
        choices.append(_field_of(numbers, _on_numbers, loose, alone=False))
    if names:
        choices.append(_field_of(names, _on_names, loose, alone=True))
    return st.one_of(*choices)


def _element_query(fields: tuple[dict[str, Any], dict[str, Any]], loose: bool) -> Any:
    """A query on the elements of an array of objects."""
    return st.lists(_conditions(*fields, loose), min_size=1, max_size=2).map(dict)


def _field_condition(loose: bool) -> st.SearchStrategy[tuple[str, Any]]:
    """A field and what it must match."""
    plain = _conditions(NUMBERS, NAMES, loose)
    arrays = st.sampled_from(sorted(ARRAYS)).flatmap(
        lambda name: st.tuples(
            st.just(name),
            st.one_of(
                _element_query(ARRAYS[name], loose).map(lambda q: {"$elemMatch": q}),
                st.lists(_element_query(ARRAYS[name], loose), min_size=1, max_size=2).map(
                    lambda qs: {"$all": [{"$elemMatch": q} for q in qs]}
                ),
                st.integers(min_value=0, max_value=6).map(lambda n: {"$size": n}),
            ),
        )
    )
    boxes = _element_query(BOXES, loose).map(
        lambda q: ("object_analysis", {"$elemMatch": {"$elemMatch": q}})
    )
    choices = [plain, plain, plain, arrays, boxes]
    if loose:
        others = st.tuples(st.sampled_from(OTHERS), _matching(SCALARS, _on_names(SCALARS), loose))
        choices.append(others)
    return st.one_of(*choices)


def _query(depth: int, loose: bool) -> st.SearchStrategy[dict[str, Any]]:
    """A query object: field conditions, and ``$and``/``$or``/``$nor`` of queries. ``loose``:
    with malformed parts here and there, for the validator to refuse."""
    fields = st.lists(_field_condition(loose), min_size=1, max_size=2).map(dict)
    if depth <= 0:
        return fields
    clauses = st.lists(_query(depth - 1, loose), min_size=1, max_size=3)
    if loose:
        clauses = st.one_of(clauses, clauses, clauses, LITERALS)  # LITERALS: not queries
    logical = st.tuples(st.sampled_from(["$and", "$or", "$nor"]), clauses).map(
        lambda pair: dict([pair])
    )
    return st.one_of(fields, fields, logical, st.builds(lambda a, b: {**a, **b}, fields, logical))


@pytest.fixture(scope="module")
def live(db_server: LocalDatabaseServer, evalset_dir: Path) -> Iterator[tuple[str, Collection]]:
    """The service with labeled photos, and the records collection through the driver."""
    with (
        live_service(
            mongodb_uri=db_server.uri,
            mongodb_db=DATABASE,
            bootstrap_api_key=API_KEY,
            log_level="warning",
        ) as (base, _),
        MongoClient(db_server.uri) as mongo,
    ):
        for path in sorted((evalset_dir / "images").glob("*.jpg"))[:PHOTOS]:
            response = httpx.post(
                base + "/v1/labels/upload",
                content=path.read_bytes(),
                headers={"content-type": "image/jpeg"},
                timeout=60,
            )
            assert response.status_code == 201, response.text
        yield base, mongo[DATABASE]["records"]


def _records(base: str, **params: str) -> httpx.Response:
    return httpx.get(
        base + "/v1/records", params=params, headers={"X-API-Key": API_KEY}, timeout=30
    )


def test_a_filter_matches_what_it_matches_unrewritten_or_is_refused(
    live: tuple[str, Collection],
) -> None:
    base, records = live
    outcomes: Counter[str] = Counter()

    @settings(max_examples=300)  # and the "reproducible" profile (tests/conftest.py)
    @given(
        query=st.one_of(_query(2, loose=False), _query(2, loose=True)),
        sort=st.sampled_from(SORTS),
    )
    def check(query: dict[str, Any], sort: str | None) -> None:
        params = {"q": json.dumps(query), "per_page": "100"}
        if sort is not None:
            params["sort"] = sort
        response = _records(base, **params)
        assert response.status_code in (200, 400), f"{response.status_code} {response.text[:300]}"
        if response.status_code == 400:
            assert_problem(response, 400, "invalid-query")
            outcomes["refused"] += 1
            return
        page = response.json()
        found = sorted(record["_id"] for record in page["output"])
        expected = sorted(document["_id"] for document in records.find(query, {"_id": 1}))
        assert found == expected
        assert page["length"] == len(expected)
        outcomes["none" if not found else "all" if len(found) == PHOTOS else "some"] += 1

    check()
    # The filters reached the database, and enough of them told the records apart.
    assert outcomes["refused"] >= 50 and outcomes["some"] >= 10, outcomes
    assert httpx.get(base + "/readyz", timeout=10).status_code == 200
    assert records.count_documents({}) == PHOTOS


def _page(base: str, **params: str) -> dict[str, Any]:
    response = _records(base, **params)
    assert response.status_code == 200, response.text[:300]
    page: dict[str, Any] = response.json()
    return page


def test_pages_and_cursor_walks_follow_the_sort_the_driver_gives(
    live: tuple[str, Collection],
) -> None:
    """Offset pages and a cursor walk of a well-formed filter, a few records a page, give
    the driver's order for the same sort with ties broken on ``_id`` in its direction (four
    of the photos are 640 px wide): each record once, none left out. With ``fields``, each
    record is what the driver's projection of those paths gives, paths inside the sort key
    included (the key, fetched for the cursor, does not come back whole)."""
    base, records = live

    @settings(max_examples=60)
    @given(
        query=_query(1, loose=False),
        sort=st.sampled_from([s for s in SORTS if s is not None]),
        per_page=st.integers(min_value=1, max_value=3),
        fields=st.one_of(st.none(), st.sets(st.sampled_from(PROJECTED), min_size=1, max_size=3)),
    )
    def check(query: dict[str, Any], sort: str, per_page: int, fields: set[str] | None) -> None:
        key, direction = sort.lstrip("-"), -1 if sort.startswith("-") else 1
        order = [(key, direction)] + ([] if key == "_id" else [("_id", direction)])
        # A path beside its parent is the parent (the server would call it a collision).
        drawn = {*(fields or []), "_id"}
        projection = {p: 1 for p in drawn if not any(p.startswith(o + ".") for o in drawn)}
        expected = list(records.find(query, projection, sort=order))
        params = {"q": json.dumps(query), "sort": sort, "per_page": str(per_page)}
        if fields is not None:
            params["fields"] = ",".join(sorted(fields))

        def shown(page: dict[str, Any]) -> list[Any]:
            return (
                page["output"]
                if fields is not None
                else [{"_id": r["_id"]} for r in page["output"]]
            )

        pages = max(1, -(-len(expected) // per_page))
        for number in range(1, pages + 1):
            page = _page(base, **params, page=str(number))
            start = (number - 1) * per_page
            assert shown(page) == expected[start : start + per_page]

        walked: list[Any] = []
        page = _page(base, **params)
        while True:
            walked += shown(page)
            assert len(page["output"]) <= per_page and len(walked) <= len(expected)
            if page["next_cursor"] is None:
                break
            page = _page(base, **params, cursor=page["next_cursor"])
        assert walked == expected

    check()
