"""Label-quality estimate: the probability that one image's machine labels are right.

"Right" means a per-image F1 >= 0.5 at IoU 0.5 (class-aware) against careful human boxes,
for the detections the service keeps (conf >= ``KEPT_CONF``). An image with no objects and
no detections counts as right; one side empty and the other not, as wrong.

How: a second, independent detector (NanoDet) looks at the same image, optionally joined by
the detector itself at a larger input size (``SECOND_SCALE_SIZE``, which finds small objects
the 416 pass misses: fit-half cross-validated AUROC 0.895 instead of 0.875, for about 40%
more CPU per image; ``WITH_SECOND_SCALE``). The detector's own boxes just below the kept
threshold (``SUB_MIN_CONF`` <= conf < ``KEPT_CONF``, found by the
same detector pass) are kept aside as evidence of objects the labels missed.

* Each kept box gets a probability of being a true positive from its own confidence and
  the confidence of the same-class second-opinion box that overlaps it at IoU >= 0.5
  (``box_quality``).
* Each second-opinion box (conf >= ``SECOND_MIN_CONF``) that no kept box of its class
  overlaps gets a probability of being an object the labels missed, from its confidence,
  its size (log share of the image area; the objects the detector misses are mostly small)
  and the confidence of the same-class sub-threshold detector box that overlaps it at
  IoU >= 0.5 (0 if none): both detectors seeing the same object is the strongest sign of a
  miss.
* Those give an expected F1, ``2*TP / (kept + TP + missed)``, and one logistic regression
  maps it to the probability that F1 >= 0.5.

Without a second opinion the fallback model scores kept boxes on confidence alone and takes
the sub-threshold boxes that no kept box of their class overlaps as the missed-object
candidates (confidence and size).

The coefficients were fitted by ``python -m bench.quality --fit`` on half of the evalset
(images sorted by id, even positions); the bench reports on the other half. The features were
chosen by repeated 5-fold cross-validation inside that fit half only. Cleanlab-style agreement
(overlooked / badly located / swapped, ``service.score.agreement``), the confidence profile,
tagger/detector consistency (``service.score.tags``), image quality and the sub-threshold
counts are reported in ``components`` but left out of
the score: on the fit half none of them raised the cross-validated AUROC once the expected F1
was in (image-level counts and box sizes fed to the final regression next to it lowered it).
Pure numpy, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from service.domain.records import ImageProperties
from service.infer.tagger import Tag
from service.infer.yolox import Detection
from service.score.agreement import agreement_scores
from service.score.geometry import iou_matrix, xyxy
from service.score.tags import tag_consistency

KEPT_CONF = 0.25
SECOND_MIN_CONF = 0.1
# The detector's own boxes in [SUB_MIN_CONF, KEPT_CONF): not labels, evidence of misses.
SUB_MIN_CONF = 0.1
# The optional second scale: the detector again at this input size, where small objects the
# 416 pass misses show up; WITH_SECOND_SCALE was fitted on NanoDet's and its boxes together.
SECOND_SCALE_SIZE = 640
# Box sizes enter as log(area / image area), floored here.
MIN_AREA_FRACTION = 1e-6
MATCH_IOU = 0.5
AMBIGUOUS_BAND = (0.25, 0.5)


@dataclass(frozen=True, slots=True)
class QualityModel:
    """Fitted coefficients: per-box TP model, per-box missed-object model, image calibration.

    ``box_coef`` weighs ``[log conf, matched second-opinion conf]`` (just ``[log conf]`` for
    a model without a second opinion); ``miss_coef`` weighs ``miss_features`` of each
    missed-object candidate: ``[log conf, log area share, confirming sub-threshold conf]`` of
    an unmatched second-opinion box, or ``[log conf, log area share]`` of an unclaimed
    sub-threshold box for a model without a second opinion; ``slope`` weighs
    ``logit(expected F1)``.
    """

    box_intercept: float
    box_coef: tuple[float, ...]
    miss_intercept: float
    miss_coef: tuple[float, ...]
    intercept: float
    slope: float
    uses_second: bool


@dataclass(frozen=True, slots=True)
class QualityEstimate:
    """The estimate: ``score`` in [0, 1], the signals behind it, one quality per kept box."""

    score: float
    components: dict[str, float]
    box_quality: list[float]


def _sigmoid(z: np.ndarray) -> np.ndarray:
    result: np.ndarray = 1.0 / (1.0 + np.exp(-np.clip(z, -50.0, 50.0)))
    return result


def _logit(p: float) -> float:
    p = min(max(p, 1e-3), 1.0 - 1e-3)
    return math.log(p / (1.0 - p))


def _same_class_overlap(
    primary: Sequence[Detection], second: Sequence[Detection]
) -> tuple[np.ndarray, np.ndarray]:
    """For each kept box: the best conf of a same-class second box at IoU >= 0.5 (0 if none);
    for each second box: whether some kept box of its class overlaps it at IoU >= 0.5."""
    matched_conf = np.zeros(len(primary))
    claimed = np.zeros(len(second), dtype=bool)
    if not primary or not second:
        return matched_conf, claimed
    overlap = iou_matrix(xyxy(primary), xyxy(second)) >= MATCH_IOU
    same = (
        np.array([d.class_id for d in primary])[:, None]
        == np.array([d.class_id for d in second])[None, :]
    )
    hits = overlap & same
    conf = np.array([d.conf for d in second])
    matched_conf = np.where(hits, conf[None, :], 0.0).max(axis=1)
    claimed = hits.any(axis=0)
    return matched_conf, claimed


def box_features(primary: Sequence[Detection], second: Sequence[Detection] | None) -> np.ndarray:
    """Per kept box: ``[log conf]`` plus, with a second opinion, its matched conf."""
    conf = np.array([d.conf for d in primary], dtype=np.float64)
    columns = [np.log(np.maximum(conf, 1e-6))]
    if second is not None:
        candidates = [d for d in second if d.conf >= SECOND_MIN_CONF]
        columns.append(_same_class_overlap(primary, candidates)[0])
    return np.stack(columns, axis=1).reshape(len(primary), len(columns))


def unmatched_second(primary: Sequence[Detection], second: Sequence[Detection]) -> list[Detection]:
    """Second-opinion boxes (conf >= ``SECOND_MIN_CONF``) that no kept box of their class
    overlaps at IoU >= 0.5: candidates for objects the labels missed."""
    candidates = [d for d in second if d.conf >= SECOND_MIN_CONF]
    _, claimed = _same_class_overlap(primary, candidates)
    return [d for d, c in zip(candidates, claimed, strict=True) if not c]


def sub_threshold(detections: Sequence[Detection]) -> list[Detection]:
    """The detector's boxes with ``SUB_MIN_CONF <= conf < KEPT_CONF`` (never labels)."""
    return [d for d in detections if SUB_MIN_CONF <= d.conf < KEPT_CONF]


