"""DELETE with If-Match: a record goes only while it is the version the client read."""

from __future__ import annotations

from typing import Any

import pytest
from bson import Decimal128, ObjectId, Regex

from service.api.conditional import if_match_tags
from service.domain.records import new_record_id
from service.errors import BadRequest
from tests.api.test_conditional import tagged_record
from tests.api.test_errors import assert_problem
from tests.api.test_records import LABELED, fake_record
from tests.conftest import AppClient
from tests.support.image_server import ImageServer


@pytest.mark.parametrize(
    ("header", "tags"),
    [
        ('"abc"', ['"abc"']),
        ('"x", "abc"', ['"x"', '"abc"']),
        ('"x",W/"abc" , "y"', ['"x"', '"y"']),  # strong comparison: a weak tag never matches
        ('W/"abc"', []),
        ("*", "*"),
        (" * ", "*"),
        ('"*"', ['"*"']),
    ],
)
def test_if_match_names_strong_tags(header: str, tags: list[str] | str) -> None:
    assert if_match_tags(header) == tags


@pytest.mark.parametrize("header", ["abc", '"abc', "", " ", '"a" b', '*, "a"'])
def test_an_if_match_that_is_not_a_list_of_tags_is_refused(header: str) -> None:
    with pytest.raises(BadRequest, match="If-Match must be"):
        if_match_tags(header)


async def deleted_count(client: AppClient) -> str:
    metrics = (await client.get("/metrics")).text
    return next(
        line for line in metrics.splitlines() if line.startswith("labelsvc_records_deleted")
    )


async def test_a_labeled_record_is_deleted_only_in_the_version_read(
    client: AppClient, image_server: ImageServer, auth: dict[str, str]
) -> None:
    created = await client.post("/v1/labels", json={"url": image_server.photo_url(LABELED[0])})
    assert created.status_code == 201
    path = f"/v1/records/{created.json()['_id']}"
    tag = (await client.get(path, headers=auth)).headers["etag"]
    before = await deleted_count(client)

    for held in ('"other"', f"W/{tag}"):
        refused = await client.delete(path, headers={**auth, "If-Match": held})
        assert_problem(refused, 412, "precondition-failed")
        assert "GET it again" in refused.json()["detail"]
    malformed = await client.delete(path, headers={**auth, "If-Match": tag.strip('"')})
    assert_problem(malformed, 400, "bad-request")
    assert (await client.get(path, headers=auth)).status_code == 200
    assert await deleted_count(client) == before

    # The same bytes from another URL: the record holds one more URL, so it reads otherwise.
    again = await client.post("/v1/labels", json={"url": image_server.photo_url(LABELED[0]) + "?2"})
    assert again.status_code == 200
    stale = await client.delete(path, headers={**auth, "If-Match": tag})
    assert_problem(stale, 412, "precondition-failed")

    current = (await client.get(path, headers=auth)).headers["etag"]
    # The field on two lines is one list.
    lines = [*auth.items(), ("If-Match", '"other"'), ("If-Match", current)]
    assert (await client.delete(path, headers=lines)).status_code == 204
    assert_problem(await client.get(path, headers=auth), 404, "record-not-found")
    # A record that is gone is not found, whatever the condition.
    gone = await client.delete(path, headers={**auth, "If-Match": current})
    assert_problem(gone, 404, "record-not-found")
    assert_problem(await client.delete(path, headers={**auth, "If-Match": "*"}), 404)


async def test_if_match_star_deletes_whatever_version(
    client: AppClient, auth: dict[str, str]
) -> None:
    record = fake_record(1, ["cat"], 300)
    await client.resources.records.insert(record)
    path = f"/v1/records/{record['_id']}"
    assert (await client.delete(path, headers={**auth, "If-Match": "*"})).status_code == 204
    assert await client.resources.database["records"].count_documents({}) == 0


async def test_an_imported_record_of_any_bson_types_is_deleted_by_its_tag(
    client: AppClient, auth: dict[str, str]
) -> None:
    """The tag is the one GET answers, and the check that the record is unchanged compares
    the stored document itself, whatever types it holds."""
    record = {
        "_id": ObjectId(),
        "url": "https://example.org/a.jpg",
        "price": Decimal128("1.10"),
        "pattern": Regex("^a", "i"),
        "nested": {"b": [1, 2.5, None, {"c": "$d"}], "a": "$notafield"},
    }
    await client.resources.database["records"].insert_one(record)
    path = f"/v1/records/{record['_id']}"
    tag = (await client.get(path, headers=auth)).headers["etag"]
    assert (await client.delete(path, headers={**auth, "If-Match": tag})).status_code == 204
    assert await client.resources.database["records"].count_documents({}) == 0


