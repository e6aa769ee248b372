"""Provider choice, checksum-verified loading and the real YOLOX-nano on evalset photos."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnxruntime as ort
import PIL.Image
import PIL.ImageOps
import pytest

from service.infer import manifest, runtime, yolox
from service.infer.manifest import ModelError, resolve, sha256_file, spec
from service.infer.runtime import ProviderChoice, choose_providers, load_onnx_session
from service.infer.yolox import Detection, YoloxDetector, load_yolox

REPO = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).parent / "golden" / "yolox_nano_000000025560.json"
CPU, CUDA, TRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"
HEURISTIC = {"cudnn_conv_algo_search": "HEURISTIC"}
YOLOX_TO_COCO = {"tvmonitor": "tv", "sofa": "couch", "diningtable": "dining table"}


def model_dir() -> Path:
    return Path(os.environ.get("LABELSVC_MODEL_DIR") or REPO.parent / "shared" / "models")


def evalset_dir() -> Path:
    return Path(os.environ.get("LABELSVC_EVALSET_DIR") or REPO.parent / "shared" / "evalset")


def load_photo(name: str) -> PIL.Image.Image:
    with PIL.Image.open(evalset_dir() / "images" / name) as image:
        return PIL.ImageOps.exif_transpose(image).convert("RGB")


@pytest.fixture(scope="module")
def detector() -> YoloxDetector:
    return load_yolox(model_dir(), provider="cpu", intra_op_threads=1)


@pytest.mark.parametrize(
    ("requested", "available", "expected"),
    [
        ("cpu", [CPU], [CPU]),
        ("cpu", [TRT, CUDA, CPU], [CPU]),
        ("auto", [CPU], [CPU]),
        ("auto", ["AzureExecutionProvider", CPU], [CPU]),
        ("auto", [CUDA, CPU], [CUDA, CPU]),
        ("auto", [TRT, CUDA, CPU], [CUDA, CPU]),
        ("cuda", [CUDA, CPU], [CUDA, CPU]),
        ("cuda", [TRT, CUDA, CPU], [CUDA, CPU]),
        ("tensorrt", [TRT, CUDA, CPU], [TRT, CUDA, CPU]),
    ],
)
def test_choose_providers(
    requested: ProviderChoice, available: list[str], expected: list[str]
) -> None:
    assert choose_providers(requested, available) == expected


@pytest.mark.parametrize(
    ("requested", "available"),
    [("cuda", [CPU]), ("tensorrt", [CPU]), ("tensorrt", [CUDA, CPU]), ("tensorrt", [TRT, CPU])],
)
def test_choose_providers_fails_fast(requested: ProviderChoice, available: list[str]) -> None:
    with pytest.raises(ModelError, match=requested):
        choose_providers(requested, available)


@pytest.mark.skipif(CUDA in ort.get_available_providers(), reason="CUDA is available here")
def test_load_refuses_cuda_without_it() -> None:
    with pytest.raises(ModelError, match="CUDAExecutionProvider"):
        load_onnx_session(resolve(model_dir(), "yolox_nano"), provider="cuda", intra_op_threads=1)


@pytest.mark.skipif(CUDA in ort.get_available_providers(), reason="CUDA is available here")
def test_a_cuda_build_that_cannot_start_cuda_is_never_silent(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A CUDA build on a machine whose driver or libraries are missing: ONNX Runtime runs the
    session on the CPU. ``auto`` says so in the log; ``cuda`` refuses to start."""
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, CPU])
    preloads: list[None] = []
    monkeypatch.setattr(runtime, "load_gpu_libraries", lambda: preloads.append(None))
    path = resolve(model_dir(), "yolox_nano")
    with pytest.warns(UserWarning, match=CUDA):  # onnxruntime's own note on the fallback
        session = load_onnx_session(path, provider="auto", intra_op_threads=1)
    assert session.provider == CPU and not session.io_binding
    assert preloads == [None]
    assert f"{CUDA} could not start for yolox_nano.onnx" in caplog.text
    assert "running on CPUExecutionProvider" in caplog.text
    with pytest.warns(UserWarning, match=CUDA), pytest.raises(ModelError, match="fell back"):
        load_onnx_session(path, provider="cuda", intra_op_threads=1)
    assert preloads == [None, None]


def test_tensorrt_keeps_its_engines_in_the_cache_directory(tmp_path: Path) -> None:
    """Without its caches TensorRT builds every engine again at each start."""
    (name, options), *rest = runtime.session_providers([TRT, CUDA, CPU], tmp_path)
    assert (name, rest) == (TRT, [(CUDA, HEURISTIC), CPU])
    assert options == {
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(tmp_path),
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": str(tmp_path),
    }
    assert runtime.session_providers([CUDA, CPU], tmp_path) == [(CUDA, HEURISTIC), CPU]
    assert runtime.session_providers([TRT, CUDA, CPU], None) == [TRT, (CUDA, HEURISTIC), CPU]


