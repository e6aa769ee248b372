"""Measure NanoDet's activation ranges for int8 (``service.infer.quantize``) and write them.

    python -m models.calibrate_nanodet --model-dir DIR --evalset DIR [--out FILE]

Runs the verified fp32 NanoDet over ``CALIBRATION_PHOTOS`` photos of the evaluation set's fit
half (the images sorted by id, even positions: the half ``bench.quality`` fits on, never the
half it reports on) and writes ONNX Runtime's calibration cache, which the service quantizes
from at load. The photos are prepared as the service prepares them (``nanodet.preprocess``
and the model's normalisation).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import onnx
import PIL.Image
from onnxruntime.quantization import CalibrationDataReader, quantize_static

from service.infer import nanodet
from service.infer.manifest import resolve
from service.infer.manifest_model import EXPORTED_INPUT_SIZE
from service.infer.quantize import RANGES_FILE, quantize_options, without_preprocessing_advice

CALIBRATION_PHOTOS = 32


def fit_half(evalset: Path) -> list[Path]:
    """The evaluation photos ``bench.quality`` fits on: sorted by image id, even positions."""
    annotations = json.loads((evalset / "annotations" / "instances.json").read_text())
    images = sorted(annotations["images"], key=lambda image: image["id"])
    return [evalset / "images" / image["file_name"] for image in images[0::2]]


def model_input(photo: Path) -> np.ndarray:
    """The float input of the fp32 file: BGR, stretched to the square, normalised."""
    with PIL.Image.open(photo) as image:
        pixels = nanodet.preprocess(image.convert("RGB"), EXPORTED_INPUT_SIZE).astype(np.float32)
    mean = np.asarray(nanodet.PIXELS.mean, np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(nanodet.PIXELS.std, np.float32).reshape(1, 3, 1, 1)
    return (pixels - mean) / std


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.calibrate_nanodet", description=__doc__)
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--evalset", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / RANGES_FILE)
    args = parser.parse_args(argv)

    model = resolve(args.model_dir, nanodet.MODEL_NAME)
    photos = fit_half(args.evalset)[:CALIBRATION_PHOTOS]

    class Photos(CalibrationDataReader):  # type: ignore[misc]  # onnxruntime has no types
        def __init__(self, name: str) -> None:
            self._inputs: Iterator[np.ndarray] = (model_input(p) for p in photos)
            self._name = name

        def get_next(self) -> dict[str, np.ndarray] | None:
            tensor = next(self._inputs, None)
            return None if tensor is None else {self._name: tensor}

    name = onnx.load(str(model)).graph.input[0].name
    args.out.unlink(missing_ok=True)  # a cache that exists is read, not measured
    with (
        without_preprocessing_advice(),
        tempfile.TemporaryDirectory(prefix="labelsvc-calibrate-") as tmp,
    ):
        quantize_static(
            str(model),
            str(Path(tmp) / "int8.onnx"),
            Photos(name),
            calibration_cache_path=str(args.out),
            **quantize_options(),
        )
    # Keys sorted, so that measuring again gives the same file (ONNX Runtime writes them in
    # the order of a set).
    ranges = json.loads(args.out.read_text())
    args.out.write_text(json.dumps(ranges, sort_keys=True, indent=1) + "\n")
    args.out.chmod(0o644)  # ONNX Runtime writes it owner-only; the service's user reads it
    sys.stdout.write(f"wrote {args.out} from {len(photos)} photos\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
