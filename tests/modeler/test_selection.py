"""Selection steps: finite columns, Spearman redundancy filter, LASSO, the family pipeline."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr
from sklearn.linear_model import Lasso, LassoLarsCV, lars_path
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold

from dtlr.services.modeler.selection import (
    FiniteColumns,
    LassoSelector,
    SpearmanFilter,
    selection_pipeline,
    univariable_auc,
)


def _data(n: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Columns: 0-2 carry the label (decreasing), 3 = near-copy of 0, 4 = near-copy of 1
    (negated), 5-11 noise; ties in column 5."""
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.repeat([0, 1], n // 2))
    signal = np.column_stack([1.2 * y, 0.8 * y, 0.5 * y]) + rng.normal(size=(n, 3))
    copies = np.column_stack([signal[:, 0] + 0.1 * rng.normal(size=n),
                              -signal[:, 1] + 0.1 * rng.normal(size=n)])
    noise = rng.normal(size=(n, 7))
    noise[:, 0] = np.round(noise[:, 0])
    return np.column_stack([signal, copies, noise]), y


def test_univariable_auc_matches_sklearn_per_column() -> None:
    X, y = _data()
    expected = [roc_auc_score(y, X[:, j]) for j in range(X.shape[1])]
    np.testing.assert_allclose(univariable_auc(X, y), expected, rtol=1e-12)


def test_finite_columns_drops_unusable_and_imputes_training_medians() -> None:
    X = np.array([[1.0, 5.0, np.nan, 2.0], [2.0, 5.0, 1.0, 4.0], [3.0, 5.0, 2.0, 9.0]])
    f = FiniteColumns().fit(X)
    np.testing.assert_array_equal(f.support_, [True, False, False, True])
    np.testing.assert_array_equal(f.medians_, [2.0, 4.0])
    test = np.array([[np.nan, 1.0, 1.0, np.inf]])
    np.testing.assert_array_equal(f.transform(test), [[2.0, 4.0]])
    assert list(f.get_feature_names_out(["a", "b", "c", "d"])) == ["a", "d"]


def test_spearman_keeps_the_better_member_of_each_correlated_pair() -> None:
    X, y = _data()
    f = SpearmanFilter(threshold=0.9).fit(X, y)
    rho = spearmanr(X).statistic
    assert abs(rho[0, 3]) > 0.9 and abs(rho[1, 4]) > 0.9
    strength = np.abs(univariable_auc(X, y) - 0.5)
    for a, b in ((0, 3), (1, 4)):  # exactly one of each near-copy pair: the stronger one
        assert f.support_[a] != f.support_[b]
        assert f.support_[a] == (strength[a] >= strength[b])
    assert f.support_[[2, 5, 6, 7, 8, 9, 10, 11]].all()
    for dropped in np.flatnonzero(~f.support_):
        partner = f.dropped_for_[dropped]
        assert f.support_[partner]
        assert abs(rho[dropped, partner]) > 0.9
        assert strength[partner] >= strength[dropped]
    kept = rho[np.ix_(f.support_, f.support_)]
    assert (np.abs(kept[~np.eye(kept.shape[0], dtype=bool)]) <= 0.9).all()


def test_spearman_on_clustered_features_leaves_no_kept_pair_above_threshold() -> None:
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 150)
    base = rng.normal(size=(150, 10)) + y[:, None] * 0.5
    X = base[:, rng.integers(0, 10, 80)] + rng.normal(size=(150, 80)) * rng.uniform(0.01, 0.6, 80)
    f = SpearmanFilter(threshold=0.9).fit(X, y)
    rho = np.abs(spearmanr(X).statistic)
    kept = rho[np.ix_(f.support_, f.support_)]
    np.fill_diagonal(kept, 0)
    assert kept.max() <= 0.9
    # Every dropped feature has a kept partner above the threshold.
    dropped = np.flatnonzero(~f.support_)
    assert dropped.size > 10
    assert all(rho[d, f.dropped_for_[d]] > 0.9 for d in dropped)
    np.testing.assert_array_equal(f.transform(X), X[:, f.support_])


def test_lasso_selector_solves_the_lasso_at_its_cross_validated_lambda() -> None:
    X, y = _data(n=240, seed=2)
    X = np.delete(X, [3, 4], axis=1)  # no near-copies: the signal columns are 0-2
    X = (X - X.mean(axis=0)) / X.std(axis=0)
    sel = LassoSelector(cv_folds=5, random_state=7).fit(X, y)
    # lambda minimises the seeded, stratified CV error along the path ...
    ref = LassoLarsCV(cv=StratifiedKFold(5, shuffle=True, random_state=7)).fit(X, y.astype(float))
    assert sel.alpha_ == ref.alpha_
    assert sel.alpha_ == sel.cv_alphas_[np.argmin(sel.mse_path_.mean(axis=1))]
    # ... and the coefficients are the LASSO solution there, as coordinate descent finds it.
    cd = Lasso(alpha=sel.alpha_, tol=1e-12, max_iter=100_000).fit(X, y.astype(float))
    np.testing.assert_allclose(sel.coef_, cd.coef_, atol=1e-8)
    np.testing.assert_allclose(sel.linear_score(sel.transform(X)), cd.predict(X), atol=1e-8)
    assert sel.support_[:3].all()  # the three signal columns
    assert sel.coef_path_.shape == (X.shape[1], len(sel.alphas_))
    assert sel.mse_path_.shape == (len(sel.cv_alphas_), 5)
    assert sel.note_ == ""
    again = LassoSelector(cv_folds=5, random_state=7).fit(X, y)
    np.testing.assert_array_equal(again.coef_, sel.coef_)


