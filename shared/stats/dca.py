"""Decision curve analysis (Vickers & Elkin 2006) with the definitions of R/Python dcurves."""

from __future__ import annotations

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray
from statsmodels.genmod.families import Binomial
from statsmodels.genmod.generalized_linear_model import GLM
from statsmodels.tools.tools import add_constant

from dtlr.shared.stats.metrics import binary_inputs

_EPS = np.finfo(np.float64).eps


def _share_at_or_above(values: NDArray[np.float64], pt: NDArray[np.float64]) -> NDArray[np.float64]:
    """Fraction of values >= each threshold (the mean of the treated indicator in dcurves)."""
    below = np.searchsorted(np.sort(values), pt, side="left")
    return (values.size - below) / values.size


def risk_from_score(y: ArrayLike, score: ArrayLike) -> NDArray[np.float64]:
    """Fitted P(y = 1) from a logistic regression of y on the score (dcurves as_probability)."""
    y_arr, s_arr = binary_inputs(y, score)
    design = add_constant(s_arr, has_constant="add")
    fit = GLM(y_arr.astype(np.float64), design, family=Binomial()).fit(tol=1e-12)
    return np.asarray(fit.predict(design), dtype=np.float64)


def decision_curve(
    y: ArrayLike,
    risk: ArrayLike,
    thresholds: ArrayLike,
    prevalence: float | None = None,
    harm: float = 0.0,
    *,
    nper: float = 1.0,
) -> pd.DataFrame:
    """Net benefit of the model, treat-all and treat-none, and net interventions avoided.

    Follows dcurves (R dca()/test_consequences(), Python dca()): a patient is treated when
    risk >= threshold, except that a risk of exactly 0 is never treated and exactly 1 always
    is (dcurves moves them to -eps / 1 + eps). tp_rate = P(risk >= pt | case) * prevalence and
    fp_rate = P(risk >= pt | control) * (1 - prevalence), with prevalence = mean(y) unless given
    (case-control data); net benefit = tp_rate - pt / (1 - pt) * fp_rate - harm (harm applies to
    the model only); net_intervention_avoided = (NB - NB_all) / (pt / (1 - pt)) * nper, per
    patient by default as in Python dcurves dca() (R's net_intervention_avoided() uses
    nper = 100). At pt = 0 it is NaN or -inf, as in dcurves.
    """
    y_arr, r_arr = binary_inputs(y, risk, "risk")
    pt = np.atleast_1d(np.asarray(thresholds, dtype=np.float64))
    if pt.ndim != 1 or pt.size == 0:
        raise ValueError("thresholds must be a non-empty 1-D sequence")
    if not ((pt >= 0) & (pt < 1)).all():
        raise ValueError("thresholds must lie in [0, 1)")
    if ((r_arr < 0) | (r_arr > 1)).any():
        raise ValueError("risk must lie in [0, 1]; convert scores with risk_from_score first")
    if not y_arr.any() or y_arr.all():
        raise ValueError("decision_curve needs at least one case (y = 1) and one control (y = 0)")
    if prevalence is None:
        prevalence = float(y_arr.mean())
    elif not 0 < prevalence < 1:
        raise ValueError("prevalence must lie strictly between 0 and 1")

    r_arr = np.where(r_arr == 0, -_EPS, np.where(r_arr == 1, 1 + _EPS, r_arr))
    tp_rate = _share_at_or_above(r_arr[y_arr], pt) * prevalence
    fp_rate = _share_at_or_above(r_arr[~y_arr], pt) * (1 - prevalence)
    odds = pt / (1 - pt)
    net_benefit = tp_rate - odds * fp_rate - harm
    treat_all = prevalence - odds * (1 - prevalence)
    with np.errstate(divide="ignore", invalid="ignore"):
        avoided = (net_benefit - treat_all) / odds * nper
    return pd.DataFrame(
        {
            "threshold": pt,
            "net_benefit": net_benefit,
            "treat_all": treat_all,
            "treat_none": np.zeros_like(pt),
            "net_intervention_avoided": avoided,
        }
    )
