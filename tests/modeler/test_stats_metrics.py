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


# van de Vijver et al. (2002) 70-gene signature, a case-control sample: 31 of 34 cases and 12 of
# 44 controls have a poor signature. Published in CIfinder's vignette (cran/CIfinder
# inst/doc/CIfinder.html, ppv_npv_ci(31, 34, 32, 44, prevalence = 0.07, method = "zhou"),
# "logit_transformed" = Mercaldo, Lau & Zhou 2007's logit interval), and for the special case
# with no false positives (x0 = n0 = 44) with continuity.correction = TRUE, their adjusted logit.
VIJVER = {
    "standard": ((31, 12, 3, 32), (0.2010444, 0.1331384, 0.2919216),
                 (0.9909508, 0.9734141, 0.9969560)),
    "no_false_positive": ((31, 0, 3, 44), (0.6199169, 0.2886800, 0.8676335),
                          (0.9899059, 0.9772354, 0.9955563)),
}


def _cohort(tp: int, fp: int, fn: int, tn: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels and 0/1 calls with these counts (called positive when prob >= 0.5)."""
    y = np.r_[np.ones(tp + fn), np.zeros(fp + tn)]
    prob = np.r_[np.ones(tp), np.zeros(fn), np.ones(fp), np.zeros(tn)]
    return y, prob


@pytest.mark.parametrize("case", sorted(VIJVER))
def test_predictive_values_at_prevalence_match_cifinder(case: str) -> None:
    counts, ppv, npv = VIJVER[case]
    metrics = binary_metrics(*_cohort(*counts), 0.5, prevalence=0.07)
    for name, expected in (("ppv", ppv), ("npv", npv)):
        est = metrics[name]
        assert (est.value, est.ci_low, est.ci_high) == pytest.approx(expected, abs=5e-8)
    tp, fp, fn, tn = counts
    assert (metrics["ppv"].numerator, metrics["ppv"].denominator) == (tp, tp + fp)
    assert (metrics["npv"].numerator, metrics["npv"].denominator) == (tn, tn + fn)
    # Sensitivity, specificity and accuracy stay the sample's Wilson estimates.
    plain = binary_metrics(*_cohort(*counts), 0.5)
    for name in ("accuracy", "sensitivity", "specificity"):
        assert metrics[name] == plain[name]


def test_predictive_values_at_prevalence_are_bayes_on_sensitivity_and_specificity() -> None:
    # Y/PROB above: Se = 3/4, Sp = 5/6. At prevalence 0.2, PPV = 0.75 * 0.2 / (0.75 * 0.2 +
    # (1/6) * 0.8) = 0.15 / 0.28333 = 9/17 and NPV = (5/6) 0.8 / ((5/6) 0.8 + 0.25 * 0.2) =
    # 0.66667 / 0.71667 = 40/43; logit(PPV) has variance (1 - Se)/(Se n1) + Sp/((1 - Sp) n0) =
    # (1/3)/4 + 5/6 = 11/12.
    metrics = binary_metrics(Y, PROB, 0.5, prevalence=0.2)
    assert metrics["ppv"].value == pytest.approx(9 / 17, rel=1e-12)
    assert metrics["npv"].value == pytest.approx(40 / 43, rel=1e-12)
    half = norm.ppf(0.975) * math.sqrt(11 / 12)
    logit = math.log(9 / 8)
    expected = (1 / (1 + math.exp(-(logit - half))), 1 / (1 + math.exp(-(logit + half))))
    assert (metrics["ppv"].ci_low, metrics["ppv"].ci_high) == pytest.approx(expected, rel=1e-12)
    # At the sample's own prevalence (0.4) Bayes gives the sample PPV and NPV back.
    at_sample = binary_metrics(Y, PROB, 0.5, prevalence=0.4)
    assert at_sample["ppv"].value == pytest.approx(3 / 4, rel=1e-12)
    assert at_sample["npv"].value == pytest.approx(5 / 6, rel=1e-12)


def test_predictive_values_at_prevalence_need_both_classes_and_a_valid_prevalence() -> None:
    one_class = binary_metrics([1, 1, 1], [0.9, 0.2, 0.7], 0.5, prevalence=0.1)
    assert math.isnan(one_class["ppv"].value) and math.isnan(one_class["npv"].ci_low)
    with pytest.raises(ValueError, match="prevalence"):
        binary_metrics(Y, PROB, 0.5, prevalence=1.0)
