"""``GET /v1/search`` and ``GET /v1/records/{id}/similar`` on the real database server."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import Any

import pytest

from service.domain.records import new_record_id
from service.query.keywords import search_terms
from service.query.similar import hamming, phash_bands
from service.settings import Settings
from tests.api.test_errors import assert_problem
from tests.conftest import AppClient, running
from tests.query import corpus


async def _search(client: AppClient, auth: dict[str, str], **params: Any) -> dict[str, Any]:
    response = await client.get("/v1/search", params=params, headers=auth)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_search_ranks_by_matching_terms_then_newest(
    client: AppClient, auth: dict[str, str]
) -> None:
    records = await corpus.seed(client.resources.database["records"], 200)
    terms = search_terms("Dogs on sofas")
    assert terms == ["dog", "sofa"]

    def score(record: dict[str, Any]) -> int:
        return len(set(terms) & set(record["keywords"]))

    expected = sorted(
        (r for r in records if score(r)), key=lambda r: (score(r), r["_id"]), reverse=True
    )
    assert {score(r) for r in expected} == {1, 2}
    got: list[dict[str, Any]] = []
    for number in (1, 2, 3, 4, 5, 6, 7, 8, 9, 10):
        page = await _search(client, auth, text="Dogs on sofas", page=number, per_page=20)
        assert page["length"] == len(expected)
        got += page["output"]
        if page["next_cursor"] is None:
            break
    assert [r["_id"] for r in got] == [r["_id"] for r in expected]

    # The same ranking by cursor, combined with a filter, with a projection.
    q = {"width": {"$gt": 500}}
    filtered = [r["_id"] for r in expected if r["width"] > 500]
    walked: list[str] = []
    cursor = None
    while True:
        params = {"text": "sofa dog", "q": json.dumps(q), "per_page": 9, "fields": "url"}
        page = await _search(client, auth, **params, **({"cursor": cursor} if cursor else {}))
        assert all(set(r) == {"_id", "url"} for r in page["output"])
        walked += [r["_id"] for r in page["output"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert walked == filtered


async def test_a_search_walk_survives_deletions_on_its_pages(
    client: AppClient, auth: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A record of the page being built is deleted between the ranking and the read of the
    records: the walk goes on, and every record not deleted comes back once."""
    records = await corpus.seed(client.resources.database["records"], 200)
    terms = search_terms("Dogs on sofas")
    matching = {r["_id"] for r in records if set(terms) & set(r["keywords"])}
    store = client.resources.records
    aggregate = store.aggregate
    deleted: list[str] = []

    async def then_delete_one(*args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        result = await aggregate(*args, **kwargs)
        victim = result[0]["page"][0]["_id"]  # on the page being built
        await client.resources.database["records"].delete_one({"_id": victim})
        deleted.append(victim)
        return result

    monkeypatch.setattr(store, "aggregate", then_delete_one)
    walked: list[str] = []
    cursor = None
    while True:
        params = {"text": "Dogs on sofas", "per_page": 10}
        page = await _search(client, auth, **params, **({"cursor": cursor} if cursor else {}))
        walked += [r["_id"] for r in page["output"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(deleted) > 3
    assert sorted(walked) == sorted(matching - set(deleted))


async def test_search_one_term_and_no_terms(client: AppClient, auth: dict[str, str]) -> None:
    records = await corpus.seed(client.resources.database["records"], 80)
    page = await _search(client, auth, text="ZEBRAS", per_page=100)
    expected = sorted((r["_id"] for r in records if "zebra" in r["classes"]), reverse=True)
    assert [r["_id"] for r in page["output"]] == expected and page["length"] == len(expected)
    caption = await _search(client, auth, text="sleeping", per_page=100)
    assert caption["length"] == sum("sleeping" in r["keywords"] for r in records) > 0
    tagged = await _search(client, auth, text="furniture", per_page=100)
    assert tagged["length"] == sum(t["name"] == "furniture" for r in records for t in r["tags"])
    response = await client.get("/v1/search", params={"text": "the of"}, headers=auth)
    assert "no searchable words" in assert_problem(response, 400, "invalid-query")["detail"]
    assert_problem(await client.get("/v1/search", headers=auth), 400)
    assert_problem(await client.get("/v1/search", params={"text": "dog"}), 401)


async def test_an_imported_record_whose_keywords_are_not_a_list_is_ranked_all_the_same(
    client: AppClient, auth: dict[str, str]
) -> None:
    collection = client.resources.database["records"]
    records = await corpus.seed(collection, 20)
    imported = corpus.make_record(100, random.Random(3), keywords="dog")
    await collection.insert_one(imported)
    page = await _search(client, auth, text="dog sofa", per_page=100)
    ids = [r["_id"] for r in page["output"]]
    assert imported["_id"] in ids
    both = [r for r in records if {"dog", "sofa"} <= set(r["keywords"])]
    assert ids.index(imported["_id"]) >= len(both)  # one term: after those holding both


async def test_a_term_counts_once_however_many_of_its_forms_a_record_holds(
    client: AppClient, auth: dict[str, str]
) -> None:
    collection = client.resources.database["records"]
    rng = random.Random(11)
    tv_and_chair = corpus.make_record(1, rng, keywords=["chair", "tv"])
    only_tvs = corpus.make_record(2, rng, keywords=["tv", "tvs"])
    assert only_tvs["_id"] > tv_and_chair["_id"]  # so it would win a tie
    await collection.insert_many([tv_and_chair, only_tvs])
    page = await _search(client, auth, text="tvs chairs")
    assert [r["_id"] for r in page["output"]] == [tv_and_chair["_id"], only_tvs["_id"]]


async def test_similar_records_by_phash(client: AppClient, auth: dict[str, str]) -> None:
    collection = client.resources.database["records"]
    records = await corpus.seed(collection, 120)
    base = int(records[0]["image_properties"]["phash"], 16)
    rng = random.Random(5)
    near = []
    for i, distance in enumerate([0, 1, 3, 5, 6, 7, 9, 12]):
        flipped = base
        for bit in rng.sample(range(64), distance):
            flipped ^= 1 << bit
        near.append(_with_phash(corpus.make_record(500 + i, rng), f"{flipped:016x}"))
    await collection.insert_many(near)
    target = records[0]["_id"]
    phash = records[0]["image_properties"]["phash"]
    everyone = records + near
    expected = sorted(
        (hamming(phash, r["image_properties"]["phash"]), r["_id"])
        for r in everyone
        if r["_id"] != target and hamming(phash, r["image_properties"]["phash"]) <= 7
    )
    assert len(expected) >= 6

    response = await client.get(f"/v1/records/{target}/similar", headers=auth)
    assert response.status_code == 200, response.text
    body = response.json()
    assert [(r["distance"], r["_id"]) for r in body["output"]] == expected
    assert body["length"] == len(expected) and body["max_distance"] == 7

    tight = (
        await client.get(
            f"/v1/records/{target}/similar",
            params={"max_distance": 3, "per_page": 2, "page": 2},
            headers=auth,
        )
    ).json()
    within3 = [pair for pair in expected if pair[0] <= 3]
    assert [(r["distance"], r["_id"]) for r in tight["output"]] == within3[2:4]


async def test_similar_compares_every_candidate_however_many(
    make_settings: Callable[..., Settings], auth: dict[str, str]
) -> None:
    """Over 10,000 records share a band with the pHash asked about (a group of near-blank
    frames, say) and none is near it; the near ones have the highest ids. Every candidate
    is compared, so they are all found. (A generous time limit: the development database
    reads them far slower than MongoDB, and how fast is not the point here.)"""
    rng = random.Random(7)
    target = _with_phash(corpus.make_record(0, rng), "abcd000000000000")
    far = []
    for i in range(10_050):
        rest = rng.getrandbits(48) | 0xFF  # at least 8 bits away
        phash = f"abcd{rest:012x}"
        far.append({"_id": f"PT::{i + 1:024d}", "hash": f"e{i:063x}"})
        far[-1] |= {"image_properties": {"phash": phash}, "phash_bands": phash_bands(phash)}
    near = [
        _with_phash(corpus.make_record(n + 1, rng, _id=f"PT::{'f' * 23}{n}"), f"abcd00000000000{n}")
        for n in (0, 1, 3)
    ]
    async with running(make_settings(query_max_time_ms=60_000)) as client:
        await client.resources.database["records"].insert_many([target, *far, *near])
        response = await client.get(f"/v1/records/{target['_id']}/similar", headers=auth)
    assert response.status_code == 200, response.text
    body = response.json()
    assert [(r["distance"], r["_id"]) for r in body["output"]] == [
        (0, near[0]["_id"]),
        (1, near[1]["_id"]),
        (2, near[2]["_id"]),
    ]
    assert (body["length"], body["length_is_estimate"]) == (3, False)


def _with_phash(record: dict[str, Any], phash: str) -> dict[str, Any]:
    record["image_properties"] = {**record["image_properties"], "phash": phash}
    record["phash_bands"] = phash_bands(phash)
    return record


@pytest.mark.parametrize(
    ("record", "params", "status", "slug"),
    [
        (None, {}, 404, "record-not-found"),
        ({"image_properties": None, "phash_bands": []}, {}, 409, "no-phash"),
        ({}, {"max_distance": "12"}, 400, None),
        ({}, {"max_distance": "-1"}, 400, None),
    ],
)
async def test_similar_refusals(
    client: AppClient,
    auth: dict[str, str],
    record: dict[str, Any] | None,
    params: dict[str, str],
    status: int,
    slug: str | None,
) -> None:
    record_id = new_record_id()
    if record is not None:
        stored = corpus.make_record(1, random.Random(1), _id=record_id, **record)
        await client.resources.database["records"].insert_one(stored)
    response = await client.get(f"/v1/records/{record_id}/similar", params=params, headers=auth)
    assert_problem(response, status, slug)
