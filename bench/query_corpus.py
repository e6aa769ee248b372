"""The records the query benchmark runs against, seeded in the shape the service stores.

Each record is drawn from a random evalset photo, so the number of boxes per image, the class
mix and co-occurrence, the image sizes and the caption words follow COCO's; ``seed`` also
gives the ``Facts`` (values found in the records) that the queries ask about.
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from pymongo import AsyncMongoClient

from bench.detection_map import YOLOX_TO_COCO, evalset_dir
from service.domain.records import RECORD_ID_PREFIX, Record
from service.query.derived import derive
from service.ratelimit import Rate
from service.store.keys import ApiKeyStore
from service.store.records import RECORD_INDEXES

COCO_TO_YOLOX = {coco: yolox for yolox, coco in YOLOX_TO_COCO.items()}
Document = dict[str, Any]


# What a stored record carries besides the photo's own content, as the service writes it.
QUALITY_COMPONENTS = [
    "expected_f1",
    "expected_precision",
    "expected_missed",
    "mean_conf",
    "min_conf",
    "ambiguous_share",
    "count",
    "sub_threshold_count",
    "confirmed_missed",
    "overlooked",
    "badly_located",
    "swapped",
    "agreement",
    "tag_support",
    "tag_missing",
    "sharpness",
    "exposure",
    "resolution",
]
_CPU = "CPUExecutionProvider"
LINEAGE: list[Document] = [
    {
        "name": name,
        "model": model,
        "version": sha[:12] if sha else "1",
        "sha256": sha,
        "params": params,
    }
    for name, model, sha, params in (
        (
            "object_detection",
            "yolox_nano",
            "1" * 64,
            {"input_size": 416, "min_confidence": 0.25, "nms_iou": 0.65, "provider": _CPU},
        ),
        ("second_opinion", "nanodet_g_416", "2" * 64, {"min_confidence": 0.1, "provider": _CPU}),
        (
            "scene_tags",
            "efficientnet_lite0",
            "3" * 64,
            {"top_k": 5, "min_confidence": 0.05, "provider": _CPU},
        ),
        ("image_properties", "pixel-statistics", None, {}),
        (
            "label_quality",
            "expected-f1-logistic-v2",
            None,
            {"second_opinion": True, "sub_threshold_min_confidence": 0.1},
        ),
        ("caption", "grounded-v1", None, {}),
    )
]
FRAMING = ("Close-up", "Medium shot", "Wide shot")
PLACEMENT = ("centred", "off-centre to the left", "off-centre to the right", "low in the frame")
LIGHT = (
    "The scene is evenly exposed, with high contrast and a muted palette of grey and white.",
    "Balanced exposure with soft contrast and a warm palette of brown and orange.",
    "Bright, slightly overexposed light with a cool palette of blue and white.",
)


@dataclass(frozen=True, slots=True)
class Photo:
    """One evalset photo: what a seeded record copies."""

    width: int
    height: int
    boxes: list[tuple[str, float, float, float, float]]  # classname, x, y, w, h
    supercategories: list[str]
    captions: list[str]


def load_photos() -> list[Photo]:
    root = evalset_dir() / "annotations"
    instances = json.loads((root / "instances.json").read_text())
    captions = json.loads((root / "captions.json").read_text())
    names = {c["id"]: c["name"] for c in instances["categories"]}
    supers = {c["id"]: c["supercategory"] for c in instances["categories"]}
    boxes: dict[int, list[tuple[str, float, float, float, float]]] = defaultdict(list)
    groups: dict[int, set[str]] = defaultdict(set)
    for a in instances["annotations"]:
        name = names[a["category_id"]]
        boxes[a["image_id"]].append((COCO_TO_YOLOX.get(name, name), *a["bbox"]))
        groups[a["image_id"]].add(supers[a["category_id"]])
    texts: dict[int, list[str]] = defaultdict(list)
    for c in captions["annotations"]:
        texts[c["image_id"]].append(c["caption"].strip())
    return [
        Photo(
            width=image["width"],
            height=image["height"],
            boxes=boxes[image["id"]],
            supercategories=sorted(groups[image["id"]]),
            captions=texts[image["id"]],
        )
        for image in instances["images"]
    ]


class Corpus:
    """Deterministic synthetic records; every 10th is a near-duplicate of an earlier one."""

    def __init__(self, photos: list[Photo], seed: int = 7) -> None:
        self.photos = photos
        self.rng = random.Random(seed)
        self.start = datetime(2026, 1, 1, tzinfo=UTC)
        self.phashes: list[str] = []

    def record(self, i: int) -> Document:
        rng = self.rng
        photo = rng.choice(self.photos)
        scale = rng.choice((0.5, 0.75, 1.0, 1.0, 1.0, 1.5, 2.0, 3.0))
        width, height = round(photo.width * scale), round(photo.height * scale)
        boxes = [
            {
                "classname": classname,
                "conf": round(rng.uniform(0.25, 0.99), 4),
                "x1": max(0, round(x * scale + rng.gauss(0, 3))),
                "y1": max(0, round(y * scale + rng.gauss(0, 3))),
                "x2": min(width, round((x + w) * scale + rng.gauss(0, 3))),
                "y2": min(height, round((y + h) * scale + rng.gauss(0, 3))),
                "quality": round(rng.uniform(0.05, 0.99), 4),
            }
            for classname, x, y, w, h in photo.boxes
            if rng.random() >= 0.15  # the detector misses some objects
        ]
        tags = [
            {"name": s, "conf": round(rng.uniform(0.3, 0.99), 4)} for s in photo.supercategories
        ]
        caption = rng.choice(photo.captions) if photo.captions else ""
        description = f"{caption.rstrip('.')}. {rng.choice(LIGHT)}"
        scene_analysis = (
            f"{rng.choice(FRAMING)} in {'landscape' if width >= height else 'portrait'}"
            f" orientation, with the main subject {rng.choice(PLACEMENT)} and covering about"
            f" {rng.randint(3, 60)}% of the frame. {rng.choice(LIGHT)} Crisp detail throughout."
        )
        if i % 10 == 9 and self.phashes:
            base = int(rng.choice(self.phashes), 16)
            for _ in range(rng.randint(0, 6)):
                base ^= 1 << rng.randrange(64)
            phash = f"{base:016x}"
        else:
            phash = f"{rng.getrandbits(64):016x}"
        self.phashes.append(phash)
        url = f"https://images.example.com/{i:08d}.jpg"
        stamp = self.start + timedelta(seconds=30 * i + rng.randint(0, 29))
        when = stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        colors = [
            {"hex": f"#{rng.getrandbits(24):06x}", "fraction": round(f, 4)}
            for f in sorted((rng.random() / 5 for _ in range(5)), reverse=True)
        ]
        title = caption.split(" ", 4)[-1][:40]
        score = round(rng.betavariate(5, 2), 4)
        return {
            "_id": RECORD_ID_PREFIX + f"{i:024x}",
            "url": url,
            "urls": [url],
            "datetime": when,
            "type": "image",
            "object_analysis_processed": "true",
            "pose_estimation_processed": "false",
            "face_analysis_processed": "false",
            "width": width,
            "height": height,
            "hash": hashlib.sha256(f"bench-{i}".encode()).hexdigest(),
            "format": "JPEG",
            "bytes": rng.randint(20_000, 400_000),
            "object_analysis": [boxes],
            "label_quality_estimation": score,
            "label_quality": {
                "score": score,
                "components": {name: round(rng.random(), 4) for name in QUALITY_COMPONENTS},
                "model": "expected-f1-logistic-v2",
            },
            "tags": tags,
            "caption": {
                "title": title,
                "description": description,
                "scene_analysis": scene_analysis,
                "model": "coco-human",
            },
            "image_properties": {
                "width": width,
                "height": height,
                "dominant_colors": colors,
                "brightness": round(rng.random(), 4),
                "contrast": round(rng.random() / 3, 4),
                "sharpness": round(rng.uniform(5, 900), 2),
                "colorfulness": round(rng.uniform(0, 120), 2),
                "phash": phash,
            },
            "dominant_colors": colors,
            "analyses": [{**analysis, "processed_at": when} for analysis in LINEAGE],
            **derive(
                (str(b["classname"]) for b in boxes),
                photo.supercategories,
                [title, description],
                phash,
            ),
        }


# --- the seeded collection and what the queries ask for -------------------------------------


@dataclass
class Facts:
    """Values drawn from the seeded records for the queries to ask about."""

    count: int = 0
    hashes: list[str] = field(default_factory=list)
    urls: list[str] = field(default_factory=list)
    classes: Counter[str] = field(default_factory=Counter)
    tags: Counter[str] = field(default_factory=Counter)
    keywords: Counter[str] = field(default_factory=Counter)
    widths: list[int] = field(default_factory=list)
    qualities: list[float] = field(default_factory=list)
    last_datetime: str = ""
    near_duplicates: list[str] = field(default_factory=list)

    def rare(self, counter: Counter[str], share: float) -> str:
        """The most frequent value found in at most ``share`` of the records (else the rarest)."""
        within = [(n, v) for v, n in counter.items() if n <= share * self.count]
        return max(within)[1] if within else min((n, v) for v, n in counter.items())[1]

    def percentile(self, values: list[Any], share: float) -> Any:
        return sorted(values)[int(len(values) * share)]


async def seed(uri: str, db_name: str, count: int, batch: int = 1000) -> Facts:
    corpus = Corpus(load_photos())
    facts = Facts(count=count)
    client: AsyncMongoClient[Document] = AsyncMongoClient(uri)
    try:
        collection = client[db_name]["records"]
        await collection.create_indexes(RECORD_INDEXES)
        started = time.perf_counter()
        for first in range(0, count, batch):
            documents = [corpus.record(i) for i in range(first, min(count, first + batch))]
            if first == 0:
                msgspec.convert(documents[0], Record)  # the shape the service reads back
            for d in documents:
                facts.classes.update(d["classes"])
                facts.tags.update(t["name"] for t in d["tags"])
                facts.keywords.update(d["keywords"])
                facts.widths.append(d["width"])
                facts.qualities.append(d["label_quality_estimation"])
                if int(d["_id"][4:], 16) % 10 == 9:
                    facts.near_duplicates.append(d["_id"])
            facts.hashes += [d["hash"] for d in documents[:: max(1, batch // 20)]]
            facts.urls += [d["url"] for d in documents[5 :: max(1, batch // 20)]]
            facts.last_datetime = documents[-1]["datetime"]
            await collection.insert_many(documents, ordered=False)
            print(
                f"seeded {first + len(documents)} records in {time.perf_counter() - started:.0f} s",
                file=sys.stderr,
                flush=True,
            )
    finally:
        await client.close()
    return facts


async def create_key(uri: str, db_name: str) -> str:
    client: AsyncMongoClient[Document] = AsyncMongoClient(uri)
    try:
        keys = ApiKeyStore(client[db_name])
        await keys.ensure_indexes()
        return await keys.create("bench", ["read"], rate=Rate(100_000, 1), daily_quota=100_000_000)
    finally:
        await client.close()
