"""Threshold metrics with Wilson score intervals (PPV and NPV optionally at a given
prevalence), and the Youden operating point."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.special import expit
from scipy.stats import norm
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


def predictive_values_at_prevalence(
    tp: int, fp: int, fn: int, tn: int, prevalence: float, conf_level: float = 0.95
) -> tuple[Estimate, Estimate]:
    """PPV and NPV in a population with the given prevalence, from a case-control 2x2 table.

    Bayes' theorem on sensitivity Se = TP / (TP + FN) and specificity Sp = TN / (TN + FP):
    PPV = Se p / (Se p + (1 - Sp)(1 - p)), NPV = Sp (1 - p) / (Sp (1 - p) + (1 - Se) p).
    CIs are the logit intervals of Mercaldo, Lau & Zhou (2007, Stat Med 26:2170-2183, eqs 8-11):
    logit PPV +- z sqrt((1 - Se) / (Se n1) + Sp / ((1 - Sp) n0)) and logit NPV +- z sqrt(Se /
    ((1 - Se) n1) + (1 - Sp) / (Sp n0)), n1 cases and n0 controls. When a cell of the table is
    0 these are undefined, and, as bdpv::BDtest does, estimate and interval both use their
    adjusted Se and Sp ((x + z^2 / 2) / (n + z^2), Mercaldo et al. Table II). numerator and
    denominator stay the sample's counts (TP, TP + FP and TN, TN + FN); NaN without both classes.
    """
    if not 0 < prevalence < 1:
        raise ValueError("prevalence must lie strictly between 0 and 1")
    n1, n0 = tp + fn, tn + fp
    if n1 == 0 or n0 == 0:
        nan = float("nan")
        return Estimate(nan, nan, nan, tp, tp + fp), Estimate(nan, nan, nan, tn, tn + fn)
    z = float(norm.ppf(1 - (1 - conf_level) / 2))
    add = z * z / 2 if min(tp, fp, fn, tn) == 0 else 0.0
    m1, m0 = n1 + 2 * add, n0 + 2 * add
    se, sp = (tp + add) / m1, (tn + add) / m0
    logit_ppv = np.log(se * prevalence / ((1 - sp) * (1 - prevalence)))
    logit_npv = np.log(sp * (1 - prevalence) / ((1 - se) * prevalence))
    half_ppv = z * np.sqrt((1 - se) / (se * m1) + sp / ((1 - sp) * m0))
    half_npv = z * np.sqrt(se / ((1 - se) * m1) + (1 - sp) / (sp * m0))

    def estimate(logit: float, half: float, numerator: int, denominator: int) -> Estimate:
        return Estimate(float(expit(logit)), float(expit(logit - half)),
                        float(expit(logit + half)), numerator, denominator)

    return (estimate(logit_ppv, half_ppv, tp, tp + fp), estimate(logit_npv, half_npv, tn, tn + fn))


def binary_metrics(
    y: ArrayLike,
    prob: ArrayLike,
    threshold: float,
    conf_level: float = 0.95,
    prevalence: float | None = None,
) -> dict[str, Estimate]:
    """Accuracy, sensitivity, specificity, PPV and NPV at `prob >= threshold`, with Wilson CIs.

    With ``prevalence`` (a population prevalence for case-control or matched samples, as
    dcurves' ``prevalence``), PPV and NPV are those of a population with that prevalence, from
    :func:`predictive_values_at_prevalence` (Bayes' theorem, Mercaldo-Lau-Zhou logit CIs);
    accuracy, sensitivity and specificity stay the sample's.
    """
    y_arr, p_arr = binary_inputs(y, prob, "prob")
    called = p_arr >= threshold
    tp = int(np.sum(called & y_arr))
    fp = int(np.sum(called & ~y_arr))
    fn = int(np.sum(~called & y_arr))
    tn = int(np.sum(~called & ~y_arr))
    if prevalence is None:
        ppv, npv = _wilson(tp, tp + fp, conf_level), _wilson(tn, tn + fn, conf_level)
    else:
        ppv, npv = predictive_values_at_prevalence(tp, fp, fn, tn, prevalence, conf_level)
    return {
        "accuracy": _wilson(tp + tn, tp + fp + fn + tn, conf_level),
        "sensitivity": _wilson(tp, tp + fn, conf_level),
        "specificity": _wilson(tn, tn + fp, conf_level),
        "ppv": ppv,
        "npv": npv,
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
