"""Threshold metrics on a hand-checkable confusion matrix, and Youden's threshold."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import norm
from statsmodels.stats.proportion import proportion_confint

from dtlr.shared.stats import binary_metrics, youden_threshold

# prob >= 0.5 calls: cases 0.9, 0.8, 0.7 (TP = 3), 0.3 (FN = 1);
# controls 0.6 (FP = 1), 0.2, 0.1, 0.1, 0.05, 0.4 (TN = 5).
Y = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
PROB = [0.9, 0.8, 0.7, 0.3, 0.6, 0.2, 0.1, 0.1, 0.05, 0.4]


def _wilson_by_hand(k: int, n: int, conf_level: float) -> tuple[float, float]:
    """Wilson (1927) score interval written out, independent of statsmodels."""
    z = norm.ppf(1 - (1 - conf_level) / 2)
    p = k / n
    centre = (p + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / (1 + z**2 / n)
    return centre - half, centre + half


def test_confusion_matrix_counts() -> None:
    metrics = binary_metrics(Y, PROB, 0.5)
    counts = {name: (e.numerator, e.denominator) for name, e in metrics.items()}
    assert counts == {
        "accuracy": (8, 10),
        "sensitivity": (3, 4),
        "specificity": (5, 6),
        "ppv": (3, 4),
        "npv": (5, 6),
    }
    assert metrics["specificity"].value == pytest.approx(5 / 6)


@pytest.mark.parametrize("conf_level", [0.95, 0.90])
def test_wilson_intervals(conf_level: float) -> None:
    metrics = binary_metrics(Y, PROB, 0.5, conf_level=conf_level)
    for estimate in metrics.values():
        k, n = estimate.numerator, estimate.denominator
        low, high = proportion_confint(k, n, alpha=1 - conf_level, method="wilson")
        assert (estimate.ci_low, estimate.ci_high) == pytest.approx((low, high), abs=1e-15)
        assert (estimate.ci_low, estimate.ci_high) == pytest.approx(
            _wilson_by_hand(k, n, conf_level), abs=1e-12
        )
    # 3/4 at 95%: the textbook Wilson interval 0.3006 - 0.9544.
    if conf_level == 0.95:
        sens = metrics["sensitivity"]
        assert (sens.ci_low, sens.ci_high) == pytest.approx((0.30064, 0.95441), abs=1e-5)


def test_threshold_is_inclusive() -> None:
    # At 0.6 the control with prob 0.6 is still called positive.
    metrics = binary_metrics(Y, PROB, 0.6)
    assert (metrics["specificity"].numerator, metrics["ppv"].denominator) == (5, 4)


def test_zero_denominator_gives_nan() -> None:
    metrics = binary_metrics(Y, PROB, 0.95)  # nobody called positive
    ppv = metrics["ppv"]
    assert (ppv.numerator, ppv.denominator) == (0, 0)
    assert math.isnan(ppv.value) and math.isnan(ppv.ci_low) and math.isnan(ppv.ci_high)
    assert metrics["sensitivity"].value == 0.0
    assert metrics["npv"].value == pytest.approx(6 / 10)


def test_youden_threshold_ties_go_to_highest_threshold() -> None:
    # Controls 0.1, 0.2, 0.6; cases 0.5, 0.7, 0.8.
    # t = 0.5: sens 1, spec 2/3 (J = 2/3); t = 0.7: sens 2/3, spec 1 (J = 2/3); others J <= 1/3.
    y = [0, 0, 0, 1, 1, 1]
    prob = [0.1, 0.2, 0.6, 0.5, 0.7, 0.8]
    t = youden_threshold(y, prob)
    assert t == 0.7
    assert t in prob
    metrics = binary_metrics(y, prob, t)
    assert metrics["sensitivity"].value == pytest.approx(2 / 3)
    assert metrics["specificity"].value == 1.0


def test_youden_threshold_unique_optimum_is_reproduced_by_ge() -> None:
    rng = np.random.default_rng(7)
    y = rng.integers(0, 2, 200)
    prob = np.clip(0.3 * y + rng.normal(0.35, 0.2, 200), 0, 1)
    t = youden_threshold(y, prob)
    assert t in prob
    metrics = binary_metrics(y, prob, t)
    best = metrics["sensitivity"].value + metrics["specificity"].value - 1
    for candidate in np.unique(prob):
        other = binary_metrics(y, prob, candidate)
        assert other["sensitivity"].value + other["specificity"].value - 1 <= best + 1e-12


def test_youden_needs_both_classes() -> None:
    with pytest.raises(ValueError, match="positive and one negative"):
        youden_threshold([1, 1], [0.2, 0.3])
