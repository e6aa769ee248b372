"""The backfill of derived fields, against the real database server."""

from __future__ import annotations

import json
from typing import Any

import bson
import pytest
from bson import ObjectId
from pymongo.collection import Collection

import service.__main__ as cli_module
from service.__main__ import main
from service.query.derived import DERIVED_FIELDS, derive_from_document
from service.settings import Settings
from service.store import backfill as backfill_module
from service.store import walk as walk_module
from service.walk_cli import batch_deadline
from tests.support.held import never_answers

PHASH = "9f3a04c2ffee0123"
MAX_BSON_SIZE = 16 * 1024 * 1024  # MongoDB's limit on a document


def old_record(i: int, classname: str) -> dict[str, Any]:
    """A record as an older version (or a Cortex export) stored it: no derived fields."""
    return {
        "_id": f"PT::{i:024d}",
        "url": f"https://images.example/{i}.jpg",
        "hash": f"{i:064x}",
        "object_analysis": [[{"classname": classname, "conf": 0.8, "x1": 1, "y1": 2}]],
        "tags": [{"name": "outdoor", "conf": 0.6}],
        "caption": {"title": f"A {classname}", "description": f"A {classname} outdoors"},
        "image_properties": {"phash": PHASH},
    }


def content(document: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in document.items() if k not in DERIVED_FIELDS}


def backfill(
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    *args: str,
    code: int = 0,
) -> dict[str, Any]:
    monkeypatch.setenv("LABELSVC_MONGODB_URI", settings.mongodb_uri or "")
    monkeypatch.setenv("LABELSVC_MONGODB_DB", settings.mongodb_db)
    capsys.readouterr()
    assert main(["backfill", *args]) == code
    output = capsys.readouterr()
    summary: dict[str, Any] = json.loads(output.out.splitlines()[-1])
    summary["stderr"] = output.err
    return summary


