"""COCO mAP of the in-process detector on the evalset (128 COCO val2017 photos).

``python -m bench.detection_map`` prints one JSON line. ``coco_map`` scores any boxes,
e.g. ones that came back through the HTTP API.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import PIL.ImageOps

from service.infer.yolox import load_yolox

REPO = Path(__file__).resolve().parents[1]
REFERENCE_MAP50_95 = 0.299

# coco_classes.txt keeps the YOLOX (VOC-style) spellings; instances.json has the official ones.
YOLOX_TO_COCO = {
    "motorbike": "motorcycle",
    "aeroplane": "airplane",
    "sofa": "couch",
    "pottedplant": "potted plant",
    "diningtable": "dining table",
    "tvmonitor": "tv",
}


def model_dir() -> Path:
    return Path(os.environ.get("LABELSVC_MODEL_DIR") or REPO.parent / "shared" / "models")


def evalset_dir() -> Path:
    return Path(os.environ.get("LABELSVC_EVALSET_DIR") or REPO.parent / "shared" / "evalset")


def coco_map(
    detections_by_file: Mapping[str, Sequence[Mapping[str, Any]]],
    annotations: Path | None = None,
) -> dict[str, float]:
    """COCO box mAP of ``{file_name: [{classname, conf, x1, y1, x2, y2}, ...]}``.

    Every evalset image counts; an image missing from the mapping has no detections.
    Class names may use the official COCO or the YOLOX spelling.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    path = annotations or evalset_dir() / "annotations" / "instances.json"
    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO(str(path))
    category = {c["name"]: c["id"] for c in truth.loadCats(truth.getCatIds())}
    image_id = {img["file_name"]: img["id"] for img in truth.loadImgs(truth.getImgIds())}
    results: list[dict[str, Any]] = []
    for file_name, detections in detections_by_file.items():
        name = Path(file_name).name
        if name not in image_id:
            raise KeyError(f"{file_name} is not an evalset image")
        for det in detections:
            classname = YOLOX_TO_COCO.get(det["classname"], det["classname"])
            x1, y1, x2, y2 = (float(det[k]) for k in ("x1", "y1", "x2", "y2"))
            results.append(
                {
                    "image_id": image_id[name],
                    "category_id": category[classname],
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "score": float(det["conf"]),
                }
            )
    if not results:
        return {"map50_95": 0.0, "map50": 0.0, "map75": 0.0, "mar100": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):
        predicted = truth.loadRes(results)
        evaluation = COCOeval(truth, predicted, "bbox")
        evaluation.params.imgIds = sorted(image_id.values())
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    stats = evaluation.stats
    return {
        "map50_95": float(stats[0]),
        "map50": float(stats[1]),
        "map75": float(stats[2]),
        "mar100": float(stats[8]),
    }


def load_rgb(path: Path) -> PIL.Image.Image:
    """Decode as the service does: EXIF orientation applied, converted to RGB."""
    with PIL.Image.open(path) as image:
        upright = PIL.ImageOps.exif_transpose(image)
        return upright.convert("RGB")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.detection_map", description=__doc__)
    parser.add_argument("--provider", default="cpu", choices=["auto", "cpu", "cuda", "tensorrt"])
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (0: all)")
    parser.add_argument("--min-confidence", type=float, default=0.001)
    args = parser.parse_args(argv)

    detector = load_yolox(model_dir(), provider=args.provider, intra_op_threads=args.threads)
    files = sorted((evalset_dir() / "images").glob("*.jpg"))
    images = {path.name: load_rgb(path) for path in files}
    detector.detect(next(iter(images.values())), args.min_confidence)  # warm-up
    by_file: dict[str, list[dict[str, Any]]] = {}
    timings: list[float] = []
    for name, image in images.items():
        start = time.perf_counter()
        detections = detector.detect(image, args.min_confidence)
        timings.append(time.perf_counter() - start)
        by_file[name] = [dataclasses.asdict(d) for d in detections]
    scores = coco_map(by_file)
    # The service stores integer pixels; score those boxes too.
    rounded = {
        name: [{**d, **{k: round(d[k]) for k in ("x1", "y1", "x2", "y2")}} for d in dets]
        for name, dets in by_file.items()
    }
    scores_int = coco_map(rounded)
    line = {
        "name": "detection_map",
        "map50_95": round(scores["map50_95"], 4),
        "map50": round(scores["map50"], 4),
        "reference_map50_95": REFERENCE_MAP50_95,
        "images": len(files),
        "ms_per_image": round(float(np.mean(timings)) * 1000.0, 2),
        "ratio": round(scores["map50_95"] / REFERENCE_MAP50_95, 4),
        "map50_95_int_boxes": round(scores_int["map50_95"], 4),
        "map50_int_boxes": round(scores_int["map50"], 4),
        "provider": detector.provider,
        "threads": args.threads,
    }
    sys.stdout.write(json.dumps(line) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
