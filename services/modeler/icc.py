"""Intraclass correlation (Shrout & Fleiss 1979; McGraw & Wong 1996), vectorised over features.

The inter-reader stability filter keeps features whose ICC between two readers' values on the
same patients is at least a threshold (the paper: ICC >= 0.8). The default form is ICC(2,1):
two-way random effects, absolute agreement, single rater, which Koo & Li (2016) recommend for
inter-rater reliability when the raters are a sample of possible raters and their systematic
differences matter (a reader who draws larger ROIs shifts feature values). ICC(1,1) (one-way
random) and ICC(3,1) (two-way mixed, consistency: reader offsets ignored) are selectable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
from numpy.typing import NDArray
from sklearn.base import BaseEstimator, TransformerMixin

ICCForm = Literal["ICC1", "ICC2", "ICC3"]
ICC_FORMS: dict[str, str] = {
    "ICC1": "ICC(1,1): one-way random effects, absolute agreement, single rater",
    "ICC2": "ICC(2,1): two-way random effects, absolute agreement, single rater",
    "ICC3": "ICC(3,1): two-way mixed effects, consistency, single rater",
}


@dataclass(frozen=True)
class MeanSquares:
    """Two-way ANOVA mean squares per feature (targets = rows, raters = columns)."""

    between_targets: NDArray[np.float64]  # BMS (MSR)
    within_targets: NDArray[np.float64]  # WMS (MSW), one-way model
    between_raters: NDArray[np.float64]  # JMS (MSC)
    residual: NDArray[np.float64]  # EMS (MSE)
    n: int
    k: int


def mean_squares(ratings: NDArray[np.float64]) -> MeanSquares:
    """ANOVA mean squares of an (n targets, k raters, p features) array, all features at once."""
    x = np.asarray(ratings, dtype=np.float64)
    if x.ndim == 2:
        x = x[:, :, None]
    n, k = x.shape[:2]
    if n < 2 or k < 2:
        raise ValueError(f"ICC needs at least 2 targets and 2 raters, got {n} and {k}")
    grand = x.mean(axis=(0, 1))
    ss_total = ((x - grand) ** 2).sum(axis=(0, 1))
    ss_targets = k * ((x.mean(axis=1) - grand) ** 2).sum(axis=0)
    ss_raters = n * ((x.mean(axis=0) - grand) ** 2).sum(axis=0)
    ss_error = ss_total - ss_targets - ss_raters
    return MeanSquares(
        between_targets=ss_targets / (n - 1),
        within_targets=(ss_raters + ss_error) / (n * (k - 1)),
        between_raters=ss_raters / (k - 1),
        residual=ss_error / ((n - 1) * (k - 1)),
        n=n,
        k=k,
    )


def icc(ratings: NDArray[np.float64], form: ICCForm = "ICC2") -> NDArray[np.float64]:
    """Single-rater ICC per feature of an (n, k, p) array; NaN where a feature has no variance."""
    ms = mean_squares(ratings)
    b, e, n, k = ms.between_targets, ms.residual, ms.n, ms.k
    if form == "ICC1":
        num, den = b - ms.within_targets, b + (k - 1) * ms.within_targets
    elif form == "ICC2":
        num, den = b - e, b + (k - 1) * e + k * (ms.between_raters - e) / n
    elif form == "ICC3":
        num, den = b - e, b + (k - 1) * e
    else:
        raise ValueError(f"ICC form must be one of {', '.join(ICC_FORMS)}, not {form!r}")
    with np.errstate(divide="ignore", invalid="ignore"):
        out = num / den
    return np.where(np.isfinite(out), out, np.nan)


class ICCFilter(TransformerMixin, BaseEstimator):
    """Keep features whose inter-reader ICC >= threshold; the first step of a family pipeline.

    X is the training cohort's reader-1 table (a DataFrame indexed by patient_id). The
    second reader's table goes to ``fit`` as ``reader2`` (same columns, indexed by patient_id;
    through a Pipeline: ``pipe.fit(X, y, icc__reader2=table)``), so it is data seen at fit
    time, never an estimator parameter. Patients in both tables are the ICC sample. With
    fewer than 3 such patients (or no table) the filter keeps every feature and says so in
    ``note_``. ``transform`` returns a NumPy array of the kept columns.
    """

    def __init__(self, form: ICCForm = "ICC2", threshold: float = 0.8) -> None:
        self.form = form
        self.threshold = threshold

    def fit(self, X: pd.DataFrame, y: object = None, reader2: pd.DataFrame | None = None,
            ) -> ICCFilter:
        """Compute each feature's ICC on the patients both readers segmented."""
        if not isinstance(X, pd.DataFrame):
            raise TypeError("ICCFilter needs a DataFrame indexed by patient_id")
        self.feature_names_in_ = np.asarray(X.columns, dtype=object)
        self.n_features_in_ = X.shape[1]
        pairs = [] if reader2 is None else X.index.intersection(reader2.index)
        self.n_pairs_ = len(pairs)
        if self.n_pairs_ < 3:
            self.icc_ = np.full(X.shape[1], np.nan)
            self.support_ = np.ones(X.shape[1], dtype=bool)
            self.note_ = (f"ICC filter skipped: {self.n_pairs_} patient(s) with a second "
                          "reader's features (at least 3 needed); every feature kept")
            return self
        assert reader2 is not None
        second = reader2.reindex(columns=X.columns).loc[pairs]
        ratings = np.stack([X.loc[pairs].to_numpy(np.float64), second.to_numpy(np.float64)],
                           axis=1)
        self.icc_ = icc(ratings, self.form)
        self.support_ = np.nan_to_num(self.icc_, nan=-np.inf) >= self.threshold
        self.note_ = (f"{ICC_FORMS[self.form]} on {self.n_pairs_} patients: "
                      f"{int(self.support_.sum())} of {X.shape[1]} features with "
                      f"ICC >= {self.threshold:g}")
        return self

    def transform(self, X: pd.DataFrame) -> NDArray[np.float64]:
        """The kept columns, by name, as a float array."""
        names = list(self.feature_names_in_[self.support_])
        missing = [n for n in names if n not in X.columns]
        if missing:
            raise ValueError(f"{len(missing)} feature(s) the model was fitted on are missing "
                             f"(e.g. {', '.join(missing[:3])}); extract features with the same "
                             "settings as the training cohort")
        return X.loc[:, names].to_numpy(np.float64)

    def get_feature_names_out(self, input_features: object = None) -> NDArray[np.object_]:
        """Names of the kept features."""
        return self.feature_names_in_[self.support_]
