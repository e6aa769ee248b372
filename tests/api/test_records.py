"""Querying stored records with API keys, Cortex-compatible paths and the nested form."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from bson import DBRef, Decimal128, MaxKey, MinKey, ObjectId, Regex, Timestamp
from pymongo.errors import OperationFailure

from service.domain.records import new_record_id
from service.errors import DatabaseUnavailable
from service.query.derived import derive_from_document
from service.settings import Settings
from tests.api.test_errors import assert_problem
from tests.conftest import AppClient, running
from tests.query import corpus
from tests.query.test_filters import _nested_and
from tests.support.image_server import ImageServer

LABELED = ["000000555705.jpg", "000000403817.jpg", "000000174231.jpg", "000000377575.jpg"]


def fake_record(i: int, classes: list[str], width: int) -> dict[str, Any]:
    boxes = [{"classname": c, "conf": 0.9, "x1": 0, "y1": 0, "x2": 10, "y2": 10} for c in classes]
    return {
        "_id": new_record_id(),
        "url": f"http://example.com/{i}.jpg",
        "urls": [f"http://example.com/{i}.jpg"],
        "datetime": "2026-11-22T00:00:00.000Z",
        "type": "image",
        "object_analysis_processed": "true",
        "pose_estimation_processed": "false",
        "face_analysis_processed": "false",
        "width": width,
        "height": 100,
        "hash": f"{i:064x}",
        "object_analysis": [boxes],
        "classes": sorted(set(classes)),
        "label_quality_estimation": 0.5,
    }


async def test_queries_need_a_key(client: AppClient) -> None:
    assert_problem(await client.get("/v1/records"), 401, "unauthorized")
    assert_problem(await client.get("/v1/records", headers={"X-API-Key": "wrong"}), 401)
    assert_problem(await client.get("/get-labeled-data", headers={"X-API-Key": "wrong"}), 401)


async def test_cortex_elem_match_query_on_labeled_photos(
    client: AppClient, image_server: ImageServer, auth: dict[str, str]
) -> None:
    for name in LABELED:
        response = await client.post("/upload", json={"url_or_id": image_server.photo_url(name)})
        assert response.status_code == 200
    query = {
        "object_analysis": {"$elemMatch": {"$elemMatch": {"classname": "cat"}}},
        "width": {"$gt": 100},
    }
    response = await client.get(
        "/get-labeled-data",
        params={"q": json.dumps(query), "page": 1},
        headers={"X-RapidAPI-Key": auth["X-API-Key"]},
    )
    assert response.status_code == 200, response.text
    page = response.json()
    assert page["length"] == len(page["output"]) == 3  # the dog photo has no cat
    for record in page["output"]:
        assert "cat" in {b["classname"] for b in record["object_analysis"][0]}


async def test_pages_of_25_with_total(client: AppClient, auth: dict[str, str]) -> None:
    await client.resources.database["records"].insert_many(
        [fake_record(i, ["dog"] if i % 3 else ["cat", "dog"], 50 + i) for i in range(60)]
    )
    seen: list[str] = []
    for page_number in (1, 2, 3):
        response = await client.get("/v1/records", params={"page": page_number}, headers=auth)
        page = response.json()
        assert page["length"] == 60
        assert len(page["output"]) == (25 if page_number < 3 else 10)
        seen += [r["_id"] for r in page["output"]]
    assert len(set(seen)) == 60
    empty = (await client.get("/v1/records", params={"page": 4}, headers=auth)).json()
    assert empty["output"] == [] and empty["length"] == 60

    query = json.dumps(
        {
            "object_analysis": {"$elemMatch": {"$elemMatch": {"classname": "cat"}}},
            "width": {"$gt": 100},
        }
    )
    page = (await client.get("/v1/records", params={"q": query}, headers=auth)).json()
    expected = [i for i in range(60) if i % 3 == 0 and 50 + i > 100]
    assert page["length"] == len(expected)


async def test_record_by_id(client: AppClient, auth: dict[str, str]) -> None:
    record = fake_record(7, ["cat"], 300)
    await client.resources.records.insert(record)
    response = await client.get(f"/v1/records/{record['_id']}", headers=auth)
    assert response.status_code == 200 and response.json()["_id"] == record["_id"]
    missing = await client.get(f"/v1/records/{new_record_id()}", headers=auth)
    assert_problem(missing, 404, "record-not-found")


async def test_deleting_a_record(
    client: AppClient, image_server: ImageServer, auth: dict[str, str]
) -> None:
    url = image_server.photo_url(LABELED[0])
    first = (await client.post("/v1/labels", json={"url": url})).json()
    path = f"/v1/records/{first['_id']}"
    reader = {"X-API-Key": await client.resources.keys.create("reader", ["read"])}
    deleter = {"X-API-Key": await client.resources.keys.create("deleter", ["delete"])}
    assert_problem(await client.delete(path), 401, "unauthorized")
    assert_problem(await client.delete(path, headers=reader), 403, "forbidden")
    assert (await client.get(path, headers=auth)).status_code == 200
    allowed = (await client.options(path)).headers["allow"].split(", ")
    assert {"GET", "HEAD", "DELETE", "OPTIONS"} == set(allowed)

    response = await client.delete(path, headers=deleter)
    assert response.status_code == 204 and response.content == b""
    assert_problem(await client.get(path, headers=auth), 404, "record-not-found")
    assert_problem(await client.delete(path, headers=deleter), 404, "record-not-found")
    assert "labelsvc_records_deleted_total 1.0" in (await client.get("/metrics")).text
    assert await client.resources.database["records"].count_documents({"hash": first["hash"]}) == 0
    # The same bytes are labeled afresh, under a new id.
    again = await client.post("/v1/labels", json={"url": url})
    assert again.status_code == 201
    assert again.json()["_id"] != first["_id"] and again.json()["hash"] == first["hash"]


async def test_a_deletion_the_database_does_not_confirm_is_logged_and_explained(
    client: AppClient,
    auth: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The deadline passed: the deletion may or may not have been applied. The answer says
    how a retry tells, and the log keeps the key that asked."""
    record = fake_record(8, ["cat"], 300)
    await client.resources.records.insert(record)

    async def unconfirmed(record_id: str, *, unchanged_from: dict[str, Any] | None) -> bool:
        raise DatabaseUnavailable("the database did not answer in time", retry_after=2)

    monkeypatch.setattr(client.resources.records, "delete", unconfirmed)
    response = await client.delete(f"/v1/records/{record['_id']}", headers=auth)
    body = assert_problem(response, 503, "database-unavailable")
    assert "may have been applied: a retry answers 404 if so" in body["detail"]
    assert response.headers["retry-after"] == "2"
    assert f"record {record['_id']}: deletion with key bootstrap unconfirmed" in caplog.text


