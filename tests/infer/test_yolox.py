"""Pure pre- and post-processing of the YOLOX detector, on synthetic inputs."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import PIL.Image
import pytest

from service.infer.manifest import ModelError
from service.infer.yolox import (
    Detection,
    YoloxDetector,
    decode_outputs,
    letterbox,
    nms_per_class,
    postprocess,
)

SIZE = 416
NUM_CLASSES = 80
NAMES = [f"class{i}" for i in range(NUM_CLASSES)]
ANCHORS = sum((SIZE // s) ** 2 for s in (8, 16, 32))  # 3549


def anchor_index(stride: int, col: int, row: int) -> int:
    offset = 0
    for s in (8, 16, 32):
        if s == stride:
            return offset + row * (SIZE // s) + col
        offset += (SIZE // s) ** 2
    raise AssertionError(stride)


def raw_with(
    boxes: Sequence[tuple[float, float, float, float, int, float]], stride: int = 8
) -> np.ndarray:
    """An undecoded output holding the given (cx, cy, w, h, class, score) in input pixels."""
    raw = np.zeros((1, ANCHORS, 5 + NUM_CLASSES), dtype=np.float32)
    raw[..., 2:4] = math.log(1e-3)  # tiny boxes, score 0 everywhere else
    for cx, cy, w, h, cls, score in boxes:
        col, row = int(cx // stride), int(cy // stride)
        index = anchor_index(stride, col, row)
        assert raw[0, index, 4] == 0.0, "two boxes on one anchor"
        raw[0, index, 0:4] = (
            cx / stride - col,
            cy / stride - row,
            math.log(w / stride),
            math.log(h / stride),
        )
        raw[0, index, 4] = 1.0
        raw[0, index, 5 + cls] = score
    return raw


def run_post(raw: np.ndarray, **overrides: object) -> list[Detection]:
    kwargs: dict[str, object] = {
        "scale": 1.0,
        "image_size": (SIZE, SIZE),
        "size": SIZE,
        "min_confidence": 0.25,
        "nms_iou": 0.65,
        "max_detections": 100,
        "class_names": NAMES,
    }
    kwargs.update(overrides)
    return postprocess(raw, **kwargs)  # type: ignore[arg-type]


class TestLetterbox:
    def test_wide_image_shape_scale_padding(self) -> None:
        image = PIL.Image.new("RGB", (200, 100), (255, 0, 0))
        tensor, scale = letterbox(image, 64)
        assert tensor.shape == (1, 3, 64, 64)
        assert tensor.dtype == np.uint8  # the model casts inside its graph
        assert scale == pytest.approx(0.32)
        content = tensor[0, :, :32, :64]
        assert (content[2] == 255).all() and (content[0] == 0).all()  # BGR: red is last
        assert (tensor[0, :, 32:, :] == 114).all()

    def test_tall_image_padded_on_the_right(self) -> None:
        image = PIL.Image.new("RGB", (50, 100), (0, 0, 0))
        tensor, scale = letterbox(image, 64)
        assert scale == pytest.approx(0.64)
        assert (tensor[0, :, :, :32] == 0).all()
        assert (tensor[0, :, :, 32:] == 114).all()

    def test_colour_order_is_bgr_raw_values(self) -> None:
        image = PIL.Image.new("RGB", (32, 32), (10, 20, 30))
        tensor, scale = letterbox(image, 32)
        assert scale == 1.0
        assert tensor[0, :, 5, 5].tolist() == [30, 20, 10]

    def test_greyscale_is_converted(self) -> None:
        tensor, _ = letterbox(PIL.Image.new("L", (64, 32), 77), 32)
        assert (tensor[0, :, :16, :] == 77).all()

    def test_small_image_is_scaled_up(self) -> None:
        tensor, scale = letterbox(PIL.Image.new("RGB", (16, 8), (1, 2, 3)), 64)
        assert scale == 4.0
        assert (tensor[0, 0, :32, :] == 3).all() and (tensor[0, 0, 32:, :] == 114).all()


class TestDecode:
    def test_hand_built_anchor(self) -> None:
        raw = np.zeros((1, ANCHORS, 85), dtype=np.float32)
        index = anchor_index(16, col=3, row=5)
        raw[0, index, 0:4] = (0.5, 0.25, math.log(2.0), math.log(4.0))
        decoded = decode_outputs(raw, SIZE)
        assert decoded.shape == (ANCHORS, 85)
        assert decoded[index, :4].tolist() == pytest.approx([56.0, 84.0, 32.0, 64.0])
        assert raw[0, index, 0] == 0.5  # the input is not modified

    def test_grid_is_row_major_per_stride(self) -> None:
        decoded = decode_outputs(np.zeros((ANCHORS, 85), dtype=np.float32), SIZE)
        assert decoded[1, :2].tolist() == [8.0, 0.0]
        assert decoded[52, :2].tolist() == [0.0, 8.0]
        assert decoded[anchor_index(32, 12, 12), :2].tolist() == [384.0, 384.0]
        assert decoded[-1, 2:4].tolist() == [32.0, 32.0]

    def test_wrong_anchor_count(self) -> None:
        with pytest.raises(ModelError, match="anchors"):
            decode_outputs(np.zeros((1, 100, 85), dtype=np.float32), SIZE)

    def test_huge_logits_do_not_overflow(self) -> None:
        raw = np.full((ANCHORS, 85), 1e4, dtype=np.float32)
        assert np.isfinite(decode_outputs(raw, SIZE)).all()


class TestNms:
    boxes = np.array(
        [[0, 0, 100, 100], [5, 5, 100, 100], [0, 0, 100, 100], [200, 200, 300, 300]],
        dtype=np.float32,
    )

    def test_same_class_overlap_suppressed_other_class_kept(self) -> None:
        scores = np.array([0.9, 0.8, 0.7, 0.6])
        classes = np.array([1, 1, 2, 1])
        assert nms_per_class(self.boxes, scores, classes, 0.65, 100).tolist() == [0, 2, 3]

    def test_best_score_first(self) -> None:
        scores = np.array([0.5, 0.8, 0.9, 0.6])
        classes = np.array([1, 1, 1, 1])
        assert nms_per_class(self.boxes, scores, classes, 0.65, 100).tolist() == [2, 3]

    def test_threshold_is_exclusive(self) -> None:
        boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 5]], dtype=np.float32)  # IoU 0.5
        keep = nms_per_class(boxes, np.array([0.9, 0.8]), np.array([0, 0]), 0.5, 10)
        assert keep.tolist() == [0, 1]
        keep = nms_per_class(boxes, np.array([0.9, 0.8]), np.array([0, 0]), 0.49, 10)
        assert keep.tolist() == [0]

    def test_max_detections_and_empty(self) -> None:
        scores = np.array([0.9, 0.8, 0.7, 0.6])
        classes = np.array([0, 1, 2, 3])
        assert nms_per_class(self.boxes, scores, classes, 0.65, 2).tolist() == [0, 1]
        empty = nms_per_class(np.zeros((0, 4)), np.zeros(0), np.zeros(0, dtype=int), 0.65, 5)
        assert empty.tolist() == []


class TestPostprocess:
    def test_box_class_and_score(self) -> None:
        raw = raw_with([(100, 60, 40, 20, 15, 0.9)])
        [det] = run_post(raw, scale=0.5, image_size=(1000, 1000))
        assert (det.class_id, det.classname) == (15, "class15")
        assert det.conf == pytest.approx(0.9)
        assert (det.x1, det.y1, det.x2, det.y2) == pytest.approx((160, 100, 240, 140), abs=1e-3)

    def test_score_is_objectness_times_best_class(self) -> None:
        raw = raw_with([(100, 100, 40, 40, 3, 0.5)])
        index = anchor_index(8, 12, 12)
        raw[0, index, 4] = 0.8
        raw[0, index, 5 + 7] = 0.4  # second-best class of the same anchor: not reported
        [det] = run_post(raw, min_confidence=0.1)
        assert det.class_id == 3
        assert det.conf == pytest.approx(0.4)

    def test_nms_same_class_suppressed_other_class_kept(self) -> None:
        raw = raw_with(
            [
                (100, 100, 80, 80, 0, 0.9),
                (108, 100, 80, 80, 0, 0.8),  # same class, IoU ~0.82: suppressed
                (116, 100, 80, 80, 2, 0.7),  # other class, overlapping: kept
                (300, 300, 40, 40, 0, 0.6),  # same class, far away: kept
            ]
        )
        detections = run_post(raw)
        assert [(d.class_id, round(d.conf, 2)) for d in detections] == [
            (0, 0.9),
            (2, 0.7),
            (0, 0.6),
        ]

    def test_boxes_clipped_to_image(self) -> None:
        raw = raw_with([(4, 4, 40, 40, 1, 0.9), (412, 300, 60, 300, 2, 0.8)])
        detections = run_post(raw, image_size=(400, 350))
        assert [(d.x1, d.y1, d.x2, d.y2) for d in detections] == [
            pytest.approx((0, 0, 24, 24)),
            pytest.approx((382, 150, 400, 350)),
        ]

    def test_box_outside_image_dropped(self) -> None:
        raw = raw_with([(380, 380, 20, 20, 1, 0.9)])
        assert run_post(raw, image_size=(300, 300)) == []

    def test_min_confidence(self) -> None:
        raw = raw_with([(100, 100, 40, 40, 1, 0.9), (300, 100, 40, 40, 1, 0.3)])
        assert [round(d.conf, 2) for d in run_post(raw, min_confidence=0.5)] == [0.9]
        assert len(run_post(raw, min_confidence=0.3)) == 2
        assert run_post(raw, min_confidence=0.95) == []

    def test_max_detections_keeps_best(self) -> None:
        boxes = [(20 + 40 * i, 200, 20, 20, i, 0.1 + 0.08 * i) for i in range(10)]
        detections = run_post(raw_with(boxes), min_confidence=0.0, max_detections=3)
        assert [d.class_id for d in detections] == [9, 8, 7]

    def test_class_name_count_must_match(self) -> None:
        with pytest.raises(ModelError, match="80 classes"):
            run_post(raw_with([]), class_names=NAMES[:10])


class FakeSession:
    input_name = "images"
    input_shape: tuple[int | str, ...] = (1, 3, SIZE, SIZE)
    provider = "FakeExecutionProvider"

    def __init__(self, raw: np.ndarray) -> None:
        self.raw = raw
        self.feeds: list[np.ndarray] = []

    def run(self, feeds: object) -> list[np.ndarray]:
        assert isinstance(feeds, dict)
        self.feeds.append(feeds[self.input_name])
        return [self.raw]


def test_detector_maps_boxes_back_to_the_original_image() -> None:
    session = FakeSession(raw_with([(104, 52, 40, 20, 5, 0.9)]))
    detector = YoloxDetector(session, NAMES)
    [det] = detector.detect(PIL.Image.new("RGB", (832, 416)), min_confidence=0.25)
    assert session.feeds[0].shape == (1, 3, SIZE, SIZE)
    assert (det.x1, det.y1, det.x2, det.y2) == pytest.approx((168, 84, 248, 124), abs=1e-3)
    assert detector.name == "yolox_nano"
    assert len(detector.sha256) == 64 and detector.version == detector.sha256[:12]


def test_detector_refuses_a_mismatched_input_size() -> None:
    with pytest.raises(ModelError, match=r"must be \[1,3,640,640\]"):
        YoloxDetector(FakeSession(raw_with([])), NAMES, input_size=640)