def test_lasso_falls_back_to_the_largest_lambda_keeping_a_feature() -> None:
    rng = np.random.default_rng(7)  # pure noise: CV prefers lambda_max, which keeps nothing
    y = rng.permutation(np.repeat([0, 1], 40))
    X = rng.normal(size=(80, 30))
    sel = LassoSelector(cv_folds=5, random_state=0).fit(X, y)
    assert sel.cv_alpha_ >= sel.alphas_[0]  # at or above lambda_max: no feature
    assert sel.alpha_ == sel.alphas_[1]
    assert sel.support_.sum() >= 1
    assert "kept no feature" in sel.note_
    np.testing.assert_allclose(sel.coef_, sel.coef_path_[:, 1])
    assert sel.intercept_ == pytest.approx(y.mean() - X.mean(axis=0) @ sel.coef_)


def test_selection_pipeline_on_dataframes_names_the_selected_features() -> None:
    X, y = _data(n=200, seed=4)
    names = [f"f{j}" for j in range(X.shape[1])]
    frame = pd.DataFrame(X * 100 + 7, columns=names, index=[f"P{i}" for i in range(200)])
    reader2 = frame.iloc[:20] + np.random.default_rng(0).normal(size=(20, X.shape[1]))
    pipe = selection_pipeline(lasso_cv_folds=5, random_state=1)
    out = pipe.fit_transform(frame, y, icc__reader2=reader2)
    selected = list(pipe.get_feature_names_out())
    assert out.shape == (200, len(selected))
    # One member of each near-copy pair survives Spearman, and LASSO keeps the signal.
    assert len({"f0", "f3"} & set(selected)) == 1
    assert len({"f1", "f4"} & set(selected)) == 1
    z = pipe.named_steps["zscore"]
    np.testing.assert_allclose(z.mean_, frame.to_numpy()[:, pipe.named_steps["icc"].support_]
                               .mean(axis=0))


def _kkt_gap(X: np.ndarray, y: np.ndarray, coef: np.ndarray, intercept: float,
             alpha: float) -> tuple[float, float]:
    """How far coef is from the LASSO solution at alpha (sklearn's scale, 1/(2n) loss):
    max |X^T r|/n - alpha off the support, and max |X^T r/n - alpha sign(b)| on it."""
    grad = X.T @ (y - X @ coef - intercept) / len(y)
    on = coef != 0
    off_gap = float(np.max(np.abs(grad[~on])) - alpha) if (~on).any() else -np.inf
    on_gap = float(np.max(np.abs(grad[on] - alpha * np.sign(coef[on]))))
    return off_gap, on_gap


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lasso_lambda_is_the_one_whose_coefficients_are_used_when_the_step_cap_bites(
        seed: int) -> None:
    # n = 340, p = 600, 200 weak true effects: CV wants more than the 100-step cap gives the
    # full-data path (the folds' paths, on fewer rows, reach further in 100 steps).
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(340, 600))
    w = np.zeros(600)
    w[:200] = rng.normal(0, 0.3, 200)
    y = (X @ w + rng.normal(size=340) > 0).astype(int)
    X = (X - X.mean(axis=0)) / X.std(axis=0)
    sel = LassoSelector(cv_folds=5, max_steps=100, random_state=0).fit(X, y)
    off_gap, on_gap = _kkt_gap(X, y.astype(float), sel.coef_, sel.intercept_, sel.alpha_)
    assert off_gap <= 1e-9 and on_gap <= 1e-9  # coef_ is the LASSO solution at alpha_ ...
    assert sel.alpha_ == sel.cv_alpha_  # ... and alpha_ is the cross-validated lambda
    capped = lars_path(X, y - y.mean(), method="lasso", max_iter=100)[0]
    assert capped[-1] > sel.cv_alpha_  # the cap bit: 100 steps stop above the CV lambda
    assert "needed" in sel.note_ and "steps to reach the cross-validated lambda" in sel.note_
    assert sel.alphas_[-1] == sel.alpha_  # the reported path reaches the chosen lambda
    # The capped refit's coefficients (what was used before) solve the LASSO at another lambda.
    assert _kkt_gap(X, y.astype(float), sel.coef_path_[:, 100], sel.intercept_,
                    sel.alpha_)[1] > 1e-4
