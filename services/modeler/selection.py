"""Feature selection steps for one feature family (radiomics or DTL), as sklearn transformers.

A family's pipeline is ICC filter -> finite/non-constant columns -> z-score -> Spearman
redundancy filter -> LASSO (see :func:`selection_pipeline`). Every step learns only in
``fit``, so ``Pipeline.fit(training)`` then ``transform(test)`` is the leakage-safe protocol.
"""

from __future__ import annotations

import warnings

import numpy as np
from numpy.typing import NDArray
from scipy.stats import rankdata
from sklearn.base import BaseEstimator
from sklearn.exceptions import ConvergenceWarning
from sklearn.feature_selection import SelectorMixin
from sklearn.linear_model import LassoLarsCV, lars_path
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils import ClassifierTags, Tags, check_array
from sklearn.utils.validation import check_is_fitted, validate_data

from dtlr.services.modeler.icc import ICCFilter, ICCForm
from dtlr.services.modeler.validation import binary_target
from dtlr.shared.stage import InputError


def univariable_auc(X: NDArray[np.float64], y: NDArray[np.int_]) -> NDArray[np.float64]:
    """Each column's ROC AUC for y (Mann-Whitney U / n1 n0 from mid-ranks), all columns at once."""
    y = np.asarray(y).astype(bool)
    n1, n0 = int(y.sum()), int((~y).sum())
    if n1 == 0 or n0 == 0:
        raise ValueError("univariable AUC needs both classes in y")
    ranks = rankdata(X, axis=0)
    return (ranks[y].sum(axis=0) - n1 * (n1 + 1) / 2) / (n1 * n0)


class FiniteColumns(SelectorMixin, BaseEstimator):
    """Drop columns that are non-finite anywhere or constant in training; impute the rest.

    A feature pyradiomics could not compute for some training patient, or one without variance,
    cannot be z-scored or ranked. Non-finite values met later (test cohorts) take the
    training median of that column, so one bad value never drops a patient. This is the step
    that accepts NaN and infinite values (the ``allow_nan`` tag); every later step gets
    finite columns only. Fitted: ``support_``, ``medians_`` (of the kept columns).
    """

    def fit(self, X: NDArray[np.float64], y: object = None) -> FiniteColumns:
        """Learn which columns are usable and their training medians."""
        X = validate_data(self, X, dtype=np.float64, ensure_all_finite=False)
        finite = np.isfinite(X).all(axis=0)
        spread = np.zeros(X.shape[1])
        spread[finite] = np.ptp(X[:, finite], axis=0)
        self.support_ = finite & (spread > 0)
        self.medians_ = np.median(X[:, self.support_], axis=0)
        return self

    def _get_support_mask(self) -> NDArray[np.bool_]:
        check_is_fitted(self)
        return self.support_

    def transform(self, X: NDArray[np.float64]) -> NDArray[np.float64]:
        """Kept columns, non-finite values replaced by the training medians."""
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float64, ensure_all_finite=False, reset=False)
        out = X[:, self.support_]
        bad = ~np.isfinite(out)
        if bad.any():
            out = np.where(bad, self.medians_, out)
        return out

    def __sklearn_tags__(self) -> Tags:
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        return tags


def _binary_label_tags(tags: Tags) -> Tags:
    """Tags of a selector supervised by the binary grade: y required, two classes only.

    sklearn has no target tag for "binary labels" outside classifier tags; a supervised
    selector carries them as RFE does (the common checks then give it two-class targets).
    """
    tags.target_tags.required = True
    tags.classifier_tags = ClassifierTags(multi_class=False)
    return tags


