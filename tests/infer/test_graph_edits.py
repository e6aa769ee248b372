"""Load-time model edits: uint8 pixel input (same outputs as the float input) and input size."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import PIL.Image
import PIL.ImageOps
import pytest
from onnx import TensorProto, helper
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

from service.infer import nanodet, tagger, yolox
from service.infer.graph_edits import (
    PixelInput,
    set_dynamic_batch,
    set_input_size,
    set_uint8_pixels,
)
from service.infer.manifest import ModelError, resolve
from service.infer.runtime import OrtModelSession, load_onnx_session

REPO = Path(__file__).resolve().parents[2]


def model_dir() -> Path:
    return Path(os.environ.get("LABELSVC_MODEL_DIR") or REPO.parent / "shared" / "models")


def photo() -> PIL.Image.Image:
    evalset = Path(os.environ.get("LABELSVC_EVALSET_DIR") or REPO.parent / "shared" / "evalset")
    first = sorted((evalset / "images").glob("*.jpg"))[0]
    with PIL.Image.open(first) as image:
        return PIL.ImageOps.exif_transpose(image).convert("RGB")


def sessions(
    name: str, pixels: PixelInput, input_size: int | None = None
) -> tuple[OrtModelSession, OrtModelSession]:
    """The model as exported (float input) and with uint8 pixel input."""
    path = resolve(model_dir(), name)
    as_float, as_uint8 = (
        load_onnx_session(
            path, provider="cpu", intra_op_threads=1, input_size=input_size, pixels=edit
        )
        for edit in (None, pixels)
    )
    return as_float, as_uint8


def normalised(pixels: np.ndarray, spec: PixelInput) -> np.ndarray:
    """The float tensor the model was exported for, computed in numpy."""
    mean = np.asarray(spec.mean, dtype=np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(spec.std, dtype=np.float32).reshape(1, 3, 1, 1)
    result: np.ndarray = (pixels.astype(np.float32) - mean) / std
    return result


@pytest.mark.parametrize(
    ("name", "spec", "prepare"),
    [
        ("yolox_nano", yolox.RAW_PIXELS, lambda image: yolox.letterbox(image, 416)[0]),
        ("nanodet_g_416", nanodet.PIXELS, lambda image: nanodet.preprocess(image, 416)),
        ("efficientnet_lite0", tagger.PIXELS, tagger.preprocess),
    ],
)
def test_uint8_input_gives_the_float_models_outputs(
    name: str, spec: PixelInput, prepare: Callable[[PIL.Image.Image], np.ndarray]
) -> None:
    as_float, as_uint8 = sessions(name, spec)
    pixels = prepare(photo())
    assert pixels.dtype == np.uint8
    assert as_uint8.input_name == f"{as_float.input_name}_uint8"
    assert as_uint8.input_shape == as_float.input_shape
    expected = as_float.run({as_float.input_name: normalised(pixels, spec)})
    actual = as_uint8.run({as_uint8.input_name: pixels})
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected, strict=True):
        np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-5)


def test_uint8_input_at_another_input_size() -> None:
    as_float, as_uint8 = sessions("yolox_nano", yolox.RAW_PIXELS, input_size=640)
    assert as_uint8.input_shape == (1, 3, 640, 640)
    pixels, _ = yolox.letterbox(photo(), 640)
    [expected] = as_float.run({as_float.input_name: pixels.astype(np.float32)})
    [actual] = as_uint8.run({as_uint8.input_name: pixels})
    assert actual.shape == (1, 8400, 85)
    np.testing.assert_array_equal(actual, expected)  # a cast and nothing else: exact


def tiny_model(shape: list[int], elem_type: int = TensorProto.FLOAT) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", elem_type, shape)
    y = helper.make_tensor_value_info("y", elem_type, shape)
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    return helper.make_model(graph)


def test_uint8_pixels_refuses_inputs_that_are_not_float_images() -> None:
    with pytest.raises(ModelError, match="4-d input"):
        set_uint8_pixels(tiny_model([1, 3, 8]), PixelInput(), "tiny")
    with pytest.raises(ModelError, match="not float32"):
        set_uint8_pixels(tiny_model([1, 3, 8, 8], TensorProto.INT64), PixelInput(), "tiny")
    with pytest.raises(ModelError, match="4-d input"):
        set_input_size(tiny_model([3, 8, 8]), 16, "tiny")


def test_identity_normalisation_adds_only_the_cast() -> None:
    model = tiny_model([1, 3, 8, 8])
    set_uint8_pixels(model, PixelInput(), "tiny")
    assert [node.op_type for node in model.graph.node] == ["Cast", "Identity"]
    model = tiny_model([1, 3, 8, 8])
    set_uint8_pixels(model, PixelInput(mean=(1.0, 2.0, 3.0), std=(2.0, 2.0, 2.0)), "tiny")
    assert [node.op_type for node in model.graph.node] == ["Cast", "Sub", "Div", "Identity"]
    onnx.checker.check_model(model)


def test_yolox_batches_equal_its_single_runs() -> None:
    single = yolox.load_yolox(model_dir(), provider="cpu", intra_op_threads=1)
    batched = yolox.load_yolox(model_dir(), provider="cpu", intra_op_threads=1, max_batch=3)
    assert batched.provider == single.provider
    evalset = Path(os.environ.get("LABELSVC_EVALSET_DIR") or REPO.parent / "shared" / "evalset")
    images = []
    for path in sorted((evalset / "images").glob("*.jpg"))[:3]:
        with PIL.Image.open(path) as image:
            images.append(PIL.ImageOps.exif_transpose(image).convert("RGB"))
    expected = [single.detect(image, 0.1) for image in images]
    assert all(expected)
    assert batched.detect_batch(images, 0.1) == expected
    assert batched.detect_batch(images[:1], 0.1) == expected[:1]
    with pytest.raises(InvalidArgument, match="images"):  # a batch-1 session takes one image
        single.detect_batch(images, 0.1)


def test_dynamic_batch_frees_the_batch_dimension() -> None:
    model = tiny_model([1, 3, 8, 8])
    set_dynamic_batch(model, "tiny")
    dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert dim.dim_param == "batch" and not dim.HasField("dim_value")
    with pytest.raises(ModelError, match="4-d input"):
        set_dynamic_batch(tiny_model([3, 8, 8]), "tiny")
