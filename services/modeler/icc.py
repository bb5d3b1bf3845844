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
from sklearn.base import BaseEstimator
from sklearn.feature_selection import SelectorMixin
from sklearn.utils import Tags
from sklearn.utils.validation import check_is_fitted, validate_data

from dtlr.services.modeler.validation import in_fitted_order

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


class ICCFilter(SelectorMixin, BaseEstimator):
    """Keep features whose inter-reader ICC >= threshold; the first step of a family pipeline.

    X is the training cohort's reader-1 table (a DataFrame indexed by patient_id). The
    second reader's table goes to ``fit`` as ``reader2`` (same columns, indexed by patient_id;
    through a Pipeline: ``pipe.fit(X, y, icc__reader2=table)``), so it is data seen at fit
    time, never an estimator parameter. Patients in both tables are the ICC sample. With
    fewer than 3 such patients (or no table, which is also how the filter works on a plain
    array) it keeps every feature and says so in ``note_``. ``transform`` returns a NumPy
    array of the kept columns; a DataFrame's columns are looked up by name, so a test cohort
    may order them differently or carry more.

    NaN and infinite values are accepted (the ``allow_nan`` tag): this step sees the raw
    feature tables, where a feature pyradiomics could not compute is NaN. A feature with a
    non-finite value on the paired patients gets no ICC and is dropped; the next step,
    :class:`~dtlr.services.modeler.selection.FiniteColumns`, deals with the rest.

    Fitted attributes: ``icc_`` (per input feature, NaN where not computed), ``support_``,
    ``n_pairs_``, ``note_``, ``n_features_in_`` and ``feature_names_in_`` (DataFrame input).
    """

    def __init__(self, form: ICCForm = "ICC2", threshold: float = 0.8) -> None:
        self.form = form
        self.threshold = threshold

    def fit(self, X: pd.DataFrame | NDArray[np.float64], y: object = None,
            reader2: pd.DataFrame | None = None) -> ICCFilter:
        """Compute each feature's ICC on the patients both readers segmented."""
        if self.form not in ICC_FORMS:
            raise ValueError(f"ICC form must be one of {', '.join(ICC_FORMS)}, not {self.form!r}")
        if reader2 is not None and not (isinstance(X, pd.DataFrame)
                                        and isinstance(reader2, pd.DataFrame)):
            raise TypeError("ICCFilter pairs the readers' tables by patient: X and reader2 must "
                            "be DataFrames indexed by patient_id")
        values = validate_data(self, X, dtype=np.float64, ensure_all_finite=False)
        p = values.shape[1]
        if reader2 is not None:  # a bootstrap sample repeats patients: each counts once here
            X = X[~X.index.duplicated()]
            reader2 = reader2[~reader2.index.duplicated()]
        pairs = [] if reader2 is None else X.index.intersection(reader2.index)
        self.n_pairs_ = len(pairs)
        if self.n_pairs_ < 3:
            self.icc_ = np.full(p, np.nan)
            self.support_ = np.ones(p, dtype=bool)
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
                      f"{int(self.support_.sum())} of {p} features with "
                      f"ICC >= {self.threshold:g}")
        return self

    def _get_support_mask(self) -> NDArray[np.bool_]:
        check_is_fitted(self)
        return self.support_

    def transform(self, X: pd.DataFrame | NDArray[np.float64]) -> NDArray[np.float64]:
        """The kept columns as a float array (a DataFrame's by name)."""
        check_is_fitted(self)
        X = validate_data(self, in_fitted_order(self, X), dtype=np.float64,
                          ensure_all_finite=False, reset=False)
        return X[:, self.support_]

    def __sklearn_tags__(self) -> Tags:
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        return tags
