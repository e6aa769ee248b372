"""NanoDet-g: a second, independent COCO detector (stretched input, distribution box decode).

Returns the same ``Detection`` as YOLOX so the two can be compared box by box.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import PIL.Image

from service.infer.graph_edits import PixelInput
from service.infer.manifest import ModelError, read_lines, resolve, sha256_file
from service.infer.manifest_model import SquareInputDetector
from service.infer.quantize import ranges_digest
from service.infer.runtime import ProviderChoice, load_onnx_session
from service.infer.yolox import Detection, clipped_detections, nms_per_class

MODEL_NAME = "nanodet_g_416"
FILES = (MODEL_NAME, "coco_classes")  # the manifest entries it loads
STRIDES = (8, 16, 32)
NUM_BINS = 11  # distance bins 0..10, in units of the stride
# Its input is (x - mean) / std of BGR pixels: done inside the graph (``load_nanodet``).
PIXELS = PixelInput(mean=(103.53, 116.28, 123.675), std=(57.375, 57.12, 58.395))


def preprocess(image: PIL.Image.Image, size: int) -> np.ndarray:
    """RGB image -> uint8 ``[1,3,size,size]`` BGR, stretched to the square."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    if image.size != (size, size):
        image = image.resize((size, size), PIL.Image.Resampling.BILINEAR, reducing_gap=2.0)
    pixels = np.asarray(image, dtype=np.uint8)[:, :, ::-1]
    return np.ascontiguousarray(pixels.transpose(2, 0, 1)[None])


def split_outputs(
    outputs: Sequence[np.ndarray], size: int, num_classes: int
) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """Pair the six heads by shape: ``[(stride, scores [N,C], distributions [N,44]), ...]``.

    The exported graph names its outputs ``Identity_k:0`` in no useful order, so each is
    recognised by its cell count (which fixes the stride) and its width (80 or 44).
    """
    by_cells: dict[int, dict[str, np.ndarray]] = {}
    for out in outputs:
        arr = np.asarray(out, dtype=np.float32)
        arr = arr.reshape(-1, arr.shape[-1])
        kind = (
            "scores"
            if arr.shape[1] == num_classes
            else "dist"
            if arr.shape[1] == 4 * NUM_BINS
            else None
        )
        if kind is None:
            raise ModelError(f"unexpected NanoDet output shape {tuple(out.shape)}")
        by_cells.setdefault(arr.shape[0], {})[kind] = arr
    heads: list[tuple[int, np.ndarray, np.ndarray]] = []
    for stride in STRIDES:
        cells = (size // stride) ** 2
        pair = by_cells.get(cells, {})
        if "scores" not in pair or "dist" not in pair:
            raise ModelError(
                f"NanoDet outputs lack stride {stride} ({cells} cells) for input size {size}: "
                f"got shapes {[tuple(o.shape) for o in outputs]}"
            )
        heads.append((stride, pair["scores"], pair["dist"]))
    return heads


@functools.lru_cache(maxsize=8)
def _centres(size: int, stride: int) -> np.ndarray:
    cells = size // stride
    ys, xs = np.meshgrid(np.arange(cells), np.arange(cells), indexing="ij")
    centres = (np.stack((xs, ys), axis=-1).reshape(-1, 2).astype(np.float32) + 0.5) * stride
    centres.setflags(write=False)
    return centres


def decode_head(
    dist: np.ndarray, stride: int, size: int, cells: np.ndarray | None = None
) -> np.ndarray:
    """``[N,44]`` side distributions -> ``[N,4]`` x1,y1,x2,y2 boxes in network pixels.

    ``cells`` are the row-major cell indices of the rows of ``dist`` (default: all cells).
    """
    logits = dist.reshape(-1, 4, NUM_BINS).astype(np.float32)
    logits = logits - logits.max(axis=2, keepdims=True)
    weights = np.exp(logits)
    weights /= weights.sum(axis=2, keepdims=True)
    distances = (weights @ np.arange(NUM_BINS, dtype=np.float32)) * stride  # left,top,right,bottom
    centres = _centres(size, stride)
    if cells is not None:
        centres = centres[cells]
    if centres.shape[0] != distances.shape[0]:
        raise ModelError(f"stride {stride}: {distances.shape[0]} cells, expected {len(centres)}")
    return np.concatenate((centres - distances[:, :2], centres + distances[:, 2:]), axis=1)


def postprocess(
    outputs: Sequence[np.ndarray],
    *,
    image_size: tuple[int, int],
    size: int,
    min_confidence: float,
    nms_iou: float,
    max_detections: int,
    class_names: Sequence[str],
) -> list[Detection]:
    """Decode all strides, keep the best class per cell, NMS, rescale to the image, clip."""
    boxes_parts: list[np.ndarray] = []
    score_parts: list[np.ndarray] = []
    class_parts: list[np.ndarray] = []
    for stride, scores, dist in split_outputs(outputs, size, len(class_names)):
        class_ids = scores.argmax(axis=1)
        best = scores[np.arange(len(class_ids)), class_ids]
        keep = np.flatnonzero(best >= min_confidence)
        if keep.size == 0:
            continue
        boxes_parts.append(decode_head(dist[keep], stride, size, keep))
        score_parts.append(best[keep])
        class_parts.append(class_ids[keep])
    if not score_parts:
        return []
    boxes = np.concatenate(boxes_parts).astype(np.float64)
    scores_all = np.concatenate(score_parts)
    classes_all = np.concatenate(class_parts)
    width, height = image_size
    boxes[:, 0::2] *= width / size
    boxes[:, 1::2] *= height / size
    keep = nms_per_class(boxes, scores_all, classes_all, nms_iou, max_detections)
    return clipped_detections(
        boxes[keep], classes_all[keep], scores_all[keep], image_size, class_names
    )


class NanoDetDetector(SquareInputDetector):
    """A NanoDet model plus its pre- and post-processing; safe to share between threads."""

    manifest_name = MODEL_NAME
    default_nms_iou = 0.6
    # The activation ranges its convolutions were quantized from (their digest), if they were.
    int8_ranges: str | None = None

    def detect(self, image: PIL.Image.Image, min_confidence: float) -> list[Detection]:
        """Detections on an RGB image, best first, at most ``max_detections``."""
        tensor = preprocess(image, self.input_size)
        outputs = self._session.run({self._session.input_name: tensor})
        return postprocess(
            outputs, image_size=image.size, size=self.input_size, **self.selection(min_confidence)
        )


def load_nanodet(
    model_dir: Path,
    *,
    provider: ProviderChoice = "auto",
    intra_op_threads: int = 0,
    nms_iou: float = 0.6,
    max_detections: int = 100,
    engine_cache: Path | None = None,
    int8: bool = False,
) -> NanoDetDetector:
    """The shipped NanoDet-g detector from ``model_dir``, checksums verified; ``int8``: its
    convolutions quantized at load (``service.infer.quantize``), for the CPU."""
    model_path, names_path = (resolve(model_dir, name) for name in FILES)
    names = read_lines(names_path)
    session = load_onnx_session(
        model_path,
        provider=provider,
        intra_op_threads=intra_op_threads,
        pixels=PIXELS,
        engine_cache=engine_cache,
        int8=int8,
    )
    detector = NanoDetDetector(
        session,
        names,
        nms_iou=nms_iou,
        max_detections=max_detections,
        model_sha256=sha256_file(model_path),
    )
    detector.int8_ranges = ranges_digest() if int8 else None
    return detector
