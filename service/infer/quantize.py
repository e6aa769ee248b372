"""int8 NanoDet on the CPU: the fp32 file quantized at load from committed activation ranges.

Only NanoDet's convolutions are quantized (QDQ, int8 weights per output channel, uint8
activations), on the CPU only. On the 2-core development machine (AVX512-VNNI) NanoDet then
takes 25 ms instead of 35 (two threads, ``bench.quality``) for a label-quality estimate as
good (held-out AUROC 0.778 against 0.779). Quantizing every operator broke its score heads,
and YOLOX-nano, mostly depthwise convolutions, ran slower in int8, so neither is done.

The activation ranges were measured once, on 32 photos of the evaluation set's fit half
(``python -m models.calibrate_nanodet``), and ship with the code: quantizing from them takes
about 0.3 s and gives the same bytes every time, so users need no calibration photos.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any

import onnx

from service.infer.manifest import ModelError

RANGES_FILE = "nanodet_g_416.int8-ranges.json"


def quantize_options() -> dict[str, Any]:
    """``quantize_static``'s settings: the ones the ranges were measured for."""
    # Imported when used: about 40 ms more at every start, for a setting that is off by default.
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType

    return {
        "quant_format": QuantFormat.QDQ,
        "per_channel": True,
        "activation_type": QuantType.QUInt8,
        "weight_type": QuantType.QInt8,
        "calibrate_method": CalibrationMethod.MinMax,
        "op_types_to_quantize": ["Conv"],
    }


@contextmanager
def shipped_ranges() -> Iterator[Path]:
    """The committed activation ranges, as a file."""
    with resources.as_file(resources.files("models").joinpath(RANGES_FILE)) as path:
        if not path.is_file():
            raise ModelError(f"the int8 activation ranges {RANGES_FILE} are not installed")
        yield path


def ranges_digest() -> str:
    """Names the ranges in a record's lineage: the start of their SHA-256."""
    with shipped_ranges() as path:
        return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


class _NoPreprocessingAdvice(logging.Filter):
    """ONNX Runtime's quantizer advises, on the root logger, to optimise the model before
    quantizing it. That would rename the tensors the shipped ranges are keyed by."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-process" not in record.getMessage()


@contextmanager
def without_preprocessing_advice() -> Iterator[None]:
    """Keep ONNX Runtime's advice to pre-process out of the logs while quantizing."""
    advice = _NoPreprocessingAdvice()
    root = logging.getLogger()
    root.addFilter(advice)
    try:
        yield
    finally:
        root.removeFilter(advice)


def quantized(model_path: Path) -> onnx.ModelProto:
    """``model_path`` (verified fp32 NanoDet) with its convolutions quantized to int8."""
    from onnxruntime.quantization import quantize_static

    try:
        with (
            without_preprocessing_advice(),
            shipped_ranges() as ranges,
            tempfile.TemporaryDirectory(prefix="labelsvc-") as tmp,
        ):
            out = Path(tmp) / "int8.onnx"
            quantize_static(
                str(model_path),
                str(out),
                None,
                calibration_cache_path=str(ranges),
                **quantize_options(),
            )
            return onnx.load(str(out))
    except ModelError:
        raise
    except Exception as exc:  # onnxruntime raises its own, undocumented exception types
        raise ModelError(f"cannot quantize {model_path.name} to int8: {exc}") from exc
