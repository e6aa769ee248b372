"""Query throughput: the running service's query API against raw pymongo on the same server.

Seeds a collection of records in the shape the service stores (``--records``, default
100,000; see ``bench.query_corpus``). Then, per query kind, it issues the same queries
through ``GET /v1/...`` over HTTP (the service started with ``bench.harness.service``) and
through pymongo with the filters the service sends, in the same run, and prints one JSON line
per kind:
``{"name": "query", "kind", "ratio": endpoint_qps / pymongo_qps, ...}``.

Last lines time the Cortex nested ``$elemMatch`` query for classes found in at most 5%, 2.5%
and 1% of the records (``bench.query_cortex``), and price gzip (``bench.query_gzip``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
from pymongo import AsyncMongoClient
from pymongo.asynchronous.collection import AsyncCollection

from bench.harness import database, service
from bench.query_corpus import Document, Facts, create_key, seed
from bench.query_cortex import cortex_check, nested
from bench.query_gzip import gzip_cost
from service.query.hints import add_index_hints
from service.query.keywords import search_terms
from service.query.paging import BY_ID, NEWEST, SortOrder, decode_cursor
from service.query.plan import conjoin
from service.query.similar import DEFAULT_DISTANCE, hamming, probe_bands
from service.store.records import INDEXED

# --- query kinds: the endpoint call and the same database work through pymongo -------------

Raw = Callable[[AsyncCollection[Document], int], Awaitable[Any]]
PAGE = 25
COUNT_MS = 2000
QUERY_MS = 5000


@dataclass(frozen=True)
class Kind:
    name: str
    indexed: bool
    path: str
    params: Callable[[int], dict[str, str]]
    raw: Raw
    ids: Callable[[Any], list[str]]  # the record ids a raw result holds, in order


def sent(filt: Mapping[str, Any]) -> dict[str, Any]:
    """The filter the service sends for ``filt``."""
    return conjoin(add_index_hints(dict(filt)), indexed=INDEXED)


def page_ids(result: tuple[list[Document], int]) -> list[str]:
    return [d["_id"] for d in result[0]]


async def raw_find_and_count(
    coll: AsyncCollection[Document],
    filt: dict[str, Any],
    order: SortOrder = BY_ID,
    projection: dict[str, int] | None = None,
) -> tuple[list[Document], int]:
    """A page, then (when the page is full) the count: what the service does for a point lookup."""
    documents = await (
        coll.find(filt, projection).sort(order.spec()).limit(PAGE + 1).max_time_ms(QUERY_MS)
    ).to_list()
    if len(documents) <= PAGE:
        return documents, len(documents)
    return documents[:PAGE], await coll.count_documents(filt, maxTimeMS=COUNT_MS)


async def raw_walk_page(
    coll: AsyncCollection[Document], filt: dict[str, Any], after: str, counts: dict[str, int]
) -> tuple[list[Document], int]:
    """A page after a cursor, and the walk's count made once (the service reuses it 60 s)."""
    page = sent({**filt, "_id": {"$gt": after}})
    documents = await (
        coll.find(page).sort("_id", 1).limit(PAGE + 1).max_time_ms(QUERY_MS)
    ).to_list()
    if "n" not in counts:
        counts["n"] = await coll.count_documents(sent(filt), maxTimeMS=COUNT_MS)
    return documents[:PAGE], counts["n"]


async def raw_facet(
    coll: AsyncCollection[Document],
    filt: dict[str, Any],
    order: SortOrder = BY_ID,
    projection: dict[str, int] | None = None,
) -> tuple[list[Document], int]:
    """Page and count in one pass: what the service does for every non-point filter."""
    page: list[Document] = [{"$sort": dict(order.spec())}, {"$limit": PAGE + 1}]
    if projection:
        page.append({"$project": projection})
    pipeline: list[Document] = [
        {"$match": filt},
        {"$facet": {"page": page, "total": [{"$count": "n"}]}},
    ]
    (facet,) = await (await coll.aggregate(pipeline, maxTimeMS=COUNT_MS)).to_list()
    return facet["page"][:PAGE], (facet["total"][0]["n"] if facet["total"] else 0)


async def raw_ranked_search(
    coll: AsyncCollection[Document], terms: list[str]
) -> tuple[list[Document], int]:
    ranked = [
        {"$project": {"_score": {"$size": {"$setIntersection": ["$keywords", terms]}}}},
        {"$sort": {"_score": -1, "_id": -1}},
        {"$limit": PAGE + 1},
    ]
    pipeline: list[Document] = [
        {"$match": {"keywords": {"$in": terms}}},
        {"$facet": {"page": ranked, "total": [{"$count": "n"}]}},
    ]
    (facet,) = await (await coll.aggregate(pipeline, maxTimeMS=QUERY_MS)).to_list()
    ids = [d["_id"] for d in facet["page"]][:PAGE]
    found = await coll.find({"_id": {"$in": ids}}).sort("_id", 1).to_list()
    by_id = {d["_id"]: d for d in found}
    return [by_id[i] for i in ids], facet["total"][0]["n"]


