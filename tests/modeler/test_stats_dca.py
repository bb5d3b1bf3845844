"""Decision curves against numbers published by R dcurves and Python dcurves' R benchmarks.

Sources (not re-derived here):
- R dcurves, tests/testthat/test-dca.R (ddsjoberg/dcurves): net benefit at threshold 0.25 for
  treat all / treat none / model, printed to 7-8 decimals, and the famhistory run at threshold 0.
- Python dcurves, tests/benchmark_data/r_case3_results.csv (MSKCC-Epi-Bio/dcurves, produced with
  R): df_cancer_dx, cancer ~ marker, as_probability, harm 0.0333, thresholds 0..0.35,
  net_intervention_avoided per patient (nper = 1).
- Python dcurves, tests/benchmark_data/r_simple_binary_dca_result_df.csv (R output):
  df_binary, cancer ~ age with as_probability, thresholds seq(0, 0.99, 0.01).
- Python dcurves, tests/benchmark_data/dca_tut_bin_int_marker_risks.csv (copied to shared/data):
  R's logistic risks for marker on df_cancer_dx.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dtlr.shared.stats import decision_curve, risk_from_score

DCURVES = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "dcurves"


@pytest.fixture(scope="module")
def df_binary() -> pd.DataFrame:
    return pd.read_csv(DCURVES / "df_binary.csv")


@pytest.fixture(scope="module")
def df_cancer_dx() -> pd.DataFrame:
    return pd.read_csv(DCURVES / "df_cancer_dx.csv")


def _nb_all_none_model(curve: pd.DataFrame) -> list[float]:
    """The (treat all, treat none, model) net benefits of a one-threshold curve, in R's order."""
    row = curve.iloc[0]
    return [row["treat_all"], row["treat_none"], row["net_benefit"]]


def test_r_dcurves_binary_model(df_binary: pd.DataFrame) -> None:
    curve = decision_curve(df_binary["cancer"], df_binary["cancerpredmarker"], [0.25])
    assert _nb_all_none_model(curve) == pytest.approx([-0.1466667, 0.0, 0.0640000], abs=1e-7)


def test_r_dcurves_binary_as_probability(df_binary: pd.DataFrame) -> None:
    risk = risk_from_score(df_binary["cancer"], df_binary["age"])
    curve = decision_curve(df_binary["cancer"], risk, [0.25])
    assert _nb_all_none_model(curve) == pytest.approx([-0.14666667, 0.0, 0.02444444], abs=1e-8)


def test_r_dcurves_threshold_zero_never_treats_zero_risk(df_binary: pd.DataFrame) -> None:
    # famhistory is 0/1: dcurves moves 0 to -eps, so those patients are not treated at pt = 0.
    curve = decision_curve(df_binary["cancer"], df_binary["famhistory"], [0.0])
    assert _nb_all_none_model(curve) == pytest.approx([0.140, 0.0, 0.032], abs=1e-15)


def test_r_dcurves_case_control_prevalence() -> None:
    data = pd.read_csv(DCURVES / "df_case_control.csv")
    curve = decision_curve(data["casecontrol"], data["cancerpredmarker"], [0.25], prevalence=0.15)
    assert _nb_all_none_model(curve) == pytest.approx([-0.13333333, 0.0, 0.01495671], abs=1e-8)


# r_case3_results.csv rows: threshold -> (marker NB, marker NIA, treat-all NB).
CASE3 = {
    0.01: (0.09801313131313133, -3.2966999999999995, 0.13131313131313133),
    0.07: (0.04159605734767024, -0.44736666666666675, 0.07526881720430108),
    0.12: (0.02360909090909092, 0.0064666666666665885, 0.02272727272727275),
    0.14: (0.02390930232558139, 0.14687142857142851, 0.0),
    0.19: (7.411522633744907e-4, 0.266317543859649, -0.061728395061728364),
    0.25: (-0.017299999999999996, 0.3880999999999999, -0.1466666666666666),
    0.35: (-0.02653076923076923, 0.5507285714285713, -0.32307692307692304),
}


