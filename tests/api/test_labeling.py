"""Labeling end to end: local image server -> real models -> real database -> HTTP answer."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from PIL import Image
from pymongo import MongoClient

from service.decode.image import decode_image
from service.errors import DatabaseUnavailable
from service.lineage import current_key, is_stale
from service.settings import Settings
from service.store import records
from tests.api.test_errors import assert_problem
from tests.conftest import CAT_PHOTO, EMPTY_PHOTO, ROOT, AppClient, running
from tests.support.image_server import ImageServer, static
from tests.support.images import encode

T = TypeVar("T")


def boxes(record: dict[str, Any]) -> list[dict[str, Any]]:
    inner: list[dict[str, Any]] = record["object_analysis"][0]
    return inner


async def test_label_url_returns_the_cortex_record(
    client: AppClient, image_server: ImageServer, evalset_dir: Path
) -> None:
    url = image_server.photo_url(CAT_PHOTO)
    response = await client.post("/v1/labels", json={"url": url})
    assert response.status_code == 201, response.text
    record = response.json()

    assert re.fullmatch(r"PT::[0-9a-f]{24}", record["_id"])
    assert response.headers["location"] == f"/v1/records/{record['_id']}"
    assert record["url"] == url and record["urls"] == [url]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["datetime"])
    assert record["type"] == "image"
    assert record["object_analysis_processed"] == "true"
    assert record["pose_estimation_processed"] == "false"
    assert record["face_analysis_processed"] == "false"
    assert (record["width"], record["height"]) == (640, 371)
    photo = (evalset_dir / "images" / CAT_PHOTO).read_bytes()
    assert record["hash"] == hashlib.sha256(photo).hexdigest()
    assert 0.0 <= record["label_quality_estimation"] <= 1.0

    assert len(record["object_analysis"]) == 1
    found = boxes(record)
    assert "cat" in {b["classname"] for b in found}
    for box in found:
        assert set(box) == {"classname", "conf", "x1", "y1", "x2", "y2", "quality"}
        assert 0.0 <= box["quality"] <= 1.0
        assert all(isinstance(box[k], int) for k in ("x1", "y1", "x2", "y2"))
        assert 0 <= box["x1"] <= box["x2"] <= record["width"]
        assert 0 <= box["y1"] <= box["y2"] <= record["height"]
        assert 0.25 <= box["conf"] <= 1.0  # LABELSVC_MIN_CONFIDENCE default
    assert record["classes"] == sorted({b["classname"] for b in found})
    assert (
        record["dominant_colors"]
        and 0.99 < sum(c["fraction"] for c in record["dominant_colors"]) <= 1
    )
    detection = record["analyses"][0]
    assert detection["model"] == "yolox_nano"
    assert detection["params"]["max_detections"] == 100  # every setting that shapes the boxes


async def test_image_without_objects_is_labeled_with_no_boxes(
    client: AppClient, image_server: ImageServer
) -> None:
    response = await client.post("/v1/labels", json={"url": image_server.photo_url(EMPTY_PHOTO)})
    assert response.status_code == 201
    assert response.json()["object_analysis"] == [[]] or all(
        b["conf"] < 0.5 for b in boxes(response.json())
    )


async def test_same_bytes_from_another_url_is_the_same_record(
    client: AppClient, image_server: ImageServer, auth: dict[str, str]
) -> None:
    first = (
        await client.post("/v1/labels", json={"url": image_server.photo_url(CAT_PHOTO)})
    ).json()
    second_url = image_server.photo_url(CAT_PHOTO, alias="mirror")
    response = await client.post("/v1/labels", json={"url": second_url}, headers=auth)
    assert response.status_code == 200
    second = response.json()
    assert second["_id"] == first["_id"]
    assert second["url"] == first["url"]
    assert second["urls"] == [first["url"], second_url]
    assert second["object_analysis"] == first["object_analysis"]


async def database_operations(client: AppClient, request: Awaitable[T]) -> tuple[T, list[str]]:
    """``request``'s result, and the operations on the records it caused, in order, as
    MongoDB's profiler lists them: ``find``, ``insert``, ``findAndModify``..."""
    database = client.resources.database
    await database.drop_collection("system.profile")  # the operations of earlier calls
    await database.command("profile", 2)
    try:
        result = await request
    finally:
        await database.command("profile", 0)
    profiled = database["system.profile"].find({"ns": f"{database.name}.records"})
    return result, [next(iter(entry["command"])) async for entry in profiled]


