"""Edits made to an ONNX model as it loads: another input size, uint8 pixel input."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from service.infer.manifest import ModelError


@dataclass(frozen=True, slots=True)
class PixelInput:
    """An image input ``[N, 3, H, W]`` that the model wants as ``(x - mean) / std`` per
    channel, ``x`` being 0-255 pixel values in the channel order the model expects."""

    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)


# YOLOX and other detectors that take the 0-255 values themselves.
RAW_PIXELS = PixelInput()


def read_model(path: Path) -> onnx.ModelProto:
    try:
        return onnx.load(str(path))
    except Exception as exc:  # onnx raises protobuf's DecodeError, among others
        raise ModelError(f"cannot read model {path}: {exc}") from exc


def _image_input(model: onnx.ModelProto, what: str) -> onnx.ValueInfoProto:
    first: onnx.ValueInfoProto = model.graph.input[0]
    dims = first.type.tensor_type.shape.dim
    if len(dims) != 4:
        raise ModelError(f"{what}: expected a 4-d input, got {len(dims)} dimensions")
    return first


def _forget_shapes(model: onnx.ModelProto) -> None:
    """Drop recorded shapes of intermediate values and outputs after an input edit: they
    no longer hold, and ONNX Runtime infers them again."""
    del model.graph.value_info[:]
    for output in model.graph.output:
        output.type.tensor_type.ClearField("shape")


def set_input_size(model: onnx.ModelProto, size: int, what: str) -> None:
    """Set the first input's two spatial dimensions to ``size``.

    For fully convolutional detectors exported with a fixed ``[1, 3, H, W]`` input: the same
    weights then run at another scale.
    """
    dims = _image_input(model, what).type.tensor_type.shape.dim
    dims[2].dim_value = size
    dims[3].dim_value = size
    _forget_shapes(model)


def set_uint8_pixels(model: onnx.ModelProto, pixels: PixelInput, what: str) -> None:
    """Make the first input take uint8 pixels; the cast to float and the normalisation run
    as the graph's first nodes.

    The bytes fed are a quarter of the float tensor's (what a GPU copies per image), and the
    arithmetic is the same float32 ``(x - mean) / std`` as in numpy, so outputs do not move.
    The input keeps its shape and gets the name ``<name>_uint8``.
    """
    first = _image_input(model, what)
    if first.type.tensor_type.elem_type != TensorProto.FLOAT:
        raise ModelError(f"{what}: the image input is not float32")
    name = first.name
    fed = f"{name}_uint8"
    first.name = fed
    first.type.tensor_type.elem_type = TensorProto.UINT8
    nodes = []
    value = f"{name}_float"
    nodes.append(helper.make_node("Cast", [fed], [value], to=TensorProto.FLOAT))
    for op, constant, identity in (("Sub", pixels.mean, 0.0), ("Div", pixels.std, 1.0)):
        if all(c == identity for c in constant):
            continue
        tensor = np.asarray(constant, dtype=np.float32).reshape(1, 3, 1, 1)
        const_name = f"{name}_{op.lower()}"
        model.graph.initializer.append(numpy_helper.from_array(tensor, const_name))
        out = f"{name}_{op.lower()}ed"
        nodes.append(helper.make_node(op, [value, const_name], [out]))
        value = out
    nodes[-1].output[0] = name  # the last node feeds what the input used to
    for index, node in enumerate(nodes):
        model.graph.node.insert(index, node)


def set_dynamic_batch(model: onnx.ModelProto, what: str) -> None:
    """Let the first input take any number of images: ``[batch, 3, H, W]``.

    For graphs exported with batch 1 whose only other trace of it is a leading 1 in constant
    ``Reshape`` targets (YOLOX: ``[1, 85, -1]``); those become 0, "copy this dimension".
    Other graphs fold the batch elsewhere (NanoDet's heads, the tagger's classifier) and
    are run one image at a time. Tests check per model that a batch equals its single runs.
    """
    dims = _image_input(model, what).type.tensor_type.shape.dim
    dims[0].ClearField("dim_value")
    dims[0].dim_param = "batch"
    initializers = {tensor.name: tensor for tensor in model.graph.initializer}
    for node in model.graph.node:
        target = initializers.get(node.input[1]) if node.op_type == "Reshape" else None
        if target is None:
            continue
        shape = numpy_helper.to_array(target).copy()
        if shape.size > 1 and shape[0] == 1:
            shape[0] = 0
            target.CopyFrom(numpy_helper.from_array(shape, target.name))
    _forget_shapes(model)
