"""Evaluation of every model on one cohort: the numbers behind Tables 3 and 4 and Figs 5-6.

All statistics come from :mod:`dtlr.shared.stats` (DeLong, Wilson CIs, Hosmer-Lemeshow,
decision curves); this module only applies them per model and per cohort and lays them out.
Threshold metrics use each model's Youden threshold chosen on the training cohort. With a
population ``prevalence`` (``modeler.prevalence``), PPV, NPV and the decision curves are those of
a population with that prevalence, by the same functions as ``dtlr stats dca --prevalence``.
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
from dtlr.shared.stage import InputError
from dtlr.shared.stats import (
    HosmerLemeshow,
    binary_metrics,
    decision_curve,
    delong_test,
    hosmer_lemeshow,
    roc_auc_delong,
)

THRESHOLD_METRICS = ("accuracy", "sensitivity", "specificity", "ppv", "npv")
DCA_THRESHOLDS = np.round(np.arange(0.01, 1.0, 0.01), 2)


@dataclass
class CohortEvaluation:
    """One cohort's predictions and statistics for every model."""

    cohort: str
    role: str  # "train" | "test"
    y: NDArray[np.int64]
    probs: pd.DataFrame  # index patient_id, one column per model
    metrics: pd.DataFrame  # long: model, metric, value, ci_low, ci_high, numerator, denominator
    delong: pd.DataFrame  # model_a, model_b, auc_a, auc_b, z, p, diff_ci_low, diff_ci_high
    hosmer_lemeshow: dict[str, HosmerLemeshow | None]
    roc: dict[str, tuple[NDArray[np.float64], NDArray[np.float64]]]
    calibration: dict[str, tuple[NDArray[np.float64], NDArray[np.float64]]]
    dca: pd.DataFrame  # threshold, treat_all, treat_none, one net-benefit column per model
    prevalence: float | None = None  # population prevalence behind PPV, NPV and dca; None: own


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
                    prevalence: float | None = None) -> CohortEvaluation:
    """Predict with every model and compute AUC (DeLong CI), threshold metrics, HL, curves."""
    y = np.asarray(y).astype(np.int64)
    if set(np.unique(y)) != {0, 1}:
        raise InputError(f"cohort {cohort!r} needs both low- and high-grade patients to be "
                         "evaluated")
    probs = model.predict_proba_models(X)
    rows, hl, roc, cal = [], {}, {}, {}
    dca = None
    for m in probs.columns:
        p = probs[m].to_numpy()
        auc = roc_auc_delong(y, p)
        rows.append({"model": m, "metric": "auc", "value": auc.auc, "ci_low": auc.ci_low,
                     "ci_high": auc.ci_high})
        threshold = model.thresholds_[m]
        rows.append({"model": m, "metric": "threshold", "value": threshold})
        for name, est in binary_metrics(y, p, threshold, prevalence=prevalence).items():
            rows.append({"model": m, "metric": name, "value": est.value, "ci_low": est.ci_low,
                         "ci_high": est.ci_high, "numerator": est.numerator,
                         "denominator": est.denominator})
        hl[m] = _hl(y, p, hl_groups, role)
        if hl[m] is not None:
            rows.append({"model": m, "metric": "hosmer_lemeshow_chi2", "value": hl[m].chi2,
                         "denominator": hl[m].df})
            rows.append({"model": m, "metric": "hosmer_lemeshow_p", "value": hl[m].p})
        fpr, tpr, _ = roc_curve(y, p)
        roc[m] = (fpr, tpr)
        frac, mean_pred = calibration_curve(y, p, n_bins=calibration_bins, strategy="quantile")
        cal[m] = (mean_pred, frac)
        curve = decision_curve(y, p, DCA_THRESHOLDS, prevalence=prevalence)
        if dca is None:
            dca = curve[["threshold", "treat_all", "treat_none"]].copy()
        dca[m] = curve["net_benefit"].to_numpy()
    tests = []
    for a, b in itertools.combinations(probs.columns, 2):
        t = delong_test(y, probs[a], probs[b])
        tests.append({"model_a": a, "model_b": b, "auc_a": t.auc_a, "auc_b": t.auc_b,
                      "z": t.z, "p": t.p, "diff_ci_low": t.diff_ci_low,
                      "diff_ci_high": t.diff_ci_high})
        rows.append({"model": a, "metric": f"delong_p_vs_{b}", "value": t.p})
        rows.append({"model": b, "metric": f"delong_p_vs_{a}", "value": t.p})
    metrics = pd.DataFrame(rows)
    metrics.insert(0, "cohort", cohort)
    metrics.insert(1, "role", role)
    assert dca is not None
    return CohortEvaluation(cohort, role, y, probs, metrics, pd.DataFrame(tests), hl, roc, cal,
                            dca, prevalence)


def table3(evaluations: list[CohortEvaluation]) -> pd.DataFrame:
    """Paper's Table 3 as numbers: one row per (cohort, model); value and CI per metric."""
    rows = []
    for ev in evaluations:
        wide = ev.metrics.set_index(["model", "metric"])
        for m in ev.probs.columns:
            row: dict[str, object] = {"cohort": ev.cohort, "role": ev.role, "model": m}
            for metric in ("accuracy", "auc", *THRESHOLD_METRICS[1:]):
                rec = wide.loc[(m, metric)]
                row[metric] = rec["value"]
                row[f"{metric}_ci_low"] = rec["ci_low"]
                row[f"{metric}_ci_high"] = rec["ci_high"]
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
