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
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LassoLarsCV, lars_path
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from dtlr.services.modeler.icc import ICCFilter
from dtlr.shared.config import ModelerSettings
from dtlr.shared.stage import InputError


def _names_out(step: BaseEstimator, input_features: object) -> NDArray[np.object_]:
    """Input names (or x0, x1, ...) restricted to a step's ``support_``."""
    n = step.support_.size
    names = (np.asarray([f"x{i}" for i in range(n)], dtype=object) if input_features is None
             else np.asarray(input_features, dtype=object))
    if names.size != n:
        raise ValueError(f"expected {n} input feature names, got {names.size}")
    return names[step.support_]


def univariable_auc(X: NDArray[np.float64], y: NDArray[np.int_]) -> NDArray[np.float64]:
    """Each column's ROC AUC for y (Mann-Whitney U / n1 n0 from mid-ranks), all columns at once."""
    y = np.asarray(y).astype(bool)
    n1, n0 = int(y.sum()), int((~y).sum())
    if n1 == 0 or n0 == 0:
        raise ValueError("univariable AUC needs both classes in y")
    ranks = rankdata(X, axis=0)
    return (ranks[y].sum(axis=0) - n1 * (n1 + 1) / 2) / (n1 * n0)


class FiniteColumns(TransformerMixin, BaseEstimator):
    """Drop columns that are non-finite anywhere or constant in training; impute the rest.

    A feature pyradiomics could not compute for some training patient, or one without variance,
    cannot be z-scored or ranked. Non-finite values met later (test cohorts) take the
    training median of that column, so one bad value never drops a patient.
    """

    def fit(self, X: NDArray[np.float64], y: object = None) -> FiniteColumns:
        """Learn which columns are usable and their training medians."""
        X = np.asarray(X, dtype=np.float64)
        self.n_features_in_ = X.shape[1]
        finite = np.isfinite(X).all(axis=0)
        spread = np.zeros(X.shape[1])
        spread[finite] = np.ptp(X[:, finite], axis=0)
        self.support_ = finite & (spread > 0)
        self.medians_ = np.median(X[:, self.support_], axis=0)
        return self

    def transform(self, X: NDArray[np.float64]) -> NDArray[np.float64]:
        """Kept columns, non-finite values replaced by the training medians."""
        out = np.asarray(X, dtype=np.float64)[:, self.support_]
        bad = ~np.isfinite(out)
        if bad.any():
            out = np.where(bad, self.medians_, out)
        return out

    def get_feature_names_out(self, input_features: object = None) -> NDArray[np.object_]:
        """Names of the kept columns."""
        return _names_out(self, input_features)


class SpearmanFilter(TransformerMixin, BaseEstimator):
    """Among feature pairs with Spearman |rho| > threshold, keep the one better on its own.

    "Better on its own" = larger univariable discrimination |AUC - 0.5| (direction-free: a
    feature lower in high grade is as useful as one higher). Features are visited from the
    most to the least discriminating (ties: column order); a feature is kept unless it is
    correlated above the threshold with a feature already kept. So every dropped feature has
    a better kept partner, and no kept pair exceeds the threshold. The correlation matrix is
    one product of standardised rank columns; the sweep is a loop over boolean rows.
    """

    def __init__(self, threshold: float = 0.9) -> None:
        self.threshold = threshold

    def fit(self, X: NDArray[np.float64], y: NDArray[np.int_]) -> SpearmanFilter:
        """Rank correlations, univariable AUCs and the greedy keep/drop sweep."""
        X = np.asarray(X, dtype=np.float64)
        self.n_features_in_ = X.shape[1]
        self.auc_ = univariable_auc(X, y)
        ranks = rankdata(X, axis=0)
        ranks -= ranks.mean(axis=0)
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

    def transform(self, X: NDArray[np.float64]) -> NDArray[np.float64]:
        """The kept columns."""
        return np.asarray(X, dtype=np.float64)[:, self.support_]

    def get_feature_names_out(self, input_features: object = None) -> NDArray[np.object_]:
        """Names of the kept columns."""
        return _names_out(self, input_features)


class LassoSelector(TransformerMixin, BaseEstimator):
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
    the path is what costs; ``note_`` says so if CV chose the path's last point.
    ``transform`` returns the selected columns; :meth:`linear_score` gives the score
    (intercept + coefficients x features).
    """

    def __init__(self, cv_folds: int = 10, max_steps: int = 100, random_state: int = 0) -> None:
        self.cv_folds = cv_folds
        self.max_steps = max_steps
        self.random_state = random_state

    def fit(self, X: NDArray[np.float64], y: NDArray[np.int_]) -> LassoSelector:
        """Cross-validate lambda, refit on all training rows, keep the path for the report."""
        X = np.asarray(X, dtype=np.float64)
        yf = np.asarray(y, dtype=np.float64)
        self.n_features_in_ = X.shape[1]
        folds = min(self.cv_folds, int(min(yf.sum(), (1 - yf).sum())))
        cv = StratifiedKFold(folds, shuffle=True, random_state=self.random_state)
        with warnings.catch_warnings():
            # LARS warns when collinear features make a step degenerate; it drops the feature.
            warnings.simplefilter("ignore", ConvergenceWarning)
            lasso = LassoLarsCV(cv=cv, max_iter=self.max_steps).fit(X, yf)
            # The whole path on all training rows (the CV refit stops at the chosen lambda).
            self.alphas_, _, self.coef_path_ = lars_path(
                X - X.mean(axis=0), yf - yf.mean(), method="lasso", max_iter=self.max_steps)
        self.cv_alphas_ = lasso.cv_alphas_
        self.mse_path_ = lasso.mse_path_  # (cv_alphas, folds)
        self.cv_alpha_ = float(lasso.alpha_)
        coef, alpha, note = lasso.coef_, float(lasso.alpha_), ""
        if alpha <= self.cv_alphas_.min():
            note = (f"cross-validation chose the end of the path ({self.max_steps} LARS steps): "
                    "more features might fit better; raise modeler.lasso_max_steps")
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

    def transform(self, X: NDArray[np.float64]) -> NDArray[np.float64]:
        """The selected columns."""
        return np.asarray(X, dtype=np.float64)[:, self.support_]

    def linear_score(self, X_selected: NDArray[np.float64]) -> NDArray[np.float64]:
        """intercept + sum(coef x feature) over the selected (z-scored) columns."""
        return self.intercept_ + np.asarray(X_selected, dtype=np.float64) @ self.coef_[
            self.support_]

    def get_feature_names_out(self, input_features: object = None) -> NDArray[np.object_]:
        """Names of the selected columns."""
        return _names_out(self, input_features)


def selection_pipeline(settings: ModelerSettings, seed: int) -> Pipeline:
    """ICC -> finite columns -> z-score -> Spearman -> LASSO, unfitted; reader 2 via fit."""
    return Pipeline([
        ("icc", ICCFilter(form=settings.icc_form, threshold=settings.icc_threshold)),
        ("finite", FiniteColumns()),
        ("zscore", StandardScaler()),
        ("spearman", SpearmanFilter(threshold=settings.spearman_threshold)),
        ("lasso", LassoSelector(cv_folds=settings.lasso_cv_folds,
                                max_steps=settings.lasso_max_steps, random_state=seed)),
    ])
