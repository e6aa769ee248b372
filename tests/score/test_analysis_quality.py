"""The analysis feeds the quality estimate from the one detector pass it already makes."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import PIL.Image
import pytest

from bench.detection_map import load_rgb
from service.analysis import ImageAnalyzer
from service.executor import BlockingExecutor
from service.infer import tagger
from service.infer.batching import BatchPolicy
from service.infer.captioner import NeuralCaptioner
from service.infer.manifest import ModelError
from service.infer.models import Models, load_models
from service.infer.nanodet import load_nanodet
from service.infer.yolox import Detection, YoloxDetector, load_yolox
from service.observability import Metrics
from service.score import quality
from service.settings import Settings
from tests.conftest import CAT_PHOTO
from tests.infer.test_captioner import FIXTURES as CAPTIONERS

CROWDED_PHOTO = "000000217285.jpg"  # dozens of people, many of them small


@pytest.fixture(scope="module")
def detector(model_dir: Path) -> YoloxDetector:
    return load_yolox(model_dir, provider="cpu", intra_op_threads=1)


@pytest.fixture
def executor() -> Iterator[BlockingExecutor]:
    pool = BlockingExecutor(workers=2, max_pending=8)
    yield pool
    pool.shutdown()


@pytest.mark.parametrize("name", [CAT_PHOTO, CROWDED_PHOTO])
def test_one_low_pass_keeps_exactly_the_boxes_of_a_pass_at_the_threshold(
    detector: YoloxDetector, evalset_dir: Path, name: str
) -> None:
    image = load_rgb(evalset_dir / "images" / name)
    low = detector.detect(image, quality.SUB_MIN_CONF)
    assert [d for d in low if d.conf >= quality.KEPT_CONF] == detector.detect(
        image, quality.KEPT_CONF
    )


async def test_analysis_detects_once_and_stores_only_kept_boxes(
    detector: YoloxDetector,
    evalset_dir: Path,
    executor: BlockingExecutor,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[float] = []
    detect = detector.detect

    def recording(image: PIL.Image.Image, min_confidence: float) -> list[Detection]:
        calls.append(min_confidence)
        return detect(image, min_confidence)

    monkeypatch.setattr(detector, "detect", recording)
    jobs: list[str] = []
    run_admitted = executor.run_admitted

    def counting(call: Any, *args: Any) -> Any:
        jobs.append(call.__name__)
        return run_admitted(call, *args)

    monkeypatch.setattr(executor, "run_admitted", counting)
    analyzer = ImageAnalyzer(
        Models(detector=detector, second=None, tagger=None), min_confidence=0.3, max_pixels=10**8
    )
    data = (evalset_dir / "images" / CROWDED_PHOTO).read_bytes()
    result = await analyzer.analyze(data, executor)

    assert calls == [quality.SUB_MIN_CONF]  # one pass, at the lower threshold
    # Models that are not loaded take no place in the executor's queue; the scoring (numpy
    # and string work) takes one, off the event loop.
    assert sorted(jobs) == ["_decode", "_describe", "_detect", "_score"]
    image = result.decoded.image
    at_threshold = detect(image, 0.3)
    assert [(b.classname, b.conf) for b in result.boxes] == [
        (d.classname, round(d.conf, 4)) for d in at_threshold
    ]
    # Each box's quality is judged among the boxes the record keeps, not those the score used.
    assert [b.quality for b in result.boxes] == quality.box_quality(at_threshold, None)
    low = detect(image, quality.SUB_MIN_CONF)
    components = result.quality.components
    assert components["sub_threshold_count"] == len(quality.sub_threshold(low)) > 0
    kept = [d for d in low if d.conf >= quality.KEPT_CONF]
    expected = quality.estimate(kept, None, None, result.properties, image.size, below=low)
    assert result.quality.score == expected.score
    # No tagger loaded: no tag components, rather than a tagger that backed nothing.
    assert "tag_support" not in components and "tag_missing" not in components
    # Scored without a second opinion: a weaker estimate, which the record names as such.
    assert result.quality.model == "expected-f1-logistic-v2-confidence-only"
    lineage = {a.name: a for a in analyzer.lineage("2024-01-01T00:00:00Z")}
    assert lineage["label_quality"].params["sub_threshold_min_confidence"] == quality.SUB_MIN_CONF


def test_the_detector_runs_at_another_input_size(detector: YoloxDetector, model_dir: Path) -> None:
    scaled = load_yolox(model_dir, provider="cpu", intra_op_threads=1, input_size=640)
    assert scaled.input_size == 640
    assert scaled.sha256 == detector.sha256  # the same weights
    image = PIL.Image.new("RGB", (1280, 960), (114, 114, 114))
    assert scaled.detect(image, 0.5) == []  # decodes 80*80 + 40*40 + 20*20 anchors
    with pytest.raises(ModelError, match="multiple of 32"):
        load_yolox(model_dir, provider="cpu", input_size=600)


async def test_second_scale_joins_the_second_opinion_with_its_own_coefficients(
    detector: YoloxDetector, model_dir: Path, evalset_dir: Path, executor: BlockingExecutor
) -> None:
    nanodet = load_nanodet(model_dir, provider="cpu", intra_op_threads=1)
    scaled = load_yolox(
        model_dir, provider="cpu", intra_op_threads=1, input_size=quality.SECOND_SCALE_SIZE
    )
    models = Models(detector=detector, second=nanodet, tagger=None, second_scale=scaled)
    analyzer = ImageAnalyzer(models, min_confidence=0.25, max_pixels=10**8)
    data = (evalset_dir / "images" / CROWDED_PHOTO).read_bytes()
    result = await analyzer.analyze(data, executor)

    image = result.decoded.image
    low = detector.detect(image, quality.SUB_MIN_CONF)
    kept = [d for d in low if d.conf >= quality.KEPT_CONF]
    second = nanodet.detect(image, quality.SECOND_MIN_CONF)
    both = second + scaled.detect(image, quality.SECOND_MIN_CONF)
    expected = quality.estimate(
        kept, both, [], result.properties, image.size, below=low, model=quality.WITH_SECOND_SCALE
    )
    assert result.quality.score == expected.score
    plain = quality.estimate(kept, second, [], result.properties, image.size, below=low)
    assert plain.score != expected.score
    assert [b.quality for b in result.boxes] == quality.box_quality(
        kept, both, model=quality.WITH_SECOND_SCALE
    )
    assert result.quality.model == "expected-f1-logistic-v2+scale640"
    lineage = {a.name: a for a in analyzer.lineage("2024-01-01T00:00:00Z")}
    assert lineage["second_scale"].params["input_size"] == quality.SECOND_SCALE_SIZE
    assert lineage["second_scale"].sha256 == detector.sha256
    assert lineage["label_quality"].params["second_scale"] is True
    assert lineage["label_quality"].model == result.quality.model


def test_int8_second_opinion_is_a_setting_named_in_the_lineage(model_dir: Path) -> None:
    """Records labeled with int8 NanoDet say so, so ``relabel=stale`` tells them apart from
    fp32 ones; records labeled without it keep the lineage they had."""
    plain = load_models(Settings(model_dir=model_dir, execution_provider="cpu"))
    int8 = load_models(
        Settings(model_dir=model_dir, execution_provider="cpu", second_opinion_int8=True)
    )

    def second_opinion(models: Models) -> dict[str, Any]:
        analyzer = ImageAnalyzer(models, min_confidence=0.25, max_pixels=10**8)
        lineage = {a.name: a for a in analyzer.current_lineage()}
        return dict(lineage["second_opinion"].params)

    assert plain.second is not None and plain.second.int8_ranges is None
    assert "int8_ranges" not in second_opinion(plain)
    assert int8.second is not None and int8.second.int8_ranges is not None
    assert second_opinion(int8)["int8_ranges"] == int8.second.int8_ranges
    assert int8.second.sha256 == plain.second.sha256


def test_second_scale_is_off_by_default_and_needs_the_second_opinion(model_dir: Path) -> None:
    assert load_models(Settings(model_dir=model_dir, execution_provider="cpu")).second_scale is None
    on = load_models(Settings(model_dir=model_dir, execution_provider="cpu", second_scale=True))
    assert on.second_scale is not None and on.second_scale.input_size == quality.SECOND_SCALE_SIZE
    # The same weights twice: metrics and /readyz tell the two runs apart.
    names = [model.instance_name for model in on.loaded()]
    assert names == ["yolox_nano", "nanodet_g_416", "yolox_nano@640", "efficientnet_lite0"]
    alone = Settings(
        model_dir=model_dir, execution_provider="cpu", second_scale=True, second_opinion=False
    )
    assert load_models(alone).second_scale is None


def test_a_batched_detector_is_warmed_up_at_its_largest_batch(
    model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a GPU, TensorRT builds engines for the batch sizes it has seen and cuDNN picks
    kernels per shape: at load, not inside the first burst."""
    sizes: list[int] = []
    detect_batch = YoloxDetector.detect_batch

    def recording(self: YoloxDetector, images: list[Any], min_confidence: float) -> Any:
        sizes.append(len(images))
        return detect_batch(self, images, min_confidence)

    monkeypatch.setattr(YoloxDetector, "detect_batch", recording)
    batched = Settings(
        model_dir=model_dir, execution_provider="cpu", detect_batch_size=6, second_opinion=False
    )
    load_models(batched)
    assert sizes == [1, 6]
    sizes.clear()
    load_models(Settings(model_dir=model_dir, execution_provider="cpu", second_opinion=False))
    assert sizes == [1]


