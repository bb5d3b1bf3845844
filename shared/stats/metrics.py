"""Threshold metrics with Wilson score intervals, and the Youden operating point."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from statsmodels.stats.proportion import proportion_confint


@dataclass(frozen=True)
class Estimate:
    """A proportion with its Wilson score interval and the counts it came from."""

    value: float
    ci_low: float
    ci_high: float
    numerator: int
    denominator: int


def binary_inputs(
    y: ArrayLike, values: ArrayLike, name: str = "score"
) -> tuple[NDArray[np.bool_], NDArray[np.float64]]:
    """Validate a 0/1 outcome and a same-length finite numeric vector; shared by every statistic."""
    y_arr = np.asarray(y)
    v_arr = np.asarray(values, dtype=np.float64)
    if y_arr.ndim != 1 or v_arr.ndim != 1:
        raise ValueError(f"y and {name} must be 1-D arrays")
    if y_arr.shape != v_arr.shape:
        raise ValueError(f"y has {y_arr.size} values but {name} has {v_arr.size}")
    if y_arr.dtype != np.bool_:
        try:
            y_num = y_arr.astype(np.float64)
        except (TypeError, ValueError):
            y_num = np.full(y_arr.shape, np.nan)
        if not np.isin(y_num, (0.0, 1.0)).all():
            raise ValueError("y must contain only 0/1 (or False/True) values")
        y_arr = y_num == 1.0
    if not np.isfinite(v_arr).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return y_arr, v_arr


def _wilson(numerator: int, denominator: int, conf_level: float) -> Estimate:
    """Proportion with a Wilson score CI (statsmodels proportion_confint); NaN when n = 0."""
    if denominator == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), numerator, denominator)
    low, high = proportion_confint(numerator, denominator, alpha=1 - conf_level, method="wilson")
    return Estimate(numerator / denominator, float(low), float(high), numerator, denominator)


def binary_metrics(
    y: ArrayLike, prob: ArrayLike, threshold: float, conf_level: float = 0.95
) -> dict[str, Estimate]:
    """Accuracy, sensitivity, specificity, PPV and NPV at `prob >= threshold`, with Wilson CIs."""
    y_arr, p_arr = binary_inputs(y, prob, "prob")
    called = p_arr >= threshold
    tp = int(np.sum(called & y_arr))
    fp = int(np.sum(called & ~y_arr))
    fn = int(np.sum(~called & y_arr))
    tn = int(np.sum(~called & ~y_arr))
    return {
        "accuracy": _wilson(tp + tn, tp + fp + fn + tn, conf_level),
        "sensitivity": _wilson(tp, tp + fn, conf_level),
        "specificity": _wilson(tn, tn + fp, conf_level),
        "ppv": _wilson(tp, tp + fp, conf_level),
        "npv": _wilson(tn, tn + fn, conf_level),
    }


def youden_threshold(y: ArrayLike, prob: ArrayLike) -> float:
    """Observed prob value maximising sensitivity + specificity - 1 (Youden 1950) for `prob >= t`.

    J is compared exactly as the integer TP*n0 + TN*n1 (= n0*n1*(J + 1)), so equal J values
    tie exactly; ties go to the highest threshold, i.e. the fewest positive calls and the
    highest specificity among the optimal operating points.
    """
    y_arr, p_arr = binary_inputs(y, prob, "prob")
    pos = np.sort(p_arr[y_arr])
    neg = np.sort(p_arr[~y_arr])
    if pos.size == 0 or neg.size == 0:
        raise ValueError("youden_threshold needs at least one positive and one negative case")
    candidates = np.unique(p_arr)
    tp = pos.size - np.searchsorted(pos, candidates, side="left")
    tn = np.searchsorted(neg, candidates, side="left")
    score = tp.astype(np.int64) * neg.size + tn.astype(np.int64) * pos.size
    best = np.flatnonzero(score == score.max())[-1]
    return float(candidates[best])
