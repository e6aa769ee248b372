"""Conditional GET: ETags on the answers that serve stored records, and 304 for a copy held."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from pymongo import MongoClient

from service.api.conditional import CACHE_CONTROL, entity_tag, none_match
from service.dbserver import LocalDatabaseServer
from service.domain.records import new_record_id
from service.query.derived import derive_from_document
from tests.api.test_errors import assert_problem
from tests.api.test_records import fake_record
from tests.conftest import API_KEY, AppClient
from tests.support.process import live_service


def test_entity_tags_name_the_bytes() -> None:
    tag = entity_tag(b'{"a":1}')
    assert tag == entity_tag(b'{"a":1}') != entity_tag(b'{"a":2}')
    assert tag.startswith('"') and tag.endswith('"') and len(tag) == 24
    assert '"' not in tag[1:-1] and "," not in tag


@pytest.mark.parametrize(
    ("header", "matches"),
    [
        ('"abc"', True),
        ('W/"abc"', True),  # weak comparison, as for GET and HEAD
        ('"x", "abc"', True),
        ('"x",W/"abc" , "y"', True),
        ("*", True),
        (" * ", True),
        ('"abd"', False),
        ('"ab"', False),
        ("abc", False),  # not an entity tag: names none
        ('"abc', False),
        ("", False),
        ('"*"', False),
    ],
)
def test_if_none_match_compares_weakly(header: str, matches: bool) -> None:
    assert none_match(header, '"abc"') is matches
    assert none_match(header, 'W/"abc"') is matches


async def tagged_record(client: AppClient, auth: dict[str, str]) -> tuple[str, str]:
    """A stored record's path and the ETag its GET answers with."""
    record = fake_record(1, ["cat"], 300)
    await client.resources.records.insert(record)
    path = f"/v1/records/{record['_id']}"
    return path, (await client.get(path, headers=auth)).headers["etag"]


async def test_a_record_held_is_not_sent_again(client: AppClient, auth: dict[str, str]) -> None:
    record = fake_record(1, ["cat"], 300)
    await client.resources.records.insert(record)
    path = f"/v1/records/{record['_id']}"
    first = await client.get(path, headers=auth)
    assert first.status_code == 200
    tag = first.headers["etag"]
    assert tag == entity_tag(first.content)
    assert first.headers["cache-control"] == CACHE_CONTROL
    assert (await client.get(path, headers=auth)).headers["etag"] == tag

    for held in (tag, f"W/{tag}", f'"other", {tag}', "*"):
        again = await client.get(path, headers={**auth, "If-None-Match": held})
        assert again.status_code == 304, held
        assert again.content == b""
        assert again.headers["etag"] == tag
        assert again.headers["cache-control"] == CACHE_CONTROL
        assert "content-type" not in again.headers and "content-length" not in again.headers
        # Every other header of the answer is there: security headers, the request id.
        assert set(again.headers) == set(first.headers) - {"content-type", "content-length"}
    # The field on two lines is one list.
    lines = [*auth.items(), ("If-None-Match", '"other"'), ("If-None-Match", tag)]
    assert (await client.get(path, headers=lines)).status_code == 304
    head = await client.head(path, headers={**auth, "If-None-Match": tag})
    assert head.status_code == 304 and head.headers["etag"] == tag

    other = await client.get(path, headers={**auth, "If-None-Match": '"other"'})
    assert other.status_code == 200 and other.content == first.content

    # Relabeled, say: the record reads differently, so the copy held is stale.
    await client.resources.database["records"].update_one(
        {"_id": record["_id"]}, {"$set": {"label_quality_estimation": 0.9}}
    )
    changed = await client.get(path, headers={**auth, "If-None-Match": tag})
    assert changed.status_code == 200
    assert changed.json()["label_quality_estimation"] == 0.9
    assert changed.headers["etag"] not in (tag, None)


async def test_a_get_is_answered_only_in_the_version_if_match_names(
    client: AppClient, auth: dict[str, str]
) -> None:
    """If-Match on a GET (RFC 9110 section 13.1.1), compared strongly, in either coding."""
    record = fake_record(1, ["cat"], 300)
    await client.resources.records.insert(record)
    path = f"/v1/records/{record['_id']}"
    first = await client.get(path, headers=auth)
    tag = first.headers["etag"]
    for held in ('"other"', f"W/{tag}"):
        for method in ("GET", "HEAD"):
            refused = await client.request(method, path, headers={**auth, "If-Match": held})
            assert refused.status_code == 412, (method, held)
            assert "etag" not in refused.headers
            assert refused.headers["cache-control"] == "no-store"
        problem = assert_problem(
            await client.get(path, headers={**auth, "If-Match": held}), 412, "precondition-failed"
        )
        assert "If-Match" in problem["detail"]
    malformed = await client.get(path, headers={**auth, "If-Match": tag.strip('"')})
    assert_problem(malformed, 400, "bad-request")
    # Preconditions apply only to what would be a 200.
    missing = f"/v1/records/{new_record_id()}"
    assert_problem(await client.get(missing, headers={**auth, "If-Match": '"x"'}), 404)

    gzipped = tag[:-1] + '-gzip"'
    for held in (tag, gzipped, f'"other", {tag}', "*"):
        answer = await client.get(path, headers={**auth, "If-Match": held})
        assert answer.status_code == 200, held
        assert answer.content == first.content and answer.headers["etag"] == tag
    lines = [*auth.items(), ("If-Match", '"other"'), ("If-Match", tag)]
    assert (await client.get(path, headers=lines)).status_code == 200


