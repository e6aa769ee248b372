"""The blocking analysis of one image: decode, run the models, describe. No I/O.

Runs on the executor. The same object serves the service and the in-process baseline of
the ingest benchmark, so both measure exactly the same stages.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from service.decode.image import DecodedImage, decode_image
from service.domain.records import Box
from service.infer.yolox import Detection, YoloxDetector
from service.observability import Metrics


@dataclass(frozen=True, slots=True)
class ImageAnalysis:
    decoded: DecodedImage
    boxes: list[Box]


def to_boxes(detections: list[Detection], decoded: DecodedImage) -> list[Box]:
    """Detections on the (possibly reduced) model image -> integer full-resolution pixels."""
    inverse = 1.0 / decoded.scale
    w, h = decoded.width, decoded.height

    def px(value: float, limit: int) -> int:
        return min(max(round(value * inverse), 0), limit)

    return [
        Box(
            classname=d.classname,
            conf=round(d.conf, 4),
            x1=px(d.x1, w),
            y1=px(d.y1, h),
            x2=px(d.x2, w),
            y2=px(d.y2, h),
        )
        for d in detections
    ]


class ImageAnalyzer:
    def __init__(
        self,
        detector: YoloxDetector,
        *,
        min_confidence: float,
        max_pixels: int,
        metrics: Metrics | None = None,
    ) -> None:
        self.detector = detector
        self.min_confidence = min_confidence
        self.max_pixels = max_pixels
        self._metrics = metrics or Metrics()

    def analyze(self, data: bytes) -> ImageAnalysis:
        with self._metrics.stage("decode"):
            decoded = decode_image(
                data, max_pixels=self.max_pixels, target_size=self.detector.input_size
            )
        with self._metrics.stage("detect"):
            start = time.perf_counter()
            detections = self.detector.detect(decoded.image, self.min_confidence)
            self._metrics.inference_latency.labels(
                self.detector.name, self.detector.provider
            ).observe(time.perf_counter() - start)
        return ImageAnalysis(decoded=decoded, boxes=to_boxes(detections, decoded))
