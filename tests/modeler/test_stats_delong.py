"""DeLong AUC, variance, CI and paired test against pROC's published numbers on aSAH."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dtlr.shared.stats import delong_placements, delong_test, roc_auc_delong

PROC = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "pROC"
EXPECTED = json.loads((PROC / "expected_values.json").read_text(encoding="utf-8"))
PLACEMENTS = json.loads((PROC / "delong_placements_expected.json").read_text(encoding="utf-8"))
TOL = {"rel": 1e-9, "abs": 1e-15}


@pytest.fixture(scope="module")
def asah() -> pd.DataFrame:
    """aSAH with y = 1 for outcome 'Poor' (pROC's cases); wfns (ordered 1..5) used as a number."""
    frame = pd.read_csv(PROC / "aSAH.csv")
    return frame.assign(y=(frame["outcome"] == "Poor").astype(int))


@pytest.mark.parametrize("score", ["wfns", "ndka", "s100b"])
def test_auc_and_variance_match_proc(asah: pd.DataFrame, score: str) -> None:
    result = roc_auc_delong(asah["y"], asah[score])
    assert result.auc == pytest.approx(EXPECTED["auc"][score]["value"], **TOL)
    assert result.var == pytest.approx(EXPECTED["delong_var_auc"][score]["value"], **TOL)


@pytest.mark.parametrize(
    ("pair", "a", "b"),
    [
        ("wfns_ndka", "wfns", "ndka"),
        ("ndka_s100b", "ndka", "s100b"),
        ("s100b_wfns", "s100b", "wfns"),
    ],
)
def test_covariance_matches_proc(asah: pd.DataFrame, pair: str, a: str, b: str) -> None:
    cov = delong_test(asah["y"], asah[a], asah[b]).cov
    assert cov == pytest.approx(EXPECTED["delong_cov_auc"][pair]["value"], **TOL)


def test_ci_matches_proc(asah: pd.DataFrame) -> None:
    ref = EXPECTED["ci_auc_delong_95"]["ndka"]
    result = roc_auc_delong(asah["y"], asah["ndka"])
    assert (result.ci_low, result.auc, result.ci_high) == pytest.approx(
        (ref["lower"], ref["auc"], ref["upper"]), **TOL
    )


def test_ci_on_female_subset_matches_proc(asah: pd.DataFrame) -> None:
    # pROC prints this one to 10 digits (test-ci.auc.R:29).
    ref = EXPECTED["ci_auc_delong_95"]["ndka_female_subset"]
    women = asah[asah["gender"] == "Female"]
    result = roc_auc_delong(women["y"], women["ndka"])
    assert (result.ci_low, result.auc, result.ci_high) == pytest.approx(
        (ref["lower"], ref["auc"], ref["upper"]), abs=1e-10
    )


@pytest.mark.parametrize(
    ("key", "a", "b"),
    [
        ("wfns_vs_s100b", "wfns", "s100b"),
        ("wfns_vs_ndka", "wfns", "ndka"),
        ("ndka_vs_s100b", "ndka", "s100b"),
    ],
)
def test_paired_test_matches_proc(asah: pd.DataFrame, key: str, a: str, b: str) -> None:
    ref = EXPECTED["roc_test_delong_paired_two_sided"][key]
    result = delong_test(asah["y"], asah[a], asah[b])
    assert result.z == pytest.approx(ref["Z"], **TOL)
    assert result.p == pytest.approx(ref["p"], **TOL)
    assert result.diff_ci_low == pytest.approx(ref["ci_diff_lower"], **TOL)
    assert result.diff_ci_high == pytest.approx(ref["ci_diff_upper"], **TOL)
    assert result.auc_a == pytest.approx(EXPECTED["auc"][a]["value"], **TOL)
    assert result.auc_b == pytest.approx(EXPECTED["auc"][b]["value"], **TOL)


def test_swapping_curves_flips_z_and_keeps_p(asah: pd.DataFrame) -> None:
    forward = delong_test(asah["y"], asah["wfns"], asah["s100b"])
    backward = delong_test(asah["y"], asah["s100b"], asah["wfns"])
    assert backward.z == pytest.approx(-forward.z, **TOL)
    assert backward.p == pytest.approx(forward.p, **TOL)
    assert backward.diff_ci_low == pytest.approx(-forward.diff_ci_high, **TOL)


def test_identical_curves_give_z0_p1(asah: pd.DataFrame) -> None:
    result = delong_test(asah["y"], asah["wfns"], asah["wfns"])
    assert (result.z, result.p) == (0.0, 1.0)


@pytest.mark.parametrize("score", ["wfns", "ndka", "s100b"])
@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_placements_match_proc(asah: pd.DataFrame, score: str, direction: str) -> None:
    # "reverse" is pROC's levels = c("Poor", "Good"): the Good patients become the cases.
    y = asah["y"] if direction == "forward" else 1 - asah["y"]
    ref = PLACEMENTS[score][direction]
    result = delong_placements(y, asah[score])
    assert result.theta == pytest.approx(ref["theta"], **TOL)
    np.testing.assert_allclose(result.X, ref["X"], rtol=1e-9, atol=1e-15)
    np.testing.assert_allclose(result.Y, ref["Y"], rtol=1e-9, atol=1e-15)


def test_placements_by_hand() -> None:
    # Cases 0.4, 0.8; controls 0.1, 0.4, 0.9: X = share of controls below (ties 1/2),
    # Y = share of cases above (ties 1/2); theta = (1.5/3 + 2/3) / 2.
    result = delong_placements([1, 0, 1, 0, 0], [0.4, 0.1, 0.8, 0.4, 0.9])
    np.testing.assert_allclose(result.X, [1.5 / 3, 2 / 3])
    np.testing.assert_allclose(result.Y, [1.0, 0.75, 0.0])
    assert result.theta == pytest.approx(7 / 12)


def test_single_case_gives_nan_variance_like_proc() -> None:
    result = roc_auc_delong([1, 0, 0, 0], [0.9, 0.1, 0.2, 0.3])
    assert result.auc == 1.0
    assert np.isnan(result.var) and np.isnan(result.ci_low) and np.isnan(result.ci_high)


@pytest.mark.parametrize(
    ("y", "score", "message"),
    [
        ([0, 1, 2], [0.1, 0.2, 0.3], "0/1"),
        (["Good", "Poor", "Poor"], [0.1, 0.2, 0.3], "0/1"),
        ([0, 1], [0.1, 0.2, 0.3], "has 2 values"),
        ([0, 1, 1], [0.1, np.nan, 0.3], "NaN"),
        ([1, 1, 1], [0.1, 0.2, 0.3], "at least one case"),
    ],
)
def test_bad_inputs_raise(y: list[int], score: list[float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        roc_auc_delong(y, score)
