"""What every model of the manifest shares once loaded: its identity for lineage and metrics,
and, for the detectors, a square input and the selection of their boxes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, TypedDict

from service.infer.manifest import ModelError, spec
from service.infer.runtime import ModelSession


class ManifestModel:
    """A model of the manifest running in a session: its identity for lineage and metrics.

    Subclasses add their pre- and post-processing; all are safe to share between threads.
    """

    def __init__(
        self,
        session: ModelSession,
        manifest_name: str,
        class_names: Sequence[str],
        *,
        model_name: str | None = None,
        model_sha256: str | None = None,
    ) -> None:
        entry = spec(manifest_name)
        self._session = session
        self._class_names = tuple(class_names)
        self._name = model_name or entry.name
        self._sha256 = model_sha256 or entry.sha256

    @property
    def name(self) -> str:
        """The manifest name of the model, for lineage."""
        return self._name

    @property
    def instance_name(self) -> str:
        """The name in metrics and /readyz, which tells apart two uses of one model."""
        return self._name

    @property
    def version(self) -> str:
        """A short content version: the start of the weights' sha256."""
        return self._sha256[:12]

    @property
    def sha256(self) -> str:
        return self._sha256

    @property
    def provider(self) -> str:
        return self._session.provider

    @property
    def class_names(self) -> tuple[str, ...]:
        return self._class_names


class Selection(TypedDict):
    """How a detector's post-processing picks its boxes: keyword arguments of both
    detectors' ``postprocess``."""

    min_confidence: float
    nms_iou: float
    max_detections: int
    class_names: Sequence[str]


EXPORTED_INPUT_SIZE = 416  # both shipped detectors' files


class SquareInputDetector(ManifestModel):
    """A detector of the manifest with a square input: its size, NMS IoU and output cap.

    Subclasses name their manifest entry and default NMS IoU, and add ``detect``.
    """

    manifest_name: ClassVar[str]
    default_nms_iou: ClassVar[float]

    def __init__(
        self,
        session: ModelSession,
        class_names: Sequence[str],
        *,
        input_size: int = 416,
        nms_iou: float | None = None,
        max_detections: int = 100,
        model_name: str | None = None,
        model_sha256: str | None = None,
    ) -> None:
        check_square_input(session, input_size, "detector")
        super().__init__(
            session,
            self.manifest_name,
            class_names,
            model_name=model_name,
            model_sha256=model_sha256,
        )
        self.input_size = input_size
        self.nms_iou = self.default_nms_iou if nms_iou is None else nms_iou
        self.max_detections = max_detections

    @property
    def instance_name(self) -> str:
        """``yolox_nano``, or ``yolox_nano@640`` when run at another input size (the second
        scale of the quality estimate runs the same weights beside the detector)."""
        exported = self.input_size == EXPORTED_INPUT_SIZE
        return self.name if exported else f"{self.name}@{self.input_size}"

    def selection(self, min_confidence: float) -> Selection:
        return Selection(
            min_confidence=min_confidence,
            nms_iou=self.nms_iou,
            max_detections=self.max_detections,
            class_names=self._class_names,
        )


def check_square_input(session: ModelSession, size: int, what: str) -> None:
    """Refuse a model whose input is not ``[N, 3, size, size]`` (or has free dimensions)."""
    shape = session.input_shape
    if len(shape) != 4 or any(isinstance(d, int) and d != size for d in shape[2:]):
        raise ModelError(f"{what} input must be [1,3,{size},{size}], got {shape}")
