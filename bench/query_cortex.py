"""The Cortex nested ``$elemMatch`` query: the latency of its first page and length through
the service, and its results against the same query unrewritten, straight to the database.
"""

from __future__ import annotations

import json
import statistics
import time
from typing import Any

import httpx
from pymongo.asynchronous.collection import AsyncCollection

from bench.query_corpus import Document, Facts


def nested(classname: str) -> dict[str, Any]:
    return {"object_analysis": {"$elemMatch": {"$elemMatch": {"classname": classname}}}}


async def cortex_check(
    http: httpx.AsyncClient, coll: AsyncCollection[Document], facts: Facts, share: float
) -> dict[str, Any]:
    """The Cortex query for the commonest class in at most ``share`` of the records: the
    latency of its first page and length, and its results against the unrewritten query."""
    classname = facts.rare(facts.classes, share)
    query = json.dumps(nested(classname))
    latencies = []
    for _ in range(7):
        started = time.perf_counter()
        response = await http.get("/get-labeled-data", params={"q": query, "page": 1})
        latencies.append(time.perf_counter() - started)
        response.raise_for_status()
    first_page = response.json()
    served: list[str] = []
    page = 1
    while True:
        body = (
            await http.get("/get-labeled-data", params={"q": query, "page": page, "per_page": 100})
        ).json()
        served += [r["_id"] for r in body["output"]]
        if body["next_cursor"] is None:
            break
        page += 1
    started = time.perf_counter()
    unrewritten = [d["_id"] async for d in coll.find(nested(classname), {"_id": 1}).sort("_id", 1)]
    unrewritten_s = time.perf_counter() - started
    line = {
        "name": "cortex_elemmatch_latency",
        # The same records found by the nested query as sent, unrewritten, over the service.
        "ratio": round(unrewritten_s / statistics.median(latencies), 2),
        "class": classname,
        "share": round(facts.classes[classname] / facts.count, 4),
        "first_page_and_length_ms_median": round(statistics.median(latencies) * 1000, 1),
        "first_page_and_length_ms_min": round(min(latencies) * 1000, 1),
        "target_ms": 300,
        "length": first_page["length"],
        "identical_to_unrewritten": served == unrewritten
        and first_page["length"] == len(unrewritten),
        "unrewritten_query_s": round(unrewritten_s, 2),
        "records": facts.count,
    }
    print(json.dumps(line), flush=True)
    return line
