"""``python -m service relabel``: stored records labeled again after a model change."""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path
from typing import Any

import bson
import pytest
from bson import ObjectId
from pymongo.collection import Collection

from service.__main__ import main
from service.lineage import is_stale, lineage_key
from service.relabel_cli import run_relabel_command
from service.settings import Settings
from service.store.walk import FROM_START
from tests.conftest import CAT_PHOTO, AppClient, running
from tests.support.image_server import ImageServer

OTHER_PHOTO = "000000000139.jpg"  # a dining room: chairs, a tv, people
OLD = "2020-01-01T00:00:00.000Z"


async def relabel(
    settings: Settings, capsys: pytest.CaptureFixture[str], *, dry_run: bool = False, code: int = 0
) -> dict[str, Any]:
    args = argparse.Namespace(batch_size=2, concurrency=None, after=FROM_START, dry_run=dry_run)
    capsys.readouterr()
    assert await run_relabel_command(settings, args) == code
    output = capsys.readouterr()
    summary: dict[str, Any] = json.loads(output.out.splitlines()[-1])
    summary["stderr"] = output.err
    return summary


async def label(settings: Settings, url: str) -> dict[str, Any]:
    """A record as the service writes it now."""
    client: AppClient
    async with running(settings) as client:
        response = await client.post("/v1/labels", json={"url": url})
        assert response.status_code == 201
        record: dict[str, Any] = response.json()
        return record


