"""Labeling an image sent as the request body: ``POST /v1/labels/upload``."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import socket
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from pymongo.asynchronous.collection import AsyncCollection

from service import admission
from service.dbserver import LocalDatabaseServer
from service.settings import Settings
from tests.api.test_errors import assert_problem
from tests.conftest import CAT_PHOTO, EMPTY_PHOTO, AppClient, running
from tests.support.image_server import ImageServer
from tests.support.images import encode
from tests.support.process import live_service

UPLOAD = "/v1/labels/upload"
JPEG = {"content-type": "image/jpeg"}


def stored_records(client: AppClient) -> AsyncCollection[dict[str, Any]]:
    return client.resources.database["records"]


def photo(evalset_dir: Path, name: str = CAT_PHOTO) -> bytes:
    return (evalset_dir / "images" / name).read_bytes()


async def test_an_uploaded_photo_is_labeled_and_stored_without_a_url(
    client: AppClient, evalset_dir: Path, auth: dict[str, str]
) -> None:
    data = photo(evalset_dir)
    response = await client.post(UPLOAD, content=data, headers=JPEG)
    assert response.status_code == 201, response.text
    record = response.json()
    assert response.headers["location"] == f"/v1/records/{record['_id']}"
    assert record["url"] is None and record["urls"] == []
    assert record["hash"] == hashlib.sha256(data).hexdigest()
    assert (record["format"], record["bytes"]) == ("JPEG", len(data))
    assert (record["width"], record["height"]) == (640, 371)
    assert "cat" in record["classes"]
    assert record["caption"]["title"] and record["image_properties"]["phash"]
    assert 0 <= record["label_quality_estimation"] <= 1
    assert {a["name"] for a in record["analyses"]} >= {"object_detection", "label_quality"}

    stored = await client.get(f"/v1/records/{record['_id']}", headers=auth)
    assert stored.json() == record
    metrics = (await client.get("/metrics")).text
    assert 'labelsvc_stage_duration_seconds_count{stage="upload"} 1.0' in metrics


async def test_the_same_bytes_again_answer_200_with_the_stored_record(
    client: AppClient, evalset_dir: Path
) -> None:
    data = photo(evalset_dir)
    first = await client.post(UPLOAD, content=data, headers=JPEG)
    again = await client.post(
        UPLOAD, content=data, headers={"content-type": "application/octet-stream"}
    )
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json() == first.json()
    assert "location" not in again.headers


async def test_a_url_serving_uploaded_bytes_becomes_the_records_url(
    client: AppClient,
    image_server: ImageServer,
    evalset_dir: Path,
) -> None:
    uploaded = (await client.post(UPLOAD, content=photo(evalset_dir), headers=JPEG)).json()
    url = image_server.photo_url(CAT_PHOTO, alias="uploaded-first")
    by_url = await client.post("/v1/labels", json={"url": url})
    assert by_url.status_code == 200, by_url.text
    assert by_url.json()["_id"] == uploaded["_id"]
    assert (by_url.json()["url"], by_url.json()["urls"]) == (url, [url])
    second = image_server.photo_url(CAT_PHOTO, alias="uploaded-second")
    await client.post("/v1/labels", json={"url": second})
    stored = await stored_records(client).find_one({"_id": uploaded["_id"]})
    assert stored is not None
    assert (stored["url"], stored["urls"]) == (url, [url, second])
    assert await stored_records(client).count_documents({}) == 1


async def test_uploading_bytes_labeled_from_a_url_shows_its_urls_to_readers_only(
    client: AppClient, image_server: ImageServer, evalset_dir: Path, auth: dict[str, str]
) -> None:
    url = image_server.photo_url(CAT_PHOTO, alias="private-token")
    created = (await client.post("/v1/labels", json={"url": url})).json()
    keyless = await client.post(UPLOAD, content=photo(evalset_dir), headers=JPEG)
    assert keyless.status_code == 200
    assert keyless.json()["_id"] == created["_id"]
    assert (keyless.json()["url"], keyless.json()["urls"]) == (None, [])
    reader = await client.post(UPLOAD, content=photo(evalset_dir), headers=JPEG | auth)
    assert (reader.json()["url"], reader.json()["urls"]) == (url, [url])


async def test_an_upload_and_a_url_of_the_same_bytes_at_once_make_one_record(
    client: AppClient,
    image_server: ImageServer,
    evalset_dir: Path,
) -> None:
    url = image_server.photo_url(EMPTY_PHOTO, alias="together")
    uploaded, fetched = await asyncio.gather(
        client.post(UPLOAD, content=photo(evalset_dir, EMPTY_PHOTO), headers=JPEG),
        client.post("/v1/labels", json={"url": url}),
    )
    assert sorted([uploaded.status_code, fetched.status_code]) == [200, 201]
    assert uploaded.json()["_id"] == fetched.json()["_id"]
    (stored,) = await stored_records(client).find({}).to_list()
    assert stored["urls"] == [url] and stored["url"] == url


async def test_relabel_stale_labels_stale_records_again_from_the_upload(
    client: AppClient, evalset_dir: Path, auth: dict[str, str]
) -> None:
    """The service keeps no bytes: a record made from an upload is brought up to date after a
    model change by uploading its bytes again with relabel=stale."""
    data = photo(evalset_dir)
    record = (await client.post(UPLOAD, content=data, headers=JPEG)).json()
    current = record["analyses"]
    # As if labeled by an older detector: other version, other boxes.
    old = [{**current[0], "version": "000000000000"}, *current[1:]]
    await stored_records(client).update_one(
        {"_id": record["_id"]},
        {"$set": {"analyses": old, "object_analysis": [[]], "classes": []}},
    )
    again = await client.post(UPLOAD, content=data, headers=JPEG)
    assert (again.status_code, again.json()["classes"]) == (200, [])  # no relabel asked
    relabeled = await client.post(UPLOAD, params={"relabel": "stale"}, content=data, headers=JPEG)
    assert relabeled.status_code == 200, relabeled.text
    fresh = relabeled.json()
    assert fresh["_id"] == record["_id"] and "cat" in fresh["classes"]
    assert fresh["datetime"] == record["datetime"] and fresh["hash"] == record["hash"]
    assert fresh["analyses"][0]["version"] == current[0]["version"]
    assert fresh["analyses"][0]["processed_at"] > current[0]["processed_at"]
    stored = await client.get(f"/v1/records/{record['_id']}", headers=auth)
    assert stored.json() == fresh
    # Up to date now: asked again, nothing is analysed.
    unchanged = await client.post(UPLOAD, params={"relabel": "stale"}, content=data, headers=JPEG)
    assert unchanged.json() == fresh
    metrics = (await client.get("/metrics")).text
    assert "labelsvc_records_relabeled_total 1.0" in metrics
    refused = await client.post(UPLOAD, params={"relabel": "always"}, content=data, headers=JPEG)
    assert_problem(refused, 400)


def metric_value(text: str, name: str) -> float:
    return next(
        (float(line.split()[1]) for line in text.splitlines() if line.startswith(name + " ")), 0.0
    )


@pytest.mark.parametrize("deleted", ["before_the_rewrite", "after_the_rewrite"])
async def test_a_record_deleted_under_a_relabel_is_made_afresh_and_counted_once(
    client: AppClient,
    evalset_dir: Path,
    auth: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    deleted: str,
) -> None:
    """A DELETE from another client lands as an upload relabels the record: before its
    write, or right after it (before the answer is read back). Either way the bytes are
    labeled afresh (201), and the request counts as a new record only."""
    data = photo(evalset_dir)
    record = (await client.post(UPLOAD, content=data, headers=JPEG)).json()
    current = record["analyses"]
    old = [{**current[0], "version": "000000000000"}, *current[1:]]
    await stored_records(client).update_one({"_id": record["_id"]}, {"$set": {"analyses": old}})
    store = client.resources.pipeline._store
    replace_labels = store.replace_labels

    async def raced(*args: Any, **kwargs: Any) -> bool:
        if deleted == "before_the_rewrite":
            await stored_records(client).delete_one({"_id": record["_id"]})
        written = await replace_labels(*args, **kwargs)
        if deleted == "after_the_rewrite":
            await stored_records(client).delete_one({"_id": record["_id"]})
        return written

    monkeypatch.setattr(store, "replace_labels", raced)
    before = (await client.get("/metrics")).text
    answer = await client.post(UPLOAD, params={"relabel": "stale"}, content=data, headers=JPEG)
    assert answer.status_code == 201, answer.text
    (stored,) = await stored_records(client).find({}).to_list()
    assert stored["_id"] == answer.json()["_id"] != record["_id"]
    after = (await client.get("/metrics")).text
    counted = {
        name: metric_value(after, name) - metric_value(before, name)
        for name in ("labelsvc_records_created_total", "labelsvc_records_deduplicated_total")
    }
    assert counted == {
        "labelsvc_records_created_total": 1,
        "labelsvc_records_deduplicated_total": 0,
    }


async def test_relabel_stale_of_an_imported_record_keeps_its_url_in_urls(
    client: AppClient, evalset_dir: Path
) -> None:
    """An imported record with a url and no urls gets urls when labeled again, as records
    have them now: its url, which stays, not the upload's lack of one."""
    data = photo(evalset_dir)
    url = "https://old.example/cat.jpg"
    await stored_records(client).insert_one(
        {
            "_id": "imported-1",
            "url": url,
            "datetime": "2020-01-01T00:00:00.000Z",
            "type": "image",
            "hash": hashlib.sha256(data).hexdigest(),
            "width": 640,
            "height": 371,
            "object_analysis_processed": "true",
            "object_analysis": [[]],
            "label_quality_estimation": 0.5,
        }
    )
    relabeled = await client.post(UPLOAD, params={"relabel": "stale"}, content=data, headers=JPEG)
    assert relabeled.status_code == 200, relabeled.text
    stored = await stored_records(client).find_one({"_id": "imported-1"})
    assert stored is not None and "cat" in stored["classes"]
    assert (stored["url"], stored["urls"]) == (url, [url])


