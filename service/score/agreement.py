"""Cleanlab's object-detection label-quality score, adapted to one image at a time.

Kept boxes (the labels) are compared with another model's boxes: an object that model is
sure of but no label of its class covers (overlooked), a label whose best same-class match
is off (badly located), and a label that a confident box of another class covers (swapped).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from service.infer.yolox import Detection
from service.score.geometry import iou_matrix, xyxy

ALPHA = 0.9
EUC_FACTOR = 0.1
# Centre distances are measured in pixels of the image scaled to an 800 px diagonal (a
# 640x480 photo), so EUC_FACTOR means what it means in Cleanlab on COCO-sized images.
REFERENCE_DIAGONAL = 800.0
TEMPERATURE = 0.1
HIGH_PROBABILITY = 0.5


def similarity_matrix(
    labels: Sequence[Detection], predictions: Sequence[Detection], image_size: tuple[int, int]
) -> np.ndarray:
    """Cleanlab's box similarity ``0.9*IoU + 0.1*exp(-0.1*centre distance)``, ``[L,P]``."""
    a, b = xyxy(labels), xyxy(predictions)
    centres_a = (a[:, :2] + a[:, 2:]) / 2.0
    centres_b = (b[:, :2] + b[:, 2:]) / 2.0
    distance = np.linalg.norm(centres_a[:, None, :] - centres_b[None, :, :], axis=2)
    distance *= REFERENCE_DIAGONAL / max(math.hypot(*image_size), 1.0)
    result: np.ndarray = ALPHA * iou_matrix(a, b) + (1.0 - ALPHA) * np.exp(-EUC_FACTOR * distance)
    return result


def softmin_pool(scores: Sequence[float] | np.ndarray, temperature: float = TEMPERATURE) -> float:
    """``sum(softmax(-s/T) * s)``: near the minimum, but every low score pulls it down."""
    values = np.asarray(scores, dtype=np.float64)
    values = values[~np.isnan(values)]
    if values.size == 0:
        return 1.0
    weights = np.exp(-(values - values.min()) / temperature)
    return float(np.sum(weights * values) / np.sum(weights))


def agreement_scores(
    labels: Sequence[Detection],
    predictions: Sequence[Detection],
    image_size: tuple[int, int],
    *,
    min_similarity: float,
) -> dict[str, float]:
    """Cleanlab's overlooked / badly-located / swapped scores, pooled, and their geometric mean.

    ``labels`` are judged against ``predictions`` (another model's boxes, already cut at
    that model's confidence floor). Each score is in [0, 1], low meaning a likely error.
    ``min_similarity`` stands in for Cleanlab's dataset-wide minimum similarity, frozen as a
    constant.
    """
    sim = similarity_matrix(labels, predictions, image_size)
    label_cls = np.array([d.class_id for d in labels], dtype=np.int64)
    pred_cls = np.array([d.class_id for d in predictions], dtype=np.int64)
    pred_conf = np.array([d.conf for d in predictions], dtype=np.float64)
    overlooked: list[float] = []
    for j, pred in enumerate(predictions):
        if pred.conf < HIGH_PROBABILITY:
            continue
        same = label_cls == pred.class_id
        overlooked.append(
            float(sim[same, j].max()) if same.any() else min_similarity * (1.0 - pred.conf)
        )
    badloc: list[float] = []
    swap: list[float] = []
    for i, label in enumerate(labels):
        same = pred_cls == label.class_id
        badloc.append(float(sim[i, same].max()) if same.any() else 1.0)
        other = (pred_cls != label.class_id) & (pred_conf >= HIGH_PROBABILITY)
        swap.append(max(min_similarity, 1.0 - float(sim[i, other].max())) if other.any() else 1.0)
    pooled = {
        "overlooked": softmin_pool(overlooked),
        "badly_located": softmin_pool(badloc),
        "swapped": softmin_pool(swap),
    }
    logs = [math.log(1e-100 + v) for v in pooled.values()]
    pooled["agreement"] = math.exp(sum(logs) / len(logs))
    return pooled
