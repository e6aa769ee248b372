"""The analysis feeds the quality estimate from the one detector pass it already makes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import PIL.Image
import pytest

from bench.detection_map import load_rgb
from service.analysis import ImageAnalyzer
from service.executor import BlockingExecutor
from service.infer.models import Models
from service.infer.yolox import Detection, YoloxDetector, load_yolox
from service.score import quality
from tests.conftest import CAT_PHOTO

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
    analyzer = ImageAnalyzer(
        Models(detector=detector, second=None, tagger=None), min_confidence=0.3, max_pixels=10**8
    )
    data = (evalset_dir / "images" / CROWDED_PHOTO).read_bytes()
    result = await analyzer.analyze(data, executor)

    assert calls == [quality.SUB_MIN_CONF]  # one pass, at the lower threshold
    image = result.decoded.image
    at_threshold = detect(image, 0.3)
    assert [(b.classname, b.conf) for b in result.boxes] == [
        (d.classname, round(d.conf, 4)) for d in at_threshold
    ]
    assert all(b.quality is not None for b in result.boxes)
    low = detect(image, quality.SUB_MIN_CONF)
    components = result.quality.components
    assert components["sub_threshold_count"] == len(quality.sub_threshold(low)) > 0
    kept = [d for d in low if d.conf >= quality.KEPT_CONF]
    expected = quality.estimate(kept, None, [], result.properties, image.size, below=low)
    assert result.quality.score == expected.score
    lineage = {a.name: a for a in analyzer.lineage("2024-01-01T00:00:00Z")}
    assert lineage["label_quality"].params["sub_threshold_min_confidence"] == quality.SUB_MIN_CONF
