"""Build the models the service runs from settings: verified, loaded and warmed up.

The detector is required. The second opinion for the label-quality estimate (NanoDet, and
optionally the same YOLOX weights at a larger input size) and the tagger are loaded when
enabled and their files are in the model directory; without them the service still labels,
with a weaker quality estimate and no tags.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import onnxruntime as ort
from PIL import Image

from service.infer import nanodet, tagger, yolox
from service.infer.captioner import NeuralCaptioner, verify_export
from service.infer.engine_lock import engine_cache_lock
from service.infer.manifest import ModelError, resolve, spec
from service.infer.nanodet import NanoDetDetector, load_nanodet
from service.infer.runtime import choose_providers, refuse_int8_on_gpu
from service.infer.tagger import EfficientNetTagger, load_tagger
from service.infer.yolox import YoloxDetector, load_yolox
from service.score import quality
from service.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Models:
    detector: YoloxDetector
    second: NanoDetDetector | None
    tagger: EfficientNetTagger | None
    captioner: NeuralCaptioner | None = None
    # The detector at quality.SECOND_SCALE_SIZE: optional, joins ``second``'s opinion.
    second_scale: YoloxDetector | None = None

    @property
    def scaled_second(self) -> YoloxDetector | None:
        """The second scale when it is in use: it only ever joins NanoDet's opinion."""
        return self.second_scale if self.second is not None else None

    def decoded_sides(self) -> tuple[int, int]:
        """The longest and the shortest side a decoded image needs so that no model sees it
        upsampled: the detectors letterbox the longest side, the tagger crops from the
        shortest, and a neural captioner resizes both sides to its input."""
        detectors = (self.detector, self.second, self.scaled_second)
        longest = max(d.input_size for d in detectors if d is not None)
        shortest = max(
            tagger.RESIZE_SHORT if self.tagger is not None else 0,
            self.captioner.input_side if self.captioner is not None else 0,
        )
        return longest, shortest

    def loaded(self) -> list[Any]:
        models = (self.detector, self.second, self.second_scale, self.tagger, self.captioner)
        return [m for m in models if m is not None]


def load_models(settings: Settings) -> Models:
    with engine_cache_lock(settings.engine_cache):
        return _load_models(settings)


def _load_models(settings: Settings) -> Models:
    _check_providers(settings)  # before the detector's seconds of loading on a GPU
    common: dict[str, Any] = {
        "provider": settings.execution_provider,
        "intra_op_threads": settings.ort_threads,
    }
    image_models = {**common, "engine_cache": settings.engine_cache}

    def yolox_at(size: int, *, max_batch: int = 1) -> YoloxDetector:
        detector: YoloxDetector = _timed(
            lambda: load_yolox(
                settings.model_dir,
                input_size=size,
                nms_iou=settings.nms_iou,
                max_detections=settings.max_detections,
                max_batch=max_batch,
                **image_models,
            )
        )
        if max_batch > 1:
            # Warm up the full batch too (``_timed`` ran one image): on a GPU, TensorRT builds
            # an engine and cuDNN its plans for each shape a session sees; both should happen
            # here, not inside the first burst of requests.
            full = [Image.new("RGB", (size, size), (114, 114, 114))] * max_batch
            _warm_up(detector, lambda: detector.detect_batch(full, 1.0))
        return detector

    detector = yolox_at(settings.detector_input_size, max_batch=settings.detect_batch_size)
    second = second_scale = tagger = None
    if _wants_second_opinion(settings):
        second = _timed(
            lambda: load_nanodet(
                settings.model_dir, int8=settings.second_opinion_int8, **image_models
            )
        )
    if second is not None and settings.second_scale:
        second_scale = yolox_at(quality.SECOND_SCALE_SIZE)
    if _wants_tagger(settings):
        tagger = _timed(lambda: load_tagger(settings.model_dir, **image_models))
    captioner = None
    if settings.captioner_dir is not None:
        captioner = NeuralCaptioner(settings.captioner_dir, **common)
        image = Image.new("RGB", (64, 64))
        _warm_up(
            captioner,
            lambda: captioner.caption([image], num_beams=settings.caption_beams),
            name=f"captioner {settings.captioner_dir}",
        )
        log.info("loaded captioner %s on %s", captioner.name, captioner.provider)
    return Models(
        detector=detector,
        second=second,
        tagger=tagger,
        captioner=captioner,
        second_scale=second_scale,
    )


def check_models(settings: Settings) -> None:
    """Raise ``ModelError`` for what ``load_models`` would refuse, without loading anything:
    an execution provider this build lacks, int8 on a GPU, a missing or altered file. For a
    launcher whose serving processes load their own models: one line before anything
    starts, rather than a traceback from each process after the database started."""
    _check_providers(settings)
    for name in yolox.FILES:  # first, as it loads first: before the warnings below
        resolve(settings.model_dir, name)
    optional = [
        *(nanodet.FILES if _wants_second_opinion(settings) else ()),
        *(tagger.FILES if _wants_tagger(settings) else ()),
    ]
    for name in optional:
        resolve(settings.model_dir, name)
    if settings.captioner_dir is not None:
        verify_export(settings.captioner_dir)


def _check_providers(settings: Settings) -> None:
    """Raise ``ModelError`` for an execution provider this build lacks, or int8 on a GPU."""
    providers = choose_providers(settings.execution_provider, ort.get_available_providers())
    if settings.second_opinion and settings.second_opinion_int8:
        refuse_int8_on_gpu(spec(nanodet.MODEL_NAME).file, providers)


def _wants_second_opinion(settings: Settings) -> bool:
    return settings.second_opinion and _present(settings, nanodet.MODEL_NAME, nanodet.FILES)


def _wants_tagger(settings: Settings) -> bool:
    return settings.scene_tags and _present(settings, tagger.MODEL_NAME, tagger.FILES)


def _present(settings: Settings, model: str, files: Sequence[str]) -> bool:
    """Whether every file the optional ``model`` loads is in the model directory; if not, a
    warning names the missing ones. Files that are there are verified when they load."""
    missing = [
        spec(name).file for name in files if not (settings.model_dir / spec(name).file).is_file()
    ]
    if missing:
        shown = ", ".join(missing)
        log.warning("%s missing from %s: running without %s", shown, settings.model_dir, model)
        return False
    return True


def _timed(load: Any) -> Any:
    start = time.perf_counter()
    model = load()
    warm_up = Image.new("RGB", (416, 416), (114, 114, 114))
    if hasattr(model, "detect"):
        _warm_up(model, lambda: model.detect(warm_up, 1.0))
    else:
        _warm_up(model, lambda: model.tag(warm_up))
    log.info("loaded %s on %s in %.2fs", model.name, model.provider, time.perf_counter() - start)
    return model


def _warm_up(model: Any, run: Callable[[], object], *, name: str | None = None) -> None:
    """``run()``, a run of ``model`` before it serves. A failure is a ``ModelError`` naming
    the model (``name``, or its instance name) and its provider: an export whose shapes
    disagree with its description fails only when it runs, and so, on a GPU, may a CUDA or
    cuDNN library or kernel first loaded then."""
    try:
        run()
    except Exception as exc:  # onnxruntime raises its own, undocumented exception types
        what = name or f"model {model.instance_name}"
        detail = " ".join(str(exc).split())  # onnxruntime's messages span several lines
        raise ModelError(f"{what} on {model.provider} failed its warm-up run: {detail}") from exc
