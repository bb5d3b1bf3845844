"""Evaluation of every model on one cohort: the numbers behind Tables 3 and 4 and Figs 5-6.

All statistics come from :mod:`dtlr.shared.stats` (DeLong, Wilson CIs, Hosmer-Lemeshow,
decision curves); this module only applies them per model and per cohort and lays them out.
Threshold metrics use each model's Youden threshold chosen on out-of-fold training
predictions. Training-cohort numbers are apparent (the models were fitted on those patients);
with a bootstrap :class:`~.optimism.Optimism` the training AUC also gets Harrell's
optimism-corrected value. With a population ``prevalence`` (``modeler.prevalence``), PPV, NPV
and the decision curves are those of a population with that prevalence, by the same functions
as ``dtlr stats dca --prevalence``.

A statistic a cohort cannot support (one grade only, a single patient of a grade, risks that
separate the grades) is NaN with the reason in the ``note`` column; the cohort's other
statistics are still computed.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import pandas as pd
from numpy.typing import NDArray
from sklearn.calibration import calibration_curve
from sklearn.metrics import roc_curve

from dtlr.services.modeler.models import DTLRModel
from dtlr.services.modeler.optimism import Optimism
from dtlr.shared.stats import (
    HosmerLemeshow,
    binary_metrics,
    decision_curve,
    delong_test,
    hosmer_lemeshow,
    roc_auc_delong,
)
from dtlr.shared.stats.calibration import calibration_intercept_slope

THRESHOLD_METRICS = ("accuracy", "sensitivity", "specificity", "ppv", "npv")
DCA_THRESHOLDS = np.round(np.arange(0.01, 1.0, 0.01), 2)


@dataclass
class CohortEvaluation:
    """One cohort's predictions and statistics for every model."""

    cohort: str
    role: str  # "train" | "test"
    y: NDArray[np.int64]
    probs: pd.DataFrame  # index patient_id, one column per model
    metrics: pd.DataFrame  # long: model, metric, value, ci_low, ci_high, numerator, denominator,
    # note (why a value is undefined; empty or NaN where it is defined)
    delong: pd.DataFrame  # model_a, model_b, auc_a, auc_b, z, p, diff_ci_low, diff_ci_high
    hosmer_lemeshow: dict[str, HosmerLemeshow | None]
    roc: dict[str, tuple[NDArray[np.float64], NDArray[np.float64]]]
    calibration: dict[str, tuple[NDArray[np.float64], NDArray[np.float64]]]
    dca: pd.DataFrame  # threshold, treat_all, treat_none, one net-benefit column per model
    prevalence: float | None = None  # population prevalence behind PPV, NPV and dca; None: own
    optimism: Optimism | None = None  # the training cohort's bootstrap optimism

    @property
    def undefined(self) -> str:
        """Why this cohort's AUC, calibration and decision curves are undefined, or ''."""
        return _grades(self.y)

    def notes(self) -> list[str]:
        """Each distinct reason a statistic of this cohort is undefined."""
        return list(dict.fromkeys(n for n in self.metrics["note"].dropna() if n))


def _grades(y: NDArray[np.int64]) -> str:
    """Why an AUC-type statistic is undefined on these labels, or '' when it is defined."""
    high = int(y.sum())
    if high in (0, y.size):
        return (f"only {'high' if high else 'low'}-grade patients ({y.size}): AUC, DeLong tests, "
                "calibration, Hosmer-Lemeshow and decision curves need both grades")
    return ""


def _hl(y: NDArray[np.int64], p: NDArray[np.float64], groups: int,
        role: str) -> HosmerLemeshow | None:
    """Hosmer-Lemeshow test, or None when the predictions cannot form 3 groups.

    df = groups - 2 on the training cohort and groups on a test cohort, an external validation
    sample (Hosmer, Lemeshow & Sturdivant 2013; see dtlr.shared.stats.hosmer_lemeshow).
    """
    sample = "development" if role == "train" else "external"
    try:
        return hosmer_lemeshow(y, p, groups=groups, method="quantile", sample=sample)
    except ValueError:
        return None


