"""Harrell's bootstrap optimism correction of the training AUCs (Harrell, Lee & Mark 1996,
Stat Med 15:361-387; rms::validate).

A model's training AUC is "apparent": measured on the patients it was fitted on. Each
bootstrap sample of the training cohort gets the whole pipeline refitted on it (selection,
SVMs, nomogram); its optimism is its AUC on that sample minus its AUC on the original cohort.
The corrected AUC is the apparent AUC minus the mean optimism. A sample with too few patients
of a grade for the pipeline's cross-validations cannot be fitted: it is skipped and counted, as
rms::validate counts the samples whose fit failed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from joblib import Parallel, delayed
from numpy.typing import NDArray

from dtlr.services.modeler.models import DTLRModel
from dtlr.shared.stage import InputError
from dtlr.shared.stats import roc_auc_delong


@dataclass(frozen=True)
class Optimism:
    """Mean optimism of each model's training AUC over the bootstrap samples that fitted."""

    optimism: dict[str, float]  # model -> mean(AUC on its sample - AUC on the cohort)
    bootstraps: int  # samples asked for
    used: int  # samples whose pipeline could be fitted
    seed: int


def _auc(y: NDArray[np.int64], p: NDArray[np.float64]) -> float:
    return roc_auc_delong(y, p).auc


def _one(model: DTLRModel, X: pd.DataFrame, y: NDArray[np.int64],
         reader2: dict[str, pd.DataFrame], rows: NDArray[np.intp]) -> dict[str, float] | None:
    """One bootstrap sample's optimism per model, or None when its pipeline cannot be fitted."""
    yb = y[rows]
    try:
        fitted = model.refit(X.iloc[rows], yb, reader2)
    except (InputError, ValueError):  # too few patients of a grade for the pipeline's CV
        return None
    on_sample = fitted.predict_proba_models(X.iloc[rows])
    on_cohort = fitted.predict_proba_models(X)
    return {m: _auc(yb, on_sample[m].to_numpy()) - _auc(y, on_cohort[m].to_numpy())
            for m in on_sample.columns}


def bootstrap_optimism(model: DTLRModel, X: pd.DataFrame, y: NDArray[np.int64],
                       reader2: dict[str, pd.DataFrame] | None, bootstraps: int,
                       seed: int) -> Optimism:
    """Refit ``model``'s pipeline on ``bootstraps`` seeded bootstrap samples of (X, y)."""
    y = np.asarray(y).astype(np.int64)
    rng = np.random.default_rng(seed)
    samples = [rng.integers(0, y.size, y.size) for _ in range(bootstraps)]
    results = Parallel(n_jobs=model.n_jobs)(
        delayed(_one)(model, X, y, reader2 or {}, rows) for rows in samples)
    done = [r for r in results if r is not None]
    names = model.model_names
    mean = {m: float(np.mean([r[m] for r in done])) if done else float("nan") for m in names}
    return Optimism(mean, bootstraps, len(done), seed)