async def test_a_url_labeled_before_is_one_read_and_no_write(
    client: AppClient, image_server: ImageServer, auth: dict[str, str]
) -> None:
    """Repeated requests are the common case: they cost one indexed read. Only a URL the
    record lacks is written to it."""
    url = image_server.photo_url(CAT_PHOTO)
    first, ops = await database_operations(client, client.post("/v1/labels", json={"url": url}))
    assert first.status_code == 201 and ops == ["find", "insert"]
    again, ops = await database_operations(client, client.post("/v1/labels", json={"url": url}))
    assert again.status_code == 200 and again.json()["_id"] == first.json()["_id"]
    assert ops == ["find"]
    mirror = image_server.photo_url(CAT_PHOTO, alias="mirror")
    added, ops = await database_operations(
        client, client.post("/v1/labels", json={"url": mirror}, headers=auth)
    )
    assert added.status_code == 200 and added.json()["urls"] == [url, mirror]
    # Not one findAndModify: a record the URL would take past 16 MiB must be told by its
    # error code, which this development database gives for update alone.
    assert ops == ["find", "update", "find"]


async def test_other_clients_urls_are_shown_only_to_keys_that_may_read(
    client: AppClient, image_server: ImageServer, auth: dict[str, str]
) -> None:
    """A URL can carry its owner's access token: a caller who sends the same bytes from
    another URL gets the analysis, not the URLs others labeled them from."""
    private = image_server.photo_url(CAT_PHOTO, alias="signed") + "&token=owner-secret"
    first = (await client.post("/v1/labels", json={"url": private})).json()
    mine = image_server.photo_url(CAT_PHOTO, alias="mine")
    for path, body in (("/v1/labels", {"url": mine}), ("/upload", {"url_or_id": mine})):
        response = await client.post(path, json=body)
        assert response.status_code == 200, response.text
        seen = response.json()
        assert "owner-secret" not in response.text
        assert (seen["_id"], seen["url"], seen["urls"]) == (first["_id"], mine, [mine])
        assert seen["object_analysis"] == first["object_analysis"]
    stored = (await client.get(f"/v1/records/{first['_id']}", headers=auth)).json()
    assert stored["urls"] == [private, mine]


async def test_looking_a_record_up_by_id_needs_a_key_that_may_read(
    client: AppClient, image_server: ImageServer
) -> None:
    """Record ids are ObjectIds, easily guessed from one's own: on an open service the id
    routes must not read out what `GET /v1/records/{id}` keeps for readers."""
    record = (
        await client.post("/v1/labels", json={"url": image_server.photo_url(CAT_PHOTO)})
    ).json()
    labeler = {"X-API-Key": await client.resources.keys.create("labeler", ["label"])}
    for path, body in (
        ("/v1/labels", {"id": record["_id"]}),
        ("/upload", {"url_or_id": record["_id"]}),
    ):
        body_401 = assert_problem(await client.post(path, json=body), 401, "unauthorized")
        assert "'read' scope" in body_401["detail"]
        body_403 = assert_problem(await client.post(path, json=body, headers=labeler), 403)
        assert "'read' scope" in body_403["detail"]
        # An id that names no record is refused the same way: existence is not revealed.
        missing = {k: "PT::0123456789abcdef01234567" for k in body}
        assert_problem(await client.post(path, json=missing), 401, "unauthorized")
    # Guessing ids shows on the dashboards like guessing keys (the 403s passed the key's
    # limits first, so they count as admitted too).
    registry = client.resources.metrics.registry
    refused = registry.get_sample_value("labelsvc_auth_failures_total", {"reason": "missing_key"})
    forbidden = {"key": "labeler", "outcome": "forbidden"}
    assert refused == 4
    assert registry.get_sample_value("labelsvc_api_key_requests_total", forbidden) == 2


