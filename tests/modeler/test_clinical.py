"""Table 1 tests reproduce the paper's p-values; Table 2 logistic selection and its fallback."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from scipy.stats import ttest_ind

from dtlr.services.modeler.clinical import ClinicalSelector, group_comparison, levels, logistic_fit

# The paper's Table 1 counts (absent/level 0 : present/level 1) with its published p-values.
PAPER_TABLE_1 = {
    ("train", "location"): ((97, 73), (99, 71), "0.913"),
    ("train", "dural_tail"): ((65, 105), (52, 118), "0.171"),
    ("train", "heterogeneous_enhancement"): ((125, 45), (97, 73), "0.002"),
    ("train", "sex"): ((136, 34), (96, 74), "< 0.001"),
    ("test", "dural_tail"): ((18, 33), (19, 32), "1.000"),
    ("test", "location"): ((32, 19), (34, 17), "0.836"),
    ("test", "surrounding_invasion"): ((45, 6), (38, 13), "0.127"),
    ("test", "heterogeneous_enhancement"): ((33, 18), (22, 29), "0.047"),
    ("test", "necrosis_cystic"): ((40, 11), (26, 25), "0.007"),
}


def _from_counts(low: tuple[int, int], high: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    values = np.concatenate([np.repeat([0.0, 1.0], low), np.repeat([0.0, 1.0], high)])
    y = np.concatenate([np.zeros(sum(low), int), np.ones(sum(high), int)])
    return values, y


@pytest.mark.parametrize(("key", "row"), PAPER_TABLE_1.items())
def test_chi_square_with_yates_reproduces_paper_table_1(key: tuple[str, str],
                                                         row: tuple) -> None:
    low, high, published = row
    values, y = _from_counts(low, high)
    out = group_comparison(pd.DataFrame({key[1]: values}), y).iloc[0]
    assert out["low_grade"] == f"{low[0]}:{low[1]}"
    assert out["high_grade"] == f"{high[0]}:{high[1]}"
    assert out["test"] == "chi-square"
    p = out["p"]
    assert ("< 0.001" if p < 0.001 else f"{p:.3f}") == published


def test_numeric_columns_use_welch_t_test_and_mean_sd() -> None:
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 60)
    age = np.where(y == 1, rng.normal(60, 11, 120), rng.normal(55, 9, 120))
    age[3] = np.nan
    out = group_comparison(pd.DataFrame({"age": age}), y).iloc[0]
    low, high = age[(y == 0) & ~np.isnan(age)], age[y == 1]
    assert out["p"] == pytest.approx(ttest_ind(low, high, equal_var=False).pvalue)
    assert out["low_grade"] == f"{low.mean():.2f} ± {low.std(ddof=1):.2f}"
    assert out["n_missing"] == 1
    assert out["label"] == "Age (year)"


def test_level_names_follow_the_manifest_coding() -> None:
    assert levels("sex") == ("female", "male")
    assert levels("location") == ("non skull base", "skull base")
    assert levels("peritumoral_edema") == ("absent", "present")


def test_logistic_fit_equals_statsmodels_logit() -> None:
    rng = np.random.default_rng(1)
    X = pd.DataFrame({"a": rng.normal(size=300), "b": rng.integers(0, 2, 300).astype(float)})
    y = (rng.random(300) < 1 / (1 + np.exp(-(0.8 * X["a"] - 0.5 * X["b"])))).astype(int)
    X.loc[5, "a"] = np.nan
    out = logistic_fit(X, y)
    ok = X["a"].notna().to_numpy()
    ref = sm.Logit(y[ok], sm.add_constant(X[ok].to_numpy())).fit(disp=0)
    params, ci = np.asarray(ref.params), np.asarray(ref.conf_int())
    np.testing.assert_allclose(out["coef"], params[1:], rtol=1e-6)
    np.testing.assert_allclose(out["p"], np.asarray(ref.pvalues)[1:], rtol=1e-5)
    np.testing.assert_allclose(out["odds_ratio"], np.exp(params[1:]), rtol=1e-6)
    np.testing.assert_allclose(out["ci_low"], np.exp(ci[1:, 0]), rtol=1e-5)
    assert (out["n"] == 299).all()


def _clinical(n: int, seed: int, effects: dict[str, float]) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    cols = ["age", "sex", "shape", "dural_tail", "peritumoral_edema"]
    X = pd.DataFrame({c: rng.integers(0, 2, n).astype(float) for c in cols})
    X["age"] = rng.normal(56, 11, n)
    logit = sum(w * (X[c] - X[c].mean()) for c, w in effects.items())
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    return X, y


def test_selector_keeps_multivariable_significant_features() -> None:
    X, y = _clinical(400, 2, {"sex": 1.5, "shape": 1.2})
    sel = ClinicalSelector(p_threshold=0.05).fit(X, y)
    assert list(sel.get_feature_names_out()) == ["sex", "shape"]
    t = sel.table()
    uni_p = t.set_index("feature")["uni_p"]
    entered = t["multi_p"].notna()
    assert set(t.loc[entered, "feature"]) == set(uni_p.index[uni_p < 0.05])
    assert (t.loc[t["selected"], "multi_p"] < 0.05).all()
    np.testing.assert_allclose(t["uni_odds_ratio"], np.exp(t["uni_coef"]))
    assert sel.note_ == ""
    np.testing.assert_array_equal(sel.transform(X), X[["sex", "shape"]].to_numpy())


def test_selector_falls_back_to_the_best_univariable_feature() -> None:
    X, y = _clinical(80, 3, {})
    sel = ClinicalSelector(p_threshold=0.001).fit(X, y)
    best = X.columns[np.nanargmin(sel.univariable_[:, 4])]
    assert list(sel.get_feature_names_out()) == [best]
    assert "kept the best univariable feature" in sel.note_
    constant = X.assign(sex=1.0)
    fit = ClinicalSelector().fit(constant, y)
    assert np.isnan(fit.univariable_[list(X.columns).index("sex")]).all()