@pytest.mark.parametrize(
    ("headers", "detail"),
    [
        ({"content-type": "text/plain"}, "not text/plain"),
        ({"content-type": "application/json"}, "not application/json"),
        ({"content-type": "multipart/form-data; boundary=x"}, "not multipart/form-data"),
        ({}, "without a Content-Type"),
    ],
)
async def test_other_media_types_are_refused_with_415(
    client: AppClient,
    evalset_dir: Path,
    headers: dict[str, str],
    detail: str,
) -> None:
    response = await client.post(UPLOAD, content=photo(evalset_dir), headers=headers)
    body = assert_problem(response, 415, "unsupported-body")
    assert body["reason"] == "content_type" and detail in body["detail"]
    assert "JSON" not in body["title"]  # one title for the type, on JSON and image routes
    assert await stored_records(client).count_documents({}) == 0


async def test_a_content_coding_is_refused(client: AppClient, evalset_dir: Path) -> None:
    response = await client.post(
        UPLOAD, content=photo(evalset_dir), headers=JPEG | {"content-encoding": "gzip"}
    )
    assert assert_problem(response, 415, "unsupported-body")["reason"] == "content_encoding"


async def test_an_empty_body_is_a_bad_request(client: AppClient) -> None:
    response = await client.post(UPLOAD, content=b"", headers=JPEG)
    assert "empty" in assert_problem(response, 400, "bad-request")["detail"]