def unclaimed_below(primary: Sequence[Detection], below: Sequence[Detection]) -> list[Detection]:
    """Sub-threshold boxes that no kept box of their class overlaps at IoU >= 0.5."""
    candidates = sub_threshold(below)
    _, claimed = _same_class_overlap(primary, candidates)
    return [d for d, c in zip(candidates, claimed, strict=True) if not c]


def miss_candidates(
    primary: Sequence[Detection], second: Sequence[Detection] | None, below: Sequence[Detection]
) -> list[Detection]:
    """Boxes that may be objects the labels missed: ``unmatched_second``, or without a second
    opinion ``unclaimed_below``."""
    if second is not None:
        return unmatched_second(primary, second)
    return unclaimed_below(primary, below)


def log_area_share(detections: Sequence[Detection], image_size: tuple[int, int]) -> np.ndarray:
    """``log(box area / image area)`` of each box, floored at ``MIN_AREA_FRACTION``."""
    boxes = xyxy(detections)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    image_area = max(float(image_size[0]) * float(image_size[1]), 1.0)
    result: np.ndarray = np.log(np.maximum(area / image_area, MIN_AREA_FRACTION))
    return result


def miss_features(
    primary: Sequence[Detection],
    second: Sequence[Detection] | None,
    below: Sequence[Detection],
    image_size: tuple[int, int],
) -> np.ndarray:
    """Per ``miss_candidates`` box: ``[log conf, log area share]`` plus, with a second
    opinion, the conf of the same-class sub-threshold box overlapping it at IoU >= 0.5 (0 if
    none)."""
    candidates = miss_candidates(primary, second, below)
    conf = np.array([d.conf for d in candidates], dtype=np.float64)
    columns = [np.log(np.maximum(conf, 1e-6)), log_area_share(candidates, image_size)]
    if second is not None:
        columns.append(_same_class_overlap(candidates, sub_threshold(below))[0])
    return np.stack(columns, axis=1).reshape(len(candidates), len(columns))


