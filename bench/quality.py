"""How well the label-quality estimate predicts real label errors on the evalset.

Runs every model over the 128 evalset photos and scores YOLOX's kept detections against the
human boxes (``bench.quality_runs``: per-image precision, recall and F1 at IoU 0.5), then
reports how well ``service.score.quality.estimate`` predicts
"F1 >= 0.5" on the half of the images that the committed coefficients were NOT fitted on
(the default second opinion, and under ``second_scale`` the optional stronger one).
``--fit`` refits the coefficients on the fit half and prints them as Python constants to paste
into ``service/score/quality.py``.

Features were chosen by ``fit_half_cv`` (repeated stratified 5-fold cross-validation inside the
fit half), never by the held-out figure; the report prints both.

``python -m bench.quality`` prints JSON lines; the first is ``{"name": "quality", ...}`` and the
last ``{"name": "caption_similarity", ...}`` (``bench.caption_similarity``: the captions against
the human ones by BLEU-4, ROUGE-L and embedding cosine; it needs the ``bench`` extra).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, cast

import numpy as np

from bench import caption_similarity
from bench.classifier_metrics import auroc, auroc_intervals, brier, reliability, spearman
from bench.quality_runs import ImageRun, collect, miss_targets
from service.infer.runtime import ProviderChoice
from service.infer.yolox import Detection
from service.score import quality
from service.score.agreement import similarity_matrix

SecondOf = Callable[[ImageRun], list[Detection] | None]
VARIANTS: dict[str, SecondOf] = {
    "none": lambda run: None,
    "flip_tta": lambda run: run.flipped,
    "nanodet": lambda run: run.nanodet,
    "nanodet+flip_tta": lambda run: run.nanodet + run.flipped,
    "second_scale": lambda run: run.scaled,
    "nanodet+second_scale": lambda run: run.nanodet + run.scaled,
}
# The cost of each variant on top of YOLOX, by stage.
VARIANT_STAGES = {
    "none": (),
    "flip_tta": ("flip_tta",),
    "nanodet": ("nanodet",),
    "nanodet+flip_tta": ("nanodet", "flip_tta"),
    "second_scale": ("second_scale",),
    "nanodet+second_scale": ("nanodet", "second_scale"),
}
SHIPPED = "nanodet"
# The optional stronger second opinion (``LABELSVC_SECOND_SCALE``), with its own coefficients.
SCALED = "nanodet+second_scale"
L2 = 1.0


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = L2) -> tuple[float, tuple[float, ...]]:
    """L2-regularised logistic regression by Newton's method, on standardised features.

    Returns the intercept and coefficients for the raw features. The intercept is not
    penalised.
    """
    x = np.asarray(x, dtype=np.float64).reshape(len(y), -1)
    target = np.asarray(y, dtype=np.float64)
    mean, std = x.mean(axis=0), x.std(axis=0)
    std[std == 0.0] = 1.0
    design = np.hstack([np.ones((len(x), 1)), (x - mean) / std])
    beta = np.zeros(design.shape[1])
    penalty = np.eye(design.shape[1]) * l2
    penalty[0, 0] = 0.0
    for _ in range(100):
        prob = 1.0 / (1.0 + np.exp(-np.clip(design @ beta, -50, 50)))
        gradient = design.T @ (prob - target) + penalty @ beta
        hessian = (design * (prob * (1 - prob))[:, None]).T @ design + penalty
        step = np.linalg.solve(hessian, gradient)
        beta -= step
        if np.abs(step).max() < 1e-10:
            break
    coef = beta[1:] / std
    intercept = beta[0] - float(np.sum(coef * mean))
    return float(intercept), tuple(float(c) for c in coef)


def fit_model(runs: Sequence[ImageRun], second_of: SecondOf) -> quality.QualityModel:
    """Box, missed-object and image models fitted on ``runs`` only."""
    uses_second = second_of(runs[0]) is not None
    box_x = np.vstack([quality.box_features(r.kept, second_of(r)) for r in runs])
    box_y = np.concatenate([np.asarray(r.box_tp, dtype=np.float64) for r in runs])
    box_intercept, box_coef = fit_logistic(box_x, box_y)
    miss_x = np.vstack([quality.miss_features(r.kept, second_of(r), r.below, r.size) for r in runs])
    miss_y = np.concatenate(
        [np.asarray(miss_targets(r, second_of(r)), dtype=np.float64) for r in runs]
    )
    miss_intercept, miss_coef = fit_logistic(miss_x, miss_y)
    partial = quality.QualityModel(
        box_intercept=box_intercept,
        box_coef=box_coef,
        miss_intercept=miss_intercept,
        miss_coef=miss_coef,
        intercept=0.0,
        slope=1.0,
        uses_second=uses_second,
    )
    expected = np.array(
        [
            quality.estimate(
                r.kept, second_of(r), None, None, r.size, below=r.below, model=partial
            ).components["expected_f1"]
            for r in runs
        ]
    )
    logits = np.log(np.clip(expected, 1e-3, 1 - 1e-3) / (1 - np.clip(expected, 1e-3, 1 - 1e-3)))
    intercept, (slope,) = fit_logistic(logits[:, None], np.array([r.right for r in runs]))
    return dataclasses.replace(partial, intercept=intercept, slope=slope)


def min_similarity(runs: Sequence[ImageRun]) -> float:
    """Cleanlab's dataset-wide minimum non-zero similarity, kept boxes vs NanoDet."""
    lowest = 1.0
    for run in runs:
        second = [d for d in run.nanodet if d.conf >= quality.SECOND_MIN_CONF]
        if run.kept and second:
            sim = similarity_matrix(run.kept, second, run.size)
            positive = sim[sim > 0]
            if positive.size:
                lowest = min(lowest, float(positive.min()))
    return lowest


