import math

import numpy as np
import pytest

from bench.classifier_metrics import auroc, auroc_intervals, brier, reliability, spearman


def test_auroc_counts_the_right_images_ranked_above_the_wrong_ones() -> None:
    # Right images score 0.35 and 0.8, wrong ones 0.1 and 0.4: 3 of the 4 pairs in order.
    assert auroc([0.1, 0.4, 0.35, 0.8], [False, False, True, True]) == 0.75
    assert auroc([0.1, 0.2, 0.3], [False, True, True]) == 1.0
    assert auroc([0.9, 0.2, 0.3], [True, False, False]) == 1.0
    assert auroc([0.1, 0.2, 0.3], [True, False, False]) == 0.0
    assert auroc([0.5, 0.5, 0.5], [True, False, True]) == 0.5  # a tie counts one half


def test_auroc_equals_the_mann_whitney_statistic_over_ties() -> None:
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 6, size=40).astype(float)  # many ties
    labels = rng.random(40) < 0.4
    ranks = np.array([np.mean(np.flatnonzero(np.sort(scores) == v)) + 1 for v in scores])
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    u = ranks[labels].sum() - n_pos * (n_pos + 1) / 2
    assert auroc(scores.tolist(), labels.tolist()) == pytest.approx(u / (n_pos * n_neg))


def test_auroc_without_both_outcomes_is_undefined() -> None:
    assert math.isnan(auroc([0.1, 0.9], [True, True]))
    assert math.isnan(auroc([], []))


def test_spearman_averages_the_ranks_of_ties() -> None:
    assert spearman([1, 2, 3, 4], [10, 20, 30, 400]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # Ranks [0, 1.5, 1.5, 3] against [0, 1, 2, 3]: 4.5 / sqrt(4.5 * 5).
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(math.sqrt(0.9))


def test_brier_is_the_mean_squared_error_of_the_probability() -> None:
    assert brier([1.0, 0.0], [True, True]) == 0.5
    assert brier([0.8, 0.2], [True, False]) == pytest.approx(0.04)


def test_reliability_bins_the_predictions_and_gives_each_bins_observed_rate() -> None:
    table = reliability([0.05, 0.15, 0.9, 1.0, 0.95], [False, True, True, True, False])
    assert table == [
        {"bin": "0.0-0.2", "mean_predicted": 0.1, "observed": 0.5, "count": 2},
        {"bin": "0.8-1.0", "mean_predicted": 0.95, "observed": 0.667, "count": 3},
    ]


def _sample(n: int, rng: np.random.Generator) -> tuple[list[float], list[float], list[bool]]:
    labels = rng.random(n) < 0.6
    scores = rng.normal(labels * 1.2, 1.0)  # AUROC about 0.80
    baseline = rng.normal(labels * 0.6, 1.0)  # about 0.66
    return scores.tolist(), baseline.tolist(), labels.tolist()


def test_auroc_intervals_hold_the_figures_and_narrow_with_more_images() -> None:
    rng = np.random.default_rng(5)
    small = _sample(64, rng)
    large = _sample(1024, rng)
    few = auroc_intervals(*small)
    many = auroc_intervals(*large)
    for (scores, baseline, labels), found in ((small, few), (large, many)):
        low, high = found["auroc"]
        assert low <= auroc(scores, labels) <= high
        low, high = found["baseline_auroc"]
        assert low <= auroc(baseline, labels) <= high
        low, high = found["difference"]
        assert low <= auroc(scores, labels) - auroc(baseline, labels) <= high
    for name in ("auroc", "baseline_auroc", "difference"):
        assert many[name][1] - many[name][0] < 0.5 * (few[name][1] - few[name][0])
    # With 1024 images the better score's lead is clear; the true AUROC is about 0.80.
    assert many["difference"][0] > 0
    assert many["auroc"][0] < 0.80 < many["auroc"][1]
    assert auroc_intervals(*small) == few  # seeded: the same report each run


def test_auroc_intervals_of_a_perfect_score_and_of_no_difference() -> None:
    scores = [0.1, 0.2, 0.7, 0.9, 0.3, 0.8]
    labels = [False, False, True, True, False, True]
    found = auroc_intervals(scores, scores, labels, resamples=200)
    assert found == {"auroc": [1.0, 1.0], "baseline_auroc": [1.0, 1.0], "difference": [0.0, 0.0]}


def test_auroc_intervals_without_both_outcomes_are_undefined() -> None:
    found = auroc_intervals([0.1, 0.9], [0.2, 0.3], [True, True])
    assert all(math.isnan(v) for values in found.values() for v in values)