class SpearmanFilter(SelectorMixin, BaseEstimator):
    """Among feature pairs with Spearman |rho| > threshold, keep the one better on its own.

    "Better on its own" = larger univariable discrimination |AUC - 0.5| (direction-free: a
    feature lower in high grade is as useful as one higher). Features are visited from the
    most to the least discriminating (ties: column order); a feature is kept unless it is
    correlated above the threshold with a feature already kept. So every dropped feature has
    a better kept partner, and no kept pair exceeds the threshold. The correlation matrix is
    one product of standardised rank columns; the sweep is a loop over boolean rows.
    y is the binary grade (two classes, the larger one is "high"); X must be finite.
    Fitted: ``auc_`` (univariable AUC per feature), ``support_``, ``dropped_for_`` (the kept
    partner of each dropped feature, -1 for kept ones).
    """

    def __init__(self, threshold: float = 0.9) -> None:
        self.threshold = threshold

    def fit(self, X: NDArray[np.float64], y: NDArray[np.int_]) -> SpearmanFilter:
        """Rank correlations, univariable AUCs and the greedy keep/drop sweep."""
        X, y = validate_data(self, X, y, dtype=np.float64)
        self.auc_ = univariable_auc(X, binary_target(y))
        ranks = rankdata(X, axis=0)
        ranks -= ranks.mean(axis=0)
        with np.errstate(divide="ignore", invalid="ignore"):  # constant column: no correlation
            ranks /= np.sqrt((ranks**2).sum(axis=0))
        high = np.abs(ranks.T @ ranks) > self.threshold
        np.fill_diagonal(high, False)
        order = np.argsort(-np.abs(self.auc_ - 0.5), kind="stable")
        keep = np.zeros(X.shape[1], dtype=bool)
        dropped_for = np.full(X.shape[1], -1)
        for j in order:
            if dropped_for[j] >= 0:
                continue
            keep[j] = True
            newly = high[j] & ~keep & (dropped_for < 0)
            dropped_for[newly] = j
        self.support_ = keep
        self.dropped_for_ = dropped_for
        return self

    def _get_support_mask(self) -> NDArray[np.bool_]:
        check_is_fitted(self)
        return self.support_

    def __sklearn_tags__(self) -> Tags:
        return _binary_label_tags(super().__sklearn_tags__())