def baseline(run: ImageRun) -> float:
    """Mean confidence of the kept boxes (0 with none): the score to beat."""
    return float(np.mean([d.conf for d in run.kept])) if run.kept else 0.0


def scores(
    runs: Sequence[ImageRun], second_of: SecondOf, model: quality.QualityModel
) -> list[float]:
    return [
        quality.estimate(
            r.kept, second_of(r), r.tags, r.props, r.size, below=r.below, model=model
        ).score
        for r in runs
    ]


def split(runs: Sequence[ImageRun]) -> tuple[list[ImageRun], list[ImageRun]]:
    """The fixed split: images sorted by COCO id, even positions fit, odd positions held out."""
    ordered = sorted(runs, key=lambda r: r.image_id)
    return ordered[0::2], ordered[1::2]


def stratified_folds(right: np.ndarray, folds: int, rng: np.random.Generator) -> np.ndarray:
    """A fold number per image, right and wrong images dealt round-robin in random order."""
    fold = np.empty(len(right), dtype=np.int64)
    for value in (True, False):
        index = np.flatnonzero(right == value)
        rng.shuffle(index)
        fold[index] = (np.arange(len(index)) + rng.integers(folds)) % folds
    return fold


def fit_half_cv(
    fit_half: Sequence[ImageRun], second_of: SecondOf, repeats: int = 40, folds: int = 5
) -> dict[str, float]:
    """Repeated stratified k-fold cross-validation inside the fit half only: the figure the
    features were chosen by. Each repeat pools the out-of-fold scores into one AUROC."""
    right = np.array([r.right for r in fit_half])
    rng = np.random.default_rng(7)
    values = []
    for _ in range(repeats):
        fold = stratified_folds(right, folds, rng)
        oof = np.zeros(len(fit_half))
        for k in range(folds):
            train = [r for r, f in zip(fit_half, fold, strict=True) if f != k]
            test = [int(i) for i in np.flatnonzero(fold == k)]
            model = fit_model(train, second_of)
            oof[test] = scores([fit_half[i] for i in test], second_of, model)
        values.append(auroc(oof.tolist(), right.tolist()))
    return {
        "auroc_fit_half_cv_mean": round(float(np.mean(values)), 4),
        "auroc_fit_half_cv_std": round(float(np.std(values)), 4),
        "folds": folds,
        "repeats": repeats,
    }


