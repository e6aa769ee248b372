"""Every bad input gets a specific problem+json answer, and the service keeps serving."""

from __future__ import annotations

import asyncio
import gzip
import logging
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from litestar import Litestar, Request
from litestar.datastructures import State
from litestar.exceptions import InternalServerException

from service.api.problems import _http_exception
from service.settings import Settings
from tests.conftest import CAT_PHOTO, AppClient, running
from tests.support.asgi import json_post_scope
from tests.support.image_server import ImageServer

PROBLEM = "application/problem+json"


def assert_problem(response: Any, status: int, type_suffix: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["title"] and body["detail"]
    if type_suffix:
        assert body["type"].endswith("/" + type_suffix), body
    return body


@pytest.mark.parametrize(
    ("body", "status", "type_suffix"),
    [
        ({"url": "ftp://example.com/cat.jpg"}, 400, "url-rejected"),
        ({"url": "file:///etc/passwd"}, 400, "url-rejected"),
        ({"url": "http://169.254.169.254/latest/meta-data/"}, 400, "url-rejected"),
        ({"url": "not a url"}, 400, "url-rejected"),
        ({}, 400, "bad-request"),
        ({"url": "http://a/x.jpg", "id": "PT::0123456789abcdef01234567"}, 400, "bad-request"),
        ({"url": 42}, 400, "bad-request"),
        ({"url": "http://a/x.jpg", "colour": "red"}, 400, "bad-request"),
        ({"id": "PT::0123456789abcdef01234567"}, 404, "record-not-found"),
        ({"id": "no-such-id"}, 404, "record-not-found"),
    ],
)
async def test_bad_labeling_requests(
    client: AppClient, auth: dict[str, str], body: dict[str, Any], status: int, type_suffix: str
) -> None:
    # With a key that may read: looking a record up by id needs one.
    assert_problem(await client.post("/v1/labels", json=body, headers=auth), status, type_suffix)


async def test_upload_with_neither_url_nor_id(client: AppClient) -> None:
    assert_problem(await client.post("/upload", json={"url_or_id": "cat.jpg"}), 400, "bad-request")


async def test_invalid_json_body(client: AppClient) -> None:
    response = await client.post(
        "/v1/labels", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert_problem(response, 400)


@pytest.mark.parametrize("path", ["/v1/labels", "/upload"])
async def test_deeply_nested_json_body(client: AppClient, path: str) -> None:
    # 60 KB, under the body cap: deeper than the decoder's recursion goes on any Python (3.11
    # stops at 1,000 levels; 3.12 counts C recursion apart and decoded 1,000).
    nested = b"[" * 30_000 + b"]" * 30_000
    response = await client.post(path, content=nested, headers={"content-type": "application/json"})
    assert "nested too deeply" in assert_problem(response, 400, "bad-request")["detail"]


@pytest.mark.parametrize(
    "content_type", [None, "text/plain", "application/x-www-form-urlencoded", "text/xml"]
)
async def test_labeling_bodies_must_be_json(
    client: AppClient, auth: dict[str, str], content_type: str | None
) -> None:
    """What a cross-site page can send without a preflight is refused: an open service on an
    internal network cannot be driven from a visitor's browser."""
    body = b'{"url": "http://example.com/a.jpg"}'
    headers = {"content-type": content_type} if content_type else {}
    for path in ("/v1/labels", "/upload"):
        response = await client.post(path, content=body, headers=headers)
        assert assert_problem(response, 415, "unsupported-body")["reason"] == "content_type"
    empty = await client.post("/v1/labels", headers={"content-type": "application/json"})
    assert "needs a JSON body" in assert_problem(empty, 400, "bad-request")["detail"]

    async def nothing() -> AsyncIterator[bytes]:  # chunked: no Content-Length
        yield b""

    chunked = await client.post(
        "/v1/labels", content=nothing(), headers={"content-type": "application/json"}
    )
    assert "needs a JSON body" in assert_problem(chunked, 400, "bad-request")["detail"]
    gzipped = await client.post(
        "/v1/labels",
        content=gzip.compress(body),
        headers={"content-type": "application/json", "content-encoding": "gzip"},
    )
    assert assert_problem(gzipped, 415, "unsupported-body")["reason"] == "content_encoding"
    vendor = await client.post(
        "/v1/labels",
        content=b'{"id": "PT::000000000000000000000000"}',
        headers={"content-type": "application/vnd.api+json; charset=utf-8", **auth},
    )
    assert vendor.status_code == 404  # a JSON media type: decoded, and the id looked up


@pytest.mark.parametrize("path", ["/v1/labels", "/upload"])
async def test_json_body_not_in_utf8(client: AppClient, path: str) -> None:
    latin1 = '{"url": "http://example.com/caf\xe9.jpg", "url_or_id": "\xe9"}'.encode("latin-1")
    response = await client.post(path, content=latin1, headers={"content-type": "application/json"})
    assert "not UTF-8" in assert_problem(response, 400, "bad-request")["detail"]


@pytest.mark.parametrize("path", ["/v1/labels", "/v1/labels/batch", "/upload"])
async def test_a_client_that_leaves_mid_body_is_not_an_internal_error(
    client: AppClient, path: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Content-Length announced, part of the body sent, then the client disconnects: the
    request is recorded as 499, as an upload cut short is, not as a 500 (which the
    internal-errors alert pages on)."""
    caplog.set_level(logging.INFO, logger="service.api.problems")
    body = b'{"url": "http://example.com/cat.jpg"}'
    messages = [
        {"type": "http.request", "body": body[:10], "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = json_post_scope(path, len(body))
    await client.app(scope, receive, send)  # type: ignore[arg-type]
    assert sent[0]["status"] == 499, sent
    metrics = (await client.get("/metrics")).text
    assert 'labelsvc_problems_total{status="499",type="client-closed-request"} 1.0' in metrics
    assert 'status="500"' not in metrics
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_other_framework_errors_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    """A 5xx the framework raises itself is written with its traceback, as every
    unexpected error is."""
    caplog.set_level(logging.ERROR, logger="service.api.problems")
    app = Litestar(state=State({}), logging_config=None)
    scope = {
        "type": "http",
        "app": app,
        "litestar_app": app,
        "method": "GET",
        "path": "/x",
        "raw_path": b"/x",
        "query_string": b"",
        "headers": [],
        "state": {},
    }
    response = _http_exception(Request(scope), InternalServerException("boom"))  # type: ignore[arg-type]
    assert response.status_code == 500
    [line] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert line.getMessage() == "framework error on GET /x"
    assert line.exc_info is not None


async def test_oversized_request_body(client: AppClient) -> None:
    response = await client.post("/v1/labels", json={"url": "http://a/" + "x" * 100_000})
    problem = assert_problem(response, 413, "body-too-large")
    assert problem["title"] == "Request body too large"  # not the oversized image's title


@pytest.mark.parametrize(
    ("path", "status", "type_suffix"),
    [
        ("/text-as-jpeg", 415, "not-an-image"),
        ("/page.html", 415, "not-an-image"),
        ("/empty", 415, "not-an-image"),
        ("/truncated.jpg", 422, "broken-image"),
        ("/bomb.png", 413, "too-large"),
        ("/endless", 413, "too-large"),
        ("/upstream-500", 502, "upstream-error"),
        ("/photos/missing.jpg", 502, "upstream-error"),
        ("/loop-a", 502, "upstream-error"),
    ],
)
async def test_hostile_upstreams(
    make_settings: Callable[..., Settings],
    image_server: ImageServer,
    path: str,
    status: int,
    type_suffix: str,
) -> None:
    async with running(make_settings(max_image_bytes=2_000_000)) as client:
        response = await client.post("/v1/labels", json={"url": image_server.url(path)})
        assert_problem(response, status, type_suffix)
        # The process keeps serving after each failure.
        ok = await client.post("/v1/labels", json={"url": image_server.photo_url(CAT_PHOTO)})
        assert ok.status_code == 201
        metrics = (await client.get("/metrics")).text
        assert "labelsvc_fetch_failures_total" in metrics or status in (413, 415, 422)


async def test_upstream_status_is_reported(client: AppClient, image_server: ImageServer) -> None:
    response = await client.post("/v1/labels", json={"url": image_server.url("/upstream-500")})
    body = assert_problem(response, 502)
    assert body["upstream_status"] == 500


async def test_slow_upstream_times_out(
    make_settings: Callable[..., Settings], image_server: ImageServer
) -> None:
    settings = make_settings(fetch_total_timeout=1.5, fetch_read_timeout=1.0)
    async with running(settings) as client:
        started = asyncio.get_running_loop().time()
        response = await client.post("/v1/labels", json={"url": image_server.url("/drip")})
        elapsed = asyncio.get_running_loop().time() - started
        assert_problem(response, 504, "upstream-timeout")
        assert elapsed < 5


async def test_full_work_queue_answers_503_with_retry_after(
    make_settings: Callable[..., Settings], image_server: ImageServer
) -> None:
    async with running(make_settings(workers=1, max_pending=1)) as client:
        executor = client.resources.executor
        release = threading.Event()
        blocker = asyncio.create_task(executor.run(release.wait, 10))
        await asyncio.sleep(0.05)
        try:
            response = await client.post(
                "/v1/labels", json={"url": image_server.photo_url(CAT_PHOTO)}
            )
            body = assert_problem(response, 503, "overloaded")
            assert response.headers["retry-after"] == "1"
            assert "retry" in body["detail"]
            metrics = (await client.get("/metrics")).text
            assert 'labelsvc_rejected_requests_total{reason="queue_full"} 1.0' in metrics
        finally:
            release.set()
            await blocker
        recovered = await client.post("/v1/labels", json={"url": image_server.photo_url(CAT_PHOTO)})
        assert recovered.status_code == 201


async def test_unknown_route_and_method(client: AppClient) -> None:
    # The router answers these before any route runs: the same headers all the same.
    for response in (await client.get("/nope"), await client.get("/v1/labels")):
        assert response.headers["cache-control"] == "no-store"
        assert response.headers["x-content-type-options"] == "nosniff"
    assert_problem(await client.get("/nope"), 404, "not-found")
    assert_problem(await client.get("/v1/labels"), 405, "method-not-allowed")


async def test_unauthorized_names_the_scheme(client: AppClient) -> None:
    response = await client.get("/v1/records", headers={"X-API-Key": "wrong"})
    assert_problem(response, 401, "unauthorized")
    assert response.headers["www-authenticate"] == 'ApiKey header="X-API-Key"'


async def test_problems_quote_the_path_as_sent_and_not_the_query(
    client: AppClient, auth: dict[str, str]
) -> None:
    missing = await client.get("/v1/records/a%20b%3Fc", headers=auth)
    assert assert_problem(missing, 404, "record-not-found")["instance"] == "/v1/records/a%20b%3Fc"
    long_query = await client.get("/v1/records", params={"per_page": "x" * 5000}, headers=auth)
    problem = assert_problem(long_query, 400, "bad-request")
    assert problem["detail"] == "Validation failed for GET /v1/records"
    assert problem["errors"]
