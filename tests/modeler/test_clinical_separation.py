"""Clinical regressions where maximum likelihood fails: aliasing, separation, non-convergence.

Firth's penalised likelihood is checked against R's logistf on its own sex2 data (coefficients
from logistf's tests, profile CIs from logistf as firthlogist's tests quote it, penalised LR
chi-squares as easystats/parameters' snapshot of logistf prints them) and on the endometrial
data of Heinze & Schemper (2002), and against its defining property (the Firth-modified score
is zero at the estimate).
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from firthmodels import FirthLogisticRegression
from scipy.stats import chi2

from dtlr.services.modeler.clinical import (
    _FIRTH,
    ClinicalSelector,
    aliased_columns,
    infinite_estimates,
    logistic_fit,
)
from dtlr.services.modeler.report import _Report

# logistf::sex2 (urinary tract infection, 239 women; LogXact 9 manual): each pattern of
# case age oc vic vicl vis dia, with its count.
SEX2 = ("0000010:1 0001000:2 0001010:1 0001100:8 0001110:18 0010000:42 0010010:1 0011000:1 "
        "0011100:5 0011110:6 0101100:2 0101110:4 0110000:14 0110010:1 0111000:1 0111110:2 "
        "1000010:1 1001000:14 1001010:3 1001100:10 1001110:12 1001111:1 1010000:44 1010001:3 "
        "1011000:15 1011001:1 1011010:2 1011100:7 1011110:3 1101000:2 1101010:1 1101011:1 "
        "1101100:1 1101111:1 1110000:5 1111000:3")
SEX2_COLUMNS = ["age", "oc", "vic", "vicl", "vis", "dia"]
# logistf(case ~ age + oc + vic + vicl + vis + dia, sex2): coefficients (logistf's
# tests/testthat/test-basic.R), profile penalised-likelihood 95% CIs, penalised LR chi-square.
SEX2_COEF = [-1.10598130, -0.06881673, 2.26887464, -2.11140816, -0.78831694, 3.09601263]
SEX2_CI = [(-1.9737884, -0.30742514), (-0.9414363, 0.78920202), (1.2730216, 3.43543273),
           (-3.2608611, -1.11773495), (-1.6080879, 0.01518468), (0.7745682, 8.03029352)]
SEX2_CHISQ = [7.51, 0.02, 22.93, 19.10, 3.70, 7.90]

# Endometrial cancer (Heinze & Schemper 2002, 79 patients): neovascularisation (NV) occurs
# only in high-grade (HG) patients, so its maximum-likelihood estimate is infinite.
ENDOMETRIAL = {
    "NV": "0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 1 1 1 1 1 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 "
          "0 0 0 0 0 1 1 1 1 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 1 0 0 0 1 1 0 1 0",
    "PI": "13 16 8 34 20 5 17 10 26 17 8 7 20 10 18 16 18 8 29 12 20 38 22 7 25 15 7 28 11 19 "
          "10 10 18 14 21 11 17 25 16 19 15 33 24 48 12 19 2 22 40 5 0 21 15 29 15 12 3 20 23 "
          "12 22 42 15 13 14 19 12 13 10 12 49 6 5 17 11 21 5 19 33",
    "EH": "1.64 2.26 3.14 2.68 1.28 2.31 1.8 1.68 1.56 2.31 2.01 1.89 3.15 1.23 1.27 1.76 2.0 "
          "2.64 0.88 1.27 1.37 0.97 1.14 0.88 0.91 0.58 0.97 1.5 1.33 2.37 1.82 3.13 1.31 1.92 "
          "1.64 2.01 1.88 1.93 2.11 1.29 1.72 0.75 1.92 1.84 1.11 1.61 1.18 1.44 1.18 0.93 "
          "1.17 1.19 1.06 2.02 2.29 2.33 2.9 1.7 1.41 2.25 1.54 1.97 1.75 2.16 2.57 1.37 3.61 "
          "2.04 2.17 1.69 0.27 1.84 1.3 0.96 1.01 0.98 0.35 1.02 0.85",
    "HG": "0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 1 1 1 1 1 1 1 1 1 1 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 "
          "0 1 1 1 1 1 1 1 1 1 1 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 1 1 1 1 1 1 1 1 1 1",
}
# logistf(HG ~ NV + PI + EH): coefficients and profile CIs as firthlogist's tests quote logistf
# (Heinze & Schemper 2002 print them rounded: NV 2.93, PI -0.03, EH -2.60).
ENDOMETRIAL_COEF = [2.92927330, -0.03475175, -2.60416387]
ENDOMETRIAL_CI = [(0.6097244, 7.85463171), (-0.1244587, 0.04045547), (-4.3651832, -1.23272106)]


def _sex2() -> tuple[pd.DataFrame, np.ndarray]:
    rows = [[int(c) for c in pattern] for pattern, n in
            (item.split(":") for item in SEX2.split()) for _ in range(int(n))]
    data = np.array(rows, dtype=float)
    return pd.DataFrame(data[:, 1:], columns=SEX2_COLUMNS), data[:, 0].astype(int)


def _endometrial() -> tuple[pd.DataFrame, np.ndarray]:
    d = pd.DataFrame({k: np.array(v.split(), dtype=float) for k, v in ENDOMETRIAL.items()})
    return d[["NV", "PI", "EH"]], d["HG"].to_numpy(int)


def _firth_score(X: np.ndarray, y: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """Firth's modified score X'(y - p + h (1/2 - p)), h the hat-matrix diagonal."""
    p = 1 / (1 + np.exp(-X @ beta))
    Xw = X * np.sqrt(p * (1 - p))[:, None]
    h = np.einsum("ij,ij->i", Xw @ np.linalg.inv(Xw.T @ Xw), Xw)
    return X.T @ (y - p + h * (0.5 - p))


def test_firth_reproduces_logistf_on_sex2() -> None:
    X, y = _sex2()
    assert len(y) == 239
    out = logistic_fit(X, y)
    # dia = 1 only in cases: quasi-separation, so the whole regression is Firth's.
    assert (out["method"] == "firth").all()
    assert "dia is +infinite" in out["reason"][0]
    np.testing.assert_allclose(out["coef"], SEX2_COEF, atol=2e-6)
    np.testing.assert_allclose(np.log(out[["ci_low", "ci_high"]]), SEX2_CI, atol=1e-6)
    np.testing.assert_allclose(chi2.isf(out["p"], 1), SEX2_CHISQ, atol=0.005)
    # The estimate solves Firth's penalised score equations (an independent numpy check).
    firth = FirthLogisticRegression(**_FIRTH).fit(X.to_numpy(), y)
    np.testing.assert_allclose(firth.coef_, out["coef"], rtol=1e-10)
    beta = np.r_[firth.intercept_, firth.coef_]
    score = _firth_score(sm.add_constant(X.to_numpy()), y.astype(float), beta)
    assert np.abs(score).max() < 1e-6


def test_firth_reproduces_heinze_schemper_endometrial_where_wald_fails() -> None:
    X, y = _endometrial()
    assert infinite_estimates(X.to_numpy(), y.astype(float)) == {0: 1}  # NV -> +infinity
    # Maximum likelihood "converges" to a huge NV coefficient with Wald p = 0.999.
    ml = sm.GLM(y, sm.add_constant(X.to_numpy()), family=sm.families.Binomial()).fit()
    assert ml.params[1] > 15 and ml.pvalues[1] > 0.99
    out = logistic_fit(X, y)
    assert (out["method"] == "firth").all()
    assert out["reason"][0] == ("separation: the maximum-likelihood estimate of NV is "
                                "+infinite (Konis' linear program)")
    np.testing.assert_allclose(out["coef"], ENDOMETRIAL_COEF, atol=1e-6)
    np.testing.assert_allclose(np.log(out[["ci_low", "ci_high"]]), ENDOMETRIAL_CI, atol=1e-6)
    assert out["p"][0] < 0.01  # NV is the strong predictor it is


def _clinical(n: int, seed: int, effects: dict[str, float]) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    cols = ["age", "sex", "shape", "dural_tail", "peritumoral_edema"]
    X = pd.DataFrame({c: rng.integers(0, 2, n).astype(float) for c in cols})
    X["age"] = rng.normal(56, 11, n)
    logit = sum(w * (X[c] - X[c].mean()) for c, w in effects.items())
    y = (rng.random(n) < 1 / (1 + np.exp(-np.asarray(logit)))).astype(int)
    return X, y


def test_aliased_columns_are_named_with_their_combination() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=50), rng.integers(0, 2, 50).astype(float)
    values = np.column_stack([a, b, 1 - b, a + 2 * b, np.full(50, 3.0), a + 1e-3 * rng.normal(
        size=50)])
    names = ["a", "b", "not_b", "c", "k", "a_noisy"]
    assert aliased_columns(values, names) == {
        2: "aliased with b (not_b = 1 - b)",
        3: "aliased with a, b (c = a + 2*b)",
        4: "constant (k = 3)",
    }


def test_exact_collinearity_drops_the_aliased_column_and_fits_the_others_without_it() -> None:
    X, y = _clinical(400, 2, {"sex": 1.5, "shape": 1.2, "dural_tail": 1.0})
    Xc = X.assign(female=1 - X["sex"], combo=X["shape"] + X["dural_tail"])
    sel = ClinicalSelector().fit(Xc, y)
    t = sel.table().set_index("feature")
    entered = list(t.index[t["multi_method"] != ""])
    assert {"sex", "female", "shape", "dural_tail", "combo"} <= set(entered)
    assert t.loc["female", "multi_method"] == "aliased"
    assert t.loc["female", "multi_reason"] == "aliased with sex (female = 1 - sex)"
    assert t.loc["combo", "multi_reason"] == ("aliased with shape, dural_tail "
                                              "(combo = shape + dural_tail)")
    assert np.isnan(t.loc[["female", "combo"], "multi_p"]).all()
    assert not t.loc[["female", "combo"], "selected"].any()
    assert "female is aliased with sex (female = 1 - sex): left out of the multivariable" \
        in sel.note_
    assert "combo is aliased with shape, dural_tail" in sel.note_
    # The others: exactly the fit without the aliased columns (statsmodels, Wald).
    others = [c for c in entered if c not in ("female", "combo")]
    ref = sm.GLM(y, sm.add_constant(X[others].to_numpy()), family=sm.families.Binomial()).fit()
    np.testing.assert_allclose(t.loc[others, "multi_coef"], ref.params[1:], rtol=1e-8)
    np.testing.assert_allclose(t.loc[others, "multi_p"], ref.pvalues[1:], rtol=1e-6)
    assert (t.loc[others, "multi_method"] == "wald").all()
    assert list(sel.get_feature_names_out()) == ["sex", "shape", "dural_tail"]
    # Univariable fits are unaffected: female is as significant as sex.
    assert t.loc["female", "uni_p"] == pytest.approx(t.loc["sex", "uni_p"], rel=1e-6)


def test_complete_separation_uses_firth_and_selects_the_separating_predictor() -> None:
    X, y = _clinical(200, 4, {"sex": 1.0})
    rng = np.random.default_rng(4)
    # Size above 35 mm in every high-grade tumour, below in every low-grade one.
    X["size_mm"] = np.where(y == 1, rng.uniform(36, 60, len(y)), rng.uniform(10, 34, len(y)))
    assert infinite_estimates(X[["size_mm"]].to_numpy(), y.astype(float)) == {0: 1}
    sel = ClinicalSelector().fit(X, y)
    t = sel.table().set_index("feature")
    assert t.loc["size_mm", "uni_method"] == "firth"
    assert "size_mm is +infinite" in t.loc["size_mm", "uni_reason"]
    assert np.isfinite(t.loc["size_mm", "uni_coef"]) and t.loc["size_mm", "uni_coef"] > 0
    assert t.loc["size_mm", "uni_p"] < 1e-10
    assert t.loc["size_mm", "multi_method"] == "firth"
    assert "size_mm" in sel.get_feature_names_out()
    assert "univariable size_mm: Firth's penalised likelihood" in sel.note_
    assert (t.loc[["age", "shape"], "uni_method"] == "wald").all()  # the others stay ML


def test_quasi_separation_keeps_the_strongest_predictor_that_wald_dropped() -> None:
    X, y = _clinical(300, 2, {"sex": 1.5, "shape": 1.2})
    rng = np.random.default_rng(5)
    # Surrounding invasion seen in 30% of high-grade patients and in no low-grade one.
    X["surrounding_invasion"] = np.where((y == 1) & (rng.random(len(y)) < 0.3), 1.0, 0.0)
    wald = sm.GLM(y, sm.add_constant(X[["surrounding_invasion"]].to_numpy()),
                  family=sm.families.Binomial()).fit()
    assert wald.pvalues[1] > 0.99  # what the Wald test said: the feature was dropped
    sel = ClinicalSelector().fit(X, y)
    t = sel.table().set_index("feature")
    assert t.loc["surrounding_invasion", "uni_method"] == "firth"
    assert t.loc["surrounding_invasion", "uni_p"] < 1e-10
    assert t.loc["surrounding_invasion", "uni_p"] == t["uni_p"].min()  # the strongest
    assert t.loc["surrounding_invasion", "multi_p"] < 1e-10
    assert "surrounding_invasion" in sel.get_feature_names_out()
    assert {"sex", "shape"} <= set(sel.get_feature_names_out())
    # The multivariable model is separated too: all of it is Firth's, and says why.
    entered = t["multi_method"] != ""
    assert (t.loc[entered, "multi_method"] == "firth").all()
    assert "surrounding_invasion is +infinite" in t.loc["sex", "multi_reason"]
    ci = t.loc["surrounding_invasion", ["uni_ci_low", "uni_ci_high"]].to_numpy(float)
    assert 1 < ci[0] < t.loc["surrounding_invasion", "uni_odds_ratio"] < ci[1]


def test_non_convergence_is_detected_and_firth_is_used() -> None:
    X, y = _clinical(300, 2, {"sex": 1.5, "shape": 1.2})
    out = logistic_fit(X[["sex", "shape"]], y, max_iter=2)
    assert (out["method"] == "firth").all()
    assert out["reason"][0] == ("maximum likelihood did not converge: IRLS did not converge "
                                "in 2 iterations")
    ml = logistic_fit(X[["sex", "shape"]], y)
    assert (ml["method"] == "wald").all() and (ml["reason"] == "").all()
    # With 300 patients Firth's estimates are close to maximum likelihood's.
    np.testing.assert_allclose(out["coef"], ml["coef"], rtol=0.05)
    sel = ClinicalSelector(ml_max_iter=2).fit(X, y)
    assert set(sel.univariable_method_) == {"firth"}
    assert "IRLS did not converge in 2 iterations" in sel.note_


def test_one_outcome_class_in_the_complete_cases_gives_no_p_value() -> None:
    X, y = _clinical(60, 1, {})
    X.loc[y == 0, "shape"] = np.nan
    out = logistic_fit(X[["shape"]], y)
    assert out["method"][0] == "failed" and np.isnan(out["p"][0])
    assert "one outcome class" in out["reason"][0]


def test_table_2_marks_firth_and_aliased_cells_and_explains_them() -> None:
    X, y = _clinical(300, 2, {"sex": 1.5, "shape": 1.2})
    rng = np.random.default_rng(5)
    X["surrounding_invasion"] = np.where((y == 1) & (rng.random(len(y)) < 0.3), 1.0, 0.0)
    X["female"] = 1 - X["sex"]
    sel = ClinicalSelector().fit(X, y)
    model = SimpleNamespace(clinical_=SimpleNamespace(named_steps={"select": sel}),
                            model_names=[], families_=[])
    report = _Report(SimpleNamespace(model=model))  # type: ignore[arg-type]
    report.table2()
    html = "\n".join(report.parts)
    assert "aliased (not estimable)" in html
    assert html.count(" †") >= 4  # Firth's OR and p in both regressions
    assert "Firth&#x27;s penalised likelihood" in html
    assert "penalised likelihood-ratio test" in html and "Konis" in html
    assert "female is aliased with sex (female = 1 - sex)" in html