def evaluate_cohort(model: DTLRModel, X: pd.DataFrame, y: NDArray[np.int64], cohort: str,
                    role: str, hl_groups: int = 10, calibration_bins: int = 10,
                    prevalence: float | None = None,
                    optimism: Optimism | None = None) -> CohortEvaluation:
    """Predict with every model and compute AUC (DeLong CI), threshold metrics, calibration,
    HL and curves; ``optimism`` (training cohort) adds the optimism-corrected AUC."""
    y = np.asarray(y).astype(np.int64)
    probs = model.predict_proba_models(X)
    undefined = _grades(y)
    nan = float("nan")
    rows: list[dict[str, object]] = []
    hl, roc, cal = {}, {}, {}
    dca = pd.DataFrame({"threshold": DCA_THRESHOLDS, "treat_all": nan, "treat_none": nan})
    for m in probs.columns:
        p = probs[m].to_numpy()
        rows.extend(_auc_rows(m, y, p, undefined, optimism))
        threshold = model.thresholds_[m]
        rows.append({"model": m, "metric": "threshold", "value": threshold})
        for name, est in binary_metrics(y, p, threshold, prevalence=prevalence).items():
            rows.append({"model": m, "metric": name, "value": est.value, "ci_low": est.ci_low,
                         "ci_high": est.ci_high, "numerator": est.numerator,
                         "denominator": est.denominator,
                         "note": "" if est.denominator else
                         f"no patient in the denominator of {name} in this cohort"})
        c = calibration_intercept_slope(y, p)
        reason = undefined or c.reason
        intercept_note = "" if np.isfinite(c.intercept) else reason
        rows.append({"model": m, "metric": "calibration_intercept", "value": c.intercept,
                     "ci_low": c.intercept_ci_low, "ci_high": c.intercept_ci_high,
                     "note": intercept_note})
        rows.append({"model": m, "metric": "calibration_slope", "value": c.slope,
                     "ci_low": c.slope_ci_low, "ci_high": c.slope_ci_high, "note": reason})
        hl[m] = None if undefined else _hl(y, p, hl_groups, role)
        if hl[m] is not None:
            rows.append({"model": m, "metric": "hosmer_lemeshow_chi2", "value": hl[m].chi2,
                         "denominator": hl[m].df})
            rows.append({"model": m, "metric": "hosmer_lemeshow_p", "value": hl[m].p})
        if undefined:  # curves too need both grades (decision curves: as dcurves)
            roc[m] = cal[m] = (np.array([]), np.array([]))
            dca[m] = nan
        else:
            fpr, tpr, _ = roc_curve(y, p)
            roc[m] = (fpr, tpr)
            frac, mean_pred = calibration_curve(y, p, n_bins=calibration_bins,
                                                strategy="quantile")
            cal[m] = (mean_pred, frac)
            curve = decision_curve(y, p, DCA_THRESHOLDS, prevalence=prevalence)
            dca[["treat_all", "treat_none"]] = curve[["treat_all", "treat_none"]].to_numpy()
            dca[m] = curve["net_benefit"].to_numpy()
    tests = []
    for a, b in itertools.combinations(probs.columns, 2):
        if undefined:
            t = {"auc_a": nan, "auc_b": nan, "z": nan, "p": nan, "diff_ci_low": nan,
                 "diff_ci_high": nan}
        else:
            d = delong_test(y, probs[a], probs[b])
            t = {"auc_a": d.auc_a, "auc_b": d.auc_b, "z": d.z, "p": d.p,
                 "diff_ci_low": d.diff_ci_low, "diff_ci_high": d.diff_ci_high}
        tests.append({"model_a": a, "model_b": b, **t})
        note = undefined or ("" if np.isfinite(t["p"]) else
                             "fewer than 2 patients of a grade: no DeLong variance")
        rows.append({"model": a, "metric": f"delong_p_vs_{b}", "value": t["p"], "note": note})
        rows.append({"model": b, "metric": f"delong_p_vs_{a}", "value": t["p"], "note": note})
    metrics = pd.DataFrame(rows)
    metrics.insert(0, "cohort", cohort)
    metrics.insert(1, "role", role)
    return CohortEvaluation(cohort, role, y, probs, metrics, pd.DataFrame(tests), hl, roc, cal,
                            dca, prevalence, optimism)


def _auc_rows(m: str, y: NDArray[np.int64], p: NDArray[np.float64], undefined: str,
              optimism: Optimism | None) -> list[dict[str, object]]:
    """The AUC with its DeLong CI and, on the training cohort, its optimism and corrected
    value; NaN with the reason where the labels cannot support them."""
    nan = float("nan")
    if undefined:
        return [{"model": m, "metric": "auc", "value": nan, "note": undefined}]
    auc = roc_auc_delong(y, p)
    note = "" if np.isfinite(auc.var) else "fewer than 2 patients of a grade: no DeLong CI"
    rows: list[dict[str, object]] = [{"model": m, "metric": "auc", "value": auc.auc,
                                      "ci_low": auc.ci_low, "ci_high": auc.ci_high,
                                      "note": note}]
    if optimism is not None:
        o = optimism.optimism[m]
        why = "" if np.isfinite(o) else (f"none of the {optimism.bootstraps} bootstrap samples "
                                         "could be fitted")
        rows.append({"model": m, "metric": "auc_optimism", "value": o,
                     "numerator": optimism.used, "denominator": optimism.bootstraps,
                     "note": why})
        rows.append({"model": m, "metric": "auc_corrected", "value": auc.auc - o,
                     "numerator": optimism.used, "denominator": optimism.bootstraps,
                     "note": why})
    return rows


def table3(evaluations: list[CohortEvaluation]) -> pd.DataFrame:
    """Paper's Table 3 as numbers: one row per (cohort, model); value and CI per metric."""
    rows = []
    for ev in evaluations:
        wide = ev.metrics.set_index(["model", "metric"])
        for m in ev.probs.columns:
            row: dict[str, object] = {"cohort": ev.cohort, "role": ev.role, "model": m}
            for metric in ("accuracy", "auc", *THRESHOLD_METRICS[1:], "calibration_intercept",
                           "calibration_slope"):
                rec = wide.loc[(m, metric)]
                row[metric] = rec["value"]
                row[f"{metric}_ci_low"] = rec["ci_low"]
                row[f"{metric}_ci_high"] = rec["ci_high"]
            row["auc_corrected"] = (wide.loc[(m, "auc_corrected"), "value"]
                                    if (m, "auc_corrected") in wide.index else float("nan"))
            row["threshold"] = wide.loc[(m, "threshold"), "value"]
            rows.append(row)
    return pd.DataFrame(rows)


def delong_matrix(ev: CohortEvaluation) -> pd.DataFrame:
    """Paper's Table 4: symmetric matrix of paired DeLong p-values (NaN on the diagonal)."""
    models = list(ev.probs.columns)
    out = pd.DataFrame(np.nan, index=models, columns=models)
    for r in ev.delong.itertuples():
        out.loc[r.model_a, r.model_b] = out.loc[r.model_b, r.model_a] = r.p
    return out