def test_cuda_picks_convolution_algorithms_without_timing_them() -> None:
    """The exhaustive search times every cuDNN algorithm at a shape's first run: seconds of
    cold start on an H100, for no faster steady runs."""
    assert runtime.session_providers([CUDA, CPU], None) == [(CUDA, HEURISTIC), CPU]
    assert runtime.session_providers([CPU], None) == [CPU]


def test_float32_without_tf32_is_a_cuda_option(tmp_path: Path) -> None:
    exact = {**HEURISTIC, "use_tf32": "0"}
    assert runtime.session_providers([CUDA, CPU], None, tf32=False) == [(CUDA, exact), CPU]
    trt, cuda, cpu = runtime.session_providers([TRT, CUDA, CPU], tmp_path, tf32=False)
    assert (trt[0], cuda, cpu) == (TRT, (CUDA, exact), CPU)
    assert runtime.session_providers([CPU], None, tf32=False) == [CPU]


def test_new_weights_under_an_old_file_name_get_engines_of_their_own(tmp_path: Path) -> None:
    """ONNX Runtime names the engines of a model loaded from bytes (after graph edits) by its
    input and output names only: the old engines would run in place of new weights."""
    model = tmp_path / "yolox_nano.onnx"
    cache = tmp_path / "cache"

    def engines(input_size: int | None = None, dynamic_batch: bool = False) -> str:
        shape = {"input_size": input_size, "dynamic_batch": dynamic_batch}
        return runtime.engine_cache_dir(cache, model, **shape).name

    model.write_bytes(b"old weights")
    old = sha256_file(model)[:12]
    assert engines() == f"yolox_nano-{old}"
    assert engines(640) == f"yolox_nano-{old}@640"
    assert engines(416, dynamic_batch=True) == f"yolox_nano-{old}@416-batch"
    model.write_bytes(b"newer weights")
    new = sha256_file(model)[:12]
    assert new != old
    assert engines(640) == f"yolox_nano-{new}@640"