def _linear(intercept: float, coef: Sequence[float], x: np.ndarray) -> np.ndarray:
    if x.shape[0] == 0:
        return np.zeros(0)
    result: np.ndarray = intercept + x @ np.asarray(coef, dtype=np.float64)
    return result


def _model_for(second: Sequence[Detection] | None) -> QualityModel:
    return WITH_SECOND if second is not None else WITHOUT_SECOND


def box_quality(
    primary: Sequence[Detection],
    second: Sequence[Detection] | None,
    *,
    model: QualityModel | None = None,
) -> list[float]:
    """For each kept box, the probability that it is a true positive (right class, IoU >= 0.5)."""
    model = model or _model_for(second)
    second = second if model.uses_second else None
    logits = _linear(model.box_intercept, model.box_coef, box_features(primary, second))
    return [round(float(p), 4) for p in _sigmoid(logits)]


def expected_f1(quality: Sequence[float], missed: np.ndarray, *, n_kept: int) -> float:
    """``2*TP / (kept + TP + missed)`` from per-box probabilities.

    With no kept boxes the labels are right only if nothing was missed: the probability
    that none of the missed-object candidates is a real object.
    """
    if n_kept == 0:
        return float(np.prod(1.0 - missed))
    tp = float(np.sum(quality))
    return 2.0 * tp / (n_kept + tp + float(np.sum(missed)))


def confidence_profile(primary: Sequence[Detection]) -> dict[str, float]:
    """Mean and minimum confidence, the share of boxes in the ambiguous band, the count."""
    conf = np.array([d.conf for d in primary], dtype=np.float64)
    if conf.size == 0:
        return {"mean_conf": 0.0, "min_conf": 0.0, "ambiguous_share": 0.0, "count": 0.0}
    low, high = AMBIGUOUS_BAND
    return {
        "mean_conf": float(conf.mean()),
        "min_conf": float(conf.min()),
        "ambiguous_share": float(np.mean((conf >= low) & (conf < high))),
        "count": float(conf.size),
    }


def image_quality(props: ImageProperties) -> dict[str, float]:
    """Blur, exposure and resolution, each in [0, 1] with 1 the good end."""
    return {
        # log-variance of the Laplacian: ~50 (visibly blurred) -> 0.5, 2500+ -> 1.
        "sharpness": min(1.0, math.log1p(props.sharpness) / math.log1p(2500.0)),
        "exposure": 1.0 - min(1.0, 2.0 * abs(props.brightness - 0.5)),
        "resolution": min(1.0, min(props.width, props.height) / 416.0),
    }