def test_backfill_fills_fixes_and_is_idempotent(
    settings: Settings,
    records: Collection[dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    records.insert_many([old_record(i, "cat" if i % 2 else "dog") for i in range(7)])
    stale = old_record(7, "horse") | {"classes": ["horse"], "keywords": ["horse", "stale"]}
    current = old_record(8, "bird")
    current |= derive_from_document(current)
    records.insert_many([stale, current])
    before = {d["_id"]: d for d in records.find()}

    dry = backfill(settings, monkeypatch, capsys, "--dry-run", "--batch-size", "4")
    assert "missing indexes (a run without --dry-run creates them)" in dry.pop("stderr")
    assert dry == {
        "scanned": 9,
        "updated": 8,
        "last_id": current["_id"],
        "dry_run": True,
        "done": True,
    }
    assert {d["_id"]: d for d in records.find()} == before  # nothing written
    assert list(records.index_information()) == ["_id_"]  # no index built either

    done = backfill(settings, monkeypatch, capsys, "--batch-size", "4")
    assert (done["scanned"], done["updated"], done["done"]) == (9, 8, True)
    for document in records.find():
        assert {k: document[k] for k in DERIVED_FIELDS} == derive_from_document(document)
        assert content(document) == content(before[document["_id"]])
    assert records.find_one({"_id": stale["_id"]}, {"keywords": 1})["keywords"].count("stale") == 0
    assert records.count_documents({"classes": "cat"}) == 3
    assert records.count_documents({"keywords": "outdoor"}) == 9

    again = backfill(settings, monkeypatch, capsys)
    assert (again["scanned"], again["updated"]) == (9, 0)


@pytest.mark.parametrize("missing", [None, "tags", "image_properties"])
def test_a_record_relabeled_while_backfilled_keeps_the_relabel_s_fields(
    settings: Settings,
    records: Collection[dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    missing: str | None,
) -> None:
    """A relabel between the backfill's read and its write writes labels and their derived
    fields together: the backfill, which derived its fields from the old labels, must not
    write over them (a record that says dog and is found as cat). The records it read that
    nobody changed are brought up to date as ever."""
    relabeled, untouched = old_record(1, "cat"), old_record(2, "cat")
    if missing is not None:  # fields the condition must find missing, not null
        del relabeled[missing], untouched[missing]
    records.insert_many([relabeled, untouched])
    derive = backfill_module.derive_from_document

    def derive_while_a_relabel_lands(document: dict[str, Any]) -> dict[str, list[str]]:
        if document["_id"] == relabeled["_id"]:
            dog = old_record(1, "dog")
            records.update_one(
                {"_id": document["_id"]},
                {"$set": {"object_analysis": dog["object_analysis"], **derive(dog)}},
            )
        return derive(document)

    monkeypatch.setattr(backfill_module, "derive_from_document", derive_while_a_relabel_lands)
    done = backfill(settings, monkeypatch, capsys)
    assert (done["scanned"], done["updated"]) == (2, 1)
    stored = records.find_one({"_id": relabeled["_id"]})
    assert stored is not None and stored["classes"] == ["dog"]
    assert "dog" in stored["keywords"] and "cat" not in stored["keywords"]
    assert records.find_one({"_id": untouched["_id"]})["classes"] == ["cat"]  # type: ignore[index]


def test_backfill_resumes_after_an_id(
    settings: Settings,
    records: Collection[dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    records.insert_many([old_record(i, "cat") for i in range(5)])
    resumed = backfill(settings, monkeypatch, capsys, "--after", old_record(2, "cat")["_id"])
    assert (resumed["scanned"], resumed["updated"]) == (2, 2)
    assert records.count_documents({"classes": "cat"}) == 2
    assert {"classes", "keywords", "phash_bands"} <= set(records.index_information())


@pytest.mark.parametrize("size", ["0", "-5", "10001", str(2**63), "many"])
def test_backfill_refuses_a_bad_batch_size(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, size: str
) -> None:
    monkeypatch.setenv("LABELSVC_MONGODB_URI", settings.mongodb_uri or "")
    with pytest.raises(SystemExit) as refused:
        main(["backfill", "--batch-size", size])
    assert refused.value.code == 2


@pytest.mark.parametrize(
    ("after", "why"),
    [
        ("{'$oid': '65f000000000000000000002'}", "is not valid JSON"),
        ('{"$oid": "65f0"', "is not valid JSON"),
        ('{"$numberDecimal": "1,5"}', "is not a valid id"),
        ("99999999999999999999", "past BSON's 64-bit integers"),
        ('{"$numberLong": "99999999999999999999"}', "past BSON's 64-bit integers"),
        ("-9223372036854775809", "past BSON's 64-bit integers"),
    ],
)
def test_backfill_refuses_an_after_id_meant_as_json_but_mistyped(
    capsys: pytest.CaptureFixture[str], after: str, why: str
) -> None:
    """Taken as a plain string id, it would sort after every service id: the walk would skip
    them all and report success."""
    with pytest.raises(SystemExit) as refused:
        main(["backfill", "--after", after])
    assert refused.value.code == 2
    assert why in capsys.readouterr().err


def test_backfill_walks_past_a_null_id(
    settings: Settings,
    records: Collection[dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """MongoDB allows one record with the id null (an import, say); it sorts first, and the
    walk once started over after it, for ever."""
    records.insert_many([old_record(0, "cat") | {"_id": None}, old_record(1, "cat")])
    one_by_one = backfill(settings, monkeypatch, capsys, "--batch-size", "1", "--dry-run")
    assert (one_by_one["scanned"], one_by_one["updated"]) == (2, 2)
    after_null = backfill(settings, monkeypatch, capsys, "--after", "null")
    assert (after_null["scanned"], after_null["updated"]) == (1, 1)
    done = backfill(settings, monkeypatch, capsys)
    assert (done["scanned"], done["updated"]) == (2, 1)


def test_a_batch_gets_the_operation_deadline_per_500_records() -> None:
    """A large healthy batch must not pass for a database that holds it: the development
    server writes about 2 ms a record, 22 s for 10,000."""
    settings = Settings(db_operation_timeout_ms=10_000)
    deadlines = [batch_deadline(settings, size) for size in (1, 500, 501, 2000, 10_000)]
    assert deadlines == [10, 10, 20, 40, 200]


def test_backfill_gives_up_on_a_database_that_holds_a_batch(
    settings: Settings,
    records: Collection[dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    records.insert_many([old_record(i, "cat") for i in range(3)])
    monkeypatch.setattr(walk_module, "batch_after", never_answers)
    monkeypatch.setenv("LABELSVC_DB_OPERATION_TIMEOUT_MS", "300")
    monkeypatch.setenv("LABELSVC_MONGODB_URI", settings.mongodb_uri or "")
    monkeypatch.setenv("LABELSVC_MONGODB_DB", settings.mongodb_db)
    capsys.readouterr()
    assert main(["backfill"]) == 1
    assert "the database did not answer in time" in capsys.readouterr().err


def test_an_interrupted_backfill_says_how_to_resume(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async def interrupted(*args: Any) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_module, "run_backfill_command", interrupted)
    monkeypatch.setenv("LABELSVC_MONGODB_URI", "mongodb://127.0.0.1:1/")
    assert main(["backfill"]) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "--after" in err and "Traceback" not in err


def test_backfill_refuses_a_malformed_after_id(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as refused:
        main(["backfill", "--after", '{"$oid": "zz"}'])
    assert refused.value.code == 2
    assert "argument --after: 'zz' is not a valid ObjectId" in capsys.readouterr().err


def test_backfill_refuses_an_after_id_no_record_can_have(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as refused:
        main(["backfill", "--after", "[1]"])
    assert refused.value.code == 2
    assert "argument --after: [1] cannot be a record id" in capsys.readouterr().err


def test_a_dry_run_counts_an_index_under_another_name_as_there(
    settings: Settings,
    records: Collection[dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    records.insert_one(old_record(0, "cat"))
    records.create_index("hash", unique=True)  # hash_1, not hash_unique
    dry = backfill(settings, monkeypatch, capsys, "--dry-run")
    missing = dry["stderr"].split("creates them): ", 1)[1]
    assert "'url'" in missing and "hash_unique" not in missing


def test_an_index_the_records_cannot_have_leaves_the_rest_to_do(
    settings: Settings,
    records: Collection[dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Two imported records without a hash break the unique hash index (both index as
    null): the other indexes are built, every record is brought up to date, exit 1."""
    records.insert_many(
        [{k: v for k, v in old_record(i, "cat").items() if k != "hash"} for i in range(2)]
    )
    done = backfill(settings, monkeypatch, capsys, code=1)
    assert "error: an index could not be created" in done["stderr"]
    assert "dup key" in done["stderr"]
    assert (done["scanned"], done["updated"]) == (2, 2)
    indexes = set(records.index_information())
    assert "hash_unique" not in indexes and {"classes", "keywords", "url"} <= indexes


def test_a_record_the_database_will_not_update_is_reported_and_skipped(
    settings: Settings,
    records: Collection[dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A record at the document size limit cannot take its derived fields: the walk goes
    on past it, names it, and exits 1."""
    full = old_record(1, "cat") | {"padding": ""}
    full["padding"] = "x" * (MAX_BSON_SIZE - 16 - len(bson.encode(full)))
    records.insert_many([old_record(0, "cat"), full, old_record(2, "cat")])
    done = backfill(settings, monkeypatch, capsys, "--batch-size", "2", code=1)
    assert f'error: record "{full["_id"]}" not updated:' in done["stderr"]
    assert len(done["stderr"]) < 5000  # the message, not the refused update
    assert (done["scanned"], done["updated"], done["failed"]) == (3, 2, 1)
    assert done["failed_ids"] == [full["_id"]]
    assert records.count_documents({"classes": "cat"}) == 2


def test_backfill_walks_ids_of_every_type(
    settings: Settings,
    records: Collection[dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Imported records may have ObjectId ids beside the service's string ids; ObjectIds
    # sort after strings, and a string is never $gt-compared with them.
    imported = [old_record(10 + i, "dog") | {"_id": ObjectId()} for i in range(3)]
    numbered = [old_record(20 + i, "dog") | {"_id": i} for i in range(3)]  # before strings
    records.insert_many(numbered + [old_record(i, "cat") for i in range(3)] + imported)
    first = backfill(settings, monkeypatch, capsys, "--batch-size", "1", "--dry-run")
    assert first["scanned"] == 9
    # Resuming after a number, as a progress line shows it, goes on with numbers first.
    after_zero = backfill(settings, monkeypatch, capsys, "--after", "0")
    assert (after_zero["scanned"], after_zero["updated"]) == (8, 8)
    done = backfill(settings, monkeypatch, capsys, "--batch-size", "2")
    assert (done["scanned"], done["updated"]) == (9, 1)
    assert done["last_id"] == {"$oid": str(imported[-1]["_id"])}  # as --after takes it
    assert records.count_documents({"classes": "dog"}) == 6
    records.update_many({}, {"$unset": {"classes": ""}})
    resumed = backfill(settings, monkeypatch, capsys, "--after", json.dumps(done["last_id"]))
    assert resumed["scanned"] == 0
    middle = json.dumps({"$oid": str(imported[0]["_id"])})
    assert backfill(settings, monkeypatch, capsys, "--after", middle)["scanned"] == 2


@pytest.mark.parametrize("nan", [float("nan"), bson.Decimal128("NaN")])
def test_backfill_walks_past_a_nan_id(
    nan: object,
    settings: Settings,
    records: Collection[dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # NaN sorts before every other number, yet no number is $gt it: imported NaN ids must
    # not hide the numbers after them.
    ids = [nan, -1.5, 0, 2, "PT::a"]
    records.insert_many([old_record(i, "dog") | {"_id": id_} for i, id_ in enumerate(ids)])
    walked = backfill(settings, monkeypatch, capsys, "--batch-size", "1", "--dry-run")
    assert walked["scanned"] == 5
    after = backfill(settings, monkeypatch, capsys, "--after", "NaN", "--dry-run")
    assert after["scanned"] == 4