def without_times(analyses: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in a.items() if k != "processed_at"} for a in analyses]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def test_stale_records_are_labeled_again_in_place(
    settings: Settings,
    records: Collection[dict[str, Any]],
    image_server: ImageServer,
    evalset_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A record made with other detector weights and an imported one without lineage get the
    labels the service gives now; their ids, URLs, first-seen times and hashes stay, as do an
    imported record's fields of analyses this service does not run. Up-to-date records are
    left alone, a dry run writes nothing, and a second run finds nothing to do."""
    url = image_server.photo_url(CAT_PHOTO)
    current = await label(settings, url)
    other_url = image_server.photo_url(CAT_PHOTO, alias="mirror")
    old_weights = [
        {**a, "sha256": "0" * 64} if a["name"] == "object_detection" else a
        for a in current["analyses"]
    ]
    records.update_one(
        {"_id": current["_id"]},
        {
            "$set": {
                "analyses": old_weights,
                "object_analysis": [[]],
                "classes": [],
                "label_quality_estimation": 0.0,
                "urls": [url, other_url],
                "datetime": OLD,
            }
        },
    )
    imported = {
        "_id": "PT::" + "1" * 24,
        "url": image_server.photo_url(OTHER_PHOTO),
        "hash": sha256(evalset_dir / "images" / OTHER_PHOTO),
        "datetime": OLD,
        "type": "image",
        "object_analysis_processed": "true",
        "face_analysis_processed": "true",
        "face_analysis": [{"age": 30}],
        "object_analysis": [[{"classname": "dog", "conf": 0.9}]],
        "label_quality_estimation": 0.9,
    }
    records.insert_one(imported)
    before = list(records.find().sort("_id"))

    dry = await relabel(settings, capsys, dry_run=True)
    assert (dry["scanned"], dry["stale"], dry["relabeled"]) == (2, 2, 0)
    assert list(records.find().sort("_id")) == before

    done = await relabel(settings, capsys)
    assert {k: done[k] for k in ("scanned", "stale", "relabeled", "unreachable", "changed")} == {
        "scanned": 2,
        "stale": 2,
        "relabeled": 2,
        "unreachable": 0,
        "changed": 0,
    }
    assert done["last_id"] == max(current["_id"], imported["_id"])
    assert '"scanned": 2' in done["stderr"]  # the progress line of the one batch

    relabeled = records.find_one({"_id": current["_id"]})
    assert relabeled is not None
    for kept, value in {"urls": [url, other_url], "datetime": OLD, "hash": current["hash"]}.items():
        assert relabeled[kept] == value
    for field in ("object_analysis", "classes", "label_quality_estimation", "caption", "tags"):
        assert relabeled[field] == current[field], field
    assert without_times(relabeled["analyses"]) == without_times(current["analyses"])
    assert all(a["processed_at"] > current["datetime"] for a in relabeled["analyses"])

    other = records.find_one({"_id": imported["_id"]})
    assert other is not None
    for kept in ("url", "hash", "datetime", "face_analysis_processed", "face_analysis"):
        assert other[kept] == imported[kept], kept
    assert other["urls"] == [imported["url"]]  # made by the relabeling, as the service writes
    assert "chair" in other["classes"] and "dog" not in other["classes"]
    assert without_times(other["analyses"]) == without_times(current["analyses"])

    again = await relabel(settings, capsys)
    assert (again["scanned"], again["stale"], again["relabeled"]) == (2, 0, 0)


async def test_records_whose_bytes_cannot_be_had_again_are_left_as_they_are(
    settings: Settings,
    records: Collection[dict[str, Any]],
    image_server: ImageServer,
    evalset_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Each outcome other than a relabeling is counted and changes nothing: a URL that is
    gone, bytes only ever uploaded (no URL at all), a URL that serves other bytes now, a
    record with no hash to check bytes against, and bytes the analysis refuses (a failure,
    named on stderr, exit status 1)."""
    cat = sha256(evalset_dir / "images" / CAT_PHOTO)
    text = hashlib.sha256(b"hello, I am text").hexdigest()
    stale = [
        {"_id": "PT::a", "url": image_server.url("/gone.jpg"), "hash": cat},
        {"_id": "PT::b", "urls": [image_server.photo_url(CAT_PHOTO)], "hash": "f" * 64},
        {"_id": "PT::c", "url": image_server.photo_url(CAT_PHOTO)},
        {"_id": "PT::d", "url": image_server.url("/text-as-jpeg"), "hash": text},
        {
            "_id": "PT::e",
            "url": None,
            "urls": [],
            "hash": sha256(evalset_dir / "images" / OTHER_PHOTO),
        },
    ]
    records.insert_many([{**r, "datetime": OLD, "object_analysis": [[]]} for r in stale])
    before = list(records.find().sort("_id"))

    done = await relabel(settings, capsys, code=1)

    assert list(records.find().sort("_id")) == before
    assert {k: done[k] for k in ("scanned", "stale", "relabeled", "unreachable", "changed")} == {
        "scanned": 5,
        "stale": 5,
        "relabeled": 0,
        "unreachable": 2,
        "changed": 1,
    }
    assert (done["unverifiable"], done["failed"], done["failed_ids"]) == (1, 1, ["PT::d"])
    assert 'error: record "PT::d" not relabeled: the content is not an image' in done["stderr"]


async def test_a_dry_run_writes_nothing_not_even_indexes(
    settings: Settings, records: Collection[dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    """Counting on a database the service has not opened yet: building its indexes (the
    unique one on a large import takes long) is the service's, not a look's."""
    records.insert_one({"_id": "PT::a", "url": "http://images.example/a.jpg", "hash": "a" * 64})
    dry = await relabel(settings, capsys, dry_run=True)
    assert (dry["scanned"], dry["stale"]) == (1, 1)
    assert list(records.index_information()) == ["_id_"]
    assert records.database.list_collection_names() == ["records"]


async def test_a_record_the_database_will_not_rewrite_is_skipped(
    settings: Settings,
    records: Collection[dict[str, Any]],
    image_server: ImageServer,
    evalset_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An imported record near 16 MiB cannot take the new labels: it is a failure, named
    on stderr, and the walk goes on to the next record; an upload of its bytes with
    ?relabel=stale gets 409 for it, not 500."""
    photo = evalset_dir / "images" / CAT_PHOTO

    def stale(i: int, name: str) -> dict[str, Any]:
        url = image_server.photo_url(name, alias=f"big-{i}")
        digest = sha256(evalset_dir / "images" / name)
        return {"_id": f"PT::{i}", "url": url, "urls": [url], "hash": digest, "datetime": OLD}

    full = stale(0, CAT_PHOTO)
    full["blob"] = "x" * (16 * 1024 * 1024 - 64 - len(bson.encode(full)))
    records.insert_many([full, stale(1, OTHER_PHOTO)])

    done = await relabel(settings, capsys, code=1)
    assert (done["relabeled"], done["failed"], done["failed_ids"]) == (1, 1, ["PT::0"])
    assert "16 MiB document limit" in done["stderr"]
    assert "chair" in records.find_one({"_id": "PT::1"})["classes"]  # type: ignore[index]

    client: AppClient
    async with running(settings) as client:
        response = await client.post(
            "/v1/labels/upload",
            params={"relabel": "stale"},
            content=photo.read_bytes(),
            headers={"content-type": "image/jpeg"},
        )
    assert response.status_code == 409, response.text
    assert response.json()["type"].endswith("/record-too-large")
    assert response.json()["reason"] == "document_limit"


def test_lineage_ignores_when_and_where_a_model_ran() -> None:
    """Records labeled on a GPU, or at another time, are not stale; other weights, versions
    or settings are."""
    entry = {
        "name": "object_detection",
        "model": "yolox_nano",
        "version": "1",
        "sha256": "ab",
        "params": {"input_size": 416, "provider": "CUDAExecutionProvider"},
        "processed_at": "2026-01-01T00:00:00.000Z",
    }
    current = lineage_key([{**entry, "params": {"input_size": 416, "provider": "CPU"}}])
    assert not is_stale({"analyses": [{**entry, "processed_at": OLD}]}, current)
    for changed in ({"sha256": "cd"}, {"version": "2"}, {"params": {"input_size": 640}}):
        assert is_stale({"analyses": [{**entry, **changed}]}, current), changed
    assert is_stale({"analyses": [entry, {**entry, "name": "caption"}]}, current)
    assert is_stale({}, current) and is_stale({"analyses": "yolox"}, current)


@pytest.mark.parametrize(
    "odd",
    [
        {"params": ["input_size", 416]},
        {"params": "input_size=416"},
        {"sha256": ["ab", "cd"]},
        {"sha256": {"hex": "ab"}},
        {"params": {"input_size": ObjectId()}},
    ],
)
def test_a_lineage_of_another_shape_is_stale(odd: dict[str, Any]) -> None:
    """Entries imported or edited by hand: the record is labeled again, not the walk
    stopped (nor an upload with ?relabel=stale answered 500)."""
    entry = {"name": "object_detection", "model": "yolox_nano", "version": "1", "sha256": "ab"}
    current = lineage_key([entry])
    assert not is_stale({"analyses": [entry]}, current)
    assert is_stale({"analyses": [{**entry, **odd}]}, current)


def test_relabel_refuses_a_bad_concurrency(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["relabel", "--concurrency", "0"])
    assert exited.value.code == 2
    assert "0 is not between 1 and 64" in capsys.readouterr().err
