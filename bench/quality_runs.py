"""One pass of every model over the evalset photos, scored against the human boxes.

``collect`` runs YOLOX (once, at ``quality.SUB_MIN_CONF``, split into kept and sub-threshold
boxes as the service does), the second opinions (NanoDet, YOLOX at
``quality.SECOND_SCALE_SIZE`` and YOLOX on the flipped image), the tagger and the image
properties in-process, and gives one ``ImageRun`` per photo: what each model found, and the
per-image precision, recall and F1 of the kept boxes at IoU 0.5 (``match_image``). The
quality report (``bench.quality``) fits and scores on these runs.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import PIL.Image

from bench.detection_map import YOLOX_TO_COCO, coco_map, evalset_dir, load_rgb, model_dir
from service.describe.properties import image_properties
from service.domain.records import ImageProperties
from service.infer.nanodet import load_nanodet
from service.infer.runtime import ProviderChoice
from service.infer.tagger import Tag, load_tagger
from service.infer.yolox import Detection, YoloxDetector, load_yolox
from service.score import quality

IOU_MATCH = 0.5
F1_RIGHT = 0.5
MAP_CONFIDENCE = 0.001
T = TypeVar("T")

Truth = list[tuple[str, tuple[float, float, float, float], bool]]  # (class, xyxy, iscrowd)
Objects = list[tuple[str, tuple[float, float, float, float]]]


@dataclasses.dataclass
class ImageRun:
    """Everything the models said about one evalset photo, and the timings."""

    file_name: str
    image_id: int
    size: tuple[int, int]
    kept: list[Detection]
    below: list[Detection]  # YOLOX's boxes with SUB_MIN_CONF <= conf < KEPT_CONF
    nanodet: list[Detection]
    scaled: list[Detection]  # YOLOX at quality.SECOND_SCALE_SIZE
    flipped: list[Detection]
    tags: list[Tag]
    props: ImageProperties
    ms: dict[str, float]
    truth: Truth
    precision: float = 0.0
    recall: float = 0.0
    f1: float = 0.0
    box_tp: list[bool] = dataclasses.field(default_factory=list)
    missed: Objects = dataclasses.field(default_factory=list)

    @property
    def right(self) -> bool:
        return self.f1 >= F1_RIGHT


def _iou(a: Sequence[float], b: Sequence[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _ioa(box: Sequence[float], region: Sequence[float]) -> float:
    """Intersection over the area of ``box`` (how COCO matches detections to crowd regions)."""
    ix = max(0.0, min(box[2], region[2]) - max(box[0], region[0]))
    iy = max(0.0, min(box[3], region[3]) - max(box[1], region[1]))
    area = (box[2] - box[0]) * (box[3] - box[1])
    return ix * iy / area if area > 0 else 0.0


def match_image(
    detections: Sequence[Detection], truth: Truth
) -> tuple[float, float, float, list[bool], Objects]:
    """Precision, recall, F1 at IoU 0.5 (class-aware, greedy by confidence), per-box TP flags
    (in input order) and the objects no detection found.

    Crowd regions are not objects to find; a detection that falls on one of its class counts
    neither way (as in COCO). An image with no objects and no detections has F1 1 (nothing
    to find, nothing claimed); with exactly one of the two empty, F1 is 0.
    """
    objects = [(name, box) for name, box, crowd in truth if not crowd]
    crowds = [(name, box) for name, box, crowd in truth if crowd]
    used = [False] * len(objects)
    flags = [False] * len(detections)
    ignored = 0
    for index in sorted(range(len(detections)), key=lambda i: -detections[i].conf):
        det = detections[index]
        name = YOLOX_TO_COCO.get(det.classname, det.classname)
        box = (det.x1, det.y1, det.x2, det.y2)
        best, best_iou = -1, IOU_MATCH
        for k, (truth_name, truth_box) in enumerate(objects):
            if used[k] or truth_name != name:
                continue
            overlap = _iou(box, truth_box)
            if overlap >= best_iou:
                best, best_iou = k, overlap
        if best >= 0:
            used[best] = flags[index] = True
        elif any(n == name and _ioa(box, region) >= IOU_MATCH for n, region in crowds):
            ignored += 1
    tp = sum(used)
    claimed = len(detections) - ignored
    missed = [obj for obj, found in zip(objects, used, strict=True) if not found]
    if claimed == 0 and not objects:
        return 1.0, 1.0, 1.0, flags, missed
    precision = tp / claimed if claimed else 0.0
    recall = tp / len(objects) if objects else 0.0
    f1 = 2 * tp / (claimed + len(objects))
    return precision, recall, f1, flags, missed


def load_truth(annotations: Path) -> tuple[dict[str, int], dict[int, Truth]]:
    data = json.loads(annotations.read_text(encoding="utf-8"))
    names = {c["id"]: c["name"] for c in data["categories"]}
    ids = {img["file_name"]: img["id"] for img in data["images"]}
    truth: dict[int, Truth] = {i: [] for i in ids.values()}
    for ann in data["annotations"]:
        x, y, w, h = ann["bbox"]
        truth[ann["image_id"]].append(
            (names[ann["category_id"]], (x, y, x + w, y + h), bool(ann["iscrowd"]))
        )
    return ids, truth


def _timed(ms: dict[str, float], stage: str, call: Callable[..., T], *args: Any) -> T:
    start = time.perf_counter()
    result = call(*args)
    ms[stage] = (time.perf_counter() - start) * 1000.0
    return result


def detect_flipped(detector: YoloxDetector, image: PIL.Image.Image) -> list[Detection]:
    """YOLOX on the mirrored image (test-time augmentation), boxes mapped back."""
    mirrored = image.transpose(PIL.Image.Transpose.FLIP_LEFT_RIGHT)
    return quality.unflip(detector.detect(mirrored, quality.SECOND_MIN_CONF), image.width)


def detect_split(
    detector: YoloxDetector, image: PIL.Image.Image
) -> tuple[list[Detection], list[Detection]]:
    """One YOLOX pass at ``SUB_MIN_CONF``, split into kept and sub-threshold boxes.

    Class-aware greedy NMS only lets a box be suppressed by a higher-scoring one, so the kept
    boxes are exactly those of a pass at ``KEPT_CONF``.
    """
    found = detector.detect(image, quality.SUB_MIN_CONF)
    return [d for d in found if d.conf >= quality.KEPT_CONF], quality.sub_threshold(found)


def collect(
    *, provider: ProviderChoice, threads: int, int8: bool = False
) -> tuple[list[ImageRun], dict[str, float], dict[str, float], dict[str, str]]:
    """Run every model over the evalset; returns the runs, the mAPs of both detectors and
    the execution provider each model ran on. ``int8``: NanoDet quantized
    (``LABELSVC_SECOND_OPINION_INT8``)."""
    root = evalset_dir()
    ids, truth = load_truth(root / "annotations" / "instances.json")
    yolox = load_yolox(model_dir(), provider=provider, intra_op_threads=threads)
    nanodet = load_nanodet(model_dir(), provider=provider, intra_op_threads=threads, int8=int8)
    scaled = load_yolox(
        model_dir(),
        provider=provider,
        intra_op_threads=threads,
        input_size=quality.SECOND_SCALE_SIZE,
    )
    tagger = load_tagger(model_dir(), provider=provider, intra_op_threads=threads)
    files = sorted((root / "images").glob("*.jpg"))
    warm = load_rgb(files[0])
    for _ in range(3):
        detect_split(yolox, warm)
        nanodet.detect(warm, quality.SECOND_MIN_CONF)
        scaled.detect(warm, quality.SECOND_MIN_CONF)
        tagger.tag(warm)
        image_properties(warm)
    runs: list[ImageRun] = []
    map_yolox: dict[str, list[dict[str, Any]]] = {}
    map_nanodet: dict[str, list[dict[str, Any]]] = {}
    for path in files:
        image = load_rgb(path)
        ms: dict[str, float] = {}
        image_id = ids[path.name]
        kept, below = _timed(ms, "yolox", detect_split, yolox, image)
        runs.append(
            ImageRun(
                file_name=path.name,
                image_id=image_id,
                size=image.size,
                kept=kept,
                below=below,
                nanodet=_timed(ms, "nanodet", nanodet.detect, image, quality.SECOND_MIN_CONF),
                scaled=_timed(ms, "second_scale", scaled.detect, image, quality.SECOND_MIN_CONF),
                flipped=_timed(ms, "flip_tta", detect_flipped, yolox, image),
                tags=_timed(ms, "tagger", tagger.tag, image),
                props=_timed(ms, "properties", image_properties, image),
                ms=ms,
                truth=truth[image_id],
            )
        )
        map_yolox[path.name] = [dataclasses.asdict(d) for d in yolox.detect(image, MAP_CONFIDENCE)]
        map_nanodet[path.name] = [
            dataclasses.asdict(d) for d in nanodet.detect(image, MAP_CONFIDENCE)
        ]
    for run in runs:
        run.precision, run.recall, run.f1, run.box_tp, run.missed = match_image(run.kept, run.truth)
    providers = {
        "yolox": yolox.provider,
        "nanodet": nanodet.provider,
        "second_scale": scaled.provider,
        "tagger": tagger.provider,
    }
    return runs, coco_map(map_yolox), coco_map(map_nanodet), providers


def miss_targets(run: ImageRun, second: list[Detection] | None) -> list[bool]:
    """For each ``quality.miss_candidates`` box: is it an object the kept boxes missed?"""
    found: list[bool] = []
    for det in quality.miss_candidates(run.kept, second, run.below):
        name = YOLOX_TO_COCO.get(det.classname, det.classname)
        box = (det.x1, det.y1, det.x2, det.y2)
        found.append(any(n == name and _iou(box, b) >= IOU_MATCH for n, b in run.missed))
    return found
