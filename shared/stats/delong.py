"""DeLong AUC variance, CI and paired test (DeLong et al. 1988), reproducing R pROC.

Placements come from mid-ranks (Sun & Xu 2014), which give the same Mann-Whitney kernel
sums as pROC's delongPlacementsCpp. y = 1 marks a case; a higher score means "more likely a
case", i.e. pROC's direction "<" (no automatic direction flipping).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.stats import norm, rankdata

from dtlr.shared.stats.metrics import binary_inputs


@dataclass(frozen=True)
class DelongPlacements:
    """pROC's DeLong structural components: theta = AUC, X per case, Y per control (row order)."""

    theta: float
    X: NDArray[np.float64]
    Y: NDArray[np.float64]


@dataclass(frozen=True)
class RocAuc:
    """AUC with its DeLong variance and CI, as pROC auc/var/ci.auc(method = "delong")."""

    auc: float
    var: float
    ci_low: float
    ci_high: float


@dataclass(frozen=True)
class DelongTest:
    """Paired two-sided DeLong test of AUC_a - AUC_b, as pROC roc.test(paired = TRUE)."""

    auc_a: float
    auc_b: float
    z: float
    p: float
    cov: float
    diff_ci_low: float
    diff_ci_high: float


def delong_placements(y: ArrayLike, score: ArrayLike) -> DelongPlacements:
    """Per-case and per-control placement values (pROC deLongPlacementsCpp), via mid-ranks."""
    cases, s = binary_inputs(y, score)
    m = int(cases.sum())
    n = cases.size - m
    if m == 0 or n == 0:
        raise ValueError("DeLong placements need at least one case (y = 1) and one control (y = 0)")
    ranks_all = rankdata(s)
    # Mid-rank among all minus mid-rank within the own class = kernel sum against the other class.
    x_sum = ranks_all[cases] - rankdata(s[cases])
    y_sum = ranks_all[~cases] - rankdata(s[~cases])
    return DelongPlacements(theta=float(x_sum.sum() / m / n), X=x_sum / n, Y=1.0 - y_sum / m)


def _placement_covariance(placements: list[DelongPlacements]) -> NDArray[np.float64]:
    """DeLong covariance matrix S = S_X / m + S_Y / n of several AUCs on the same patients."""
    xs = np.vstack([p.X for p in placements])
    ys = np.vstack([p.Y for p in placements])
    m, n = xs.shape[1], ys.shape[1]
    if m < 2 or n < 2:
        return np.full((len(placements), len(placements)), np.nan)
    return np.atleast_2d(np.cov(xs)) / m + np.atleast_2d(np.cov(ys)) / n


def roc_auc_delong(y: ArrayLike, score: ArrayLike, conf_level: float = 0.95) -> RocAuc:
    """AUC, DeLong variance and normal CI clipped to [0, 1] (pROC ci_auc_delong).

    Variance and CI are NaN when cases or controls have a single row (pROC returns NA).
    """
    pl = delong_placements(y, score)
    var = float(_placement_covariance([pl])[0, 0])
    alpha = 1.0 - conf_level
    low, high = pl.theta + np.sqrt(var) * norm.ppf([alpha / 2, 1 - alpha / 2])
    return RocAuc(pl.theta, var, float(np.clip(low, 0, 1)), float(np.clip(high, 0, 1)))


def delong_test(
    y: ArrayLike, score_a: ArrayLike, score_b: ArrayLike, conf_level: float = 0.95
) -> DelongTest:
    """Paired DeLong Z test and CI of AUC_a - AUC_b (pROC delong.paired.* and ci_delong_paired)."""
    pa = delong_placements(y, score_a)
    pb = delong_placements(y, score_b)
    s = _placement_covariance([pa, pb])
    d = pa.theta - pb.theta
    # Clip round-off below zero (e.g. identical scores) so sqrt does not turn it into NaN.
    sig = float(np.sqrt(max(s[0, 0] + s[1, 1] - 2 * s[0, 1], 0.0)))
    if d == 0 and sig == 0:
        z = 0.0  # pROC's special case: identical AUCs with zero spread give Z = 0, not NaN
    else:
        with np.errstate(divide="ignore", invalid="ignore"):
            z = float(np.divide(d, sig))
    crit = float(norm.ppf(1 - (1 - conf_level) / 2))
    return DelongTest(
        auc_a=pa.theta,
        auc_b=pb.theta,
        z=z,
        p=float(2 * norm.cdf(-abs(z))),
        cov=float(s[0, 1]),
        diff_ci_low=d - crit * sig,
        diff_ci_high=d + crit * sig,
    )