async def test_if_match_is_evaluated_before_if_none_match(
    client: AppClient, auth: dict[str, str]
) -> None:
    path, tag = await tagged_record(client, auth)
    both = {**auth, "If-Match": tag, "If-None-Match": tag}
    assert (await client.get(path, headers=both)).status_code == 304
    stale = {**auth, "If-Match": '"stale"', "If-None-Match": tag}
    assert_problem(await client.get(path, headers=stale), 412, "precondition-failed")


async def test_a_page_is_answered_only_in_the_version_if_match_names(
    client: AppClient, auth: dict[str, str]
) -> None:
    await client.resources.records.insert(zebra(1))
    params = {"q": '{"width": 333}'}
    tag = (await client.get("/v1/records", params=params, headers=auth)).headers["etag"]
    await client.resources.records.insert(zebra(2))
    stale = await client.get("/v1/records", params=params, headers={**auth, "If-Match": tag})
    assert_problem(stale, 412, "precondition-failed")


async def test_errors_and_other_routes_carry_no_tag(
    client: AppClient, auth: dict[str, str]
) -> None:
    missing = await client.get(
        f"/v1/records/{new_record_id()}", headers={**auth, "If-None-Match": "*"}
    )
    assert_problem(missing, 404, "record-not-found")
    assert "etag" not in missing.headers
    assert missing.headers["cache-control"] == "no-store"
    unauthorized = await client.get("/v1/records", headers={"If-None-Match": "*"})
    assert_problem(unauthorized, 401, "unauthorized")
    health = await client.get("/healthz", headers={"If-None-Match": "*"})
    assert health.status_code == 200 and "etag" not in health.headers


def zebra(i: int) -> dict[str, Any]:
    record = fake_record(i, ["zebra"], 333)
    return record | derive_from_document(record)


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/v1/records", {"q": '{"width": 333}'}),
        ("/get-labeled-data", {"q": '{"width": 333}'}),
        ("/v1/search", {"text": "zebra", "q": '{"width": 333}'}),
    ],
)
async def test_a_page_held_is_not_sent_again_until_it_changes(
    client: AppClient, auth: dict[str, str], path: str, params: dict[str, str]
) -> None:
    await client.resources.records.insert(zebra(1))
    first = await client.get(path, params=params, headers=auth)
    assert first.status_code == 200 and len(first.json()["output"]) == 1
    tag = first.headers["etag"]
    held = {**auth, "If-None-Match": tag}
    assert (await client.get(path, params=params, headers=held)).status_code == 304
    # Another page of the same query is another answer.
    second_page = await client.get(path, params={**params, "page": "2"}, headers=held)
    assert second_page.status_code == 200 and second_page.json()["output"] == []

    await client.resources.records.insert(zebra(2))
    grown = await client.get(path, params=params, headers=held)
    assert grown.status_code == 200 and len(grown.json()["output"]) == 2
    assert grown.headers["etag"] != tag


async def test_similar_records_are_tagged(client: AppClient, auth: dict[str, str]) -> None:
    record = {**fake_record(1, ["cat"], 640), "image_properties": {"phash": "c3a1f0e4b2d29c18"}}
    await client.resources.database["records"].insert_one(record)
    path = f"/v1/records/{record['_id']}/similar"
    first = await client.get(path, headers=auth)
    assert first.status_code == 200, first.text
    held = {**auth, "If-None-Match": first.headers["etag"]}
    assert (await client.get(path, headers=held)).status_code == 304


def test_a_304_over_http_keeps_the_connection(db_server: LocalDatabaseServer) -> None:
    """Over uvicorn: the 304 ends its answer without a body, and the same connection goes
    on to carry the next request."""
    record = fake_record(1, ["cat"], 300)
    with MongoClient(db_server.uri) as mongo:
        mongo["conditional"]["records"].insert_one(record)
    settings = {"bootstrap_api_key": API_KEY, "log_level": "warning"}
    with (
        live_service(mongodb_uri=db_server.uri, mongodb_db="conditional", **settings) as (base, _),
        httpx.Client(base_url=base, headers={"X-API-Key": API_KEY}, timeout=30) as http,
    ):
        path = f"/v1/records/{record['_id']}"
        first = http.get(path)
        assert first.status_code == 200
        seen: set[object] = set()
        for _ in range(3):
            response = http.get(path, headers={"If-None-Match": first.headers["etag"]})
            assert response.status_code == 304 and response.content == b""
            stream = response.extensions["network_stream"]
            seen.add(id(stream))
        assert http.get(path).content == first.content
        assert len(seen) == 1  # one connection carried them all