@pytest.mark.parametrize("held", ["*", "tag", "W/tag", "tag-gzip", '"other", tag'])
async def test_if_none_match_naming_the_record_keeps_it(
    client: AppClient, auth: dict[str, str], held: str
) -> None:
    """RFC 9110 section 13.1.2: a DELETE whose If-None-Match names the current version (or
    is *) is not performed, and answers 412 (compared weakly, in either coding)."""
    path, tag = await tagged_record(client, auth)
    before = await deleted_count(client)
    header = held.replace("tag-gzip", tag[:-1] + '-gzip"').replace("tag", tag)
    refused = await client.delete(path, headers={**auth, "If-None-Match": header})
    assert "If-None-Match" in assert_problem(refused, 412, "precondition-failed")["detail"]
    assert (await client.get(path, headers=auth)).status_code == 200
    assert await deleted_count(client) == before


async def test_if_none_match_naming_another_version_deletes(
    client: AppClient, auth: dict[str, str]
) -> None:
    path, tag = await tagged_record(client, auth)
    both = {**auth, "If-Match": tag, "If-None-Match": tag}
    assert_problem(await client.delete(path, headers=both), 412, "precondition-failed")
    held = {**auth, "If-Match": tag, "If-None-Match": '"other"'}
    assert (await client.delete(path, headers=held)).status_code == 204
    assert_problem(await client.get(path, headers=auth), 404, "record-not-found")
    gone = await client.delete(path, headers={**auth, "If-None-Match": "*"})
    assert_problem(gone, 404, "record-not-found")


@pytest.mark.parametrize("condition", ["If-Match", "If-None-Match"])
@pytest.mark.parametrize(
    ("meanwhile", "status", "problem"),
    [
        ({"$set": {"label_quality_estimation": 0.1}}, 412, "precondition-failed"),
        ({"$addToSet": {"urls": "https://example.org/new.jpg"}}, 412, "precondition-failed"),
        ({"$set": {"added_by_a_backfill": True}}, 412, "precondition-failed"),
        (None, 404, "record-not-found"),
    ],
)
async def test_a_record_changed_between_the_check_and_the_delete_stays(
    client: AppClient,
    auth: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    meanwhile: dict[str, Any] | None,
    status: int,
    problem: str,
    condition: str,
) -> None:
    """Another writer relabels the record, adds a URL or a field, or deletes it, after the
    service read it to check the client's tag (If-Match names it, If-None-Match another) and
    before its delete: the delete must not take the version the client never saw."""
    record = fake_record(1, ["cat"], 300)
    await client.resources.records.insert(record)
    path = f"/v1/records/{record['_id']}"
    tag = (await client.get(path, headers=auth)).headers["etag"]
    store = client.resources.records
    collection = client.resources.database["records"]
    read = store.get

    async def read_then_changed(record_id: str) -> dict[str, Any] | None:
        document = await read(record_id)
        monkeypatch.setattr(store, "get", read)  # once
        if meanwhile is None:
            await collection.delete_one({"_id": record["_id"]})
        else:
            await collection.update_one({"_id": record["_id"]}, meanwhile)
        return document

    monkeypatch.setattr(store, "get", read_then_changed)
    held = tag if condition == "If-Match" else '"other"'
    response = await client.delete(path, headers={**auth, condition: held})
    assert_problem(response, status, problem)
    assert await collection.count_documents({}) == (0 if meanwhile is None else 1)


async def test_without_if_match_a_delete_is_unconditional(
    client: AppClient, auth: dict[str, str]
) -> None:
    record = fake_record(1, ["cat"], 300)
    await client.resources.records.insert(record)
    await client.resources.database["records"].update_one(
        {"_id": record["_id"]}, {"$set": {"label_quality_estimation": 0.1}}
    )
    assert (await client.delete(f"/v1/records/{record['_id']}", headers=auth)).status_code == 204
    missing = await client.delete(f"/v1/records/{new_record_id()}", headers=auth)
    assert_problem(missing, 404, "record-not-found")
