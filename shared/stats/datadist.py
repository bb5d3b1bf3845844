"""rms::datadist's display limits of continuous predictors (Harrell's rms package).

datadist(q.display) stores, per numeric variable, "Low:prediction" and "High:prediction": R type-7
quantiles at q and 1 - q with q = 10 / max(n, 200), n the non-missing values, so the 5th and 95th
percentiles for n < 200 and about the 10th smallest and 10th largest values for n >= 200
(rms/R/datadist.s; man/datadist.Rd). A variable with fewer than 4 distinct values (a 0/1
finding), or whose two quantiles coincide, gets its range instead. rms uses these limits for
Predict() and plots; rms::nomogram() draws the full range ("Low"/"High", value.chk(...,
type.range = "full")).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray

from dtlr.shared.stats.hosmer_lemeshow import r_quantile_type7


def display_limits(values: ArrayLike) -> tuple[float, float]:
    """datadist's (Low:prediction, High:prediction) of one numeric variable; NaNs are left out."""
    x = np.asarray(values, dtype=np.float64)
    x = x[~np.isnan(x)]
    if x.size < 2:
        raise ValueError("datadist needs at least 2 non-missing values")
    lo, hi = float(x.min()), float(x.max())
    if np.unique(x).size < 4:
        return lo, hi
    q = 10 / max(x.size, 200)
    q_lo, q_hi = (float(v) for v in r_quantile_type7(x, np.array([q, 1 - q])))
    return (lo, hi) if q_lo == q_hi else (q_lo, q_hi)


def display_ranges(design: pd.DataFrame) -> NDArray[np.float64]:
    """One (low, high) row of :func:`display_limits` per column of ``design``."""
    return np.array([display_limits(design[c]) for c in design.columns], dtype=np.float64)
