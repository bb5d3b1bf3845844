"""dtlr-stats through click's CliRunner: JSON contract, pROC numbers and error messages."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from scipy.stats import chi2 as chi2_dist

from dtlr.services.modeler.stats_cli import stats

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
ASAH = DATA / "pROC" / "aSAH.csv"
EXPECTED = json.loads((DATA / "pROC" / "expected_values.json").read_text(encoding="utf-8"))
TOL = {"rel": 1e-9, "abs": 1e-15}
ASAH_ARGS = ["--csv", str(ASAH), "--label", "outcome", "--positive", "Poor"]


def _run(*args: str) -> Result:
    return CliRunner().invoke(stats, list(args))


def _json(*args: str) -> object:
    result = _run(*args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _assert_clean_error(result: Result, *fragments: str) -> None:
    """Non-zero exit, a click error (no traceback) whose message holds every fragment."""
    assert result.exit_code != 0
    assert isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in result.output


def test_roc_two_scores_json_matches_proc() -> None:
    payload = _json("roc", *ASAH_ARGS, "--score", "wfns", "--score", "s100b")
    assert set(payload) == {"scores", "delong"}
    assert list(payload["scores"]) == ["wfns", "s100b"]
    for name, row in payload["scores"].items():
        assert set(row) == {"auc", "ci_low", "ci_high", "var"}
        assert row["auc"] == pytest.approx(EXPECTED["auc"][name]["value"], **TOL)
        assert row["var"] == pytest.approx(EXPECTED["delong_var_auc"][name]["value"], **TOL)
    ref = EXPECTED["roc_test_delong_paired_two_sided"]["wfns_vs_s100b"]
    delong = payload["delong"]
    assert set(delong) == {"z", "p", "cov", "diff_ci_low", "diff_ci_high"}
    assert delong["z"] == pytest.approx(ref["Z"], **TOL)
    assert delong["p"] == pytest.approx(ref["p"], **TOL)
    assert delong["diff_ci_low"] == pytest.approx(ref["ci_diff_lower"], **TOL)
    assert delong["diff_ci_high"] == pytest.approx(ref["ci_diff_upper"], **TOL)
    assert delong["cov"] == pytest.approx(EXPECTED["delong_cov_auc"]["s100b_wfns"]["value"], **TOL)


def test_roc_single_score_json_has_ci_and_no_test() -> None:
    payload = _json("roc", *ASAH_ARGS, "--score", "ndka")
    assert set(payload) == {"scores"}
    ref = EXPECTED["ci_auc_delong_95"]["ndka"]
    row = payload["scores"]["ndka"]
    assert (row["ci_low"], row["auc"], row["ci_high"]) == pytest.approx(
        (ref["lower"], ref["auc"], ref["upper"]), **TOL
    )


def test_roc_table_output() -> None:
    result = _run("roc", *ASAH_ARGS, "--score", "wfns", "--score", "ndka")
    assert result.exit_code == 0, result.output
    assert "0.8237" in result.output and "0.6120" in result.output
    assert "Z = 2.7978" in result.output


def test_dca_refuses_score_outside_unit_interval() -> None:
    result = _run("dca", *ASAH_ARGS, "--score", "ndka", "--thresholds", "0.1,0.25")
    _assert_clean_error(result, "'ndka'", "outside [0, 1]", "--as-probability")


def test_dca_json_with_as_probability() -> None:
    payload = _json(
        "dca", *ASAH_ARGS, "--score", "s100b", "--thresholds", "0.1,0.25", "--as-probability"
    )
    assert [row["threshold"] for row in payload] == [0.1, 0.25]
    for row in payload:
        assert set(row) == {
            "threshold",
            "net_benefit",
            "treat_all",
            "treat_none",
            "net_intervention_avoided",
        }
        assert row["treat_none"] == 0
    # Treat all at pt = 0.25 with 41 Poor of 113: 41/113 - (1/3) * 72/113.
    assert payload[1]["treat_all"] == pytest.approx(41 / 113 - 72 / 113 / 3, rel=1e-12)


def test_dca_case_control_matches_r_dcurves() -> None:
    # R dcurves tests/testthat/test-dca.R: prevalence 0.15 -> NB at 0.25 = 0.01495671.
    csv = DATA / "dcurves" / "df_case_control.csv"
    args = ["--csv", str(csv), "--label", "casecontrol", "--positive", "1"]
    payload = _json(
        "dca", *args, "--score", "cancerpredmarker", "--thresholds", "0.25", "--prevalence", "0.15"
    )
    assert payload[0]["net_benefit"] == pytest.approx(0.01495671, abs=1e-8)
    assert payload[0]["treat_all"] == pytest.approx(-0.13333333, abs=1e-8)


def test_dca_non_finite_interventions_avoided_become_null() -> None:
    payload = _json("dca", *ASAH_ARGS, "--score", "s100b", "--thresholds", "0", "--as-probability")
    assert payload[0]["net_intervention_avoided"] is None


@pytest.mark.parametrize("thresholds", ["0.1,abc", "0.1,1.0", ""])
def test_dca_bad_thresholds(thresholds: str) -> None:
    result = _run("dca", *ASAH_ARGS, "--score", "s100b", "--thresholds", thresholds)
    _assert_clean_error(result, "--thresholds")


def test_hl_rank_json_matches_utilstat() -> None:
    csv = DATA / "hosmer_lemeshow" / "exampleRecruitment_UtilStat.csv"
    args = ["--csv", str(csv), "--label", "occurred", "--positive", "1", "--prob", "pred"]
    payload = _json("hl", *args, "--method", "rank")
    assert set(payload) == {"chi2", "df", "df_rule", "p", "warnings", "groups"}
    assert payload["df_rule"] == "development"
    assert payload["chi2"] == pytest.approx(28.48646, rel=1e-5)
    assert payload["p"] == pytest.approx(0.0003900657, rel=1e-5)
    assert payload["df"] == 8
    assert len(payload["groups"]) == 10
    assert set(payload["groups"][0]) == {
        "lower",
        "upper",
        "n",
        "observed_1",
        "expected_1",
        "observed_0",
        "expected_0",
    }
    assert sum(group["n"] for group in payload["groups"]) == 26248


def test_hl_external_sample_and_df_override() -> None:
    csv = DATA / "hosmer_lemeshow" / "exampleRecruitment_UtilStat.csv"
    args = ["--csv", str(csv), "--label", "occurred", "--positive", "1", "--prob", "pred"]
    external = _json("hl", *args, "--method", "rank", "--sample", "external")
    assert (external["df"], external["df_rule"]) == (10, "external")
    assert external["chi2"] == pytest.approx(28.48646, rel=1e-5)
    assert external["p"] == pytest.approx(chi2_dist.sf(external["chi2"], 10), rel=1e-12)
    override = _json("hl", *args, "--method", "rank", "--df", "3")
    assert (override["df"], override["df_rule"]) == (3, "override")


def test_hl_warns_in_json_and_table(tmp_path: Path) -> None:
    csv = tmp_path / "small.csv"
    csv.write_text("y,p\n0,0.0\n0,0.15\n1,0.3\n0,0.45\n1,0.55\n1,0.7\n0,0.85\n1,1.0\n",
                   encoding="utf-8")
    args = ["--csv", str(csv), "--label", "y", "--positive", "1", "--prob", "p"]
    payload = _json("hl", *args)
    assert any(w.startswith("10 groups for 8 patients") for w in payload["warnings"])
    assert any("fewer than 5 expected" in w for w in payload["warnings"])
    assert all(math.isfinite(group["expected_0"]) for group in payload["groups"])
    assert payload["chi2"] is not None and math.isfinite(payload["p"])
    table = _run("hl", *args)
    assert table.exit_code == 0, table.output
    assert "Warning: 10 groups for 8 patients" in " ".join(table.output.split())
    # An event at risk 0 makes chi2 infinite: null in JSON, "inf" in the table, p = 0.
    csv.write_text("y,p\n1,0.0\n0,0.0\n0,0.3\n1,0.5\n1,0.6\n0,0.7\n1,0.9\n0,0.2\n",
                   encoding="utf-8")
    payload = _json("hl", *args, "--groups", "4")
    assert payload["chi2"] is None and payload["p"] == 0.0
    assert "Chi-square = inf" in _run("hl", *args, "--groups", "4").output


def test_hl_refuses_non_probability() -> None:
    result = _run("hl", *ASAH_ARGS, "--prob", "ndka")
    _assert_clean_error(result, "'ndka'", "outside [0, 1]")


def test_missing_file() -> None:
    result = _run("roc", "--csv", "no/such.csv", "--label", "y", "--positive", "1", "--score", "s")
    _assert_clean_error(result, "no/such.csv", "--csv")


def test_missing_column() -> None:
    result = _run("roc", *ASAH_ARGS, "--score", "s100")
    _assert_clean_error(result, "'s100'", "available columns", "s100b")


def test_positive_value_not_present() -> None:
    result = _run(
        "roc", "--csv", str(ASAH), "--label", "outcome", "--positive", "Bad", "--score", "wfns"
    )
    _assert_clean_error(result, "'Bad'", "'outcome'", "Good, Poor")


def test_non_numeric_score() -> None:
    result = _run("roc", *ASAH_ARGS, "--score", "gender")
    _assert_clean_error(result, "'gender'", "not numeric", "'Female'")


def test_nan_score(tmp_path: Path) -> None:
    csv = tmp_path / "with_nan.csv"
    csv.write_text("y,s\n1,0.9\n0,\n1,0.7\n0,0.1\n", encoding="utf-8")
    result = _run("roc", "--csv", str(csv), "--label", "y", "--positive", "1", "--score", "s")
    _assert_clean_error(result, "'s'", "1 missing value", "data row 2", "drop or impute")


def test_too_many_scores() -> None:
    result = _run("roc", *ASAH_ARGS, "--score", "wfns", "--score", "ndka", "--score", "s100b")
    _assert_clean_error(result, "one or two --score")
