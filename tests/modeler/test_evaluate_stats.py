"""The modeler's evaluation uses the shared statistics' prevalence and Hosmer-Lemeshow rules.

Decision curves at a population prevalence are checked against R dcurves' published case-control
result (ddsjoberg/dcurves tests/testthat/test-dca.R: dca(casecontrol ~ cancerpredmarker,
data = df_case_control, prevalence = 0.15) at threshold 0.25 gives net benefits -0.13333333
(treat all), 0 (treat none) and 0.01495671 (the marker)), run through evaluate_cohort.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dtlr.services.modeler.evaluate import evaluate_cohort
from dtlr.shared.stats import binary_metrics, decision_curve

DCURVES = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "dcurves"


class _FixedRisks:
    """A stand-in for a fitted DTLRModel: one 'model' whose risks are given."""

    def __init__(self, risks: dict[str, np.ndarray], threshold: float = 0.5) -> None:
        self.risks = risks
        self.thresholds_ = dict.fromkeys(risks, threshold)

    def predict_proba_models(self, X: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame(self.risks, index=X.index)


@pytest.fixture(scope="module")
def case_control() -> pd.DataFrame:
    return pd.read_csv(DCURVES / "df_case_control.csv")


def _evaluate(data: pd.DataFrame, role: str, prevalence: float | None):
    risks = {"marker": data["cancerpredmarker"].to_numpy(),
             "age": 1 / (1 + np.exp(-(data["age"].to_numpy() - 65) / 5))}
    model = _FixedRisks(risks)
    X = pd.DataFrame(index=data["patientid"])
    return evaluate_cohort(model, X, data["casecontrol"].to_numpy(), "cc", role,  # type: ignore[arg-type]
                           prevalence=prevalence), risks


def test_decision_curves_at_a_population_prevalence_match_r_dcurves(
        case_control: pd.DataFrame) -> None:
    ev, risks = _evaluate(case_control, "test", 0.15)
    assert ev.prevalence == 0.15
    row = ev.dca.set_index(np.round(ev.dca["threshold"], 2)).loc[0.25]
    assert [row["treat_all"], row["treat_none"], row["marker"]] == pytest.approx(
        [-0.13333333, 0.0, 0.01495671], abs=1e-8)
    # The same code path as `dtlr stats dca --prevalence`, for every threshold and model.
    for name, risk in risks.items():
        curve = decision_curve(case_control["casecontrol"], risk, ev.dca["threshold"],
                               prevalence=0.15)
        np.testing.assert_array_equal(ev.dca[name], curve["net_benefit"])
    np.testing.assert_array_equal(ev.dca["treat_all"], curve["treat_all"])


def test_ppv_and_npv_use_the_population_prevalence(case_control: pd.DataFrame) -> None:
    own, _ = _evaluate(case_control, "test", None)
    ev, risks = _evaluate(case_control, "test", 0.15)
    y = case_control["casecontrol"]
    expected = binary_metrics(y, risks["marker"], 0.5, prevalence=0.15)
    plain = binary_metrics(y, risks["marker"], 0.5)
    for evaluation, reference in ((ev, expected), (own, plain)):
        rows = evaluation.metrics.set_index(["model", "metric"])
        for metric, est in reference.items():
            rec = rows.loc[("marker", metric)]
            assert (rec["value"], rec["ci_low"], rec["ci_high"]) == (
                est.value, est.ci_low, est.ci_high), metric
    assert expected["ppv"].value != plain["ppv"].value
    assert expected["sensitivity"] == plain["sensitivity"]


def test_hosmer_lemeshow_df_follows_the_cohort_role(case_control: pd.DataFrame) -> None:
    train, _ = _evaluate(case_control, "train", None)
    test, _ = _evaluate(case_control, "test", None)
    for model in ("marker", "age"):
        a, b = train.hosmer_lemeshow[model], test.hosmer_lemeshow[model]
        assert a is not None and b is not None
        assert a.chi2 == b.chi2
        groups = len(a.table)
        assert (a.df, a.df_rule) == (groups - 2, "development")
        assert (b.df, b.df_rule) == (groups, "external")
        rows = test.metrics.set_index(["model", "metric"])
        assert rows.loc[(model, "hosmer_lemeshow_chi2"), "denominator"] == groups