async def test_a_record_deleted_while_its_bytes_are_labeled_again(
    client: AppClient, image_server: ImageServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lookup by content hash finds the record, which is deleted before the new URL is
    added to it: the bytes have no record any more, so they are labeled afresh."""
    first = await client.post("/v1/labels", json={"url": image_server.photo_url(LABELED[1])})
    store = client.resources.records
    add_urls = store._add_urls

    async def deleted_before_the_url_is_added(
        found: dict[str, Any], urls: list[str]
    ) -> dict[str, Any] | None:
        await client.resources.database["records"].delete_one({"hash": found["hash"]})
        return await add_urls(found, urls)

    monkeypatch.setattr(store, "_add_urls", deleted_before_the_url_is_added)
    url = image_server.photo_url(LABELED[1], alias="mirror")
    again = await client.post("/v1/labels", json={"url": url})
    assert again.status_code == 201, again.text
    assert again.json()["_id"] != first.json()["_id"]
    assert await client.resources.database["records"].count_documents({}) == 1


async def test_a_request_that_joined_an_analysis_whose_record_is_deleted_labels_afresh(
    client: AppClient, image_server: ImageServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two URLs with the same bytes at once: one request analyses them, the other joins that
    analysis. The record is deleted before the joiner can add its URL: the joiner has the
    bytes, so it labels them afresh rather than failing."""
    store = client.resources.records
    insert, remember_url = store.insert, store.remember_url
    inserts: list[str] = []

    async def slow_first_insert(document: dict[str, Any]) -> dict[str, Any]:
        inserts.append(document["url"])
        if len(inserts) == 1:  # long enough for the other request to join this analysis
            await asyncio.sleep(1.0)
        return await insert(document)

    async def deleted_first(digest: str, url: str) -> dict[str, Any] | None:
        await client.resources.database["records"].delete_one({"hash": digest})
        return await remember_url(digest, url)

    monkeypatch.setattr(store, "insert", slow_first_insert)
    monkeypatch.setattr(store, "remember_url", deleted_first)
    urls = [image_server.photo_url(LABELED[2], alias=alias) for alias in ("one", "two")]
    first, second = await asyncio.gather(
        *(client.post("/v1/labels", json={"url": url}) for url in urls)
    )
    assert (first.status_code, second.status_code) == (201, 201), (first.text, second.text)
    assert len(inserts) == 2 and first.json()["_id"] != second.json()["_id"]
    assert await client.resources.database["records"].count_documents({}) == 1


async def test_bytes_whose_record_keeps_being_deleted_get_503_write_conflict(
    client: AppClient, image_server: ImageServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each round, another writer's record for these bytes is deleted before this request
    can add its URL: after three analyses the answer is a retryable 503, not a loop."""
    store = client.resources.records
    inserts: list[str] = []

    async def stored_by_another_writer(document: dict[str, Any]) -> dict[str, Any]:
        inserts.append(document["_id"])
        other = "http://another.example/same-bytes.jpg"
        return {**document, "_id": new_record_id(), "url": other, "urls": [other]}

    async def already_deleted(digest: str, url: str) -> None:
        return None

    monkeypatch.setattr(store, "insert", stored_by_another_writer)
    monkeypatch.setattr(store, "remember_url", already_deleted)
    url = image_server.photo_url(LABELED[3], alias="write-conflict")
    response = await client.post("/v1/labels", json={"url": url})
    body = assert_problem(response, 503, "unavailable")
    assert body["reason"] == "write_conflict" and response.headers["retry-after"] == "1"
    assert len(inserts) == 3


async def test_bytes_another_process_stored_first_count_as_deduplicated(
    client: AppClient, image_server: ImageServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another service process stores the same bytes between this one's lookup by hash and
    its insert: the answer is that record (200), counted as deduplicated, not created."""
    first = await client.post("/v1/labels", json={"url": image_server.photo_url(LABELED[0])})
    assert first.status_code == 201

    store = client.resources.records
    remember_url = store.remember_url
    lookups: list[str] = []

    async def not_yet_stored(digest: str, url: str | None) -> dict[str, Any] | None:
        lookups.append(digest)
        if len(lookups) == 1:
            return None  # the other process's insert lands just after this lookup
        return await remember_url(digest, url)

    monkeypatch.setattr(store, "remember_url", not_yet_stored)
    url = image_server.photo_url(LABELED[0], alias="second-process")
    again = await client.post("/v1/labels", json={"url": url})
    assert again.status_code == 200, again.text
    assert again.json()["_id"] == first.json()["_id"] and url in again.json()["urls"]
    text = (await client.get("/metrics")).text
    assert "labelsvc_records_created_total 1.0" in text
    assert "labelsvc_records_deduplicated_total 1.0" in text


@pytest.mark.parametrize(
    ("q", "needle"),
    [
        ('{"$where": "sleep(1000)"}', "$where"),
        ('{"$expr": {"$function": {"body": "x", "args": [], "lang": "js"}}}', "$expr"),
        ('{"width": {"$accumulator": {}}}', "$accumulator"),
        ('{"width": {"$bogus": 1}}', "$bogus"),
        ("{not json", "JSON"),
        ("[1, 2]", "object"),
        (json.dumps(_nested_and(60)), "nested too deeply"),
        (json.dumps({"width": {"$in": [1] * 2000}}, separators=(",", ":")), "$in has 2000 items"),
        ('{"url": {"$regex": "(a+)+$"}}', "backtrack"),
        ('{"$text": {"$search": "cat"}}', "search parameter"),
    ],
)
async def test_dangerous_or_malformed_filters_are_refused(
    client: AppClient, auth: dict[str, str], q: str, needle: str
) -> None:
    body = assert_problem(await client.get("/v1/records", params={"q": q}, headers=auth), 400)
    assert needle.lower() in body["detail"].lower()


async def test_stored_fields_beyond_the_schema_are_served(
    client: AppClient, auth: dict[str, str]
) -> None:
    """A Cortex import's face_analysis (or a box's extra key) reads the same alone and on a
    page of current records: as stored, nothing dropped."""
    extra = {**fake_record(1, ["cat"], 640), "face_analysis": [[{"age": 31, "conf": 0.8}]]}
    boxed = fake_record(2, ["cat"], 640)
    boxed["object_analysis"][0][0]["track_id"] = 7
    await client.resources.database["records"].insert_many([extra, boxed])
    for record, path, value in (
        (extra, ("face_analysis",), [[{"age": 31, "conf": 0.8}]]),
        (boxed, ("object_analysis", 0, 0, "track_id"), 7),
    ):
        alone = (await client.get(f"/v1/records/{record['_id']}", headers=auth)).json()
        page = await client.get("/v1/records", params={"q": '{"width": 640}'}, headers=auth)
        (listed,) = [r for r in page.json()["output"] if r["_id"] == record["_id"]]
        for shown in (alone, listed):
            for step in path:
                shown = shown[step]
            assert shown == value


async def test_bson_values_json_lacks_are_served_as_extended_json(
    client: AppClient, auth: dict[str, str]
) -> None:
    imported = fake_record(1, ["cat"], 640)
    imported["source"] = {
        "ref": DBRef("photos", ObjectId("0" * 24)),
        "price": Decimal128("1.5"),
        "seen": Timestamp(5, 1),
        "pattern": Regex("^cat", "i"),
        "lowest": MinKey(),
    }
    await client.resources.database["records"].insert_one(imported)
    alone = await client.get(f"/v1/records/{imported['_id']}", headers=auth)
    page = await client.get("/v1/records", params={"q": '{"width": 640}'}, headers=auth)
    assert alone.status_code == page.status_code == 200, alone.text
    for shown in (alone.json(), page.json()["output"][0]):
        assert shown["source"] == {
            "ref": {"$ref": "photos", "$id": {"$oid": "0" * 24}},
            "price": {"$numberDecimal": "1.5"},
            "seen": {"$timestamp": {"t": 5, "i": 1}},
            "pattern": {"$regularExpression": {"pattern": "^cat", "options": "i"}},
            "lowest": {"$minKey": 1},
        }


@pytest.mark.parametrize("properties", [[{"phash": "c3a1f0e4b2d29c18"}], "c3a1", None])
async def test_similar_needs_a_stored_phash(
    client: AppClient, auth: dict[str, str], properties: object
) -> None:
    record = {**fake_record(1, ["cat"], 640), "image_properties": properties}
    await client.resources.database["records"].insert_one(record)
    response = await client.get(f"/v1/records/{record['_id']}/similar", headers=auth)
    assert_problem(response, 409, "no-phash")


async def test_records_in_an_older_shape_are_served_as_stored(
    client: AppClient, auth: dict[str, str]
) -> None:
    """A record imported from a Cortex export (boxes without corners, no scene analysis),
    with the fields the backfill derives, is served as stored by every read."""
    phash = "c3a1f0e4b2d29c18"
    imported: dict[str, Any] = {
        **fake_record(1, ["cat"], 640),
        "object_analysis": [[{"classname": "cat", "conf": 0.9}]],
        "caption": {"title": "A cat", "description": "A cat watching television", "model": "x"},
        "image_properties": {"phash": phash.upper()},
    }
    imported.update(derive_from_document(imported))
    twin = {**imported, "_id": new_record_id(), "hash": "1" * 64}
    current = fake_record(2, ["cat"], 640)
    await client.resources.database["records"].insert_many([imported, twin, current])
    rid = imported["_id"]

    async def get(path: str, **params: Any) -> Any:
        response = await client.get(path, params=params, headers=auth)
        assert response.status_code == 200, response.text
        return response.json()

    page = await get("/v1/records", q='{"classes": "cat"}')
    assert {r["_id"] for r in page["output"]} == {rid, twin["_id"], current["_id"]}
    stored = next(r for r in page["output"] if r["_id"] == rid)
    assert stored["object_analysis"] == imported["object_analysis"]
    assert (await get(f"/v1/records/{rid}"))["caption"] == imported["caption"]
    assert [r["_id"] for r in (await get(f"/v1/records/{rid}/similar"))["output"]] == [twin["_id"]]
    assert rid in {r["_id"] for r in (await get("/v1/search", text="cat"))["output"]}
    labeled = await client.post("/upload", json={"url_or_id": rid}, headers=auth)
    assert labeled.status_code == 200 and labeled.json()["_id"] == rid


@pytest.mark.parametrize("imported_id", [ObjectId(), "cortex-000042"])
async def test_imported_ids_can_be_followed(
    client: AppClient, auth: dict[str, str], imported_id: ObjectId | str
) -> None:
    """Imports keep their own ids (ObjectIds, other strings). The id every read shows for
    such a record fetches it, finds its near-duplicates, and labels by id."""
    phash = "c3a1f0e4b2d29c18"
    imported = {**fake_record(1, ["cat"], 640), "_id": imported_id}
    imported["image_properties"] = {"phash": phash}
    imported.update(derive_from_document(imported))
    twin = {**imported, "_id": new_record_id(), "hash": "1" * 64}
    third = {**imported, "_id": new_record_id(), "hash": "2" * 64, "width": 320}
    await client.resources.database["records"].insert_many([imported, twin, third])

    page = await client.get("/v1/records", params={"q": '{"width": 640}'}, headers=auth)
    shown = {r["_id"] for r in page.json()["output"]} - {twin["_id"]}
    assert shown == {str(imported_id)}
    (rid,) = shown
    record = await client.get(f"/v1/records/{rid}", headers=auth)
    assert record.status_code == 200 and record.json()["_id"] == rid
    similar = await client.get(f"/v1/records/{rid}/similar", headers=auth)
    assert [r["_id"] for r in similar.json()["output"]] == sorted([twin["_id"], third["_id"]])
    # Equally near: the imported id and a string one (ids of two BSON types).
    twins_similar = await client.get(f"/v1/records/{twin['_id']}/similar", headers=auth)
    assert twins_similar.status_code == 200, twins_similar.text
    assert {r["_id"] for r in twins_similar.json()["output"]} == {rid, third["_id"]}
    labeled = await client.post("/v1/labels", json={"id": rid}, headers=auth)
    assert labeled.status_code == 200 and labeled.json()["_id"] == rid
    if isinstance(imported_id, ObjectId):  # the Cortex route tells URLs and ids apart
        uploaded = await client.post("/upload", json={"url_or_id": rid}, headers=auth)
        assert uploaded.status_code == 200 and uploaded.json()["_id"] == rid
    for q in (
        {"_id": rid},
        {"_id": {"$in": [rid, "x"]}},
        {"$or": [{"_id": {"$eq": rid}}]},
        {"_id": {"$eq": rid, "$in": [rid, "x"]}},
    ):
        found = await client.get("/v1/records", params={"q": json.dumps(q)}, headers=auth)
        assert [r["_id"] for r in found.json()["output"]] == [rid], q
    for others in ({"_id": {"$ne": rid}}, {"_id": {"$ne": rid, "$nin": ["x"]}}):
        q = json.dumps({**others, "width": 640})
        found = await client.get("/v1/records", params={"q": q}, headers=auth)
        assert [r["_id"] for r in found.json()["output"]] == [twin["_id"]], others
    missing = await client.get(f"/v1/records/{ObjectId()}", headers=auth)
    assert_problem(missing, 404, "record-not-found")

    deleted = await client.delete(f"/v1/records/{rid}", headers=auth)
    assert deleted.status_code == 204, deleted.text
    assert_problem(await client.get(f"/v1/records/{rid}", headers=auth), 404)
    await client.resources.database["records"].insert_one(imported)

    # Cursor walks cross from string ids to ObjectIds (and back, descending).
    for sort in ("width", "-width", "_id", "-_id"):
        walked, cursor = [], ""
        while cursor is not None:
            params = {"q": '{"width": 640}', "per_page": "1", "sort": sort, "cursor": cursor}
            response = await client.get("/v1/records", params=params, headers=auth)
            assert response.status_code == 200, response.text
            walked += [r["_id"] for r in response.json()["output"]]
            cursor = response.json()["next_cursor"]
        assert sorted(walked) == sorted([rid, twin["_id"]]), sort


@pytest.mark.parametrize("pattern", ["[z-a]", "\\p{Foo}"])
async def test_regex_the_server_cannot_compile_is_refused(
    client: AppClient, auth: dict[str, str], pattern: str
) -> None:
    # MongoDB compiles the pattern when it parses the query; the development server only
    # when a document is matched against it, hence the record.
    await client.resources.database["records"].insert_one(fake_record(1, ["cat"], 300))
    q = json.dumps({"url": {"$regex": pattern}})
    response = await client.get("/v1/records", params={"q": q}, headers=auth)
    detail = assert_problem(response, 400, "invalid-query")["detail"]
    assert detail.startswith("the database refused the query: ")
    assert "clusterTime" not in detail and "signature" not in detail  # the reason only


@pytest.mark.parametrize("params", [{"page": "0"}, {"page": "x"}, {"per_page": "1000"}])
async def test_bad_paging_parameters(
    client: AppClient, auth: dict[str, str], params: dict[str, str]
) -> None:
    assert_problem(await client.get("/v1/records", params=params, headers=auth), 400)


# --- paging, sorting, projections, cursors -------------------------------------------------


async def _seed(client: AppClient, count: int, *, start: int = 0, seed: int = 1) -> list[str]:
    records = await corpus.seed(client.resources.database["records"], count, start=start, seed=seed)
    return [r["_id"] for r in records]


async def _walk(
    client: AppClient,
    auth: dict[str, str],
    params: dict[str, Any],
    between_pages: Callable[[int], Awaitable[object]] | None = None,
) -> list[dict[str, Any]]:
    """Follow next_cursor to the end, calling ``between_pages`` after each page."""
    seen: list[dict[str, Any]] = []
    cursor: str | None = None
    for number in range(100):
        query = {**params, **({"cursor": cursor} if cursor else {})}
        response = await client.get("/v1/records", params=query, headers=auth)
        assert response.status_code == 200, response.text
        page = response.json()
        seen += page["output"]
        assert page["page"] == (None if cursor else 1)
        cursor = page["next_cursor"]
        if cursor is None:
            return seen
        if between_pages is not None:
            await between_pages(number)
    raise AssertionError("the walk did not end")


@pytest.mark.parametrize(
    ("sort", "q"),
    [
        (None, None),
        ("-label_quality_estimation", None),
        ("datetime", '{"classes": {"$in": ["dog", "person"]}}'),
        ("-width", '{"width": {"$gt": 300}, "height": {"$gt": 100}}'),
    ],
)
async def test_cursor_walk_returns_every_record_once_while_inserts_happen(
    client: AppClient, auth: dict[str, str], sort: str | None, q: str | None
) -> None:
    await _seed(client, 150)
    filt = json.loads(q) if q else {}
    collection = client.resources.database["records"]
    before = {d["_id"] async for d in collection.find(filt, {"_id": 1})}
    assert len(before) > 30

    async def insert(number: int) -> None:
        # Fresh records land before and after the walk's position in every sort order.
        await corpus.seed(collection, 7, start=1000 + 10 * number, seed=number)

    params = {"per_page": 17, **({"sort": sort} if sort else {}), **({"q": q} if q else {})}
    walked = await _walk(client, auth, params, insert)
    ids = [r["_id"] for r in walked]
    assert len(ids) == len(set(ids)), "a record came twice"
    assert before <= set(ids), "a record that existed before the walk was skipped"
    if sort:
        key, reverse = sort.lstrip("-"), sort.startswith("-")
        pairs = [(r[key], r["_id"]) for r in walked]
        assert pairs == sorted(pairs, reverse=reverse)


@pytest.mark.parametrize("sort", ["label_quality_estimation", "-label_quality_estimation"])
async def test_cursor_walk_returns_records_without_the_sort_field(
    client: AppClient, auth: dict[str, str], sort: str
) -> None:
    """Imported or older records may lack a sort key: they come first ascending, last
    descending, and a cursor walk returns them either way."""
    records = [fake_record(i, ["cat"], 100) for i in range(6)]
    for record in records[:3]:
        del record["label_quality_estimation"]
    records[3]["label_quality_estimation"] = None
    await client.resources.database["records"].insert_many(records)

    walked = await _walk(client, auth, {"sort": sort, "per_page": 2, "fields": "url"})
    assert sorted(r["_id"] for r in walked) == sorted(r["_id"] for r in records)


@pytest.mark.parametrize("sort", ["width", "-width", "_id", "-_id"])
async def test_cursor_walk_passes_sort_values_of_any_type(
    client: AppClient, auth: dict[str, str], sort: str
) -> None:
    """Imports may hold a bool, an empty string, a document, NaN, null, MinKey, a timestamp
    or binary data where a number belongs, and one record may have the id null: a walk
    passes each of them, in MongoDB's order across types (NaN after the other numbers
    descending, missing and null between MinKey and the numbers)."""
    records = [fake_record(i, ["cat"], 100 + i) for i in range(4)]
    odd: list[object] = [
        True,
        "",
        {"px": 640},
        "x" * 600,
        7.5,
        float("nan"),
        Decimal128("NaN"),
        None,
        MinKey(),
        MaxKey(),
        Timestamp(5, 1),
        b"\x01\x02",
    ]
    records += [{**fake_record(10 + i, ["cat"], 0), "width": value} for i, value in enumerate(odd)]
    records += [{**fake_record(30, ["cat"], 0), "_id": None}, fake_record(31, ["cat"], 0)]
    del records[-1]["width"]
    collection = client.resources.database["records"]
    await collection.insert_many(records)
    key, direction = sort.lstrip("-"), -1 if sort.startswith("-") else 1
    in_order = collection.find({}, {"_id": 1}).sort(dict.fromkeys([key, "_id"], direction))
    expected = [str(r["_id"]) async for r in in_order]

    walked = await _walk(client, auth, {"sort": sort, "per_page": 1, "fields": "url"})
    assert [str(r["_id"]) for r in walked] == expected


async def test_page_walk_returns_every_record_once_while_inserts_happen(
    client: AppClient, auth: dict[str, str]
) -> None:
    before = set(await _seed(client, 90))
    seen: list[str] = []
    for number in range(1, 100):
        response = await client.get("/v1/records", params={"page": number}, headers=auth)
        page = response.json()
        seen += [r["_id"] for r in page["output"]]
        if not page["output"]:
            break
        # New ids sort after every existing one, so offsets of old records do not move.
        await _seed(client, 5, start=1000 + 10 * number, seed=number)
    assert len(seen) == len(set(seen))
    assert before <= set(seen)


async def test_sort_fields_and_paging_forms(client: AppClient, auth: dict[str, str]) -> None:
    await _seed(client, 60)
    collection = client.resources.database["records"]

    async def get(**params: Any) -> dict[str, Any]:
        response = await client.get("/v1/records", params=params, headers=auth)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    page = await get(sort="-label_quality_estimation", per_page=10, page=2)
    expected = (
        await collection.find({}, {"_id": 1})
        .sort([("label_quality_estimation", -1), ("_id", -1)])
        .skip(10)
        .limit(10)
        .to_list()
    )
    assert [r["_id"] for r in page["output"]] == [d["_id"] for d in expected]
    assert page["length"] == 60 and page["length_is_estimate"] is False
    assert page["page"] == 2 and page["per_page"] == 10 and page["next_cursor"]

    projected = await get(fields="url,classes", sort="datetime", per_page=5)
    assert {tuple(sorted(r)) for r in projected["output"]} == {("_id", "classes", "url")}
    nxt = await get(fields="url", sort="datetime", per_page=5, cursor=projected["next_cursor"])
    assert all(set(r) == {"_id", "url"} for r in nxt["output"])

    last = await get(page=3)  # 25 a page by default: 10 on the last one, and no cursor
    assert len(last["output"]) == 10 and last["next_cursor"] is None and last["length"] == 60


@pytest.mark.parametrize(
    ("params", "projection"),
    [
        ({"fields": "_id.x,url"}, {"url": 1}),
        ({"fields": "datetime.x", "sort": "datetime"}, {"datetime.x": 1}),
        ({"fields": "width.x", "sort": "-width", "q": '{"classes": "cat"}'}, {"width.x": 1}),
        ({"fields": "width.px,url", "sort": "width"}, {"width.px": 1, "url": 1}),
        ({"fields": "width.px", "sort": "-width", "q": '{"height": 100}'}, {"width.px": 1}),
    ],
)
async def test_projections_never_collide_with_the_id_or_sort_key(
    client: AppClient, auth: dict[str, str], params: dict[str, Any], projection: dict[str, int]
) -> None:
    """A path inside ``_id`` or the sort key, which are always fetched, is not a path
    collision on the server, and gives what MongoDB's projection of that path gives: the
    sort key, fetched for the cursor, does not come back whole."""
    records = [fake_record(i, ["cat"], 300 + i) for i in range(2)]
    records += [{**fake_record(2 + i, ["cat"], 0), "width": {"px": i, "py": 9}} for i in range(2)]
    collection = client.resources.database["records"]
    await collection.insert_many(records)

    walked = await _walk(client, auth, {**params, "per_page": 1})  # a cursor a record
    expected = await collection.find({}, {**projection, "_id": 1}).to_list()
    assert len(walked) == 4
    assert sorted(walked, key=lambda r: r["_id"]) == sorted(expected, key=lambda r: r["_id"])


async def test_cortex_query_gives_the_results_of_the_unrewritten_filter(
    client: AppClient, auth: dict[str, str]
) -> None:
    await _seed(client, 200)
    collection = client.resources.database["records"]
    more_operators = ({"$in": ["cat", "dog"], "$nin": ["cat"]}, {"$eq": "cat", "$ne": "cat"})
    for classname in ("cat", "zebra", *more_operators):
        query = {"object_analysis": {"$elemMatch": {"$elemMatch": {"classname": classname}}}}
        expected = [d["_id"] async for d in collection.find(query, {"_id": 1}).sort("_id", 1)]
        got: list[str] = []
        for number in range(1, 20):
            response = await client.get(
                "/get-labeled-data",
                params={"q": json.dumps(query), "page": number},
                headers={"X-RapidAPI-Key": auth["X-API-Key"]},
            )
            page = response.json()
            assert page["length"] == len(expected)
            if not page["output"]:
                break
            got += [r["_id"] for r in page["output"]]
        assert got == expected
        assert expected or classname == {"$eq": "cat", "$ne": "cat"}  # only that one is empty


async def test_cortex_query_finds_an_imported_box_with_a_list_of_classnames(
    client: AppClient, auth: dict[str, str]
) -> None:
    imported: dict[str, Any] = {
        "_id": "cortex-multi",
        "object_analysis": [[{"classname": ["zebra", "horse"], "conf": 0.8}]],
    }
    imported.update(derive_from_document(imported))  # as the backfill brings it up to date
    collection = client.resources.database["records"]
    await collection.insert_one(imported)
    query = {"object_analysis": {"$elemMatch": {"$elemMatch": {"classname": "zebra"}}}}
    assert [d["_id"] async for d in collection.find(query)] == ["cortex-multi"]
    response = await client.get("/v1/records", params={"q": json.dumps(query)}, headers=auth)
    assert [r["_id"] for r in response.json()["output"]] == ["cortex-multi"]


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({"sort": "classes"}, "cannot sort"),
        ({"sort": "-bytes"}, "cannot sort"),
        ({"fields": "url,$where"}, "fields"),
        ({"cursor": "garbage!"}, "cursor is not valid"),
        ({"cursor": "e30"}, "cursor is not valid"),
        ({"cursor": "x", "page": "2"}, "either page or cursor"),
    ],
)
async def test_bad_paging_forms(
    client: AppClient, auth: dict[str, str], params: dict[str, str], needle: str
) -> None:
    response = await client.get("/v1/records", params=params, headers=auth)
    body = assert_problem(response, 400, "invalid-query")
    assert needle in body["detail"]