async def test_a_record_keeps_a_bounded_number_of_urls(
    client: AppClient,
    image_server: ImageServer,
    auth: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(records, "MAX_URLS", 3)
    urls = [image_server.photo_url(CAT_PHOTO, alias=str(i)) for i in range(5)]
    answers = [(await client.post("/v1/labels", json={"url": u}, headers=auth)) for u in urls]
    assert [a.status_code for a in answers] == [201, 200, 200, 200, 200]
    assert answers[-1].json()["urls"] == urls[:3]  # the record is still served
    again = await client.post("/v1/labels", json={"url": urls[1]}, headers=auth)
    assert again.status_code == 200 and again.json()["_id"] == answers[0].json()["_id"]


async def test_concurrent_posts_of_one_image_create_one_record(
    client: AppClient, image_server: ImageServer, auth: dict[str, str]
) -> None:
    urls = [image_server.photo_url("000000022892.jpg", alias=str(i)) for i in range(8)]
    responses = await asyncio.gather(*(client.post("/v1/labels", json={"url": u}) for u in urls))
    assert sorted(r.status_code for r in responses) == [200] * 7 + [201]
    assert len({r.json()["_id"] for r in responses}) == 1

    query = json.dumps({"urls": urls[0]})
    page = (await client.get("/v1/records", params={"q": query}, headers=auth)).json()
    assert page["length"] == 1
    assert sorted(page["output"][0]["urls"]) == sorted(urls)


async def test_concurrent_posts_of_one_url_create_once(
    client: AppClient, image_server: ImageServer
) -> None:
    url = image_server.photo_url("000000022892.jpg")
    responses = await asyncio.gather(
        *(client.post("/v1/labels", json={"url": url}) for _ in range(4))
    )
    assert sorted(r.status_code for r in responses) == [200] * 3 + [201]
    assert len({r.json()["_id"] for r in responses}) == 1


async def test_label_by_id_returns_stored_record_without_fetching(
    client: AppClient, image_server: ImageServer, auth: dict[str, str]
) -> None:
    record = (
        await client.post("/v1/labels", json={"url": image_server.photo_url(CAT_PHOTO)})
    ).json()
    seen = len(image_server.requests)
    by_id = await client.post("/v1/labels", json={"id": record["_id"]}, headers=auth)
    assert by_id.status_code == 200
    assert by_id.json() == record
    assert len(image_server.requests) == seen


async def test_cortex_upload_accepts_url_or_id(
    client: AppClient, image_server: ImageServer, auth: dict[str, str]
) -> None:
    url = image_server.photo_url("000000403817.jpg")
    by_url = await client.post("/upload", json={"url_or_id": url})
    assert by_url.status_code == 200
    record = by_url.json()
    assert {"cat", "laptop"} <= {b["classname"] for b in record["object_analysis"][0]}
    by_id = await client.post("/upload", json={"url_or_id": record["_id"]}, headers=auth)
    assert by_id.status_code == 200 and by_id.json()["_id"] == record["_id"]


async def test_redirect_is_followed_and_original_url_recorded(
    client: AppClient, image_server: ImageServer
) -> None:
    url = image_server.url("/redirect-to-cat")
    response = await client.post("/v1/labels", json={"url": url})
    assert response.status_code in (200, 201)
    assert url in response.json()["urls"]


async def test_neural_captioner_writes_the_text_when_configured(
    make_settings: Callable[..., Settings], image_server: ImageServer, evalset_dir: Path
) -> None:
    """The tiny random-weight fixture writes text for some photos and only special tokens
    for others (the cat photo): then the grounded captioner's text stands."""
    export = ROOT / "tests" / "fixtures" / "captioners" / "vit-gpt2-tiny"
    names = ("000000000139.jpg", "000000022192.jpg", CAT_PHOTO)
    async with running(make_settings(captioner_dir=export)) as client:
        posts = (client.post("/v1/labels", json={"url": image_server.photo_url(n)}) for n in names)
        responses = await asyncio.gather(*posts)
        captioner = client.resources.models.captioner
        assert captioner is not None
        current = current_key(client.resources.pipeline.analyzer)
        metrics = (await client.get("/metrics")).text
    assert 'labelsvc_model_inference_seconds_count{model="vit-gpt2-tiny"' in metrics
    assert 'labelsvc_model_batch_size_count{model="vit-gpt2-tiny"}' in metrics
    written = 0
    for response, name in zip(responses, names, strict=True):
        record = response.json()
        image = decode_image(
            (evalset_dir / "images" / name).read_bytes(), max_pixels=50_000_000, target_size=416
        ).image
        expected = " ".join(captioner.caption([image])[0].split())
        caption = record["caption"]
        if expected:
            written += 1
            assert caption["model"] == "vit-gpt2-tiny"
            assert caption["title"].lower() == expected.lower().rstrip(".")
            assert caption["description"].lower().startswith(expected.lower())
        else:
            assert caption["model"] == "grounded-v1"
        assert 20 <= len(caption["scene_analysis"].split()) <= 40
        # The lineage names the captioner that ran, whether it wrote text or not: a record
        # it wrote nothing for is as current as the others, not relabeled again and again.
        lineage = {a["name"]: a for a in record["analyses"]}
        assert lineage["caption"]["model"] == "vit-gpt2-tiny"
        assert lineage["caption"]["sha256"] == captioner.sha256
        assert lineage["caption"]["params"]["num_beams"] == 1
        assert not is_stale(record, current)
    assert written == 2


async def test_a_failing_captioner_leaves_the_grounded_caption(
    make_settings: Callable[..., Settings],
    image_server: ImageServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The neural text is optional: a captioner that fails (out of memory for a large batch,
    say) must not cost the request its detections, tags and score."""
    export = ROOT / "tests" / "fixtures" / "captioners" / "vit-gpt2-tiny"
    async with running(make_settings(captioner_dir=export)) as client:
        captioner = client.resources.models.captioner
        assert captioner is not None

        def out_of_memory(*args: object, **kwargs: object) -> list[str]:
            raise RuntimeError("Failed to allocate memory")

        monkeypatch.setattr(captioner, "caption", out_of_memory)
        url = image_server.photo_url("000000000139.jpg", alias="failing-captioner")
        response = await client.post("/v1/labels", json={"url": url})
        assert response.status_code == 201, response.text
        record = response.json()
        assert record["caption"]["model"] == "grounded-v1" and record["object_analysis"][0]
        lineage = {a["name"]: a for a in record["analyses"]}
        assert lineage["caption"]["model"] == "grounded-v1" and lineage["caption"]["sha256"] is None
        metrics = (await client.get("/metrics")).text
    assert "labelsvc_caption_failures_total 1.0" in metrics


@pytest.mark.parametrize("urls", [None, "http://old.example/cat.jpg"])
async def test_an_imported_record_whose_urls_is_not_a_list_is_found_by_its_bytes(
    client: AppClient, image_server: ImageServer, evalset_dir: Path, urls: Any
) -> None:
    """MongoDB cannot add to a field that is not an array: the stored record is the answer
    all the same (200), not a 400 about a query the client never sent."""
    digest = hashlib.sha256((evalset_dir / "images" / CAT_PHOTO).read_bytes()).hexdigest()
    imported = {"_id": f"imported-{digest[:8]}", "url": "http://old.example/cat.jpg"}
    await client.resources.database["records"].insert_one(
        {**imported, "urls": urls, "hash": digest, "width": 640, "height": 480}
    )
    try:
        url = image_server.photo_url(CAT_PHOTO, alias="imported-urls")
        response = await client.post("/v1/labels", json={"url": url})
        assert response.status_code == 200, response.text
        assert response.json()["_id"] == imported["_id"]
    finally:
        await client.resources.database["records"].delete_one({"_id": imported["_id"]})


async def leave_during_the_analysis(client: AppClient, url: str) -> None:
    """Send a labeling request for ``url`` and go away once its analysis has started."""
    request = asyncio.create_task(client.post("/v1/labels", json={"url": url}))
    for _ in range(400):
        if client.resources.pipeline._analyses_by_hash:
            break
        await asyncio.sleep(0.005)
    request.cancel()


async def test_an_abandoned_analysis_that_cannot_be_stored_is_logged(
    client: AppClient,
    image_server: ImageServer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """When every client of an analysis has left, nobody is answered with its failure to
    store: the log must still say that the analysis was lost."""
    pipeline = client.resources.pipeline
    stored = asyncio.Event()

    async def unavailable(document: dict[str, Any]) -> dict[str, Any]:
        stored.set()
        raise DatabaseUnavailable("the database did not answer within 5 s")

    monkeypatch.setattr(pipeline._store, "insert", unavailable)
    url = image_server.photo_url(CAT_PHOTO, alias="abandoned-unstored")
    await leave_during_the_analysis(client, url)
    await pipeline.drain()
    assert stored.is_set()
    (line,) = [r for r in caplog.records if "was not stored" in r.getMessage()]
    assert line.levelname == "WARNING"
    assert "did not answer within 5 s" in line.getMessage()


async def test_shutdown_lets_an_abandoned_analysis_store_its_record(
    make_settings: Callable[..., Settings], image_server: ImageServer
) -> None:
    """A client that disconnects does not cancel its image's analysis; stopping the service
    waits for that analysis to be stored instead of closing the database under it."""
    settings = make_settings()
    url = image_server.photo_url(CAT_PHOTO, alias="abandoned")
    async with running(settings) as client:
        await leave_during_the_analysis(client, url)
    with MongoClient(settings.mongodb_uri) as mongo:
        assert mongo[settings.mongodb_db]["records"].find_one({"url": url}) is not None


async def test_a_large_jpeg_is_captioned_like_the_same_pixels_in_a_png(
    client: AppClient, image_server: ImageServer, evalset_dir: Path
) -> None:
    """A large JPEG is decoded reduced for the models: its caption's framing, placement and
    coverage must still be those of the full picture, as for a PNG decoded at full size."""
    photo = Image.open(evalset_dir / "images" / CAT_PHOTO).convert("RGB")
    big = photo.resize((photo.width * 3, photo.height * 3), Image.Resampling.BICUBIC)
    for name, fmt in (("/big.jpg", "JPEG"), ("/big.png", "PNG")):
        image_server.routes[name] = static(
            encode(big, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
        )
    jpeg, png = [
        (await client.post("/v1/labels", json={"url": image_server.url(name)})).json()
        for name in ("/big.jpg", "/big.png")
    ]
    assert (jpeg["width"], jpeg["height"]) == (png["width"], png["height"]) == big.size
    first = [record["caption"]["scene_analysis"].split(",")[0] for record in (jpeg, png)]
    assert first[0] == first[1], first  # e.g. "Close-up framing in landscape orientation"
    coverage = [re.search(r"about (\d+)%", r["caption"]["scene_analysis"]) for r in (jpeg, png)]
    assert all(coverage)
    assert abs(int(coverage[0][1]) - int(coverage[1][1])) <= 3  # type: ignore[index]


async def test_an_avif_photo_is_labeled_like_the_jpeg_it_was_made_from(
    client: AppClient, image_server: ImageServer, evalset_dir: Path
) -> None:
    """CDNs serve AVIF to clients that take it: the cat is found in one as in the JPEG."""
    photo = Image.open(evalset_dir / "images" / CAT_PHOTO).convert("RGB")
    image_server.routes["/cat.avif"] = static(encode(photo, "AVIF", quality=90), "image/avif")
    response = await client.post("/v1/labels", json={"url": image_server.url("/cat.avif")})
    assert response.status_code == 201, response.text
    record = response.json()
    assert (record["format"], record["width"], record["height"]) == ("AVIF", *photo.size)
    assert "cat" in record["classes"]