@pytest.mark.skipif(TRT in ort.get_available_providers(), reason="TensorRT is available here")
def test_the_tensorrt_cache_is_made_before_the_session_or_refused_clearly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a build said to have TensorRT (this one runs the session on the CPU, which a
    ``tensorrt`` service refuses), the cache directory is created first."""
    monkeypatch.setattr(ort, "get_available_providers", lambda: [TRT, CUDA, CPU])
    monkeypatch.setattr(runtime, "load_gpu_libraries", lambda: None)
    path = resolve(model_dir(), "yolox_nano")
    cache = tmp_path / "cache" / "tensorrt"
    with pytest.warns(UserWarning), pytest.raises(ModelError, match="fell back"):
        load_onnx_session(path, provider="tensorrt", intra_op_threads=1, engine_cache=cache)
    engines = f"yolox_nano-{sha256_file(path)[:12]}"  # a directory per weights and input size
    assert (cache / engines).is_dir()
    blocked = tmp_path / "file"
    blocked.write_text("")
    with pytest.raises(
        ModelError,
        match=rf"cannot create the TensorRT engine cache .*file/x/{engines}: Not a directory",
    ):
        load_onnx_session(path, provider="tensorrt", intra_op_threads=1, engine_cache=blocked / "x")


def test_cpu_sessions_load_no_gpu_libraries(monkeypatch: pytest.MonkeyPatch) -> None:
    preloads: list[None] = []
    monkeypatch.setattr(runtime, "load_gpu_libraries", lambda: preloads.append(None))
    for provider in ("cpu", "auto"):
        load_onnx_session(resolve(model_dir(), "yolox_nano"), provider=provider, intra_op_threads=1)
    assert preloads == ([] if CUDA not in ort.get_available_providers() else [None])


def test_gpu_libraries_load_once_per_process(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[None] = []
    monkeypatch.setattr(ort, "preload_dlls", lambda: calls.append(None), raising=False)
    runtime.load_gpu_libraries.cache_clear()
    try:
        runtime.load_gpu_libraries()
        runtime.load_gpu_libraries()
    finally:
        runtime.load_gpu_libraries.cache_clear()
    assert calls == [None]


def test_resolve_verifies_the_shared_model() -> None:
    path = resolve(model_dir(), "yolox_nano")
    assert path.name == "yolox_nano.onnx"
    assert sha256_file(path) == spec("yolox_nano.onnx").sha256


def test_resolve_refuses_a_wrong_checksum(tmp_path: Path) -> None:
    data = bytearray((model_dir() / "yolox_nano.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / "yolox_nano.onnx").write_bytes(bytes(data))
    expected = spec("yolox_nano").sha256
    with pytest.raises(ModelError, match=expected) as caught:
        resolve(tmp_path, "yolox_nano")
    assert "yolox_nano.onnx" in str(caught.value) and str(tmp_path) in str(caught.value)


def test_resolve_names_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not found") as caught:
        resolve(tmp_path, "coco_classes")
    message = str(caught.value)
    assert "coco_classes.txt" in message and str(tmp_path) in message
    assert spec("coco_classes").sha256 in message


def test_checksums_are_cached_per_size_and_mtime(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "blob"
    path.write_bytes(b"one")
    first = sha256_file(path)

    def no_hashing() -> None:
        raise AssertionError("rehashed")

    monkeypatch.setattr(manifest, "hashlib", SimpleNamespace(sha256=no_hashing))
    assert sha256_file(path) == first
    path.write_bytes(b"other")
    with pytest.raises(AssertionError, match="rehashed"):
        sha256_file(path)


def test_session_reports_its_provider_and_input(detector: YoloxDetector) -> None:
    session = load_onnx_session(
        resolve(model_dir(), "yolox_nano"), provider="auto", intra_op_threads=1
    )
    assert session.input_name == "images"
    assert session.input_shape == (1, 3, 416, 416)
    assert session.provider in ort.get_available_providers()
    [raw] = session.run({"images": np.zeros((1, 3, 416, 416), dtype=np.float32)})
    assert raw.shape == (1, 3549, 85)
    assert detector.name == "yolox_nano"
    assert detector.sha256 == spec("yolox_nano").sha256
    assert detector.version == detector.sha256[:12]
    assert detector.provider == CPU


def iou(a: Detection, box: list[float]) -> float:
    x, y, w, h = box
    ix = max(0.0, min(a.x2, x + w) - max(a.x1, x))
    iy = max(0.0, min(a.y2, y + h) - max(a.y1, y))
    inter = ix * iy
    return inter / ((a.x2 - a.x1) * (a.y2 - a.y1) + w * h - inter)


def test_real_photo_matches_the_human_boxes(detector: YoloxDetector) -> None:
    name = "000000025560.jpg"  # a cat in front of a TV, a person on screen
    coco = json.loads((evalset_dir() / "annotations" / "instances.json").read_text())
    image_id = next(img["id"] for img in coco["images"] if img["file_name"] == name)
    categories = {c["id"]: c["name"] for c in coco["categories"]}
    truth = [
        (categories[a["category_id"]], a["bbox"])
        for a in coco["annotations"]
        if a["image_id"] == image_id
    ]
    detections = detector.detect(load_photo(name), min_confidence=0.25)
    found = {YOLOX_TO_COCO.get(d.classname, d.classname) for d in detections}
    assert {"cat", "tv"} <= found
    for wanted in ("cat", "tv"):
        best = max(
            iou(d, box)
            for d in detections
            for classname, box in truth
            if classname == wanted == YOLOX_TO_COCO.get(d.classname, d.classname)
        )
        assert best > 0.5, wanted


def check_golden(detections: list[Detection]) -> None:
    golden = json.loads(GOLDEN.read_text())
    assert len(detections) == len(golden["detections"])
    by_class = sorted(detections, key=lambda d: (d.classname, -d.conf))
    expected = sorted(golden["detections"], key=lambda d: (d["classname"], -d["conf"]))
    for got, want in zip(by_class, expected, strict=True):
        assert (got.class_id, got.classname) == (want["class_id"], want["classname"])
        assert got.conf == pytest.approx(want["conf"], abs=0.01)
        assert [got.x1, got.y1, got.x2, got.y2] == pytest.approx(
            [want["x1"], want["y1"], want["x2"], want["y2"]], abs=1.5
        )


def test_golden_detections(detector: YoloxDetector) -> None:
    golden = json.loads(GOLDEN.read_text())
    assert golden["model_sha256"] == detector.sha256
    check_golden(detector.detect(load_photo(golden["image"]), golden["min_confidence"]))


@pytest.mark.gpu
def test_cuda_detector_matches_golden() -> None:
    gpu = load_yolox(model_dir(), provider="cuda")
    assert gpu.provider == CUDA
    golden = json.loads(GOLDEN.read_text())
    check_golden(gpu.detect(load_photo(golden["image"]), golden["min_confidence"]))


def test_io_binding_gives_the_same_outputs_as_plain_runs() -> None:
    """The GPU path binds inputs and outputs; its API is exercised here on the CPU."""
    path = model_dir() / "yolox_nano.onnx"
    plain = load_onnx_session(path, provider="cpu", intra_op_threads=1)
    bound = load_onnx_session(path, provider="cpu", intra_op_threads=1, io_binding=True)
    assert not plain.io_binding and bound.io_binding
    tensor = np.random.default_rng(0).uniform(0, 255, (1, 3, 416, 416)).astype(np.float32)
    expected = plain.run({plain.input_name: tensor})
    actual = bound.run({bound.input_name: tensor})
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected, strict=True):
        np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-4)


class RecordingSession:
    """A fake session: records the batch size of each run and answers with its inputs."""

    def __init__(self, shape: tuple[int | str, ...]) -> None:
        self.input_name = "images"
        self.input_shape = shape
        self.provider = CUDA
        self.sizes: list[int] = []

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        self.sizes.append(len(feeds[self.input_name]))
        return [feeds[self.input_name] * 2, feeds[self.input_name].sum(axis=(1, 2, 3))]


def test_padded_batches_reach_their_session_at_one_shape() -> None:
    single, batched = RecordingSession((1, 3, 4, 4)), RecordingSession(("batch", 3, 4, 4))
    session = runtime.PaddedBatchSession(single, batched, max_batch=4)
    assert (session.input_shape, session.provider) == ((1, 3, 4, 4), CUDA)
    images = np.random.default_rng(0).integers(1, 255, (4, 3, 4, 4), dtype=np.uint8)
    for size in (1, 3, 2, 4, 1):
        doubled, sums = session.run({"images": images[:size]})
        np.testing.assert_array_equal(doubled, images[:size] * 2)
        np.testing.assert_array_equal(sums, images[:size].sum(axis=(1, 2, 3)))
    assert single.sizes == [1, 1]
    assert batched.sizes == [4, 4, 4]
    with pytest.raises(ValueError, match="5 inputs in one run; at most 4"):
        session.run({"images": np.zeros((5, 3, 4, 4), np.uint8)})
    with pytest.raises(ValueError, match="at least 2"):
        runtime.PaddedBatchSession(single, batched, max_batch=1)


def test_padded_detector_equals_its_single_runs() -> None:
    single = load_yolox(model_dir(), provider="cpu", intra_op_threads=1)
    padded = load_yolox(
        model_dir(), provider="cpu", intra_op_threads=1, max_batch=4, fixed_shapes=True
    )
    images = [load_photo(path.name) for path in sorted((evalset_dir() / "images").iterdir())[:3]]
    expected = [single.detect(image, 0.1) for image in images]
    assert all(expected)
    assert padded.detect_batch(images, 0.1) == expected
    assert padded.detect_batch(images[:1], 0.1) == expected[:1]


@pytest.mark.parametrize(("gpu", "padded"), [(True, True), (False, False)])
def test_batched_detectors_pad_on_a_gpu_only(
    monkeypatch: pytest.MonkeyPatch, gpu: bool, padded: bool
) -> None:
    monkeypatch.setattr(yolox, "runs_on_gpu", lambda provider: gpu)
    detector = load_yolox(model_dir(), provider="cpu", intra_op_threads=1, max_batch=2)
    assert isinstance(detector._session, runtime.PaddedBatchSession) is padded
    alone = load_yolox(model_dir(), provider="cpu", intra_op_threads=1)
    assert not isinstance(alone._session, runtime.PaddedBatchSession)


def same_boxes(got: list[Detection], want: list[Detection]) -> bool:
    """The same detections up to float noise: each wanted box has a twin of its class."""

    def twin(w: Detection) -> bool:
        return any(
            d.classname == w.classname
            and abs(d.conf - w.conf) < 0.01
            and max(abs(d.x1 - w.x1), abs(d.y1 - w.y1), abs(d.x2 - w.x2), abs(d.y2 - w.y2)) < 1.5
            for d in got
        )

    return len(got) == len(want) and all(twin(w) for w in want)


@pytest.mark.gpu
def test_cuda_batched_detector_pads_and_matches_single_runs() -> None:
    single = load_yolox(model_dir(), provider="cuda")
    batched = load_yolox(model_dir(), provider="cuda", max_batch=4)
    assert isinstance(batched._session, runtime.PaddedBatchSession)
    images = [load_photo(path.name) for path in sorted((evalset_dir() / "images").iterdir())[:4]]
    expected = [single.detect(image, 0.3) for image in images]
    assert sum(map(len, expected)) >= 10  # 7, 3, 0 and 3 boxes on the CPU
    for size in (1, 3, 2, 4):
        got = batched.detect_batch(images[:size], 0.3)
        assert all(same_boxes(g, w) for g, w in zip(got, expected[:size], strict=True))