async def test_bytes_that_are_not_an_image_or_are_broken(
    client: AppClient, evalset_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="service.pipeline")
    text = await client.post(UPLOAD, content=b"hello, I am text", headers=JPEG)
    assert_problem(text, 415, "not-an-image")
    data = photo(evalset_dir)
    truncated = await client.post(UPLOAD, content=data[: len(data) // 3], headers=JPEG)
    assert_problem(truncated, 422, "broken-image")
    assert await stored_records(client).count_documents({}) == 0
    # The client was told; the log keeps a line of each, but not among the warnings.
    unstored = [r for r in caplog.records if "was not stored" in r.getMessage()]
    assert [r.levelname for r in unstored] == ["INFO", "INFO"]


async def test_a_png_labels_like_any_other_format(client: AppClient, evalset_dir: Path) -> None:
    with Image.open(evalset_dir / "images" / CAT_PHOTO) as image:
        png = encode(image.convert("RGB"), "PNG")
    response = await client.post(UPLOAD, content=png, headers={"content-type": "image/png"})
    assert response.status_code == 201, response.text
    assert response.json()["format"] == "PNG" and "cat" in response.json()["classes"]


async def _chunks(data: bytes, size: int, pause: float = 0.0) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        if pause:
            await asyncio.sleep(pause)
        yield data[start : start + size]


async def test_an_image_over_the_byte_cap_is_refused_declared_or_streamed(
    make_settings: Callable[..., Settings], evalset_dir: Path
) -> None:
    data = photo(evalset_dir)
    async with running(make_settings(max_image_bytes=len(data))) as client:
        declared = await client.post(UPLOAD, content=data + b"x", headers=JPEG)
        body = assert_problem(declared, 413, "too-large")
        assert (body["reason"], body["max_bytes"]) == ("too_large", len(data))
        streamed = await client.post(UPLOAD, content=_chunks(data + b"x", 16384), headers=JPEG)
        assert "content-length" not in streamed.request.headers
        assert assert_problem(streamed, 413, "too-large")["max_bytes"] == len(data)
        at_the_cap = await client.post(UPLOAD, content=_chunks(data, 16384), headers=JPEG)
        assert at_the_cap.status_code == 201, at_the_cap.text


async def test_an_upload_that_takes_too_long_gets_408(
    make_settings: Callable[..., Settings], evalset_dir: Path
) -> None:
    async with running(make_settings(fetch_total_timeout=0.5)) as client:
        response = await client.post(
            UPLOAD, content=_chunks(photo(evalset_dir), 4096, pause=0.1), headers=JPEG
        )
        assert assert_problem(response, 408, "request-timeout")["reason"] == "timeout"
        assert client.resources.pipeline.admitted == 0


async def test_a_slow_upload_gives_its_slot_to_a_new_request_at_capacity(
    make_settings: Callable[..., Settings],
    evalset_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(admission, "SLOW_FETCH_SECONDS", 0.3)
    data = photo(evalset_dir)
    async with running(make_settings(max_inflight=1)) as client:
        slow = asyncio.create_task(
            client.post(UPLOAD, content=_chunks(data, 1024, pause=0.1), headers=JPEG)
        )
        await asyncio.sleep(0.5)
        fast = await client.post(UPLOAD, content=photo(evalset_dir, EMPTY_PHOTO), headers=JPEG)
        assert fast.status_code == 201, fast.text
        body = assert_problem(await slow, 408, "request-timeout")
        assert body["reason"] == "evicted"


async def test_a_full_queue_refuses_before_reading_the_body(
    make_settings: Callable[..., Settings], evalset_dir: Path
) -> None:
    read = 0

    async def counted() -> AsyncIterator[bytes]:
        nonlocal read
        async for chunk in _chunks(photo(evalset_dir), 4096):
            read += len(chunk)
            yield chunk

    async with running(make_settings(workers=1, max_pending=3)) as client:
        executor = client.resources.executor
        release = threading.Event()
        blockers = [asyncio.create_task(executor.run(release.wait, 10)) for _ in range(3)]
        await asyncio.sleep(0.05)
        try:
            response = await client.post(UPLOAD, content=counted(), headers=JPEG)
            assert assert_problem(response, 503, "overloaded")["reason"] == "queue_full"
            assert read == 0
        finally:
            release.set()
            await asyncio.gather(*blockers)


async def test_labeling_that_requires_a_key_requires_it_for_uploads(
    make_settings: Callable[..., Settings], evalset_dir: Path, auth: dict[str, str]
) -> None:
    async with running(make_settings(labeling_requires_key=True)) as client:
        refused = await client.post(UPLOAD, content=photo(evalset_dir), headers=JPEG)
        assert_problem(refused, 401, "unauthorized")
        allowed = await client.post(UPLOAD, content=photo(evalset_dir), headers=JPEG | auth)
        assert allowed.status_code == 201


def test_over_a_real_server_the_service_keeps_serving_after_cut_and_refused_uploads(
    db_server: LocalDatabaseServer, evalset_dir: Path
) -> None:
    """uvicorn, not the test transport: a client that leaves mid-upload, and one refused
    before its body was read, leave the service answering on the same port; a client that
    waits for 100 Continue is refused before it sends a byte of the body."""
    data = photo(evalset_dir)
    with live_service(
        mongodb_uri=db_server.uri,
        mongodb_db="upload_live",
        max_image_bytes=str(len(data)),
        log_level="warning",
    ) as (base, _):
        host, port = base.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port))) as cut:
            cut.sendall(
                f"POST {UPLOAD} HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                f"Content-Length: {len(data)}\r\n\r\n".encode()
                + data[:1000]
            )
        with httpx.Client(base_url=base, timeout=30) as http:
            too_large = http.post(UPLOAD, content=data + b"x", headers=JPEG)
            assert_problem(too_large, 413, "too-large")
            labeled = http.post(UPLOAD, content=data, headers=JPEG)
            assert labeled.status_code == 201, labeled.text
            assert http.post(UPLOAD, content=data, headers=JPEG).status_code == 200
        # As curl sends large bodies: the headers first, the body only after 100 Continue,
        # which a refused upload never gets.
        head = (
            f"POST {UPLOAD} HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
            "Expect: 100-continue\r\nContent-Length: {}\r\n\r\n"
        )
        with socket.create_connection((host, int(port)), timeout=30) as expecting:
            expecting.sendall(head.format(len(data) + 1).encode())
            assert expecting.recv(65536).startswith(b"HTTP/1.1 413 ")
        with socket.create_connection((host, int(port)), timeout=30) as expecting:
            expecting.sendall(head.format(len(data)).encode())
            assert expecting.recv(65536) == b"HTTP/1.1 100 Continue\r\n\r\n"
            expecting.sendall(data)
            assert expecting.recv(65536).startswith(b"HTTP/1.1 200 ")