async def test_cursor_of_another_sort_is_refused(client: AppClient, auth: dict[str, str]) -> None:
    await _seed(client, 30)
    first = (await client.get("/v1/records", params={"per_page": 5}, headers=auth)).json()
    response = await client.get(
        "/v1/records",
        params={"cursor": first["next_cursor"], "sort": "-datetime"},
        headers=auth,
    )
    assert "another sort order" in assert_problem(response, 400, "invalid-query")["detail"]


async def test_slow_count_gives_an_estimate_not_an_error(
    make_settings: Callable[..., Settings], auth: dict[str, str]
) -> None:
    async with running(make_settings(count_max_time_ms=1)) as client:
        await _seed(client, 600)
        for q in ('{"classes": "dog"}', '{"classes": "dog", "width": {"$gt": 300}}'):
            response = await client.get("/v1/records", params={"q": q, "per_page": 5}, headers=auth)
            page = response.json()
            assert response.status_code == 200 and len(page["output"]) == 5
            assert page["length_is_estimate"] is True
            assert page["length"] == 600  # the collection's size: an upper bound


async def test_a_page_too_large_for_one_facet_document_is_read_as_page_and_count(
    client: AppClient, auth: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """MongoDB fails a $facet whose one result document would pass 16 MiB (a page of
    records with many long URLs) with BSONObjectTooLarge; the development server has no
    such limit, so its answer is simulated here."""
    await _seed(client, 30)
    collection = client.resources.records._records

    async def too_large(*args: Any, **kwargs: Any) -> Any:
        raise OperationFailure("BSONObj size: 16793600 is invalid", code=10334)

    monkeypatch.setattr(collection, "aggregate", too_large)
    q = '{"width": {"$gte": 0}}'
    page = (await client.get("/v1/records", params={"q": q, "per_page": 5}, headers=auth)).json()
    expected = await client.resources.database["records"].count_documents({"width": {"$gte": 0}})
    assert len(page["output"]) == 5
    assert page["length"] == expected and page["length_is_estimate"] is False


async def test_a_walk_counts_once_from_its_first_page(
    client: AppClient, auth: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first page counts inside its $facet; the pages after it reuse that count."""
    await _seed(client, 30)
    collection = client.resources.records._records
    counts = 0
    count_documents = collection.count_documents

    async def counting(*args: Any, **kwargs: Any) -> int:
        nonlocal counts
        counts += 1
        return await count_documents(*args, **kwargs)

    monkeypatch.setattr(collection, "count_documents", counting)
    params = {"q": '{"width": {"$gte": 0}}', "per_page": 5}
    walked = await _walk(client, auth, params, lambda _: asyncio.sleep(0))
    assert len(walked) == 30 and counts == 0


async def test_slow_query_answers_503_problem(
    make_settings: Callable[..., Settings], auth: dict[str, str]
) -> None:
    async with running(make_settings(query_max_time_ms=1, count_max_time_ms=1)) as client:
        await _seed(client, 600)
        q = '{"caption.description": {"$regex": "sofa"}}'  # no index: a full scan
        response = await client.get("/v1/records", params={"q": q}, headers=auth)
        body = assert_problem(response, 503, "unavailable")
        assert body["reason"] == "query_timeout" and response.headers["retry-after"] == "1"
