"""Clinical features: group comparison (paper's Table 1) and logistic selection (Table 2).

The paper compared grades with the chi-square test (categorical) or t test (continuous) and
selected clinical features by univariable then multivariable regression at p < 0.05 (it names
Cox regression; for a binary grade the matching model is logistic regression, reported here as
odds ratios with Wald 95% CIs).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import statsmodels.api as sm
from numpy.typing import NDArray
from scipy.stats import chi2_contingency, ttest_ind
from sklearn.base import BaseEstimator
from sklearn.feature_selection import SelectorMixin
from sklearn.utils import ClassifierTags, Tags
from sklearn.utils.validation import check_is_fitted, validate_data

from dtlr.services.modeler.validation import binary_target, in_fitted_order
from dtlr.shared.manifest import CATEGORIES, NUMERIC, POSITIVE_LEVEL
from dtlr.shared.stage import InputError

_FINDINGS = {
    "heterogeneous_enhancement": "Heterogeneous enhancement",
    "necrosis_cystic": "Necrosis or cystic degeneration",
    "dural_tail": "Dural tail",
    "indistinct_margin": "Indistinct margin",
    "peritumoral_edema": "Peritumoral edema",
    "surrounding_invasion": "Surrounding invasion",
}
DISPLAY_NAMES = {
    "age": "Age (year)",
    "size_mm": "Size (mm)",
    "sex": "Sex",
    "location": "Location",
    "shape": "Shape",
    **_FINDINGS,
}


def levels(column: str) -> tuple[str, str]:
    """Names of a 0/1 clinical column's levels (0 first), e.g. sex -> (female, male)."""
    if column in POSITIVE_LEVEL:
        positive = POSITIVE_LEVEL[column]
        negative = next(c for c in CATEGORIES[column] if c != positive)
        return negative.replace("_", " "), positive.replace("_", " ")
    return "absent", "present"


def display_name(column: str, with_levels: bool = False) -> str:
    """A clinical column as the paper's tables name it, optionally with its levels."""
    name = DISPLAY_NAMES.get(column, column.replace("_", " ").capitalize())
    if with_levels and column not in NUMERIC:
        return f"{name} ({':'.join(levels(column))})"
    return name


def group_comparison(clinical: pd.DataFrame, y: NDArray[np.int_]) -> pd.DataFrame:
    """Low vs high grade per clinical column: mean ± SD with Welch's t test for numbers,
    counts with the chi-square test (Yates-corrected for 2x2, as R's chisq.test) otherwise.

    Rows in the paper's order: continuous columns first, then the categorical ones.
    """
    y = np.asarray(y).astype(int)
    rows = []
    ordered = sorted(clinical.columns, key=lambda c: c not in NUMERIC)
    for col in ordered:
        v = clinical[col].to_numpy(np.float64)
        ok = ~np.isnan(v)
        low, high = v[ok & (y == 0)], v[ok & (y == 1)]
        if col in NUMERIC:
            test = "t test (Welch)"
            summary = [f"{g.mean():.2f} ± {g.std(ddof=1):.2f}" if g.size > 1 else "-"
                       for g in (low, high)]
            p = float(ttest_ind(low, high, equal_var=False).pvalue) if min(
                low.size, high.size) > 1 else np.nan
        else:
            test = "chi-square"
            table = np.array([[np.sum(g == 0), np.sum(g == 1)] for g in (low, high)])
            summary = [f"{a}:{b}" for a, b in table]
            try:
                p = float(chi2_contingency(table, correction=True).pvalue)
            except ValueError:  # a level absent in both groups: no test
                p = np.nan
        rows.append({"variable": col, "label": display_name(col, with_levels=True),
                     "low_grade": summary[0], "high_grade": summary[1], "test": test, "p": p,
                     "n_missing": int((~ok).sum())})
    return pd.DataFrame(rows)


def logistic_fit(X: pd.DataFrame, y: NDArray[np.int_]) -> pd.DataFrame:
    """Maximum-likelihood logistic regression (complete cases): coef, OR, Wald 95% CI, p."""
    data = X.assign(_y=np.asarray(y, dtype=np.float64)).dropna()
    design = sm.add_constant(data[list(X.columns)].to_numpy(np.float64), has_constant="add")
    with warnings.catch_warnings():
        # Quasi-separation gives huge, flagged coefficients; the p-values then say it.
        warnings.simplefilter("ignore")
        fit = sm.GLM(data["_y"].to_numpy(), design, family=sm.families.Binomial()).fit()
    coef = np.asarray(fit.params)[1:]
    ci = np.asarray(fit.conf_int())[1:]
    with np.errstate(over="ignore"):
        return pd.DataFrame({
            "feature": list(X.columns),
            "coef": coef,
            "odds_ratio": np.exp(coef),
            "ci_low": np.exp(ci[:, 0]),
            "ci_high": np.exp(ci[:, 1]),
            "p": np.asarray(fit.pvalues)[1:],
            "n": len(data),
        })


