"""A URL labeled before whose host gave a strong ETag: asked for with If-None-Match, and on
304 Not Modified answered with its record, the image not downloaded again."""

from __future__ import annotations

import uuid

from tests.api.test_labeling import database_operations
from tests.conftest import CAT_PHOTO, AppClient
from tests.support.image_server import ImageServer, tagged

OTHER_PHOTO = "000000403817.jpg"


def serve(image_server: ImageServer, name: str, etag: str) -> str:
    """A new URL serving the evalset photo ``name`` with ``etag``."""
    path = f"/tagged/{uuid.uuid4().hex}.jpg"
    image_server.routes[path] = tagged((image_server.photos / name).read_bytes(), etag)
    return image_server.url(path)


def conditions(image_server: ImageServer, url: str) -> list[str | None]:
    """The If-None-Match of each request the image host got for ``url``, in order."""
    path = url.removeprefix(image_server.base)
    return [headers.get("If-None-Match") for p, headers in image_server.requests if p == path]


def not_modified(client: AppClient) -> float | None:
    registry = client.resources.metrics.registry
    return registry.get_sample_value("labelsvc_fetches_not_modified_total")


async def test_a_url_labeled_before_is_not_downloaded_again(
    client: AppClient, image_server: ImageServer
) -> None:
    url = serve(image_server, CAT_PHOTO, '"cat-v1"')
    first = await client.post("/v1/labels", json={"url": url})
    assert first.status_code == 201, first.text
    again, ops = await database_operations(client, client.post("/v1/labels", json={"url": url}))
    assert again.status_code == 200 and again.json() == first.json()
    assert conditions(image_server, url) == [None, '"cat-v1"']
    assert ops == ["find"]
    assert not_modified(client) == 1


async def test_new_bytes_at_the_url_are_labeled(
    client: AppClient, image_server: ImageServer
) -> None:
    """The host answers the old tag with other bytes and a new tag: a new record, and the new
    tag is the one asked with next time."""
    url = serve(image_server, CAT_PHOTO, '"v1"')
    first = (await client.post("/v1/labels", json={"url": url})).json()
    path = url.removeprefix(image_server.base)
    image_server.routes[path] = tagged((image_server.photos / OTHER_PHOTO).read_bytes(), '"v2"')
    changed = await client.post("/v1/labels", json={"url": url})
    assert changed.status_code == 201 and changed.json()["_id"] != first["_id"]
    again = await client.post("/v1/labels", json={"url": url})
    assert again.status_code == 200 and again.json()["_id"] == changed.json()["_id"]
    assert conditions(image_server, url) == [None, '"v1"', '"v2"']
    assert not_modified(client) == 1


async def test_bytes_whose_record_was_deleted_are_downloaded_and_labeled_afresh(
    client: AppClient, image_server: ImageServer, auth: dict[str, str]
) -> None:
    url = serve(image_server, CAT_PHOTO, '"v1"')
    first = (await client.post("/v1/labels", json={"url": url})).json()
    deleted = await client.delete(f"/v1/records/{first['_id']}", headers=auth)
    assert deleted.status_code == 204
    again = await client.post("/v1/labels", json={"url": url})
    assert again.status_code == 201 and again.json()["_id"] != first["_id"]
    # Not modified, but the bytes were needed: asked for again without the tag.
    assert conditions(image_server, url) == [None, '"v1"', None]
    assert not_modified(client) == 0


async def test_a_weak_tag_is_not_revalidated(client: AppClient, image_server: ImageServer) -> None:
    """A weak tag may stay the same for other bytes that mean the same to the host; a record
    is the labels of exact bytes, so they are downloaded and hashed again."""
    url = serve(image_server, CAT_PHOTO, 'W/"v1"')
    first = (await client.post("/v1/labels", json={"url": url})).json()
    again = await client.post("/v1/labels", json={"url": url})
    assert again.status_code == 200 and again.json()["_id"] == first["_id"]
    assert conditions(image_server, url) == [None, None]