def test_r_benchmark_case3_harm_and_interventions_avoided(df_cancer_dx: pd.DataFrame) -> None:
    thresholds = np.arange(36) / 100
    risk = risk_from_score(df_cancer_dx["cancer"], df_cancer_dx["marker"])
    curve = decision_curve(df_cancer_dx["cancer"], risk, thresholds, harm=0.0333)
    by_pt = curve.set_index(np.round(curve["threshold"], 2))
    for pt, (nb, nia, nb_all) in CASE3.items():
        assert by_pt.loc[pt, "net_benefit"] == pytest.approx(nb, rel=1e-9, abs=1e-14)
        assert by_pt.loc[pt, "net_intervention_avoided"] == pytest.approx(nia, rel=1e-9, abs=1e-12)
        assert by_pt.loc[pt, "treat_all"] == pytest.approx(nb_all, rel=1e-9, abs=1e-14)
    # Threshold 0: model NB 0.1067 (= 0.14 - harm), NIA -Inf; treat none is 0 throughout.
    assert curve.loc[0, "net_benefit"] == pytest.approx(0.10670000000000002, rel=1e-12)
    assert curve.loc[0, "net_intervention_avoided"] == -np.inf
    assert (curve["treat_none"] == 0).all()


def test_interventions_avoided_scaling_per_100(df_cancer_dx: pd.DataFrame) -> None:
    risk = risk_from_score(df_cancer_dx["cancer"], df_cancer_dx["marker"])
    per_patient = decision_curve(df_cancer_dx["cancer"], risk, [0.25], harm=0.0333)
    per_100 = decision_curve(df_cancer_dx["cancer"], risk, [0.25], harm=0.0333, nper=100)
    assert per_100.loc[0, "net_intervention_avoided"] == pytest.approx(38.80999999999999)
    assert per_100.loc[0, "net_benefit"] == per_patient.loc[0, "net_benefit"]


# r_simple_binary_dca_result_df.csv, variable "age": threshold index -> (model NB, treat-all NB).
SIMPLE_AGE = {
    1: (0.1314747474747475, 0.13131313131313133),
    10: (0.0691851851851852, 0.04444444444444445),
    20: (0.04200000000000001, -0.07499999999999998),
    35: (0.017128205128205135, -0.32307692307692315),
    50: (0.009333333333333336, -0.72),
    70: (0.002666666666666667, -1.8666666666666671),
    99: (0.0, -84.99999999999993),
}


def test_r_benchmark_simple_binary_age(df_binary: pd.DataFrame) -> None:
    thresholds = np.arange(100) * 0.01  # R: seq(0, 0.99, by = 0.01)
    risk = risk_from_score(df_binary["cancer"], df_binary["age"])
    curve = decision_curve(df_binary["cancer"], risk, thresholds)
    for i, (nb, nb_all) in SIMPLE_AGE.items():
        assert curve.loc[i, "net_benefit"] == pytest.approx(nb, rel=1e-9, abs=1e-15)
        assert curve.loc[i, "treat_all"] == pytest.approx(nb_all, rel=1e-9)


def test_risk_from_score_matches_r_glm(df_cancer_dx: pd.DataFrame) -> None:
    expected = pd.read_csv(DCURVES / "dca_tut_bin_int_marker_risks.csv")["marker_risk"]
    risk = risk_from_score(df_cancer_dx["cancer"], df_cancer_dx["marker"])
    np.testing.assert_allclose(risk, expected, rtol=1e-9, atol=1e-12)


def test_columns_and_hand_example() -> None:
    # 2 cases (risk 0.8, 0.3), 2 controls (0.6, 0.1), pt = 0.25 (odds 1/3): TP = 2, FP = 1, n = 4.
    curve = decision_curve([1, 1, 0, 0], [0.8, 0.3, 0.6, 0.1], [0.25])
    assert list(curve.columns) == [
        "threshold",
        "net_benefit",
        "treat_all",
        "treat_none",
        "net_intervention_avoided",
    ]
    row = curve.iloc[0]
    assert row["net_benefit"] == pytest.approx(2 / 4 - 1 / 3 * 1 / 4)
    assert row["treat_all"] == pytest.approx(0.5 - 1 / 3 * 0.5)
    assert row["treat_none"] == 0.0
    assert row["net_intervention_avoided"] == pytest.approx((5 / 12 - 1 / 3) * 3)


@pytest.mark.parametrize(
    ("risk", "thresholds", "prevalence", "message"),
    [
        ([0.2, 1.4, 0.3, 0.1], [0.1], None, r"\[0, 1\]"),
        ([0.2, 0.4, 0.3, 0.1], [1.0], None, r"\[0, 1\)"),
        ([0.2, 0.4, 0.3, 0.1], [0.1], 1.0, "prevalence"),
    ],
)
def test_bad_inputs_raise(
    risk: list[float], thresholds: list[float], prevalence: float | None, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        decision_curve([1, 0, 1, 0], risk, thresholds, prevalence=prevalence)
