"""Detection accuracy through the running service: POST the 128 evalset photos by URL with
``LABELSVC_MIN_CONFIDENCE=0.001``, score the returned boxes with pycocotools.

Prints one JSON line; ``ratio`` is the service's mAP50-95 over the offline reference of the
same model (0.299), and ``ok`` says whether it reaches the 0.294 floor.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx

from bench.detection_map import coco_map
from bench.harness import database, photo_server, photos, service

REFERENCE_MAP = 0.299
FLOOR = 0.294
CONCURRENCY = 4


async def label_all(base: str, urls: dict[str, str]) -> dict[str, list[dict[str, Any]]]:
    limit = asyncio.Semaphore(CONCURRENCY)
    boxes: dict[str, list[dict[str, Any]]] = {}
    async with httpx.AsyncClient(base_url=base, timeout=120) as client:

        async def one(name: str, url: str) -> None:
            async with limit:
                response = await client.post("/v1/labels", json={"url": url})
                response.raise_for_status()
                boxes[name] = response.json()["object_analysis"][0]

        await asyncio.gather(*(one(name, url) for name, url in urls.items()))
    return boxes


def main() -> int:
    with database() as db, photo_server() as server:
        urls = {path.name: server.photo_url(path.name) for path in photos()}
        with service(db.uri, min_confidence="0.001") as (base, _):
            start = time.perf_counter()
            boxes = asyncio.run(label_all(base, urls))
            elapsed = time.perf_counter() - start
    scores = coco_map(boxes)
    print(
        json.dumps(
            {
                "name": "service_map",
                "map50_95": round(scores["map50_95"], 4),
                "map50": round(scores["map50"], 4),
                "reference_map50_95": REFERENCE_MAP,
                "ratio": round(scores["map50_95"] / REFERENCE_MAP, 4),
                "floor": FLOOR,
                "ok": scores["map50_95"] >= FLOOR,
                "images": len(boxes),
                "boxes": sum(len(b) for b in boxes.values()),
                "seconds": round(elapsed, 2),
            }
        )
    )
    return 0 if scores["map50_95"] >= FLOOR else 1


if __name__ == "__main__":
    raise SystemExit(main())
