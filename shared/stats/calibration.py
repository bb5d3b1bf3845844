"""Calibration intercept and slope ("weak calibration", Van Calster et al. 2016, J Clin
Epidemiol 74:167-176), with Wald CIs, or the reason they cannot be computed.

Slope: the coefficient b of ``logit P(y = 1) = a + b logit(p)``, as rms::val.prob's "Slope"
(1 = ideal; below 1, predictions too extreme). Intercept: calibration-in-the-large, ``a`` of
``logit P(y = 1) = a + logit(p)`` with the slope fixed at 1 (an offset; 0 = ideal; above 0,
risks too low on average), as Van Calster et al. and Steyerberg's Clinical Prediction Models
(2nd ed., 15.2) define it. Both are maximum-likelihood logistic fits (statsmodels GLM).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import statsmodels.api as sm
from numpy.typing import ArrayLike
from scipy.special import logit
from statsmodels.tools.sm_exceptions import PerfectSeparationWarning

from dtlr.shared.stats.metrics import binary_inputs

NAN = float("nan")


@dataclass(frozen=True)
class Calibration:
    """Calibration intercept and slope with CIs; NaN with ``reason`` where undefined."""

    intercept: float
    intercept_ci_low: float
    intercept_ci_high: float
    slope: float
    slope_ci_low: float
    slope_ci_high: float
    reason: str = ""  # why the slope (and, if NaN too, the intercept) is undefined


def _undefined(reason: str, intercept: tuple[float, float, float] = (NAN, NAN, NAN)
               ) -> Calibration:
    return Calibration(*intercept, NAN, NAN, NAN, reason)


def calibration_intercept_slope(y: ArrayLike, prob: ArrayLike,
                                conf_level: float = 0.95) -> Calibration:
    """Calibration intercept (slope fixed at 1) and slope of risks ``prob`` against ``y``.

    Undefined, with the reason, when y holds one class, when a risk is exactly 0 or 1 (its
    logit is infinite), or, for the slope, when the risks separate the classes perfectly (its
    maximum-likelihood estimate is infinite) or are all equal.
    """
    y_arr, p = binary_inputs(y, prob, "prob")
    events = int(y_arr.sum())
    if events in (0, y_arr.size):
        return _undefined(f"only {'high' if events else 'low'}-grade patients: calibration "
                          "needs both grades")
    if np.any((p <= 0) | (p >= 1)):
        return _undefined("a predicted risk is exactly 0 or 1 (infinite logit)")
    lp = logit(p)
    yf = y_arr.astype(np.float64)
    alpha = 1 - conf_level
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PerfectSeparationWarning)
        fit = sm.GLM(yf, np.ones((yf.size, 1)), family=sm.families.Binomial(), offset=lp).fit()
        a_low, a_high = fit.conf_int(alpha)[0]
        intercept = (float(fit.params[0]), float(a_low), float(a_high))
        if np.ptp(lp) == 0:
            return _undefined("every patient has the same predicted risk: no slope",
                              intercept)
        high, low = lp[y_arr], lp[~y_arr]
        if high.min() >= low.max() or high.max() <= low.min():  # (quasi-)complete separation
            return _undefined("the risks separate the grades perfectly: the slope's "
                              "maximum-likelihood estimate is infinite", intercept)
        fit = sm.GLM(yf, sm.add_constant(lp, has_constant="add"),
                     family=sm.families.Binomial()).fit()
    b_low, b_high = fit.conf_int(alpha)[1]
    return Calibration(*intercept, float(fit.params[1]), float(b_low), float(b_high))
