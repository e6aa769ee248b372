"""How well a score ranks and calibrates a yes/no outcome: AUROC, Spearman, Brier, a
reliability table, and bootstrap intervals for AUROC.

The held-out half of the evalset is 64 images, so one AUROC figure moves by several hundredths
with the luck of which images fell on which side: the intervals say how much.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 11


def auroc(scores: Sequence[float], labels: Sequence[bool]) -> float:
    """Probability that a random right image scores above a random wrong one (ties count 1/2)."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    return _auroc(s[y], s[~y])


def _auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    if pos.size == 0 or neg.size == 0:
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (pos.size * neg.size))


def _ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(len(values), dtype=np.float64)
    for value in np.unique(values):  # average ranks over ties
        tied = values == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    ra, rb = _ranks(np.asarray(a, dtype=np.float64)), _ranks(np.asarray(b, dtype=np.float64))
    return float(np.corrcoef(ra, rb)[0, 1])


def brier(predicted: Sequence[float], outcome: Sequence[bool]) -> float:
    p = np.asarray(predicted, dtype=np.float64)
    y = np.asarray(outcome, dtype=np.float64)
    return float(np.mean((p - y) ** 2))


def reliability(
    predicted: Sequence[float], outcome: Sequence[bool], bins: int = 5
) -> list[dict[str, float | int | str]]:
    """Equal-width bins of the predicted probability: mean predicted vs observed rate."""
    p = np.asarray(predicted, dtype=np.float64)
    y = np.asarray(outcome, dtype=np.float64)
    index = np.minimum((p * bins).astype(int), bins - 1)
    table: list[dict[str, float | int | str]] = []
    for b in range(bins):
        inside = index == b
        if inside.any():
            table.append(
                {
                    "bin": f"{b / bins:.1f}-{(b + 1) / bins:.1f}",
                    "mean_predicted": round(float(p[inside].mean()), 3),
                    "observed": round(float(y[inside].mean()), 3),
                    "count": int(inside.sum()),
                }
            )
    return table


def auroc_intervals(
    scores: Sequence[float],
    baseline: Sequence[float],
    labels: Sequence[bool],
    *,
    level: float = 0.95,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> dict[str, list[float]]:
    """Percentile bootstrap intervals of the AUROC of ``scores``, of ``baseline`` and of their
    difference, over the same resampled images each time (a paired bootstrap). Right and wrong
    images are resampled apart, so every resample keeps both kinds in their observed numbers."""
    s = np.asarray(scores, dtype=np.float64)
    b = np.asarray(baseline, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    pos, neg = np.flatnonzero(y), np.flatnonzero(~y)
    if pos.size == 0 or neg.size == 0:
        nan = [float("nan"), float("nan")]
        return {"auroc": nan, "baseline_auroc": nan, "difference": nan}
    rng = np.random.default_rng(seed)
    ours = np.empty(resamples)
    theirs = np.empty(resamples)
    for i in range(resamples):
        p = rng.choice(pos, size=pos.size)
        n = rng.choice(neg, size=neg.size)
        ours[i] = _auroc(s[p], s[n])
        theirs[i] = _auroc(b[p], b[n])
    tails = [100 * (1 - level) / 2, 100 * (1 + level) / 2]

    def interval(values: np.ndarray) -> list[float]:
        low, high = np.percentile(values, tails)
        return [round(float(low), 4), round(float(high), 4)]

    return {
        "auroc": interval(ours),
        "baseline_auroc": interval(theirs),
        "difference": interval(ours - theirs),
    }
