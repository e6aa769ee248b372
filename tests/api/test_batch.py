"""``POST /v1/labels/batch``: each item answered as its own request would be, in order."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Callable
from typing import Any

import pytest
import schemathesis
from bson import ObjectId

from service.api.schemas import MAX_BATCH_ITEMS
from service.ratelimit import Rate
from service.settings import Settings
from tests.api.test_errors import assert_problem
from tests.api.test_records import fake_record
from tests.conftest import API_KEY, CAT_PHOTO, EMPTY_PHOTO, ROOT, AppClient, running
from tests.support.asgi import json_post_scope
from tests.support.image_server import ImageServer

BATCH = "/v1/labels/batch"
KEY = {"X-API-Key": API_KEY}
CONTRACT = schemathesis.openapi.from_path(ROOT / "openapi" / "openapi.json")


def item_problem(result: dict[str, Any], status: int, type_suffix: str) -> dict[str, Any]:
    """The problem of one item: the same document its own request would have had."""
    assert set(result) == {"status", "problem"}, result
    problem: dict[str, Any] = result["problem"]
    assert result["status"] == problem["status"] == status, problem
    assert problem["type"].endswith("/" + type_suffix), problem
    assert problem["title"] and problem["detail"] and problem["instance"] == BATCH
    return problem


async def batch(client: AppClient, *items: dict[str, str], **kwargs: Any) -> list[dict[str, Any]]:
    response = await client.post(BATCH, json={"items": list(items)}, **kwargs)
    assert response.status_code == 200, response.text
    results: list[dict[str, Any]] = response.json()["results"]
    assert len(results) == len(items)
    return results


async def test_each_item_is_answered_as_its_own_request_would_be(
    client: AppClient, image_server: ImageServer
) -> None:
    cat = image_server.photo_url(CAT_PHOTO)
    alone = await client.post("/v1/labels", json={"url": cat})
    assert alone.status_code == 201
    stored = alone.json()

    empty = image_server.photo_url(EMPTY_PHOTO)
    results = await batch(
        client,
        {"url": empty},
        {"url": image_server.photo_url(CAT_PHOTO, alias="again")},  # the same bytes
        {"id": stored["_id"]},  # needs the read scope, which a caller without a key lacks
        {"url": image_server.url("/missing.jpg")},
        {"url": "ftp://example.com/x.jpg"},
        {"url": cat, "id": stored["_id"]},
        {"url": empty},  # the same URL twice in one batch: labeled once
    )

    # Whichever of the two items with the same URL is fetched first creates the record.
    created, again = sorted((results[0], results[6]), key=lambda result: -result["status"])
    assert created["status"] == 201 and set(created) == {"status", "record"}
    assert created["record"]["url"] == empty and created["record"]["width"] > 0
    assert again["status"] == 200 and again["record"]["_id"] == created["record"]["_id"]
    assert results[1]["status"] == 200
    assert results[1]["record"]["_id"] == stored["_id"]
    assert results[1]["record"]["urls"] == [image_server.photo_url(CAT_PHOTO, alias="again")]
    assert item_problem(results[2], 401, "unauthorized")["reason"] == "missing_key"
    assert item_problem(results[3], 502, "upstream-error")["upstream_status"] == 404
    item_problem(results[4], 400, "url-rejected")
    assert "exactly one" in item_problem(results[5], 400, "bad-request")["detail"]

    # What the batch stored is what single requests read back.
    fetched = await client.get(f"/v1/records/{created['record']['_id']}", headers=KEY)
    assert fetched.json() == created["record"]
    metrics = (await client.get("/metrics")).text
    for status, count in (("201", 1), ("200", 2), ("400", 2), ("401", 1), ("502", 1)):
        assert f'labelsvc_batch_items_total{{status="{status}"}} {count}.0' in metrics
    for status, type_, count in (
        ("400", "url-rejected", 1),
        ("400", "bad-request", 1),
        ("401", "unauthorized", 1),
        ("502", "upstream-error", 1),
    ):
        assert f'labelsvc_problems_total{{status="{status}",type="{type_}"}} {count}.0' in metrics


async def test_a_reader_key_sees_records_by_id(
    client: AppClient, image_server: ImageServer
) -> None:
    labeled = await client.post("/v1/labels", json={"url": image_server.photo_url(CAT_PHOTO)})
    record_id = labeled.json()["_id"]
    results = await batch(client, {"id": record_id}, {"id": "PT::" + "0" * 24}, headers=KEY)
    assert results[0] == {"status": 200, "record": labeled.json()}
    item_problem(results[1], 404, "record-not-found")


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"items": []}, "length >= 1"),
        ({"items": [{"url": "http://a/b.jpg"}] * (MAX_BATCH_ITEMS + 1)}, "length <= 16"),
        ({"items": [{"url": "http://a/b.jpg", "urls": []}]}, "unknown field"),
        ({"items": [{"url": "http://a/b.jpg"}], "priority": 1}, "unknown field"),
        ({"urls": ["http://a/b.jpg"]}, "unknown field"),
        ({"items": {"url": "http://a/b.jpg"}}, "Expected `array`"),
    ],
)
async def test_a_malformed_batch_is_refused_whole(
    client: AppClient, body: dict[str, Any], detail: str
) -> None:
    problem = assert_problem(await client.post(BATCH, json=body), 400, "bad-request")
    assert any(detail in error["message"] for error in problem["errors"]), problem


async def test_the_longest_urls_fit_in_a_full_batch(
    client: AppClient, image_server: ImageServer
) -> None:
    """16 URLs of the longest length allowed are a body over the 64 KiB other routes take."""
    long = image_server.url("/missing.jpg?pad=")
    long += "x" * (client.resources.settings.max_url_length - len(long))
    results = await batch(client, *[{"url": long}] * MAX_BATCH_ITEMS)
    assert {r["status"] for r in results} == {502}
    refused = await client.post(BATCH, json={"items": [{"url": "x" * 300_000}]})
    assert_problem(refused, 413)


async def test_each_item_counts_against_the_clients_rate(
    make_settings: Callable[..., Settings], image_server: ImageServer
) -> None:
    async with running(make_settings(label_rate_per_client="2/min")) as client:
        # The bucket holds one request (a second's worth, at least one): the batch's first.
        cat = {"url": image_server.photo_url(CAT_PHOTO)}
        results = await batch(client, cat, cat, cat)
        assert results[0]["status"] == 201
        for refused in results[1:]:
            problem = item_problem(refused, 429, "rate-limited")
            assert problem["reason"] == "client_rate_limit" and problem["retry_after"] >= 1
        metrics = (await client.get("/metrics")).text
        assert 'labelsvc_rejected_requests_total{reason="client_rate_limit"} 2.0' in metrics
        # The request itself is refused when even its first item is over the rate; the
        # client learns from the RateLimit fields when its one request is back.
        refused = await client.post(BATCH, json={"items": [cat]})
        assert_problem(refused, 429, "rate-limited")
        assert refused.headers["ratelimit-policy"] == '"client_rate";q=1;w=30'
        back = re.fullmatch(r'"client_rate";r=0;t=(\d+)', refused.headers["ratelimit"])
        assert back and 20 <= int(back[1]) <= 30, refused.headers["ratelimit"]


async def test_each_item_counts_against_the_keys_limits(
    client: AppClient, image_server: ImageServer
) -> None:
    secret = await client.resources.keys.create("bulk", ["label"], daily_quota=2)
    urls = [{"url": image_server.photo_url(CAT_PHOTO, alias=str(i))} for i in range(4)]
    results = await batch(client, *urls, headers={"X-API-Key": secret})
    assert sorted(r["status"] for r in results[:2]) == [200, 201]  # the same bytes twice
    for refused in results[2:]:
        problem = item_problem(refused, 429, "rate-limited")
        assert problem["reason"] == "quota" and problem["retry_after"] >= 1
    metrics = (await client.get("/metrics")).text
    assert 'labelsvc_api_key_requests_total{key="bulk",outcome="admitted"} 2.0' in metrics
    assert 'labelsvc_api_key_requests_total{key="bulk",outcome="quota"} 2.0' in metrics

    limited = await client.resources.keys.create("slow", ["label"], rate=Rate.parse("1/min"))
    results = await batch(client, *urls[:2], headers={"X-API-Key": limited})
    assert results[0]["status"] == 200
    assert item_problem(results[1], 429, "rate-limited")["reason"] == "rate_limit"


async def test_an_imported_record_keeps_the_documented_shape(client: AppClient) -> None:
    """A record imported from a Cortex export is served as stored, in a batch as alone, and
    both answers are what the OpenAPI document says they may be."""
    imported = {**fake_record(7, ["cat"], 640), "_id": ObjectId(), "face_analysis": []}
    del imported["object_analysis_processed"]  # no longer a Record: served as stored
    await client.resources.database["records"].insert_one(imported)
    item = {"id": str(imported["_id"])}

    alone = await client.post("/v1/labels", json=item, headers=KEY)
    assert alone.status_code == 200 and alone.json()["face_analysis"] == []
    CONTRACT["/v1/labels"]["POST"].validate_response(alone)
    batched = await client.post(BATCH, json={"items": [item]}, headers=KEY)
    assert batched.json()["results"] == [{"status": 200, "record": alone.json()}]
    CONTRACT[BATCH]["POST"].validate_response(batched)


async def test_a_keyless_batch_runs_within_the_clients_share_of_slots(
    make_settings: Callable[..., Settings], image_server: ImageServer
) -> None:
    """A client without a key may have a quarter of the labeling slots in progress (one of
    four here): its batch takes turns in that one slot rather than have items refused."""
    settings = make_settings(label_rate_per_client="1000/s", max_inflight=4)
    async with running(settings) as client:
        urls = [{"url": image_server.photo_url(CAT_PHOTO, alias=str(i))} for i in range(3)]
        results = await batch(client, *urls)
        assert [r["status"] for r in results] == [201, 200, 200]


async def test_a_keyless_batch_shares_its_clients_slots_with_its_other_requests(
    make_settings: Callable[..., Settings], image_server: ImageServer
) -> None:
    """Its items take turns in the slots the client has free; with none free, the batch is
    refused as a single request would be."""
    settings = make_settings(label_rate_per_client="1000/s", max_inflight=8)  # 2 a client
    async with running(settings) as client:
        pipeline = client.resources.pipeline
        slow: list[asyncio.Task[Any]] = []

        async def one_more_slow_request() -> None:
            url = image_server.url(f"/drip?share={len(slow)}")
            slow.append(asyncio.create_task(client.post("/v1/labels", json={"url": url})))
            async with asyncio.timeout(10):
                while pipeline.admitted < len(slow):  # noqa: ASYNC110 (no event marks it)
                    await asyncio.sleep(0.01)

        await one_more_slow_request()
        urls = [{"url": image_server.photo_url(CAT_PHOTO, alias=f"s{i}")} for i in range(3)]
        results = await batch(client, *urls)  # beside one slow request: in the other slot
        assert [r["status"] for r in results] == [201, 200, 200]

        await one_more_slow_request()
        refused = await client.post(BATCH, json={"items": urls})
        assert assert_problem(refused, 429, "rate-limited")["reason"] == "client_inflight"
        for task in slow:
            task.cancel()
        await asyncio.gather(*slow, return_exceptions=True)
        metrics = (await client.get("/metrics")).text
        assert 'labelsvc_rejected_requests_total{reason="client_inflight"} 1.0' in metrics


@pytest.mark.parametrize(("ending", "status"), [("client_leaves", 499), ("server_cancels", 503)])
async def test_a_batch_cut_short_starts_nothing_more(
    make_settings: Callable[..., Settings],
    image_server: ImageServer,
    ending: str,
    status: int,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The client disconnects, or the server cancels the request (at the end of a graceful
    shutdown), while the first item downloads: the other two never start, and the client's
    slot is free again at once."""
    caplog.set_level(logging.INFO, logger="service.api.labels")
    settings = make_settings(label_rate_per_client="1000/s", max_inflight=4)  # 1 a client
    async with running(settings) as client:
        items = [{"url": image_server.url(f"/drip?{ending}={i}")} for i in range(3)]
        body = json.dumps({"items": items}).encode()
        sent: list[dict[str, Any]] = []
        leave = asyncio.Event()

        async def receive() -> dict[str, Any]:
            if not sent:
                sent.append({})
                return {"type": "http.request", "body": body, "more_body": False}
            await leave.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = json_post_scope(BATCH, len(body))
        answering = asyncio.create_task(client.app(scope, receive, send))  # type: ignore[arg-type]

        def started() -> list[str]:
            return [path for path, _ in image_server.requests if f"{ending}=" in path]

        async with asyncio.timeout(10):
            while not started():  # noqa: ASYNC110 (the image server marks nothing)
                await asyncio.sleep(0.01)
        if ending == "client_leaves":
            leave.set()
        else:
            answering.cancel()
        async with asyncio.timeout(3):  # the download is cut short, not waited for
            await answering
        assert sent[1]["status"] == status, sent
        left = [r for r in caplog.records if "the client left" in r.getMessage()]
        assert len(left) == (ending == "client_leaves")
        await asyncio.sleep(0.5)
        assert started() == [f"/drip?{ending}=0"]
        assert client.resources.pipeline.admitted == 0
        again = await client.post("/v1/labels", json={"url": image_server.photo_url(CAT_PHOTO)})
        assert again.status_code == 201