class LassoSelector(SelectorMixin, BaseEstimator):
    """LASSO (least squares on the 0/1 label) with cross-validated lambda, solved by LARS.

    Why linear LASSO rather than L1 logistic regression: the paper's lambdas (0.0193, 0.0687)
    are on this scale (its OnekeyAI platform uses sklearn's LassoCV on z-scored features), and
    the score it defines only enters the nomogram's logistic regression, which recalibrates it.
    Why LARS (sklearn's LassoLarsCV, Efron et al. 2004) rather than coordinate descent: it
    solves the same problem with the same lambda, but computes the exact path in at most
    n-patients steps, which with hundreds to thousands of correlated features is 5-60x faster
    than LassoCV (which also stops at ``max_iter`` on the path's tail); a test checks its
    solution against coordinate descent at the chosen lambda. ``alpha_`` is the paper's lambda.
    Folds are stratified and seeded. If the CV lambda zeroes every coefficient, the largest
    lambda on the path that keeps any feature is used instead and ``note_`` says so. The path
    stops after ``max_steps`` LARS steps (about as many features entered), like glmnet's
    ``dfmax``: selections are far smaller (the paper kept 32 and 28 features), and the tail of
    the path is what costs; ``note_`` says so if CV chose the path's last point. The cap
    applies to the cross-validation paths; the refit on all training rows may need more steps
    to reach the CV lambda, and then takes them (``note_`` says how many), so ``alpha_`` is
    always the lambda at which ``coef_`` solves the LASSO, never a lambda the capped path did
    not reach.
    ``transform`` returns the selected columns; :meth:`linear_score` gives the score
    (intercept + coefficients x features). y is the binary grade (two classes, the larger one
    is "high"); X must be finite. Fitted: ``alpha_``, ``cv_alpha_``, ``coef_``,
    ``intercept_``, ``support_``, ``note_``, the path (``alphas_``, ``coef_path_``) and the CV
    curve (``cv_alphas_``, ``mse_path_``) for the report.
    """

    def __init__(self, cv_folds: int = 10, max_steps: int = 100, random_state: int = 0) -> None:
        self.cv_folds = cv_folds
        self.max_steps = max_steps
        self.random_state = random_state

    def fit(self, X: NDArray[np.float64], y: NDArray[np.int_]) -> LassoSelector:
        """Cross-validate lambda, refit on all training rows, keep the path for the report."""
        X, y = validate_data(self, X, y, dtype=np.float64)
        yf = binary_target(y).astype(np.float64)
        minority = int(min(yf.sum(), (1 - yf).sum()))
        if minority < 2:
            raise ValueError(f"LASSO cross-validation needs at least 2 patients of each class, "
                             f"got {minority}")
        folds = min(self.cv_folds, minority)
        cv = StratifiedKFold(folds, shuffle=True, random_state=self.random_state)
        Xc, yc = X - X.mean(axis=0), yf - yf.mean()
        with warnings.catch_warnings():
            # LARS warns when collinear features make a step degenerate; it drops the feature.
            warnings.simplefilter("ignore", ConvergenceWarning)
            lasso = LassoLarsCV(cv=cv, max_iter=self.max_steps).fit(X, yf)
            # The path on all training rows, for the report and the coefficients.
            self.alphas_, _, self.coef_path_ = lars_path(Xc, yc, method="lasso",
                                                         max_iter=self.max_steps)
        self.cv_alphas_ = lasso.cv_alphas_
        self.mse_path_ = lasso.mse_path_  # (cv_alphas, folds)
        self.cv_alpha_ = float(lasso.alpha_)
        coef, alpha, note = self._refit(Xc, yc, self.cv_alpha_)
        if self.cv_alpha_ <= self.cv_alphas_.min():
            note = "; ".join(filter(None, [
                note, f"cross-validation chose the end of the path ({self.max_steps} LARS "
                "steps): more features might fit better; raise modeler.lasso_max_steps"]))
        if not np.any(coef != 0):
            nonzero = np.flatnonzero((self.coef_path_ != 0).any(axis=0))
            if nonzero.size == 0:
                raise InputError("LASSO kept no feature at any lambda: the family carries no "
                                 "signal about the label in the training cohort")
            i = nonzero[np.argmax(self.alphas_[nonzero])]
            coef, alpha = self.coef_path_[:, i], float(self.alphas_[i])
            note = (f"the cross-validated lambda ({self.cv_alpha_:.4g}) kept no feature; used "
                    f"the largest lambda on the path that keeps any ({alpha:.4g})")
        self.alpha_ = alpha
        self.coef_ = coef
        self.intercept_ = float(yf.mean() - X.mean(axis=0) @ coef)
        self.support_ = coef != 0
        self.note_ = note
        return self

    def _refit(self, Xc: NDArray[np.float64], yc: NDArray[np.float64], alpha: float,
               ) -> tuple[NDArray[np.float64], float, str]:
        """The LASSO solution on all training rows at ``alpha``: coefficients, the lambda
        they solve the LASSO at, and a note when the step cap had to be lifted.

        LARS ends its path exactly at ``alpha`` (interpolating the last step), unless the
        step cap stops it first: the full-data path can need more steps than the folds'
        paths did. Then the cap is doubled until the path reaches ``alpha`` (or ends: the
        active set is saturated), so the reported lambda is always the coefficients' own.
        """
        cap, tol = self.max_steps, float(np.finfo(np.float32).eps)  # lars_path's tolerance
        while True:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                alphas, _, path = lars_path(Xc, yc, method="lasso", alpha_min=alpha,
                                            max_iter=cap)
            steps = len(alphas) - 1
            if alphas[-1] <= alpha + tol or steps < cap or cap > 8 * max(Xc.shape):
                break
            cap *= 2
        note = ""
        if steps > self.max_steps:
            note = (f"the LARS path on all training rows needed {steps} steps to reach the "
                    f"cross-validated lambda (modeler.lasso_max_steps = {self.max_steps}): "
                    "the refit path was extended to it")
            self.alphas_, self.coef_path_ = alphas, path  # the report's path reaches it too
        if alphas[-1] > alpha + tol:
            note = "; ".join(filter(None, [
                note, f"the LARS path on all training rows ends at lambda {alphas[-1]:.4g} "
                f"(after {steps} steps), above the cross-validated lambda ({alpha:.4g}): "
                "used the path's end"]))
        return path[:, -1], float(alphas[-1]), note

    def _get_support_mask(self) -> NDArray[np.bool_]:
        check_is_fitted(self)
        return self.support_

    def linear_score(self, X_selected: NDArray[np.float64]) -> NDArray[np.float64]:
        """intercept + sum(coef x feature) over the selected (z-scored) columns."""
        check_is_fitted(self)
        X_selected = check_array(X_selected, dtype=np.float64)
        n = int(self.support_.sum())
        if X_selected.shape[1] != n:
            raise ValueError(f"X_selected has {X_selected.shape[1]} columns, but LassoSelector "
                             f"selected {n} features (pass the output of transform)")
        return self.intercept_ + X_selected @ self.coef_[self.support_]

    def __sklearn_tags__(self) -> Tags:
        return _binary_label_tags(super().__sklearn_tags__())


def selection_pipeline(*, icc_form: ICCForm = "ICC2", icc_threshold: float = 0.8,
                       spearman_threshold: float = 0.9, lasso_cv_folds: int = 10,
                       lasso_max_steps: int = 100, random_state: int = 0) -> Pipeline:
    """ICC -> finite columns -> z-score -> Spearman -> LASSO, unfitted; reader 2 via fit."""
    return Pipeline([
        ("icc", ICCFilter(form=icc_form, threshold=icc_threshold)),
        ("finite", FiniteColumns()),
        ("zscore", StandardScaler()),
        ("spearman", SpearmanFilter(threshold=spearman_threshold)),
        ("lasso", LassoSelector(cv_folds=lasso_cv_folds, max_steps=lasso_max_steps,
                                random_state=random_state)),
    ])
