"""Liveness, readiness, metrics and the committed OpenAPI document."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import math
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from pymongo import MongoClient

from service import lifespan, repeated_logs
from service.app import create_app
from service.domain.records import new_record_id
from service.observability import LATENCY_BUCKETS, QUALITY_BUCKETS
from service.settings import Settings
from service.store.records import RecordStore
from tests.api.test_errors import assert_problem
from tests.conftest import CAT_PHOTO, ROOT, AppClient, running
from tests.support.image_server import ImageServer


async def test_health_and_readiness(client: AppClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    body = ready.json()
    assert body["status"] == "ready" and body["database"] == "ok"
    assert body["models"][0]["name"] == "yolox_nano"
    assert body["models"][0]["provider"] in ("CPUExecutionProvider", "CUDAExecutionProvider")


async def test_metrics_cover_requests_stages_models_and_records(
    client: AppClient, image_server: ImageServer, auth: dict[str, str]
) -> None:
    created = await client.post("/v1/labels", json={"url": image_server.photo_url(CAT_PHOTO)})
    await client.get(f"/v1/records/{created.json()['_id']}", headers=auth)
    await client.post("/v1/labels", json={"url": image_server.url("/upstream-500")})
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; version=1.0.0; charset=utf-8"
    text = response.text
    labels = 'method="POST",route="/v1/labels",status="201"'
    assert f"labelsvc_http_request_duration_seconds_count{{{labels}}} 1.0" in text
    for stage in ("fetch", "decode", "detect", "store"):
        assert f'labelsvc_stage_duration_seconds_count{{stage="{stage}"}}' in text
    assert 'labelsvc_model_inference_seconds_count{model="yolox_nano"' in text
    assert "labelsvc_records_created_total 1.0" in text
    assert "labelsvc_records_deduplicated_total 0.0" in text  # reads are not labelings
    for body in ({"id": created.json()["_id"]}, {"url": image_server.photo_url(CAT_PHOTO)}):
        assert (await client.post("/v1/labels", json=body, headers=auth)).status_code == 200
    again = (await client.get("/metrics")).text
    assert "labelsvc_records_deduplicated_total 2.0" in again  # by id, and by the same bytes
    assert 'labelsvc_fetch_failures_total{reason="upstream_status"} 1.0' in text
    assert 'labelsvc_problems_total{status="502",type="upstream-error"} 1.0' in text
    assert 'labelsvc_model_info{model="yolox_nano"' in text
    assert "labelsvc_labeling_admitted 0.0" in text
    assert "labelsvc_executor_queue_wait_seconds_count 0.0" not in text  # decode, models
    assert "labelsvc_executor_pending 0.0" in text


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_metrics_describe_the_labels_of_new_records(
    client: AppClient, image_server: ImageServer
) -> None:
    """Each new record's label-quality estimate (by its model) and kept detections (in all,
    and by class) are counted once: an image labeled again is not a new observation."""
    before = _samples((await client.get("/metrics")).text)
    (model,) = [labels for name, labels in before if name == "labelsvc_label_quality_count"]
    assert before["labelsvc_label_quality_count", model] == 0  # there before any record
    url = image_server.photo_url(CAT_PHOTO)
    record = (await client.post("/v1/labels", json={"url": url})).json()
    assert (await client.post("/v1/labels", json={"url": url})).status_code == 200
    samples = _samples((await client.get("/metrics")).text)
    assert record["label_quality"]["model"] == dict(model)["model"]
    assert samples["labelsvc_label_quality_count", model] == 1
    assert samples["labelsvc_label_quality_sum", model] == record["label_quality_estimation"]
    at_or_below = {
        float(dict(labels)["le"]): value
        for (name, labels), value in samples.items()
        if name == "labelsvc_label_quality_bucket"
    }
    assert at_or_below == {
        le: float(record["label_quality_estimation"] <= le) for le in (*QUALITY_BUCKETS, math.inf)
    }
    boxes = record["object_analysis"][0]
    assert boxes, "the cat photo has detections"
    assert samples["labelsvc_detections_per_image_sum", frozenset()] == len(boxes)
    counted = {
        dict(labels)["class"]: value
        for (name, labels), value in samples.items()
        if name == "labelsvc_detections_total"
    }
    assert {name: value for name, value in counted.items() if value} == Counter(
        box["classname"] for box in boxes
    )
    # every class the detector knows has its series, at 0 until detected
    assert set(counted) == set(client.resources.models.detector.class_names)


def test_latency_buckets_resolve_labeling_latencies() -> None:
    """Quantiles are read by interpolating inside a bucket: between 0.1 and 5 s (labeling
    under load) no bucket is wider than 1.3x, so none is off by more than 30%."""
    edges = [edge for edge in LATENCY_BUCKETS if 0.1 <= edge <= 5.0]
    assert edges[0] == 0.1 and edges[-1] == 5.0
    assert max(high / low for low, high in itertools.pairwise(edges)) <= 1.3


async def test_metrics_count_requests_the_router_answers_itself(client: AppClient) -> None:
    """Unknown paths and methods never reach a route: they are counted all the same, under
    ``unmatched``, with a bounded method label, and HEAD under its own name."""
    assert (await client.get("/no-such-path")).status_code == 404
    assert (await client.request("PROPFIND", "/no-such-path")).status_code == 404
    assert (await client.delete("/v1/labels")).status_code == 405
    assert (await client.head("/healthz")).status_code == 200
    text = (await client.get("/metrics")).text
    count = "labelsvc_http_request_duration_seconds_count"
    assert f'{count}{{method="GET",route="unmatched",status="404"}} 1.0' in text
    assert f'{count}{{method="other",route="unmatched",status="404"}} 1.0' in text
    assert 'labelsvc_problems_total{status="404",type="not-found"} 2.0' in text
    assert 'labelsvc_problems_total{status="405",type="method-not-allowed"} 1.0' in text
    assert f'{count}{{method="DELETE",route="unmatched",status="405"}} 1.0' in text
    assert f'{count}{{method="HEAD",route="/healthz",status="200"}} 1.0' in text
    assert "PROPFIND" not in text


async def test_interactive_docs_are_served(client: AppClient) -> None:
    docs = await client.get("/docs/swagger")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    schema = await client.get("/docs/openapi.json")
    assert schema.json()["paths"]["/v1/labels"]["post"]


async def test_unknown_docs_pages_are_problems(client: AppClient) -> None:
    for path in ("/docs/nope", "/docs/openapi.yaml", "/docs/swagger/x"):
        missing = await client.get(path)
        assert missing.status_code == 404, path
        assert missing.headers["content-type"] == "application/problem+json", path
        assert missing.json()["instance"] == path


def test_metered_operations_document_the_rate_limit_fields() -> None:
    document = create_app(Settings()).openapi_schema.to_schema()
    assert {"RateLimit", "RateLimit-Policy"} <= set(document["components"]["headers"])
    ref = {"$ref": "#/components/headers/RateLimit"}
    for path, method in (("/v1/records", "get"), ("/v1/labels", "post"), ("/upload", "post")):
        for status, response in document["paths"][path][method]["responses"].items():
            assert response["headers"]["RateLimit"] == ref, (path, status)
    health = document["paths"]["/healthz"]["get"]["responses"]["200"]
    assert "RateLimit" not in health.get("headers", {})


def test_committed_openapi_document_is_current() -> None:
    generated = create_app(Settings()).openapi_schema.to_schema()
    committed = json.loads((ROOT / "openapi" / "openapi.json").read_text())
    assert committed == json.loads(json.dumps(generated)), (
        "openapi/openapi.json is stale: run `make openapi`"
    )


def test_openapi_document_lists_every_route() -> None:
    document = json.loads(Path(ROOT / "openapi" / "openapi.json").read_text())
    assert {
        "/v1/labels",
        "/upload",
        "/v1/records",
        "/get-labeled-data",
        "/v1/records/{record_id}",
        "/healthz",
        "/readyz",
        "/metrics",
    } <= set(document["paths"])


def test_openapi_documents_every_error_as_a_problem() -> None:
    """Every error the service sends is problem+json: none documented in the framework's own
    shape (which it adds for routes with parameters unless told otherwise)."""
    document = json.loads(Path(ROOT / "openapi" / "openapi.json").read_text())
    errors = [
        (path, method, status, response)
        for path, operations in document["paths"].items()
        for method, operation in operations.items()
        for status, response in operation["responses"].items()
        if int(status) >= 400
    ]
    assert errors
    for path, method, status, response in errors:
        assert list(response["content"]) == ["application/problem+json"], (path, method, status)


def test_openapi_documents_the_headers_and_members_of_errors() -> None:
    document = json.loads(Path(ROOT / "openapi" / "openapi.json").read_text())
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                headers = set(response.get("headers", {}))
                if status in ("429", "503"):
                    assert "Retry-After" in headers, (path, method, status)
                if status == "401":
                    assert "WWW-Authenticate" in headers, (path, method, status)
            if {"ApiKey": []} in operation.get("security", []):
                assert {"RapidApiKey": []} in operation["security"], (path, method)
    members = document["components"]["schemas"]["Problem"]["properties"]
    assert {"reason", "errors", "limit", "upstream_status", "database", "retry_after"} <= set(
        members
    )


async def test_readiness_says_why_the_indexes_cannot_be_made(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Imported records holding the same bytes twice block the unique hash index: the
    service stays unready, and says so (labeling requests too), instead of blaming an
    unreachable database. It does not build the index over every record again every few
    seconds meanwhile."""
    attempts = 0
    ensure_indexes = RecordStore.ensure_indexes

    async def counted(store: RecordStore) -> None:
        nonlocal attempts
        attempts += 1
        await ensure_indexes(store)

    monkeypatch.setattr(RecordStore, "ensure_indexes", counted)
    monkeypatch.setattr(lifespan, "INDEX_RETRY_SECONDS", 0.05)
    settings = make_settings()
    twins = [{"_id": new_record_id(), "hash": "0" * 64} for _ in range(2)]
    with MongoClient(settings.mongodb_uri) as mongo:
        mongo[settings.mongodb_db]["records"].insert_many(twins)
    app = create_app(settings)
    async with app.lifespan(), AppClient(app) as client:
        for _ in range(50):
            response = await client.get("/readyz")
            if "indexes failed" in response.text:
                break
            await asyncio.sleep(0.1)
        problem = assert_problem(response, 503, "unavailable")
        assert problem["database"] == "indexes"
        assert "creating the database indexes failed: DuplicateKeyError" in problem["detail"]
        refused = await client.post("/v1/labels", json={"url": "http://images.example/a.jpg"})
        assert assert_problem(refused, 503, "unavailable") == problem | {"instance": "/v1/labels"}
        await asyncio.sleep(0.5)
        assert attempts == 1