async def raw_similar(
    coll: AsyncCollection[Document], record_id: str, max_distance: int = DEFAULT_DISTANCE
) -> tuple[list[Document], int]:
    own = await coll.find_one({"_id": record_id}, {"image_properties.phash": 1})
    assert own is not None
    phash = own["image_properties"]["phash"]
    candidates = await (
        coll.find(
            {"phash_bands": {"$in": probe_bands(phash, max_distance)}, "_id": {"$ne": record_id}},
            {"image_properties.phash": 1},
        )
        .sort("_id", 1)
        .limit(10_000)
        .max_time_ms(QUERY_MS)
    ).to_list()
    near = sorted(
        (d, c["_id"])
        for c in candidates
        if (d := hamming(phash, c["image_properties"]["phash"])) <= max_distance
    )
    ids = [i for _, i in near[:PAGE]]
    found = await coll.find({"_id": {"$in": ids}}).sort("_id", 1).to_list()
    by_id = {d["_id"]: d for d in found}
    return [by_id[i] for i in ids], len(near)


def kinds(facts: Facts, cursor_after: str | None) -> list[Kind]:
    """The queries compared; the page after a cursor only when the rare class has a second
    page (``cursor_after``: the first page's ``next_cursor``, None with few records)."""
    every = _kinds(facts, cursor_after or "")
    return [k for k in every if cursor_after is not None or k.name != "class_page2_by_cursor"]


def _kinds(facts: Facts, cursor_after: str) -> list[Kind]:
    rare_class = facts.rare(facts.classes, 0.05)
    rare_tag = facts.rare(facts.tags, 0.05)
    words = [w for w, n in facts.keywords.most_common() if n <= 0.02 * facts.count]
    one_term, two_terms = words[0], f"{words[1]} {words[2]}"
    wide = facts.percentile(facts.widths, 0.99)
    good = facts.percentile(facts.qualities, 0.99)
    recent = {"datetime": {"$gte": facts.last_datetime[:10]}}
    by_class = sent({"classes": rare_class})
    cortex = sent(nested(rare_class))
    newest_first = SortOrder("datetime", -1)
    walk_count: dict[str, int] = {}

    def q(filt: Mapping[str, Any], **more: str) -> Callable[[int], dict[str, str]]:
        return lambda _: {"q": json.dumps(filt), **more}

    term = search_terms(one_term)[0]
    terms = search_terms(two_terms)
    return [
        Kind(
            "hash",
            True,
            "/v1/records",
            lambda i: {"q": json.dumps({"hash": facts.hashes[i % len(facts.hashes)]})},
            lambda c, i: raw_find_and_count(c, {"hash": facts.hashes[i % len(facts.hashes)]}),
            page_ids,
        ),
        Kind(
            "url",
            True,
            "/v1/records",
            lambda i: {"q": json.dumps({"url": facts.urls[i % len(facts.urls)]})},
            lambda c, i: raw_find_and_count(c, {"url": facts.urls[i % len(facts.urls)]}),
            page_ids,
        ),
        Kind(
            f"class ({rare_class}, {facts.classes[rare_class] / facts.count:.1%})",
            True,
            "/v1/records",
            q({"classes": rare_class}),
            lambda c, i: raw_facet(c, by_class),
            page_ids,
        ),
        Kind(
            f"cortex_elemmatch ({rare_class})",
            True,
            "/get-labeled-data",
            q(nested(rare_class)),
            lambda c, i: raw_facet(c, cortex),
            page_ids,
        ),
        Kind(
            f"tag ({rare_tag}, {facts.tags[rare_tag] / facts.count:.1%})",
            True,
            "/v1/records",
            q({"tags.name": rare_tag}),
            lambda c, i: raw_facet(c, sent({"tags.name": rare_tag})),
            page_ids,
        ),
        Kind(
            "width_top1%",
            True,
            "/v1/records",
            q({"width": {"$gte": wide}}),
            lambda c, i: raw_facet(c, sent({"width": {"$gte": wide}})),
            page_ids,
        ),
        Kind(
            "quality_top1%",
            True,
            "/v1/records",
            q({"label_quality_estimation": {"$gte": good}}),
            lambda c, i: raw_facet(c, sent({"label_quality_estimation": {"$gte": good}})),
            page_ids,
        ),
        Kind(
            "datetime_last_day_newest_first",
            True,
            "/v1/records",
            q(recent, sort="-datetime"),
            lambda c, i: raw_facet(c, sent(recent), newest_first),
            page_ids,
        ),
        Kind(
            "class_page2_by_cursor",
            True,
            "/v1/records",
            q({"classes": rare_class}, cursor=cursor_after),
            lambda c, i: raw_walk_page(
                c, {"classes": rare_class}, decode_cursor(cursor_after, BY_ID).id, walk_count
            ),
            page_ids,
        ),
        Kind(
            "class_with_fields",
            True,
            "/v1/records",
            q({"classes": rare_class}, fields="url,classes"),
            lambda c, i: raw_facet(c, by_class, projection={"url": 1, "classes": 1}),
            page_ids,
        ),
        Kind(
            f"search_one_term ({term})",
            True,
            "/v1/search",
            lambda _: {"text": one_term},
            lambda c, i: raw_facet(c, {"keywords": term}, NEWEST),
            page_ids,
        ),
        Kind(
            f"search_two_terms ({' '.join(terms)})",
            True,
            "/v1/search",
            lambda _: {"text": two_terms},
            lambda c, i: raw_ranked_search(c, terms),
            page_ids,
        ),
        Kind(
            "similar_phash",
            True,
            "/v1/records/{id}/similar",
            lambda i: {"id": facts.near_duplicates[i % len(facts.near_duplicates)]},
            lambda c, i: raw_similar(c, facts.near_duplicates[i % len(facts.near_duplicates)]),
            page_ids,
        ),
    ]


