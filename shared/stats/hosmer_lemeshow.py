"""Hosmer-Lemeshow goodness-of-fit test (Hosmer & Lemeshow 1980) with two grouping rules.

method="quantile" follows ResourceSelection::hoslem.test (and blorr's blr_test_hosmer_lemeshow):
cut points are R quantile type 7 of prob at seq(0, 1, 1/g), intervals are right-closed with the
lowest included. When cut points tie, only the unique ones are kept (as hoslem.test does), groups
left empty are dropped, and df = number of non-empty groups - 2. lower/upper are the group's
interval (lower, upper], the first one closed.

method="rank" follows UtilStat::hosmerLemeshowTest: rows sorted by prob (stable, ties in data
order) and row i of n goes to group ceiling(i / n * g); df = g - 2; lower/upper are the group's
minimum and maximum prob.

Both use chi2 = sum over groups and outcomes of (observed - expected)^2 / expected, with
expected_1 = sum of prob in the group.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray
from scipy.stats import chi2 as chi2_dist

from dtlr.shared.stats.metrics import binary_inputs


@dataclass(frozen=True)
class HosmerLemeshow:
    """Test statistic, degrees of freedom, p-value and the per-group partition table."""

    chi2: float
    df: int
    p: float
    table: pd.DataFrame


def r_quantile_type7(x: NDArray[np.float64], probs: NDArray[np.float64]) -> NDArray[np.float64]:
    """Quantiles with R's quantile(type = 7) arithmetic, so cut points match R bit for bit."""
    xs = np.sort(x)
    index = 1 + (xs.size - 1) * probs  # R's 1-based index, kept for identical rounding
    lo = np.floor(index)
    h = index - lo
    q = xs[lo.astype(np.intp) - 1]
    q_hi = xs[np.ceil(index).astype(np.intp) - 1]
    return np.where((index > lo) & (q_hi != q), (1 - h) * q + h * q_hi, q)


def _quantile_groups(
    prob: NDArray[np.float64], groups: int
) -> tuple[NDArray[np.intp], NDArray[np.float64], NDArray[np.float64]]:
    """Group index per row and each group's bounds, from hoslem.test's unique decile cut points."""
    probs = np.minimum(np.arange(groups + 1) * (1.0 / groups), 1.0)  # R: seq(0, 1, 1/g)
    breaks = np.unique(r_quantile_type7(prob, probs))
    if breaks.size < 2:
        raise ValueError("all predicted probabilities are equal; cannot form groups")
    # Right-closed (a, b] with the lowest value included: index of the first break >= prob.
    idx = np.clip(np.searchsorted(breaks, prob, side="left"), 1, breaks.size - 1) - 1
    return idx, breaks[:-1], breaks[1:]


def _rank_groups(
    prob: NDArray[np.float64], groups: int
) -> tuple[NDArray[np.intp], NDArray[np.float64], NDArray[np.float64]]:
    """Equal-count groups by rank as UtilStat: ceiling(i / n * g) over the stable sort by prob.

    With n >= g every group gets at least one row, so no group is empty.
    """
    n = prob.size
    order = np.argsort(prob, kind="stable")
    idx = np.empty(n, dtype=np.intp)
    idx[order] = np.ceil(np.arange(1, n + 1) / n * groups).astype(np.intp) - 1
    lower = np.full(groups, np.inf)
    upper = np.full(groups, -np.inf)
    np.minimum.at(lower, idx, prob)
    np.maximum.at(upper, idx, prob)
    return idx, lower, upper


def hosmer_lemeshow(
    y: ArrayLike,
    prob: ArrayLike,
    groups: int = 10,
    method: Literal["quantile", "rank"] = "quantile",
) -> HosmerLemeshow:
    """Hosmer-Lemeshow chi-square test of calibration (hoslem.test or UtilStat grouping)."""
    y_arr, p_arr = binary_inputs(y, prob, "prob")
    if groups < 3:
        raise ValueError("groups must be at least 3 (df = groups - 2)")
    if ((p_arr < 0) | (p_arr > 1)).any():
        raise ValueError("prob must lie in [0, 1]")
    if method == "quantile":
        idx, lower, upper = _quantile_groups(p_arr, groups)
    elif method == "rank":
        if groups > p_arr.size:
            raise ValueError(f"groups ({groups}) exceeds the number of rows ({p_arr.size})")
        idx, lower, upper = _rank_groups(p_arr, groups)
    else:
        raise ValueError(f"method must be 'quantile' or 'rank', not {method!r}")

    n = np.bincount(idx, minlength=lower.size)
    observed_1 = np.bincount(idx, weights=y_arr.astype(np.float64), minlength=lower.size)
    expected_1 = np.bincount(idx, weights=p_arr, minlength=lower.size)
    table = pd.DataFrame(
        {
            "lower": lower,
            "upper": upper,
            "n": n,
            "observed_1": observed_1.astype(np.int64),
            "expected_1": expected_1,
            "observed_0": (n - observed_1).astype(np.int64),
            "expected_0": n - expected_1,
        }
    )
    table = table[table["n"] > 0].reset_index(drop=True)
    if len(table) < 3:
        raise ValueError(f"only {len(table)} non-empty groups; the test needs at least 3")
    observed = table[["observed_1", "observed_0"]].to_numpy(dtype=np.float64)
    expected = table[["expected_1", "expected_0"]].to_numpy()
    stat = float(np.sum((observed - expected) ** 2 / expected))
    df = (groups if method == "rank" else len(table)) - 2
    return HosmerLemeshow(chi2=stat, df=df, p=float(chi2_dist.sf(stat, df)), table=table)
