"""The record store against the real database server: writes that race other writers, and
records as imported."""

from __future__ import annotations

from typing import Any

import bson
import pytest

from service.domain.records import new_record_id
from service.errors import RecordTooLarge
from service.store.records import RecordStore
from tests.conftest import AppClient


def _record(digest: str, url: str) -> dict[str, Any]:
    return {"_id": new_record_id(), "hash": digest, "url": url, "urls": [url]}


async def test_insert_after_the_record_with_these_bytes_was_deleted(client: AppClient) -> None:
    """The bytes were stored (duplicate key) but their record is deleted before the URL can
    be added to it: the insert tries again, and stores the new record."""
    store: RecordStore = client.resources.records
    records = client.resources.database["records"]
    digest = "e" * 64
    await records.insert_one(_record(digest, "http://a.example/1.jpg"))
    remember = store.remember_url

    async def deleted_in_between(found_digest: str, url: str) -> dict[str, Any] | None:
        await records.delete_one({"hash": found_digest})
        return await remember(found_digest, url)

    store.remember_url = deleted_in_between  # type: ignore[method-assign]
    mine = _record(digest, "http://b.example/2.jpg")
    stored = await store.insert(mine)
    assert stored["_id"] == mine["_id"]
    assert [d["_id"] async for d in records.find({"hash": digest})] == [mine["_id"]]


async def test_an_imported_record_without_urls_gets_them_with_its_own_url_first(
    client: AppClient, caplog: pytest.LogCaptureFixture
) -> None:
    """Records imported with a url alone: $addToSet makes the missing array."""
    store: RecordStore = client.resources.records
    records = client.resources.database["records"]
    digest = "f" * 64
    await records.insert_one({"_id": "imported-1", "hash": digest, "url": "http://a.example/1"})
    stored = await store.remember_url(digest, "http://b.example/2")
    assert stored is not None
    assert stored["url"] == "http://a.example/1"
    assert stored["urls"] == ["http://a.example/1", "http://b.example/2"]
    assert "no URL added" not in caplog.text
    await records.insert_one({"_id": "imported-2", "hash": "d" * 64, "url": "http://c.example/3"})
    stored = await store.remember_url("d" * 64, "http://c.example/3")
    assert stored is not None and stored["urls"] == ["http://c.example/3"]


async def test_a_relabel_keeps_a_url_added_since_it_read_the_record(client: AppClient) -> None:
    """The relabel of a record imported without urls adds its url to them, so a URL that
    a request added in between stays."""
    store: RecordStore = client.resources.records
    records = client.resources.database["records"]
    digest = "c" * 64
    await records.insert_one({"_id": "imported-3", "hash": digest, "url": "http://a.example/1"})
    await store.remember_url(digest, "http://b.example/2")  # after the relabel read it
    assert await store.replace_labels(
        "imported-3", digest, {"width": 1}, urls=["http://a.example/1"]
    )
    stored = await records.find_one({"_id": "imported-3"})
    assert stored is not None
    assert (stored["width"], stored["urls"]) == (1, ["http://a.example/1", "http://b.example/2"])


async def test_a_record_at_the_size_limit_is_served_but_takes_nothing_more(
    client: AppClient, caplog: pytest.LogCaptureFixture
) -> None:
    """An imported record near 16 MiB: the database refuses to make it larger. A new URL
    is not kept (the record is the answer all the same) and new labels are refused with a
    clear error instead of a 500."""
    store: RecordStore = client.resources.records
    records = client.resources.database["records"]
    digest = "b" * 64
    full: dict[str, Any] = {"_id": "imported-4", "hash": digest, "url": "u", "urls": ["u"]}
    full["blob"] = "x" * (16 * 1024 * 1024 - 64 - len(bson.encode(full)))
    await records.insert_one(full)
    stored = await store.remember_url(digest, "http://b.example/" + "x" * 200)
    assert stored is not None and stored["urls"] == ["u"]
    assert "at the size limit, no URL added" in caplog.text
    with pytest.raises(RecordTooLarge) as refused:
        await store.replace_labels("imported-4", digest, {"caption": "y" * 1000})
    assert (refused.value.status, refused.value.extra) == (409, {"reason": "document_limit"})