async def test_items_refused_by_the_rate_hold_no_slot(
    make_settings: Callable[..., Settings], image_server: ImageServer
) -> None:
    """Items over the client's rate, and lookups by id, take none of its slots: the refused
    item sent again once the rate allows finds one free."""
    settings = make_settings(label_rate_per_client="1/s", max_inflight=8)  # 2 a client
    async with running(settings) as client:
        cat = {"url": image_server.photo_url(CAT_PHOTO)}
        slow = asyncio.create_task(
            client.post(BATCH, json={"items": [{"url": image_server.url("/drip?rate=0")}, cat]})
        )
        async with asyncio.timeout(10):
            while client.resources.pipeline.admitted < 1:  # noqa: ASYNC110 (no event marks it)
                await asyncio.sleep(0.01)
        await asyncio.sleep(1.1)  # a token again
        again = await client.post("/v1/labels", json=cat)
        assert again.status_code == 201, again.text
        results = (await slow).json()["results"]
        assert results[0]["status"] == 504  # the drip outlasts the test's fetch deadline
        assert item_problem(results[1], 429, "rate-limited")["reason"] == "client_rate_limit"


async def test_items_over_the_services_capacity_get_503_with_retry_after(
    make_settings: Callable[..., Settings], image_server: ImageServer
) -> None:
    async with running(make_settings(max_inflight=1)) as client:
        urls = [{"url": image_server.photo_url(CAT_PHOTO, alias=str(i))} for i in range(3)]
        results = await batch(client, *urls, headers=KEY)
        assert results[0]["status"] == 201
        for refused in results[1:]:
            problem = item_problem(refused, 503, "overloaded")
            assert (problem["reason"], problem["retry_after"]) == ("inflight", 1)


async def test_an_item_that_fails_unexpectedly_spoils_no_other(
    client: AppClient, image_server: ImageServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipeline = client.resources.pipeline
    label_url = pipeline.label_url

    async def failing(url: str) -> Any:
        if "alias=bug" in url:
            raise RuntimeError("a bug")
        return await label_url(url)

    monkeypatch.setattr(pipeline, "label_url", failing)
    results = await batch(
        client,
        {"url": image_server.photo_url(CAT_PHOTO, alias="bug")},
        {"url": image_server.photo_url(CAT_PHOTO)},
    )
    problem = item_problem(results[0], 500, "internal")
    assert problem["detail"] == "internal error"  # the exception's text stays in the logs
    assert results[1]["status"] == 201
    assert (await client.get("/healthz")).status_code == 200
