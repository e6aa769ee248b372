"""Small seeded record sets for query tests, in the shape the service stores."""

from __future__ import annotations

import random
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection

from service.domain.records import new_record_id
from service.query.keywords import keywords_for
from service.query.similar import phash_bands

CLASSES = ["person", "dog", "cat", "car", "sofa", "diningtable", "bicycle", "bird", "zebra"]
TAGS = ["animal", "vehicle", "furniture", "indoor", "outdoor"]
WORDS = ["a", "dog", "sleeping", "on", "the", "red", "sofa", "two", "cats", "street", "bikes"]


def make_record(i: int, rng: random.Random, **overrides: Any) -> dict[str, Any]:
    classes = sorted(set(rng.sample(CLASSES, rng.randint(0, 3))))
    boxes = [
        {
            "classname": c,
            "conf": round(rng.uniform(0.25, 0.99), 3),
            "x1": 1,
            "y1": 2,
            "x2": 3,
            "y2": 4,
        }
        for c in classes
        for _ in range(rng.randint(1, 2))
    ]
    tags = [{"name": t, "conf": 0.5} for t in rng.sample(TAGS, rng.randint(0, 2))]
    caption = " ".join(rng.choices(WORDS, k=rng.randint(0, 6)))
    phash = f"{rng.getrandbits(64):016x}"
    width, height = rng.randint(50, 2000), rng.randint(50, 2000)
    record: dict[str, Any] = {
        "_id": new_record_id(),
        "url": f"http://example.com/{i}.jpg",
        "urls": [f"http://example.com/{i}.jpg"],
        "datetime": f"2026-11-{1 + i % 28:02d}T{i % 24:02d}:00:00.000Z",
        "type": "image",
        "object_analysis_processed": "true",
        "pose_estimation_processed": "false",
        "face_analysis_processed": "false",
        "width": width,
        "height": height,
        "hash": f"{i:064x}",
        "object_analysis": [boxes],
        "classes": classes,
        "label_quality_estimation": round(rng.random(), 2),  # rounded: plenty of ties
        "tags": tags,
        "caption": {"title": "", "description": caption, "scene_analysis": "", "model": "t"},
        "keywords": keywords_for(classes, [t["name"] for t in tags], [caption]),
        "image_properties": image_properties(width, height, phash),
        "phash_bands": phash_bands(phash),
    }
    record.update(overrides)
    return record


def image_properties(width: int, height: int, phash: str) -> dict[str, Any]:
    return {
        "width": width,
        "height": height,
        "dominant_colors": [{"hex": "#808080", "fraction": 1.0}],
        "brightness": 0.5,
        "contrast": 0.2,
        "sharpness": 120.0,
        "colorfulness": 30.0,
        "phash": phash,
    }


async def seed(
    collection: AsyncCollection[dict[str, Any]], count: int, *, start: int = 0, seed: int = 1
) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    records = [make_record(start + i, rng) for i in range(count)]
    if records:
        await collection.insert_many(records)
    return records
