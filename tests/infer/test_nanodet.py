"""NanoDet-g: stretched pre-processing, output pairing by shape, distribution decode, real model."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageOps
import pytest

from models import calibrate_nanodet
from service.infer import runtime
from service.infer.graph_edits import read_model
from service.infer.manifest import ModelError
from service.infer.nanodet import (
    NUM_BINS,
    NanoDetDetector,
    decode_head,
    load_nanodet,
    postprocess,
    preprocess,
    split_outputs,
)
from service.infer.quantize import RANGES_FILE, quantized, ranges_digest, shipped_ranges
from service.infer.yolox import Detection, YoloxDetector, load_yolox
from service.score import quality
from service.score.geometry import iou_matrix, xyxy

SIZE = 416
NUM_CLASSES = 80
NAMES = [f"class{i}" for i in range(NUM_CLASSES)]
CELLS = {s: (SIZE // s) ** 2 for s in (8, 16, 32)}


def empty_outputs() -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per stride: scores ``[1,N,80]`` all zero, distributions ``[1,N,44]`` peaked at bin 0."""
    heads = {}
    for stride, cells in CELLS.items():
        dist = np.full((1, cells, 4 * NUM_BINS), -20.0, dtype=np.float32)
        dist.reshape(cells, 4, NUM_BINS)[:, :, 0] = 20.0
        heads[stride] = (np.zeros((1, cells, NUM_CLASSES), dtype=np.float32), dist)
    return heads