def cross_validated(
    runs: Sequence[ImageRun], second_of: SecondOf, repeats: int = 25
) -> dict[str, float]:
    """AUROC of refitted models on halves their coefficients did not see: the fixed split both
    ways, and seeded random 50/50 splits (each fitted on one half, scored on the other). Only
    the held-out half's own figure is held out from the choice of method and features, which
    were made on the fit half; these mix fit-half photos into what they score."""
    fit_half, held_half = split(runs)
    both_ways = [
        auroc(scores(test, second_of, fit_model(train, second_of)), [r.right for r in test])
        for train, test in ((fit_half, held_half), (held_half, fit_half))
    ]
    rng = np.random.default_rng(20240601)
    ours, base = [], []
    for _ in range(repeats):
        order = rng.permutation(len(runs))
        train = [runs[i] for i in order[: len(runs) // 2]]
        test = [runs[i] for i in order[len(runs) // 2 :]]
        ours.append(
            auroc(scores(test, second_of, fit_model(train, second_of)), [r.right for r in test])
        )
        base.append(auroc([baseline(r) for r in test], [r.right for r in test]))
    return {
        "auroc_2fold_fit_to_held": round(both_ways[0], 4),
        "auroc_2fold_held_to_fit": round(both_ways[1], 4),
        "auroc_random_halves_mean": round(float(np.mean(ours)), 4),
        "auroc_random_halves_std": round(float(np.std(ours)), 4),
        "baseline_random_halves_mean": round(float(np.mean(base)), 4),
        "repeats": repeats,
    }


def _num(value: float) -> str:
    return repr(float(f"{value:.6g}"))


def model_source(name: str, model: quality.QualityModel) -> str:
    """``model`` as the Python constant to paste into ``service/score/quality.py``."""

    def numbers(values: Sequence[float]) -> str:
        inner = ", ".join(_num(v) for v in values)
        return f"({inner},)" if len(values) == 1 else f"({inner})"

    return (
        f"{name} = QualityModel(\n"
        f"    box_intercept={_num(model.box_intercept)},\n"
        f"    box_coef={numbers(model.box_coef)},\n"
        f"    miss_intercept={_num(model.miss_intercept)},\n"
        f"    miss_coef={numbers(model.miss_coef)},\n"
        f"    intercept={_num(model.intercept)},\n"
        f"    slope={_num(model.slope)},\n"
        f"    uses_second={model.uses_second},\n"
        ")"
    )


def committed_report(
    held_half: Sequence[ImageRun], second_of: SecondOf, model: quality.QualityModel
) -> dict[str, Any]:
    """How committed coefficients for another second opinion do on the held-out half."""
    right = [r.right for r in held_half]
    scored = scores(held_half, second_of, model)
    intervals = auroc_intervals(scored, [baseline(r) for r in held_half], right)
    return {
        "auroc": round(auroc(scored, right), 4),
        "auroc_ci95": intervals["auroc"],
        "auroc_gain_over_baseline_ci95": intervals["difference"],
        "spearman_f1": round(spearman(scored, [r.f1 for r in held_half]), 4),
        "brier": round(brier(scored, right), 4),
        "reliability": reliability(scored, right),
    }


def _max_difference(a: quality.QualityModel, b: quality.QualityModel) -> float:
    left = [a.box_intercept, *a.box_coef, a.miss_intercept, *a.miss_coef, a.intercept, a.slope]
    right = [b.box_intercept, *b.box_coef, b.miss_intercept, *b.miss_coef, b.intercept, b.slope]
    return max(abs(x - y) for x, y in zip(left, right, strict=True))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.quality", description=__doc__)
    parser.add_argument("--provider", default="cpu", choices=["auto", "cpu", "cuda", "tensorrt"])
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (0: all)")
    parser.add_argument("--fit", action="store_true", help="print refitted coefficients")
    parser.add_argument("--repeats", type=int, default=25, help="random 50/50 splits for CV")
    parser.add_argument(
        "--second-opinion-int8", action="store_true", help="NanoDet in int8, as the setting"
    )
    args = parser.parse_args(argv)

    provider = cast(ProviderChoice, args.provider)
    runs, map_yolox, map_nanodet, providers = collect(
        provider=provider, threads=args.threads, int8=args.second_opinion_int8
    )
    fit_half, held_half = split(runs)
    if args.fit:
        fitted = {"WITH_SECOND": SHIPPED, "WITH_SECOND_SCALE": SCALED, "WITHOUT_SECOND": "none"}
        for name, variant in fitted.items():
            sys.stdout.write(model_source(name, fit_model(fit_half, VARIANTS[variant])) + "\n")
        sys.stdout.write(f"MIN_SIMILARITY = {_num(min_similarity(fit_half))}\n")
        return 0

    held_right = [r.right for r in held_half]
    second_of = VARIANTS[SHIPPED]
    shipped = [
        quality.estimate(r.kept, r.nanodet, r.tags, r.props, r.size, below=r.below).score
        for r in held_half
    ]
    base = [baseline(r) for r in held_half]
    f1 = [r.f1 for r in held_half]
    drift = _max_difference(quality.WITH_SECOND, fit_model(fit_half, second_of))

    stage_ms: dict[str, dict[str, float]] = {}
    for stage in runs[0].ms:
        values = [r.ms[stage] for r in runs]
        stage_ms[stage] = {
            "mean": round(float(np.mean(values)), 2),
            "median": round(float(np.median(values)), 2),
        }
    estimate_ms = []
    for r in runs:
        start = time.perf_counter()
        quality.estimate(r.kept, r.nanodet, r.tags, r.props, r.size, below=r.below)
        estimate_ms.append((time.perf_counter() - start) * 1000.0)
    stage_ms["estimate"] = {
        "mean": round(float(np.mean(estimate_ms)), 2),
        "median": round(float(np.median(estimate_ms)), 2),
    }
    shipped_stages = ("yolox", "nanodet", "tagger", "properties", "estimate")
    total = sum(stage_ms[s]["median"] for s in shipped_stages)

    auroc_value = auroc(shipped, held_right)
    base_auroc = auroc(base, held_right)
    intervals = auroc_intervals(shipped, base, held_right)
    line = {
        "name": "quality",
        "auroc": round(auroc_value, 4),
        "baseline_auroc": round(base_auroc, 4),
        "ratio": round(auroc_value / base_auroc, 4),
        "auroc_ci95": intervals["auroc"],
        "baseline_auroc_ci95": intervals["baseline_auroc"],
        "auroc_gain_over_baseline_ci95": intervals["difference"],
        "spearman_f1": round(spearman(shipped, f1), 4),
        "baseline_spearman_f1": round(spearman(base, f1), 4),
        "spearman_right": round(spearman(shipped, [float(v) for v in held_right]), 4),
        "brier": round(brier(shipped, held_right), 4),
        "held_out_images": len(held_half),
        "held_out_right_rate": round(float(np.mean(held_right)), 4),
        "second_opinion": SHIPPED,
        "coefficients_drift": round(drift, 6),
        "reliability": reliability(shipped, held_right),
        "fit_half_cv": fit_half_cv(fit_half, second_of),
        "cross_validated": cross_validated(runs, second_of, args.repeats),
        "map50_95_yolox": round(map_yolox["map50_95"], 4),
        "map50_yolox": round(map_yolox["map50"], 4),
        "map50_95_nanodet": round(map_nanodet["map50_95"], 4),
        "map50_nanodet": round(map_nanodet["map50"], 4),
        "mean_precision": round(float(np.mean([r.precision for r in runs])), 4),
        "mean_recall": round(float(np.mean([r.recall for r in runs])), 4),
        "mean_f1": round(float(np.mean([r.f1 for r in runs])), 4),
        "right_rate": round(float(np.mean([r.right for r in runs])), 4),
        "second_scale": committed_report(held_half, VARIANTS[SCALED], quality.WITH_SECOND_SCALE),
        "ms": stage_ms,
        "ms_shipped_total_median": round(total, 2),
        "ratio_to_detection": round(total / stage_ms["yolox"]["median"], 2),
        "provider": providers["yolox"],  # the one it ran on, not the one asked for
        "providers": providers,
        "threads": args.threads,
        "second_opinion_int8": args.second_opinion_int8,
    }
    sys.stdout.write(json.dumps(line) + "\n")

    # Which second opinion buys the most: each variant refitted on the fit half.
    for name, variant_of in VARIANTS.items():
        model = fit_model(fit_half, variant_of)
        extra_ms = sum(stage_ms[s]["median"] for s in VARIANT_STAGES[name])
        held_scores = scores(held_half, variant_of, model)
        held = auroc(held_scores, held_right)
        cv = cross_validated(runs, variant_of, args.repeats)
        inner = fit_half_cv(fit_half, variant_of)
        gain = cv["auroc_random_halves_mean"] - cv["baseline_random_halves_mean"]
        variant_line = {
            "name": "quality_second_opinion",
            "variant": name,
            "ratio": round(held / base_auroc, 4),  # over mean detection confidence, held out
            "auroc_fit_half_cv": inner["auroc_fit_half_cv_mean"],
            "auroc_held_out": round(held, 4),
            "auroc_held_out_ci95": auroc_intervals(held_scores, base, held_right)["auroc"],
            "auroc_cv_mean": cv["auroc_random_halves_mean"],
            "auroc_cv_std": cv["auroc_random_halves_std"],
            "extra_ms_median": round(extra_ms, 2),
            "cv_auroc_gain_over_baseline_per_ms": round(gain / extra_ms, 5) if extra_ms else None,
        }
        sys.stdout.write(json.dumps(variant_line) + "\n")
    sys.stdout.flush()
    # How close the captions are to the human ones (BLEU-4, ROUGE-L, embedding cosine).
    return caption_similarity.main(["--threads", str(args.threads)])


if __name__ == "__main__":
    raise SystemExit(main())