class ClinicalSelector(SelectorMixin, BaseEstimator):
    """Univariable then multivariable logistic regression at p < threshold (paper's Table 2).

    Features with univariable p < threshold enter one multivariable model; those with
    multivariable p < threshold are selected. If none survives, the feature with the smallest
    univariable p is kept and ``note_`` says so. ``univariable_`` / ``multivariable_`` hold
    (coef, OR, CI low, CI high, p) per input column (NaN where a column did not enter).

    X is a DataFrame of named clinical columns (an array's columns are named x0, x1, ...; a
    DataFrame's are looked up by name in ``transform``). Missing values (NaN) are accepted
    (the ``allow_nan`` tag): each regression uses its complete cases, and ``transform`` keeps
    them for the imputer. y is the binary grade (two classes, the larger one is "high").
    """

    def __init__(self, p_threshold: float = 0.05) -> None:
        self.p_threshold = p_threshold

    def fit(self, X: pd.DataFrame | NDArray[np.float64], y: NDArray[np.int_],
            ) -> ClinicalSelector:
        """Run both regressions on the training cohort and choose the features."""
        values, y = validate_data(self, X, y, dtype=np.float64, ensure_all_finite="allow-nan")
        y = binary_target(y)
        names = self._input_names()
        X = pd.DataFrame(values, columns=names)
        self.univariable_ = np.full((len(names), 5), np.nan)
        self.multivariable_ = np.full((len(names), 5), np.nan)
        cols = ["coef", "odds_ratio", "ci_low", "ci_high", "p"]
        usable = [j for j, c in enumerate(names) if X[c].dropna().nunique() > 1]
        for j in usable:
            self.univariable_[j] = logistic_fit(X[[names[j]]], y)[cols].to_numpy()[0]
        uni_p = np.where(np.isnan(self.univariable_[:, 4]), np.inf, self.univariable_[:, 4])
        if not np.isfinite(uni_p).any():
            raise InputError("no clinical column varies in the training cohort")
        entered = np.flatnonzero(uni_p < self.p_threshold)
        notes = []
        if entered.size:
            multi = logistic_fit(X[[names[j] for j in entered]], y)[cols].to_numpy()
            self.multivariable_[entered] = multi
            selected = entered[multi[:, 4] < self.p_threshold]
        else:
            selected = entered
            notes.append(f"no clinical feature had univariable p < {self.p_threshold:g}")
        if selected.size == 0:
            best = int(np.argmin(uni_p))
            selected = np.array([best])
            if entered.size:
                notes.append(f"no clinical feature had multivariable p < {self.p_threshold:g}")
            notes.append(f"kept the best univariable feature, {names[best]} "
                         f"(p = {uni_p[best]:.3g})")
        self.support_ = np.isin(np.arange(len(names)), selected)
        self.note_ = "; ".join(notes)
        return self

    def _input_names(self) -> list[str]:
        """The input columns' names: a DataFrame's, or x0, x1, ... for an array."""
        if hasattr(self, "feature_names_in_"):
            return [str(n) for n in self.feature_names_in_]
        return [f"x{j}" for j in range(self.n_features_in_)]

    def _get_support_mask(self) -> NDArray[np.bool_]:
        check_is_fitted(self)
        return self.support_

    def transform(self, X: pd.DataFrame | NDArray[np.float64]) -> NDArray[np.float64]:
        """The selected columns (natural units; NaN kept for the imputer)."""
        check_is_fitted(self)
        X = validate_data(self, in_fitted_order(self, X), dtype=np.float64,
                          ensure_all_finite="allow-nan", reset=False)
        return X[:, self.support_]

    def __sklearn_tags__(self) -> Tags:
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        tags.target_tags.required = True
        tags.classifier_tags = ClassifierTags(multi_class=False)  # binary grade (see selection)
        return tags

    def table(self) -> pd.DataFrame:
        """Table 2 as a DataFrame: univariable and multivariable OR (95% CI) and p per feature."""
        check_is_fitted(self)
        cols = ["coef", "odds_ratio", "ci_low", "ci_high", "p"]
        uni = pd.DataFrame(self.univariable_, columns=[f"uni_{c}" for c in cols])
        multi = pd.DataFrame(self.multivariable_, columns=[f"multi_{c}" for c in cols])
        out = pd.concat([uni, multi], axis=1)
        out.insert(0, "feature", self._input_names())
        out["selected"] = self.support_
        return out
