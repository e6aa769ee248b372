"""Build the models the service runs from settings: verified, loaded and warmed up."""

from __future__ import annotations

import logging
import time

from PIL import Image

from service.infer.yolox import YoloxDetector, load_yolox
from service.settings import Settings

log = logging.getLogger(__name__)


def load_detector(settings: Settings) -> YoloxDetector:
    """The object detector, after one warm-up run so the first request pays no set-up cost."""
    start = time.perf_counter()
    detector = load_yolox(
        settings.model_dir,
        provider=settings.execution_provider,
        intra_op_threads=settings.ort_threads,
        input_size=settings.detector_input_size,
        nms_iou=settings.nms_iou,
        max_detections=settings.max_detections,
    )
    detector.detect(Image.new("RGB", (settings.detector_input_size,) * 2, (114, 114, 114)), 1.0)
    log.info(
        "loaded %s on %s in %.2fs", detector.name, detector.provider, time.perf_counter() - start
    )
    return detector
