"""The analysis of one image: decode, run the models, describe, score, caption. No I/O.

Decoding runs first; then the detector, the second-opinion detector, the tagger and the
pixel statistics run concurrently as separate executor tasks, so one image's latency is
close to its longest stage rather than their sum. Scoring and the grounded caption follow
as one more executor task, so that none of this work holds up the event loop. The same
object serves the service and the in-process baseline of the ingest benchmark, so both
measure exactly the same stages.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import msgspec
from PIL import Image

from service.caption.grounded import grounded_caption
from service.decode.image import DecodedImage, decode_image
from service.describe.properties import image_properties
from service.domain.records import (
    Analysis,
    Box,
    Caption,
    ImageProperties,
    LabelQuality,
    Tag,
)
from service.executor import BlockingExecutor
from service.infer.batching import BatchPolicy, MicroBatcher, Runner
from service.infer.models import Models
from service.infer.nanodet import NanoDetDetector
from service.infer.tagger import EfficientNetTagger
from service.infer.tagger import Tag as TaggerTag
from service.infer.yolox import Detection, YoloxDetector
from service.observability import Metrics
from service.score import quality

Params = dict[str, float | int | str | bool]

log = logging.getLogger(__name__)
QUALITY_MODEL = "expected-f1-logistic-v2"
GROUNDED = "grounded-v1"
TAG_TOP_K = 5
TAG_MIN_CONF = 0.05


@dataclass(frozen=True, slots=True)
class ImageAnalysis:
    decoded: DecodedImage
    boxes: list[Box]
    tags: list[Tag]
    properties: ImageProperties
    quality: LabelQuality
    caption: Caption
    # The captioner that ran to the end: the neural one even when it wrote nothing for the
    # image (caption.model then names the grounded one, whose text the record holds).
    captioned_by: str = GROUNDED


@dataclass(frozen=True, slots=True)
class _Scored:
    detections: list[Detection]
    estimate: quality.QualityEstimate
    per_box: list[float]
    caption: Caption


def to_boxes(
    detections: list[Detection], decoded: DecodedImage, qualities: list[float] | None = None
) -> list[Box]:
    """Detections on the (possibly reduced) model image -> integer full-resolution pixels."""
    reduction = decoded.reduction
    w, h = decoded.width, decoded.height
    per_box = qualities if qualities is not None else [None] * len(detections)

    def px(value: float, limit: int) -> int:
        return min(max(round(value * reduction), 0), limit)

    return [
        Box(
            classname=d.classname,
            conf=round(d.conf, 4),
            x1=px(d.x1, w),
            y1=px(d.y1, h),
            x2=px(d.x2, w),
            y2=px(d.y2, h),
            quality=q,
        )
        for d, q in zip(detections, per_box, strict=True)
    ]


class ImageAnalyzer:
    def __init__(
        self,
        models: Models,
        *,
        min_confidence: float,
        max_pixels: int,
        metrics: Metrics | None = None,
        captions: MicroBatcher[Image.Image, str] | None = None,
        caption_beams: int = 1,
        batch_runner: Runner | None = None,
        detect_batch: BatchPolicy | None = None,
    ) -> None:
        """``captions`` batches neural captioning across concurrent requests (see
        ``caption_batcher``); without it the grounded captioner writes every text.
        ``detect_batch`` (with more than one image) gathers concurrent images into one
        detector run on ``batch_runner`` (``BlockingExecutor.run_admitted``); the detector
        must have been loaded for batches."""
        self.models = models
        self._captions = captions
        self.detector = models.detector
        self.min_confidence = min_confidence
        self._caption_beams = caption_beams
        self.max_pixels = max_pixels
        # Decoding may shrink the image (JPEG draft mode) as far as the model inputs allow.
        self._decode_sides = models.decoded_sides()
        self._metrics = metrics or Metrics()
        self._detections: MicroBatcher[Image.Image, list[Detection]] | None = None
        if (
            batch_runner is not None
            and detect_batch is not None
            and detect_batch.max_batch_size > 1
        ):
            self._detections = MicroBatcher(self._detect_batch, batch_runner, detect_batch)

    async def analyze(self, data: bytes, executor: BlockingExecutor) -> ImageAnalysis:
        """No stage is refused: admission to the executor is the caller's, before the image
        was downloaded (``BlockingExecutor.admit``)."""
        run = executor.run_admitted
        decoded = await run(self._decode, data)
        image = decoded.image
        detected = (
            self._detections.submit(image)
            if self._detections is not None
            else run(self._detect, image)
        )
        # A model that is not loaded gets no job (each job takes a place in the executor's
        # queue and a trip through a worker), and its result is None.
        m = self.models
        found, second, scaled, tags, props = await asyncio.gather(
            detected,
            run(self._second_look, m.second, "second_opinion", image)
            if m.second is not None
            else _none(),
            run(self._second_look, m.scaled_second, "second_scale", image)
            if m.scaled_second is not None
            else _none(),
            run(self._tag, m.tagger, image) if m.tagger is not None else _none(),
            run(self._describe, decoded),
        )
        model = None
        if second is not None and scaled is not None:
            second, model = second + scaled, quality.WITH_SECOND_SCALE
        scored = await run(self._score, found, second, tags, props, image.size, model)
        detections, estimate, caption = scored.detections, scored.estimate, scored.caption
        captioned_by = GROUNDED
        if self._captions is not None and self.models.captioner is not None:
            with self._metrics.stage("caption"):
                try:
                    text = await self._captions.submit(image)
                except Exception:  # optional text: it must not cost the labels already made
                    log.exception("neural captioning failed; the grounded caption stays")
                    self._metrics.caption_failures.inc()
                else:
                    captioned_by = self.models.captioner.name
                    caption = with_neural_text(caption, text, self)
        score = round(estimate.score, 4)
        return ImageAnalysis(
            decoded=decoded,
            boxes=to_boxes(detections, decoded, scored.per_box),
            tags=[Tag(name=t.name, conf=round(t.conf, 4)) for t in tags or []],
            properties=props,
            quality=LabelQuality(
                score=score,
                components={k: round(v, 4) for k, v in estimate.components.items()},
                model=self.quality_model,
            ),
            caption=caption,
            captioned_by=captioned_by,
        )

    @property
    def quality_model(self) -> str:
        """The name of the label-quality method in use: records scored without a second
        opinion (a weaker estimate, on confidences alone) must be told apart."""
        if self.models.second is None:
            return f"{QUALITY_MODEL}-confidence-only"
        scaled = self.models.scaled_second is not None
        return f"{QUALITY_MODEL}+scale{quality.SECOND_SCALE_SIZE}" if scaled else QUALITY_MODEL

    def lineage(self, processed_at: str, *, caption_by: str = GROUNDED) -> list[Analysis]:
        """One entry per analysis that ran: which model, which weights, which settings.

        ``caption_by`` is the analysis's ``captioned_by``: the neural captioner is listed when
        it ran, even if it wrote nothing for the image (the same next time: the record is not
        stale for it), the grounded one when it failed (a relabel tries again)."""
        models = self.models
        entries = [
            _model_entry("object_detection", models.detector, processed_at, self._detect_params()),
        ]
        if models.second is not None:
            params: Params = {"min_confidence": quality.SECOND_MIN_CONF}
            if models.second.int8_ranges is not None:
                params["int8_ranges"] = models.second.int8_ranges
            entries.append(_model_entry("second_opinion", models.second, processed_at, params))
        scaled = models.scaled_second
        if scaled is not None:
            params = {"input_size": scaled.input_size, "min_confidence": quality.SECOND_MIN_CONF}
            entries.append(_model_entry("second_scale", scaled, processed_at, params))
        if models.tagger is not None:
            params = {"top_k": TAG_TOP_K, "min_confidence": TAG_MIN_CONF}
            entries.append(_model_entry("scene_tags", models.tagger, processed_at, params))
        entries += [
            Analysis("image_properties", "pixel-statistics", "1", None, {}, processed_at),
            Analysis(
                "label_quality",
                self.quality_model,
                "1",
                None,
                {
                    "second_opinion": models.second is not None,
                    "second_scale": scaled is not None,
                    "sub_threshold_min_confidence": quality.SUB_MIN_CONF,
                },
                processed_at,
            ),
        ]
        captioner = models.captioner
        if captioner is not None and caption_by == captioner.name:
            params = {"num_beams": self._caption_beams}
            entries.append(_model_entry("caption", captioner, processed_at, params))
        else:
            entries.append(Analysis("caption", GROUNDED, "1", None, {}, processed_at))
        return entries

    def current_lineage(self) -> list[Analysis]:
        """The lineage a record labeled now gets when every analysis succeeds."""
        captioner = self.models.captioner
        return self.lineage("", caption_by=captioner.name if captioner is not None else GROUNDED)

    def _detect_params(self) -> Params:
        return {
            "input_size": self.detector.input_size,
            "min_confidence": self.min_confidence,
            "nms_iou": self.detector.nms_iou,
            "max_detections": self.detector.max_detections,
            "provider": self.detector.provider,
        }

    def _decode(self, data: bytes) -> DecodedImage:
        with self._metrics.stage("decode"):
            longest, shortest = self._decode_sides
            return decode_image(
                data, max_pixels=self.max_pixels, target_size=longest, short_side=shortest
            )

    def _detect(self, image: Image.Image) -> list[Detection]:
        """Detections down to the lower of ``min_confidence`` and ``quality.SUB_MIN_CONF``.

        Greedy class-aware NMS only lets a box be suppressed by a higher-scoring one, so the
        boxes at or above ``min_confidence`` are exactly those a pass at that threshold finds.
        """
        with self._stage("detect", self.detector):
            return self.detector.detect(image, self.detection_floor)

    def _detect_batch(self, images: Sequence[Image.Image]) -> list[list[Detection]]:
        self._metrics.batch_size.labels(self.detector.name).observe(len(images))
        with self._stage("detect", self.detector):
            return self.detector.detect_batch(images, self.detection_floor)

    @property
    def detection_floor(self) -> float:
        """The detector's threshold: labels from ``min_confidence`` up, and below them the
        boxes the quality estimate uses (``quality.SUB_MIN_CONF``)."""
        return min(self.min_confidence, quality.SUB_MIN_CONF)

    def _second_look(
        self, model: NanoDetDetector | YoloxDetector, stage: str, image: Image.Image
    ) -> list[Detection]:
        """A detector the quality estimate consults (NanoDet, or YOLOX at a second scale)."""
        with self._stage(stage, model):
            return model.detect(image, quality.SECOND_MIN_CONF)

    def _tag(self, tagger: EfficientNetTagger, image: Image.Image) -> list[TaggerTag]:
        with self._stage("tag", tagger):
            return tagger.tag(image, top_k=TAG_TOP_K, min_conf=TAG_MIN_CONF)

    def _score(
        self,
        found: list[Detection],
        second: list[Detection] | None,
        tags: list[TaggerTag] | None,
        props: ImageProperties,
        size: tuple[int, int],
        model: quality.QualityModel | None,
    ) -> _Scored:
        """The labels kept, their quality and the grounded caption: numpy and string work
        that would hold up the event loop for a millisecond or more per image."""
        with self._metrics.stage("score"):
            # One detector pass serves both: the labels (>= min_confidence) and, for the
            # quality estimate, the boxes just below the kept threshold.
            detections = [d for d in found if d.conf >= self.min_confidence]
            kept = [d for d in found if d.conf >= quality.KEPT_CONF]
            estimate = quality.estimate(kept, second, tags, props, size, below=found, model=model)
            per_box = (
                estimate.box_quality
                if detections == kept  # the default: the record keeps the boxes scored
                else quality.box_quality(detections, second, model=model)
            )
            # The boxes are in the analysed image's pixels (a large JPEG is decoded reduced):
            # framing and coverage compare them with that image's size.
            caption = grounded_caption(detections, tags or [], _with_size(props, *size))
        return _Scored(detections, estimate, per_box, caption)

    def _describe(self, decoded: DecodedImage) -> ImageProperties:
        with self._metrics.stage("describe"):
            props = image_properties(decoded.viewed)  # the colours people see
        # Report the full-resolution size, not the size of the reduced copy analysed.
        return _with_size(props, decoded.width, decoded.height)

    @contextmanager
    def _stage(self, stage: str, model: Any) -> Iterator[None]:
        start = time.perf_counter()
        with self._metrics.stage(stage):
            yield
        self._metrics.inference_latency.labels(model.instance_name, model.provider).observe(
            time.perf_counter() - start
        )


def caption_batcher(
    models: Models,
    executor: BlockingExecutor,
    metrics: Metrics,
    *,
    beams: int,
    batch: BatchPolicy,
) -> MicroBatcher[Image.Image, str] | None:
    """Neural captioning with a micro-batch per decoder run, when a captioner is loaded."""
    captioner = models.captioner
    if captioner is None:
        return None

    def run(images: Sequence[Image.Image]) -> list[str]:
        start = time.perf_counter()
        texts = captioner.caption(images, num_beams=beams)
        metrics.inference_latency.labels(captioner.instance_name, captioner.provider).observe(
            time.perf_counter() - start
        )
        metrics.batch_size.labels(captioner.name).observe(len(images))
        return texts

    return MicroBatcher(run, executor.run_admitted, batch)


async def _none() -> None:
    return None


def with_neural_text(grounded: Caption, text: str, analyzer: ImageAnalyzer) -> Caption:
    """The neural caption as title and opening sentence; the grounded description follows
    and the scene analysis (composition, light, colour) stays the grounded one."""
    captioner = analyzer.models.captioner
    text = " ".join(text.split()).strip()
    # Text with no letter or digit ("...", say) is no caption: the grounded one stays.
    if captioner is None or not any(c.isalnum() for c in text):
        return grounded
    sentence = text[0].upper() + text[1:]
    if not sentence.endswith((".", "!", "?")):
        sentence += "."
    return Caption(
        title=sentence.rstrip("."),
        description=f"{sentence} {grounded.description}",
        scene_analysis=grounded.scene_analysis,
        model=captioner.name,
    )


def _with_size(props: ImageProperties, width: int, height: int) -> ImageProperties:
    return msgspec.structs.replace(props, width=width, height=height)


def _model_entry(name: str, model: Any, processed_at: str, params: Params) -> Analysis:
    return Analysis(
        name=name,
        model=model.name,
        version=model.version,
        sha256=model.sha256,
        params={**params, "provider": model.provider},
        processed_at=processed_at,
    )