def estimate(
    primary: Sequence[Detection],
    second: Sequence[Detection] | None,
    tags: Sequence[Tag] | None,
    props: ImageProperties | None,
    image_size: tuple[int, int],
    *,
    below: Sequence[Detection],
    model: QualityModel | None = None,
) -> QualityEstimate:
    """The label-quality estimate of one image.

    ``primary``: the kept detections (conf >= ``KEPT_CONF``) being judged. ``below``: the
    same detector pass at a lower threshold; only its boxes with ``SUB_MIN_CONF <= conf <
    KEPT_CONF`` are used (``sub_threshold``), so the whole low-threshold list can be passed.
    ``second``: the second opinion's detections at conf >= ``SECOND_MIN_CONF`` (NanoDet), or
    ``None`` when it is unavailable, which uses a weaker fallback model. Other second
    opinions need their own ``model``: ``WITH_SECOND_SCALE`` for NanoDet's boxes plus the
    detector's at ``SECOND_SCALE_SIZE`` in one list; ``bench.quality`` fits others (YOLOX on
    the flipped image). ``tags`` and ``props`` only feed
    ``components``. ``image_size`` is ``(width, height)``.
    """
    model = model or _model_for(second)
    used_second = second if model.uses_second else None
    quality = box_quality(primary, used_second, model=model)
    miss_x = miss_features(primary, used_second, below, image_size)
    missed = _sigmoid(_linear(model.miss_intercept, model.miss_coef, miss_x))
    f1 = expected_f1(quality, missed, n_kept=len(primary))
    score = float(_sigmoid(np.array(model.intercept + model.slope * _logit(f1))))
    components: dict[str, float] = {
        "expected_f1": f1,
        # no labels, none wrong: an empty set is precise (its F1 turns on the misses alone)
        "expected_precision": float(np.mean(quality)) if quality else 1.0,
        "expected_missed": float(np.sum(missed)),
        **confidence_profile(primary),
        "sub_threshold_count": float(len(sub_threshold(below))),
    }
    if used_second is not None:
        # unmatched second-opinion boxes that the detector also saw below the threshold
        components["confirmed_missed"] = float(np.sum(miss_x[:, 2] > 0.0))
    if second is not None:
        candidates = [d for d in second if d.conf >= SECOND_MIN_CONF]
        components.update(
            agreement_scores(primary, candidates, image_size, min_similarity=MIN_SIMILARITY)
        )
    if tags is not None:
        components.update(tag_consistency(primary, tags))
    if props is not None:
        components.update(image_quality(props))
    return QualityEstimate(
        score=round(score, 4),
        components={k: round(v, 4) for k, v in components.items()},
        box_quality=quality,
    )


def unflip(detections: Sequence[Detection], width: int) -> list[Detection]:
    """Boxes found on the horizontally flipped image, mapped back to the original."""
    return [replace(d, x1=width - d.x2, x2=width - d.x1) for d in detections]


# Fitted by ``python -m bench.quality --fit`` on the fit half of the evalset.
# Cleanlab's dataset-wide minimum similarity (kept boxes vs NanoDet), frozen.
MIN_SIMILARITY = 1.87677e-32
WITH_SECOND = QualityModel(
    box_intercept=1.38748,
    box_coef=(2.65155, 2.98306),
    miss_intercept=-1.34935,
    miss_coef=(1.41546, -0.0739317, 9.0526),
    intercept=-0.217891,
    slope=1.86199,
    uses_second=True,
)
# The optional stronger second opinion: NanoDet's boxes and the detector's at SECOND_SCALE_SIZE,
# in one list.
WITH_SECOND_SCALE = QualityModel(
    box_intercept=-0.118044,
    box_coef=(1.93442, 3.84645),
    miss_intercept=-1.57966,
    miss_coef=(1.53589, -0.239349, 7.26223),
    intercept=0.410775,
    slope=1.67455,
    uses_second=True,
)
# The fallback when no second opinion is available: confidence, and the sub-threshold boxes as
# the only evidence of misses (much weaker).
WITHOUT_SECOND = QualityModel(
    box_intercept=2.90942,
    box_coef=(3.24815,),
    miss_intercept=-0.0260802,
    miss_coef=(1.31585, -0.204753),
    intercept=-0.46702,
    slope=0.991881,
    uses_second=False,
)