def test_decoding_keeps_every_model_input_resolution(
    model_dir: Path, detector: YoloxDetector
) -> None:
    default = load_models(Settings(model_dir=model_dir, execution_provider="cpu"))
    assert default.decoded_sides() == (detector.input_size, tagger.RESIZE_SHORT)
    scaled = load_models(Settings(model_dir=model_dir, execution_provider="cpu", second_scale=True))
    assert scaled.decoded_sides()[0] == quality.SECOND_SCALE_SIZE
    captioner = NeuralCaptioner(CAPTIONERS / "blip-tiny", provider="cpu")
    alone = Models(detector=detector, second=None, tagger=None, captioner=captioner)
    assert alone.decoded_sides() == (detector.input_size, captioner.input_side)
    assert Models(detector=detector, second=None, tagger=None).decoded_sides()[1] == 0


async def test_concurrent_analyses_share_one_batched_detector_run(
    model_dir: Path,
    detector: YoloxDetector,
    evalset_dir: Path,
    executor: BlockingExecutor,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    batched = load_yolox(model_dir, provider="cpu", intra_op_threads=1, max_batch=4)
    sizes: list[int] = []
    detect_batch = batched.detect_batch

    def recording(images: Sequence[PIL.Image.Image], floor: float) -> list[list[Detection]]:
        sizes.append(len(images))
        return detect_batch(images, floor)

    monkeypatch.setattr(batched, "detect_batch", recording)
    photos = sorted((evalset_dir / "images").glob("*.jpg"))[:4]
    blobs = [path.read_bytes() for path in photos]
    one_by_one = ImageAnalyzer(
        Models(detector=detector, second=None, tagger=None), min_confidence=0.25, max_pixels=10**8
    )
    metrics = Metrics()
    gathered = ImageAnalyzer(
        Models(detector=batched, second=None, tagger=None),
        min_confidence=0.25,
        max_pixels=10**8,
        metrics=metrics,
        batch_runner=executor.run_admitted,
        detect_batch=BatchPolicy(max_batch_size=4, max_wait_ms=200),
    )
    expected = [await one_by_one.analyze(data, executor) for data in blobs]
    results = await asyncio.gather(*(gathered.analyze(data, executor) for data in blobs))
    assert sizes == [4]
    labels = {"model": "yolox_nano"}
    assert metrics.registry.get_sample_value("labelsvc_model_batch_size_sum", labels) == 4
    assert metrics.registry.get_sample_value("labelsvc_model_batch_size_count", labels) == 1
    for got, want in zip(results, expected, strict=True):
        assert got.boxes == want.boxes
        assert got.quality == want.quality
