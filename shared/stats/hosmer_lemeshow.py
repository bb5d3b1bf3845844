"""Hosmer-Lemeshow goodness-of-fit test (Hosmer & Lemeshow 1980) with two grouping rules.

method="quantile" follows ResourceSelection::hoslem.test (and blorr's blr_test_hosmer_lemeshow):
cut points are R quantile type 7 of prob at seq(0, 1, 1/g), intervals are right-closed with the
lowest included. When cut points tie, only the unique ones are kept (as hoslem.test does) and
groups left empty are dropped, so the test has G <= g non-empty groups. lower/upper are the
group's interval (lower, upper], the first one closed.

method="rank" follows UtilStat::hosmerLemeshowTest: rows sorted by prob (stable, ties in data
order) and row i of n goes to group ceiling(i / n * g), so G = g; lower/upper are the group's
minimum and maximum prob.

Both use chi2 = sum over groups and outcomes of (observed - expected)^2 / expected, with
expected_1 = sum of prob and expected_0 = sum of (1 - prob) in the group.

Degrees of freedom (Hosmer, Lemeshow & Sturdivant 2013, Applied Logistic Regression, 3rd ed.,
Wiley, chapter 5): G - 2 in the sample the model was fitted on (section 5.2.2, the
Hosmer-Lemeshow tests; what hoslem.test, blorr and UtilStat use) and G in an external validation
sample, where no parameter was estimated from the data being tested (the chapter's assessment
of fit via external validation). ``sample`` chooses between them; ``df`` overrides both.

Risks of exactly 0 or 1: a group whose risks are all 0 has expected_1 = 0 (all 1: expected_0 =
0), where hoslem.test divides 0 by 0 and returns NaN. R's glm() never produces such risks (its
logit link clamps them to [DBL_EPSILON, 1 - DBL_EPSILON]); here the term takes its limit as the
risks approach 0 or 1, which is what that clamping gives to within 1e-15: 0 when none was
observed either, and infinity (chi2 = inf, p = 0) when the model gave risk 0 to an event (or 1
to a non-event). Either way the result carries a warning.

Warnings (``HosmerLemeshow.warnings``, one sentence each) flag results whose chi-square
approximation is not to be trusted: a group with fewer than 5 expected events or non-events
(Hosmer, Lemeshow & Sturdivant 2013, section 5.2.2), more groups than n / 5 (fewer than 5
patients per group), fewer non-empty groups than requested, and expected counts of 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray
from scipy.stats import chi2 as chi2_dist

from dtlr.shared.stats.metrics import binary_inputs

Sample = Literal["development", "external"]
MIN_EXPECTED = 5.0  # per group and outcome (Hosmer, Lemeshow & Sturdivant 2013, 5.2.2)
MIN_PER_GROUP = 5  # patients per group: warn when groups > n / 5


@dataclass(frozen=True)
class HosmerLemeshow:
    """Test statistic, degrees of freedom, p-value, the per-group partition table, and warnings.

    ``df_rule`` says which degrees of freedom apply ("development": G - 2, "external": G,
    "override": the caller's ``df``); ``warnings`` are sentences to show beside the p-value.
    """

    chi2: float
    df: int
    p: float
    table: pd.DataFrame
    warnings: tuple[str, ...] = ()
    df_rule: Literal["development", "external", "override"] = "development"


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


def _chi2_terms(
    observed: NDArray[np.float64], expected: NDArray[np.float64]
) -> NDArray[np.float64]:
    """(O - E)^2 / E, with the limits 0 (O = E = 0) and inf (O > 0 = E) where E is 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = (observed - expected) ** 2 / expected
    return np.where(expected > 0, terms, np.where(observed > 0, np.inf, 0.0))


def _warnings(table: pd.DataFrame, groups: int, n: int, method: str) -> tuple[str, ...]:
    """The sentences that say why this result's chi-square approximation is doubtful."""
    out = []
    n_groups = len(table)
    if method == "quantile" and n_groups < groups:
        out.append(f"the predictions formed only {n_groups} non-empty groups of the {groups} "
                   f"requested (tied cut points, or fewer distinct risks than groups); the test "
                   f"uses {n_groups}")
    if groups * MIN_PER_GROUP > n:
        out.append(f"{groups} groups for {n} patients is more than n / {MIN_PER_GROUP} = "
                   f"{n / MIN_PER_GROUP:g}: fewer than {MIN_PER_GROUP} patients per group; use "
                   "fewer groups")
    expected = table[["expected_1", "expected_0"]].to_numpy()
    small = expected.min(axis=1) < MIN_EXPECTED
    if small.any():
        out.append(f"{int(small.sum())} of {n_groups} groups have fewer than "
                   f"{MIN_EXPECTED:g} expected events or non-events (smallest "
                   f"{expected.min():.2g}); the chi-square approximation needs at least "
                   f"{MIN_EXPECTED:g} (Hosmer, Lemeshow & Sturdivant 2013), so the p-value is "
                   "unreliable")
    observed = table[["observed_1", "observed_0"]].to_numpy()
    zero = expected <= 0
    if zero.any():
        text = (f"{int(zero.any(axis=1).sum())} group(s) have an expected count of 0 (all "
                "their risks are exactly 0 or exactly 1)")
        if (observed[zero] > 0).any():
            text += ("; the model gave risk 0 to an event or 1 to a non-event there, so chi2 is "
                     "infinite and p = 0")
        else:
            text += "; with none observed either, they add 0 to chi2"
        out.append(text)
    return tuple(out)


def hosmer_lemeshow(
    y: ArrayLike,
    prob: ArrayLike,
    groups: int = 10,
    method: Literal["quantile", "rank"] = "quantile",
    *,
    sample: Sample = "development",
    df: int | None = None,
) -> HosmerLemeshow:
    """Hosmer-Lemeshow chi-square test of calibration (hoslem.test or UtilStat grouping).

    ``sample="development"`` (the cohort the model was fitted on): df = G - 2 as hoslem.test;
    ``"external"`` (a validation cohort): df = G (Hosmer, Lemeshow & Sturdivant 2013, ch. 5);
    ``df`` overrides both. G is the number of non-empty groups.
    """
    y_arr, p_arr = binary_inputs(y, prob, "prob")
    if groups < 3:
        raise ValueError("groups must be at least 3 (df = groups - 2)")
    if ((p_arr < 0) | (p_arr > 1)).any():
        raise ValueError("prob must lie in [0, 1]")
    if sample not in ("development", "external"):
        raise ValueError(f"sample must be 'development' or 'external', not {sample!r}")
    if df is not None and df < 1:
        raise ValueError(f"df must be at least 1, not {df}")
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
    table = pd.DataFrame(
        {
            "lower": lower,
            "upper": upper,
            "n": n,
            "observed_1": observed_1.astype(np.int64),
            "expected_1": np.bincount(idx, weights=p_arr, minlength=lower.size),
            "observed_0": (n - observed_1).astype(np.int64),
            "expected_0": np.bincount(idx, weights=1.0 - p_arr, minlength=lower.size),
        }
    )
    table = table[table["n"] > 0].reset_index(drop=True)
    if len(table) < 3:
        raise ValueError(f"only {len(table)} non-empty groups; the test needs at least 3")
    observed = table[["observed_1", "observed_0"]].to_numpy(dtype=np.float64)
    expected = table[["expected_1", "expected_0"]].to_numpy()
    stat = float(np.sum(_chi2_terms(observed, expected)))
    n_groups = groups if method == "rank" else len(table)
    if df is None:
        df, rule = (n_groups - 2 if sample == "development" else n_groups), sample
    else:
        rule = "override"
    return HosmerLemeshow(
        chi2=stat,
        df=int(df),
        p=float(chi2_dist.sf(stat, df)),
        table=table,
        warnings=_warnings(table, groups, p_arr.size, method),
        df_rule=rule,
    )
