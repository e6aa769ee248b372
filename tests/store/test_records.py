"""The record store against the real database server: inserts that race other writers."""

from __future__ import annotations

from typing import Any

from service.domain.records import new_record_id
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
