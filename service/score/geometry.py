"""Boxes as arrays, and their pairwise overlap."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from service.infer.yolox import Detection


def xyxy(detections: Sequence[Detection]) -> np.ndarray:
    """``[N, 4]`` float64 corners (x1, y1, x2, y2) of ``detections``."""
    return np.array([(d.x1, d.y1, d.x2, d.y2) for d in detections], dtype=np.float64).reshape(-1, 4)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of ``a`` ``[N,4]`` with every box of ``b`` ``[M,4]`` (x1,y1,x2,y2)."""
    ix = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    iy = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.clip(ix, 0.0, None) * np.clip(iy, 0.0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    result: np.ndarray = np.where(union > 0.0, inter / np.maximum(union, 1e-12), 0.0)
    return result
