"""Querying stored records with API keys, Cortex-compatible paths and the nested form."""

from __future__ import annotations

import json
from typing import Any

import pytest

from service.domain.records import new_record_id
from tests.api.test_errors import assert_problem
from tests.conftest import AppClient
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
    store = client.resources.records
    for i in range(60):
        await store.insert(fake_record(i, ["dog"] if i % 3 else ["cat", "dog"], 50 + i))
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


@pytest.mark.parametrize(
    ("q", "needle"),
    [
        ('{"$where": "sleep(1000)"}', "$where"),
        ('{"$expr": {"$function": {"body": "x", "args": [], "lang": "js"}}}', "$expr"),
        ('{"width": {"$accumulator": {}}}', "$accumulator"),
        ('{"width": {"$bogus": 1}}', "$bogus"),
        ("{not json", "JSON"),
        ("[1, 2]", "object"),
    ],
)
async def test_dangerous_or_malformed_filters_are_refused(
    client: AppClient, auth: dict[str, str], q: str, needle: str
) -> None:
    body = assert_problem(await client.get("/v1/records", params={"q": q}, headers=auth), 400)
    assert needle.lower() in body["detail"].lower()


@pytest.mark.parametrize("params", [{"page": "0"}, {"page": "x"}, {"per_page": "1000"}])
async def test_bad_paging_parameters(
    client: AppClient, auth: dict[str, str], params: dict[str, str]
) -> None:
    assert_problem(await client.get("/v1/records", params=params, headers=auth), 400)