async def test_readiness_while_the_indexes_are_made_does_not_blame_the_database(
    make_settings: Callable[..., Settings],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Every start waits for its indexes with the database answering: /readyz says so (and
    labeling requests), and it is ready once they are made. Probes asked during a start are
    routine: logged as information, with no warning, each window's closing line included."""
    made = asyncio.Event()
    ensure_indexes = RecordStore.ensure_indexes

    async def held(store: RecordStore) -> None:
        await made.wait()
        await ensure_indexes(store)

    monkeypatch.setattr(RecordStore, "ensure_indexes", held)
    monkeypatch.setattr(repeated_logs, "WINDOW_SECONDS", 0.2)
    caplog.set_level(logging.INFO, logger="service.api.problems")
    app = create_app(make_settings())
    async with app.lifespan(), AppClient(app) as client:
        for _ in range(3):
            problem = assert_problem(await client.get("/readyz"), 503, "unavailable")
            assert problem["database"] == "indexes"
            assert problem["detail"] == "the database indexes are being created"
        await asyncio.sleep(0.4)
        lines = [(r.levelno, r.getMessage()) for r in caplog.records]
        assert lines == [
            (logging.INFO, "GET /readyz -> 503 unavailable"),
            (
                logging.INFO,
                "2 more answers 503 unavailable in the last 0.2 s, not logged one by one"
                " (the last: GET /readyz)",
            ),
        ]
        refused = await client.post("/v1/labels", json={"url": "http://images.example/a.jpg"})
        assert assert_problem(refused, 503, "unavailable") == problem | {"instance": "/v1/labels"}
        made.set()
        await asyncio.wait_for(app.state.resources.indexes_ready.wait(), 30)
        assert (await client.get("/readyz")).json()["status"] == "ready"


async def test_a_stop_writes_the_lines_of_a_burst_its_window_had_not_summed_up(
    make_settings: Callable[..., Settings],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A burst of errors followed by a stop (a restart, often because of that burst): the
    count of the lines not written is written at shutdown, not lost with the window's timer."""
    made = asyncio.Event()

    async def held(store: RecordStore) -> None:
        await made.wait()

    monkeypatch.setattr(RecordStore, "ensure_indexes", held)
    caplog.set_level(logging.INFO, logger="service.api.problems")
    app = create_app(make_settings())
    async with app.lifespan(), AppClient(app) as client:
        for _ in range(3):
            assert_problem(await client.get("/readyz"), 503, "unavailable")
    [closing] = [r.getMessage() for r in caplog.records if "one by one" in r.getMessage()]
    assert closing.startswith("2 more answers 503 unavailable in the last ")
    assert closing.endswith(" s, not logged one by one (the last: GET /readyz)")


async def test_an_index_made_under_another_name_serves(
    make_settings: Callable[..., Settings],
) -> None:
    """A database whose records came with their own unique hash index (``hash_1``, as
    create_index names it): the service does not ask for a second one, and is ready."""
    settings = make_settings()
    with MongoClient(settings.mongodb_uri) as mongo:
        records = mongo[settings.mongodb_db]["records"]
        records.create_index("hash", unique=True)
        records.create_index("url")
    async with running(settings) as client:
        assert (await client.get("/readyz")).status_code == 200
    with MongoClient(settings.mongodb_uri) as mongo:
        names = set(mongo[settings.mongodb_db]["records"].index_information())
    assert {"hash_1", "url_1", "classes"} <= names and not {"hash_unique", "url"} & names


async def test_head_answers_like_get_without_a_body(client: AppClient) -> None:
    for path in ("/healthz", "/readyz", "/metrics"):
        get, head = await client.get(path), await client.head(path)
        assert head.status_code == get.status_code == 200
        assert head.content == b""
        assert head.headers["content-type"] == get.headers["content-type"]
    assert (await client.head("/v1/records")).status_code == 401  # guarded like GET
    assert (await client.head("/v1/labels")).status_code == 405  # no GET to mirror
    # Allow, on a 405 and on OPTIONS, names HEAD wherever it names GET.
    for response in (await client.put("/healthz"), await client.options("/v1/records")):
        assert {m.strip() for m in response.headers["allow"].split(",")} >= {"GET", "HEAD"}
    assert "HEAD" not in (await client.put("/v1/labels")).headers["allow"]


async def test_indexes_come_back_when_the_database_loses_them(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database restored or recreated under a running service has no indexes: without
    the unique hash index, writers would store duplicates unnoticed. They are made again."""
    monkeypatch.setattr(lifespan, "INDEX_CHECK_SECONDS", 0.2)
    async with running(make_settings()) as client:
        records = client.resources.database["records"]
        await records.drop()
        for _ in range(50):
            if "hash_unique" in await records.index_information():
                break
            await asyncio.sleep(0.1)
        assert "hash_unique" in await records.index_information()
        assert (await client.get("/readyz")).status_code == 200