def put_box(
    heads: dict[int, tuple[np.ndarray, np.ndarray]],
    stride: int,
    col: int,
    row: int,
    sides: tuple[int, int, int, int],
    cls: int,
    score: float,
) -> None:
    """One cell predicting ``score`` for ``cls`` and integer side distances in strides."""
    scores, dist = heads[stride]
    index = row * (SIZE // stride) + col
    scores[0, index, cls] = score
    cell = dist[0, index].reshape(4, NUM_BINS)
    cell[:] = -20.0
    for side, bins in enumerate(sides):
        cell[side, bins] = 20.0


def as_model_outputs(heads: dict[int, tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]:
    """In the exported graph's own (unhelpful) order, shuffled."""
    outputs = [array for pair in heads.values() for array in pair]
    random.Random(7).shuffle(outputs)
    return outputs


class TestPreprocess:
    def test_stretched_bgr_pixels(self) -> None:
        tensor = preprocess(PIL.Image.new("RGB", (800, 200), (255, 0, 0)), SIZE)
        assert tensor.shape == (1, 3, SIZE, SIZE)
        assert tensor.dtype == np.uint8  # normalised inside the graph (PIXELS)
        assert tensor.flags["C_CONTIGUOUS"]
        # BGR: blue first; red is the last channel.
        assert (tensor[0, 0] == 0).all()
        assert (tensor[0, 2] == 255).all()

    def test_greyscale_is_converted(self) -> None:
        tensor = preprocess(PIL.Image.new("L", (30, 30), 116), SIZE)
        assert tensor.shape == (1, 3, SIZE, SIZE)
        assert (tensor == 116).all()


class TestSplitOutputs:
    def test_pairs_heads_by_shape_whatever_the_order(self) -> None:
        heads = empty_outputs()
        heads[16][0][0, 0, 0] = 0.5  # mark the stride-16 scores
        pairs = split_outputs(as_model_outputs(heads), SIZE, NUM_CLASSES)
        assert [stride for stride, _, _ in pairs] == [8, 16, 32]
        for stride, scores, dist in pairs:
            assert scores.shape == (CELLS[stride], NUM_CLASSES)
            assert dist.shape == (CELLS[stride], 4 * NUM_BINS)
        assert pairs[1][1][0, 0] == 0.5

    def test_missing_or_odd_outputs(self) -> None:
        outputs = as_model_outputs(empty_outputs())
        with pytest.raises(ModelError, match="stride"):
            split_outputs(outputs[:-1], SIZE, NUM_CLASSES)
        with pytest.raises(ModelError, match="shape"):
            split_outputs([*outputs, np.zeros((1, 10, 7))], SIZE, NUM_CLASSES)
        with pytest.raises(ModelError, match="stride"):
            split_outputs(outputs, 320, NUM_CLASSES)


def test_decode_head_is_the_softmax_expectation_from_the_cell_centre() -> None:
    cells = CELLS[32]
    dist = np.full((cells, 4, NUM_BINS), -20.0, dtype=np.float32)
    dist[:, :, 2] = 20.0  # every side 2 strides away
    dist[1, 0, :] = 0.0  # cell 1, left side: uniform over 0..10 -> expectation 5
    boxes = decode_head(dist.reshape(cells, -1), 32, SIZE)
    assert boxes[0] == pytest.approx((16 - 64, 16 - 64, 16 + 64, 16 + 64), abs=1e-3)
    assert boxes[1][0] == pytest.approx(48 - 5 * 32, abs=1e-3)
    row_two = 2 * (SIZE // 32)
    assert boxes[row_two][1] == pytest.approx(2.5 * 32 - 64, abs=1e-3)  # row-major cells
    subset = decode_head(dist[[row_two]].reshape(1, -1), 32, SIZE, np.array([row_two]))
    assert subset[0] == pytest.approx(boxes[row_two])


def run_post(
    heads: dict[int, tuple[np.ndarray, np.ndarray]], **overrides: object
) -> list[Detection]:
    kwargs: dict[str, object] = {
        "image_size": (SIZE, SIZE),
        "size": SIZE,
        "min_confidence": 0.25,
        "nms_iou": 0.6,
        "max_detections": 100,
        "class_names": NAMES,
    }
    kwargs.update(overrides)
    return postprocess(as_model_outputs(heads), **kwargs)  # type: ignore[arg-type]


class TestPostprocess:
    def test_box_class_score_and_stretch_back(self) -> None:
        heads = empty_outputs()
        put_box(heads, 16, col=10, row=5, sides=(1, 2, 3, 4), cls=7, score=0.8)
        [det] = run_post(heads, image_size=(832, 208))
        cx, cy = 10.5 * 16, 5.5 * 16
        expected = ((cx - 16) * 2, (cy - 32) / 2, (cx + 48) * 2, (cy + 64) / 2)
        assert (det.x1, det.y1, det.x2, det.y2) == pytest.approx(expected, abs=1e-2)
        assert (det.class_id, det.classname) == (7, "class7")
        assert det.conf == pytest.approx(0.8)

    def test_nms_same_class_only_threshold_and_empty(self) -> None:
        heads = empty_outputs()
        put_box(heads, 8, col=20, row=20, sides=(3, 3, 3, 3), cls=1, score=0.9)
        put_box(heads, 8, col=21, row=20, sides=(3, 3, 3, 3), cls=1, score=0.7)  # duplicate
        put_box(heads, 8, col=20, row=21, sides=(3, 3, 3, 3), cls=2, score=0.6)  # other class
        put_box(heads, 32, col=1, row=1, sides=(1, 1, 1, 1), cls=3, score=0.2)  # too weak
        dets = run_post(heads)
        assert [(d.class_id, round(d.conf, 2)) for d in dets] == [(1, 0.9), (2, 0.6)]
        assert len(run_post(heads, min_confidence=0.1)) == 3
        assert run_post(empty_outputs()) == []

    def test_boxes_clipped_to_the_image(self) -> None:
        heads = empty_outputs()
        put_box(heads, 32, col=0, row=0, sides=(5, 5, 2, 2), cls=0, score=0.9)
        [det] = run_post(heads)
        assert (det.x1, det.y1) == (0.0, 0.0)


class FakeSession:
    input_name = "input_1:0"
    input_shape: tuple[int | str, ...] = (1, 3, SIZE, SIZE)
    provider = "FakeExecutionProvider"

    def __init__(self, outputs: list[np.ndarray]) -> None:
        self.outputs = outputs

    def run(self, feeds: object) -> list[np.ndarray]:
        return self.outputs


def test_detector_identity_and_input_check() -> None:
    heads = empty_outputs()
    put_box(heads, 16, col=3, row=3, sides=(1, 1, 1, 1), cls=4, score=0.9)
    detector = NanoDetDetector(FakeSession(as_model_outputs(heads)), NAMES)
    [det] = detector.detect(PIL.Image.new("RGB", (416, 416)), 0.25)
    assert det.classname == "class4"
    assert detector.name == "nanodet_g_416"
    assert len(detector.sha256) == 64 and detector.version == detector.sha256[:12]
    session = FakeSession([])
    session.input_shape = (1, 3, 320, 320)
    with pytest.raises(ModelError, match="input"):
        NanoDetDetector(session, NAMES)


def _photo(evalset_dir: Path, name: str) -> PIL.Image.Image:
    with PIL.Image.open(evalset_dir / "images" / name) as image:
        return PIL.ImageOps.exif_transpose(image).convert("RGB")


@pytest.fixture(scope="module")
def nanodet(model_dir: Path) -> NanoDetDetector:
    return load_nanodet(model_dir, provider="cpu", intra_op_threads=1)


@pytest.fixture(scope="module")
def yolox(model_dir: Path) -> YoloxDetector:
    return load_yolox(model_dir, provider="cpu", intra_op_threads=1)


@pytest.mark.parametrize(
    ("photo", "expected"),
    [("000000555705.jpg", "cat"), ("000000244592.jpg", "zebra"), ("000000286994.jpg", "elephant")],
)
def test_real_model_agrees_with_yolox(
    nanodet: NanoDetDetector,
    yolox: YoloxDetector,
    evalset_dir: Path,
    photo: str,
    expected: str,
) -> None:
    """The evalset mAP (about 0.04 below YOLOX) is measured by ``bench.quality``."""
    image = _photo(evalset_dir, photo)
    ours = nanodet.detect(image, 0.3)
    assert ours and ours[0].classname == expected
    theirs = [d for d in yolox.detect(image, 0.3) if d.classname == expected]
    a = np.array([ours[0].x1, ours[0].y1, ours[0].x2, ours[0].y2])
    best_iou = 0.0
    for det in theirs:
        b = np.array([det.x1, det.y1, det.x2, det.y2])
        inter = np.prod(np.clip(np.minimum(a[2:], b[2:]) - np.maximum(a[:2], b[:2]), 0, None))
        union = np.prod(a[2:] - a[:2]) + np.prod(b[2:] - b[:2]) - inter
        best_iou = max(best_iou, float(inter / union))
    assert best_iou > 0.7


@pytest.fixture(scope="module")
def nanodet_int8(model_dir: Path) -> NanoDetDetector:
    return load_nanodet(model_dir, provider="cpu", intra_op_threads=1, int8=True)


@pytest.mark.parametrize("photo", ["000000555705.jpg", "000000244592.jpg", "000000286994.jpg"])
def test_int8_finds_what_fp32_finds(
    nanodet: NanoDetDetector, nanodet_int8: NanoDetDetector, evalset_dir: Path, photo: str
) -> None:
    """Each box fp32 is fairly sure of (conf >= 0.4) is found in int8 too: of its class, at a
    place the estimate counts as the same (IoU >= 0.5, ``quality.MATCH_IOU``), with nearly
    the same confidence. Over all 128 evaluation photos, 444 of fp32's 445
    such boxes have an int8 box of their class at conf >= 0.25, median confidence difference
    0.016; the label-quality estimate's fit-half AUROC is the same (``service.infer.quantize``)."""
    image = _photo(evalset_dir, photo)
    fp32 = nanodet.detect(image, 0.4)
    int8 = nanodet_int8.detect(image, 0.25)
    assert fp32
    for box in fp32:
        same_class = [d for d in int8 if d.classname == box.classname]
        ious = iou_matrix(xyxy([box]), xyxy(same_class))[0] if same_class else np.zeros(1)
        best = int(np.argmax(ious))
        assert ious[best] >= quality.MATCH_IOU, box
        assert abs(same_class[best].conf - box.conf) < 0.1, box


def test_int8_is_quantized_from_the_shipped_ranges_the_same_every_time(model_dir: Path) -> None:
    path = model_dir / "nanodet_g_416.onnx"
    first, second = quantized(path), quantized(path)
    assert first.SerializeToString() == second.SerializeToString()
    ops = Counter(node.op_type for node in first.graph.node)
    convs = Counter(node.op_type for node in read_model(path).graph.node)["Conv"]
    assert ops["Conv"] == convs  # run on dequantized int8 weights and activations
    assert ops["DequantizeLinear"] >= 2 * convs and ops["QuantizeLinear"] >= convs
    # No other operator is quantized: they broke the score heads.
    assert not {op for op in ops if op.startswith("QLinear") or op.endswith("Integer")}


def test_int8_is_named_in_the_lineage(
    nanodet: NanoDetDetector, nanodet_int8: NanoDetDetector
) -> None:
    assert nanodet.int8_ranges is None
    assert nanodet_int8.int8_ranges == ranges_digest()
    assert nanodet_int8.sha256 == nanodet.sha256  # the verified fp32 file it came from


def test_the_shipped_ranges_are_what_the_script_measures(
    model_dir: Path, evalset_dir: Path, tmp_path: Path
) -> None:
    """``python -m models.calibrate_nanodet`` measures the committed ranges again (to float
    rounding: another CPU may take other kernels)."""
    out = tmp_path / RANGES_FILE
    arguments = ["--model-dir", str(model_dir), "--evalset", str(evalset_dir), "--out", str(out)]
    assert calibrate_nanodet.main(arguments) == 0
    with shipped_ranges() as shipped:
        expected = json.loads(shipped.read_text())["data"]
    measured = json.loads(out.read_text())["data"]
    assert measured.keys() == expected.keys()
    for tensor, bounds in expected.items():
        for side in ("lowest", "highest"):
            value = measured[tensor][side]["data"][0]
            assert value == pytest.approx(bounds[side]["data"][0], rel=1e-4, abs=1e-6), tensor


def test_int8_is_refused_on_a_gpu_provider(
    model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A GPU runs the fp32 model faster; QDQ there would only add work. Said at start."""
    available = [runtime.CUDA, runtime.CPU]
    monkeypatch.setattr(runtime.ort, "get_available_providers", lambda: available)
    with pytest.raises(ModelError, match="int8 is for the CPU execution provider"):
        load_nanodet(model_dir, provider="auto", int8=True)
