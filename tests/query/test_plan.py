"""conjoin and index hints: the same records as the filter as written, on the real server."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from pymongo import AsyncMongoClient
from pymongo.asynchronous.collection import AsyncCollection

from service.dbserver import LocalDatabaseServer
from service.query.hints import add_index_hints
from service.query.plan import condition_kind, conjoin, is_point_lookup
from service.store.records import INDEXED, RECORD_INDEXES
from tests.query.corpus import seed

Collection = AsyncCollection[dict[str, Any]]


def nested(classname: Any, **more: Any) -> dict[str, Any]:
    return {"object_analysis": {"$elemMatch": {"$elemMatch": {"classname": classname, **more}}}}


def test_conjoin_spreads_and_orders_most_selective_first() -> None:
    strict = {"object_analysis": {"$elemMatch": {"$elemMatch": {"classname": "cat", "conf": 1}}}}
    hinted = add_index_hints({**strict, "width": {"$gt": 100}})
    assert "$and" in hinted
    flat = conjoin(hinted, indexed=INDEXED)
    assert list(flat) == ["classes", "width", "object_analysis"]
    assert flat["classes"] == "cat"
    with_hash = conjoin({"width": 5}, {"hash": "ab"}, {"$or": [{"a": 1}]}, indexed=INDEXED)
    assert list(with_hash) == ["hash", "width", "$or"]


def test_conjoin_keeps_repeated_keys_and_drops_exact_duplicates() -> None:
    flat = conjoin({"classes": "cat"}, {"classes": "dog"}, {"classes": "cat"}, indexed=INDEXED)
    assert flat == {"classes": "cat", "$and": [{"classes": "dog"}]}
    # Embedded documents compare in order, as the server compares them.
    flat = conjoin({"meta": {"a": 1, "b": 2}}, {"meta": {"b": 2, "a": 1}}, indexed=INDEXED)
    assert flat == {"meta": {"a": 1, "b": 2}, "$and": [{"meta": {"b": 2, "a": 1}}]}
    original = {"$and": [{"width": 1}]}
    conjoin(original, {"x": 1}, indexed=INDEXED)
    assert original == {"$and": [{"width": 1}]}  # inputs are not modified


@pytest.mark.parametrize(
    ("condition", "kind"),
    [
        ("cat", "eq"),
        ({"$eq": 3}, "eq"),
        ({"$in": ["a", "b"]}, "in"),
        ({"$gt": 1, "$lte": 5}, "range"),
        ({"$ne": 1}, "other"),
        ({"$in": [{"a": 1}]}, "other"),
        ({"a": 1}, "other"),
        ([1, 2], "other"),
    ],
)
def test_condition_kind(condition: Any, kind: str) -> None:
    assert condition_kind(condition) == kind


def test_point_lookup() -> None:
    assert is_point_lookup({"hash": "ab"}, INDEXED)
    assert is_point_lookup({"url": "http://a/b.jpg", "width": 5}, INDEXED)
    assert not is_point_lookup({}, INDEXED)
    assert not is_point_lookup({"classes": "cat"}, INDEXED)
    assert not is_point_lookup({"hash": {"$in": ["a", "b"]}}, INDEXED)
    assert not is_point_lookup({"width": 5, "hash": "ab"}, INDEXED)  # not in conjoin's order


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def collection(db_server: LocalDatabaseServer) -> AsyncIterator[Collection]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(db_server.uri)
    name = f"t_plan_{uuid.uuid4().hex[:8]}"
    records = client[name]["records"]
    await records.create_indexes(RECORD_INDEXES)
    await seed(records, 400)
    yield records
    await client.drop_database(name)
    await client.close()


SAME_RESULTS = [
    nested("cat"),
    {**nested("cat"), "width": {"$gt": 600}},
    nested({"$in": ["dog", "zebra"]}),
    nested({"$eq": "bird"}, conf={"$gte": 0.8}),
    {"$and": [nested("person"), nested("car")]},
    {"$or": [nested("cat"), {"width": {"$lt": 100}}]},
    {"$and": [{"classes": "cat"}, {"classes": "dog"}]},
    {"$and": [{"width": {"$gt": 500}}, {"width": {"$lt": 1500}}], "height": {"$gte": 300}},
    {"classes": "cat", "$and": [{"tags.name": "animal"}, nested("cat")]},
    {"keywords": {"$in": ["dog", "sofa"]}, "label_quality_estimation": {"$gte": 0.5}},
    {"$and": [{"$or": [{"classes": "cat"}, {"classes": "dog"}]}, {"width": {"$gt": 100}}]},
    {"classes": "dog", **nested("dog")},
    {"object_analysis": {"$not": {"$elemMatch": {"$elemMatch": {"classname": "cat"}}}}},
]


@pytest.mark.parametrize("filt", SAME_RESULTS)
async def test_rewritten_filters_match_the_same_records(
    collection: Collection, filt: dict[str, Any]
) -> None:
    rewritten = conjoin(add_index_hints(filt), indexed=INDEXED)
    expected = {d["_id"] async for d in collection.find(filt, {"_id": 1})}
    got = {d["_id"] async for d in collection.find(rewritten, {"_id": 1})}
    assert got == expected
    assert await collection.count_documents(rewritten) == len(expected)
    assert expected  # a filter matching nothing would prove nothing