# --- measuring ------------------------------------------------------------------------------


async def endpoint_call(http: httpx.AsyncClient, kind: Kind, i: int) -> dict[str, Any]:
    params = kind.params(i)
    path = kind.path
    if "{id}" in path:
        path = path.replace("{id}", params.pop("id"))
    response = await http.get(path, params=params)
    response.raise_for_status()
    body: dict[str, Any] = response.json()
    return body


async def timed(
    call: Callable[[int], Awaitable[Any]], seconds: float, minimum: int
) -> tuple[int, float]:
    n, started = 0, time.perf_counter()
    while n < minimum or time.perf_counter() - started < seconds:
        await call(n)
        n += 1
    return n, time.perf_counter() - started


async def measure(
    base: str, uri: str, db_name: str, key: str, facts: Facts, seconds: float, rounds: int
) -> list[dict[str, Any]]:
    client: AsyncMongoClient[Document] = AsyncMongoClient(uri)
    coll = client[db_name]["records"]
    lines: list[dict[str, Any]] = []
    # Not gzipped: the ratio compares the query work; query_gzip prices gzip apart.
    headers = {"X-API-Key": key, "Accept-Encoding": "identity"}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=60) as http:
        first = await http.get(
            "/v1/records", params={"q": json.dumps({"classes": facts.rare(facts.classes, 0.05)})}
        )
        cursor_after = first.json()["next_cursor"]
        for kind in kinds(facts, cursor_after):
            body = await endpoint_call(http, kind, 0)
            raw = await kind.raw(coll, 0)
            same = [r["_id"] for r in body["output"]] == kind.ids(raw) and body["length"] == raw[1]
            e_n = r_n = 0
            e_t = r_t = 0.0

            async def via_http(i: int, kind: Kind = kind) -> object:
                return await endpoint_call(http, kind, i)

            async def via_pymongo(i: int, kind: Kind = kind) -> object:
                return await kind.raw(coll, i)

            for _ in range(rounds):  # interleaved, so that load from elsewhere hits both
                n, t = await timed(via_http, seconds, 3)
                e_n, e_t = e_n + n, e_t + t
                n, t = await timed(via_pymongo, seconds, 3)
                r_n, r_t = r_n + n, r_t + t
            e_qps, r_qps = e_n / e_t, r_n / r_t
            line = {
                "name": "query",
                "kind": kind.name,
                "indexed": kind.indexed,
                "ratio": round(e_qps / r_qps, 3),
                "endpoint_qps": round(e_qps, 1),
                "pymongo_qps": round(r_qps, 1),
                "endpoint_ms": round(1000 / e_qps, 2),
                "pymongo_ms": round(1000 / r_qps, 2),
                "length": body["length"],
                "same_results": same,
                "records": facts.count,
            }
            print(json.dumps(line), flush=True)
            lines.append(line)
        for share in (0.05, 0.025, 0.01):
            lines.append(await cortex_check(http, coll, facts, share))
        lines.append(await gzip_cost(http, facts.rare(facts.classes, 0.05), seconds, rounds))
    await client.close()
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.query", description=__doc__)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=1.5, help="per side, kind and round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    db_name = "querybench"
    with database() as db:
        facts = asyncio.run(seed(db.uri, db_name, args.records))
        key = asyncio.run(create_key(db.uri, db_name))
        with service(db.uri, mongodb_db=db_name) as (base, _):
            lines = asyncio.run(
                measure(base, db.uri, db_name, key, facts, args.seconds, args.rounds)
            )
    indexed = [line for line in lines if line.get("indexed")]
    cortex = [line for line in lines if line["name"] == "cortex_elemmatch_latency"]
    ok = all(line["same_results"] for line in indexed) and all(
        line["identical_to_unrewritten"] for line in cortex
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
