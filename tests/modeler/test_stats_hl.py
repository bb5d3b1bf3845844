"""Hosmer-Lemeshow test against blorr's and UtilStat's published results.

- blorr (rsquaredacademy/blorr): tests/testthat/_snaps/hosmer-lemeshow.md is the printed
  blr_test_hosmer_lemeshow() of glm(honcomp ~ race + read + science, binomial) on hsb2
  (model defined in tests/testthat/test-hosmer-lemeshow.R; that test also asserts p = 0.66);
  README.md prints the same test for glm(honcomp ~ female + read + science).
- UtilStat (donenrique24/UtilStat): tests/testthat/testSimple.R asserts
  hosmerLemeshowTest(occurred, pred) gives chi2 = 28.48646, p = 0.0003900657 (tolerance 1e-5).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
import statsmodels.formula.api as smf
from scipy.stats import chi2 as chi2_dist

from dtlr.shared.stats import hosmer_lemeshow
from dtlr.shared.stats.hosmer_lemeshow import r_quantile_type7

HL = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "hosmer_lemeshow"

# Printed partition tables: (n, observed 1, expected 1, observed 0, expected 0), 2 decimals.
BLORR_RACE = [
    (20, 0, 0.29, 20, 19.71),
    (21, 1, 0.74, 20, 20.26),
    (19, 0, 1.05, 19, 17.95),
    (22, 2, 2.04, 20, 19.96),
    (18, 2, 2.93, 16, 15.07),
    (20, 4, 4.47, 16, 15.53),
    (20, 9, 6.17, 11, 13.83),
    (21, 9, 8.93, 12, 12.07),
    (19, 13, 11.16, 6, 7.84),
    (20, 13, 15.22, 7, 4.78),
]
BLORR_FEMALE = [
    (20, 0, 0.16, 20, 19.84),
    (20, 0, 0.53, 20, 19.47),
    (20, 2, 0.99, 18, 19.01),
    (20, 1, 1.64, 19, 18.36),
    (21, 3, 2.72, 18, 18.28),
    (19, 3, 4.05, 16, 14.95),
    (20, 7, 6.50, 13, 13.50),
    (20, 10, 8.90, 10, 11.10),
    (20, 13, 11.49, 7, 8.51),
    (20, 14, 16.02, 6, 3.98),
]


@pytest.fixture(scope="module")
def hsb2() -> pd.DataFrame:
    return pd.read_csv(HL / "hsb2_blorr.csv")


@pytest.mark.parametrize(
    ("factor", "chi2", "p", "partition"),
    [("race", 5.8839, 0.6602, BLORR_RACE), ("female", 4.4998, 0.8095, BLORR_FEMALE)],
)
def test_blorr_published_partition(
    hsb2: pd.DataFrame, factor: str, chi2: float, p: float, partition: list[tuple]
) -> None:
    formula = f"honcomp ~ C({factor}) + read + science"
    fit = smf.glm(formula, hsb2, family=sm.families.Binomial()).fit()
    result = hosmer_lemeshow(hsb2["honcomp"], fit.predict())
    assert result.df == 8
    assert result.chi2 == pytest.approx(chi2, abs=5e-5)
    assert result.p == pytest.approx(p, abs=5e-5)
    table = result.table[["n", "observed_1", "expected_1", "observed_0", "expected_0"]]
    expected = np.array(partition, dtype=float)
    np.testing.assert_array_equal(table[["n", "observed_1", "observed_0"]], expected[:, [0, 1, 3]])
    np.testing.assert_allclose(table[["expected_1", "expected_0"]], expected[:, [2, 4]], atol=5e-3)


def test_utilstat_published_rank_grouping() -> None:
    data = pd.read_csv(HL / "exampleRecruitment_UtilStat.csv")
    result = hosmer_lemeshow(data["occurred"], data["pred"], method="rank")
    assert result.df == 8
    assert result.chi2 == pytest.approx(28.48646, rel=1e-5)
    assert result.p == pytest.approx(0.0003900657, rel=1e-5)
    # Documented rule: row i of n (sorted by pred) joins group ceiling(i / n * 10).
    n = len(data)
    sizes = np.bincount(np.ceil(np.arange(1, n + 1) / n * 10).astype(int))[1:]
    np.testing.assert_array_equal(result.table["n"], sizes)
    assert result.table["n"].sum() == n
    assert (result.table["lower"] <= result.table["upper"]).all()
    assert (result.table["upper"].to_numpy()[:-1] <= result.table["lower"].to_numpy()[1:]).all()
    assert result.table["observed_1"].sum() == data["occurred"].sum()


def test_r_quantile_type7_by_hand() -> None:
    # R: quantile(c(1, 2, 4, 8, 16), c(0, 0.1, 0.25, 0.5, 1)) = 1, 1.4, 2, 4, 16.
    x = np.array([16.0, 1.0, 8.0, 2.0, 4.0])
    np.testing.assert_allclose(
        r_quantile_type7(x, np.array([0.0, 0.1, 0.25, 0.5, 1.0])), [1.0, 1.4, 2.0, 4.0, 16.0]
    )


def test_tied_cut_points_drop_empty_groups_and_reduce_df() -> None:
    # Five distinct probabilities, 20 rows each. Type-7 deciles (index 1 + 99 p) are
    # 0.1, 0.1, 0.18, 0.2, 0.26, 0.3, 0.34, 0.4, 0.42, 0.5, 0.5; the 9 unique ones make 8
    # intervals, of which (0.2, 0.26], (0.3, 0.34] and (0.4, 0.42] hold no rows: 5 groups, df 3.
    prob = np.repeat([0.1, 0.2, 0.3, 0.4, 0.5], 20)
    events = [1, 5, 6, 9, 10]
    y = np.concatenate([np.r_[np.ones(k), np.zeros(20 - k)] for k in events])
    result = hosmer_lemeshow(y, prob)
    assert result.df == 3
    np.testing.assert_array_equal(result.table["n"], [20] * 5)
    np.testing.assert_allclose(result.table["lower"], [0.1, 0.18, 0.26, 0.34, 0.42])
    np.testing.assert_allclose(result.table["upper"], [0.18, 0.2, 0.3, 0.4, 0.5])
    np.testing.assert_array_equal(result.table["observed_1"], events)
    e1 = 20 * np.array([0.1, 0.2, 0.3, 0.4, 0.5])
    hand = np.sum((np.array(events) - e1) ** 2 / e1 + (np.array(events) - e1) ** 2 / (20 - e1))
    assert result.chi2 == pytest.approx(hand, rel=1e-12)


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        hosmer_lemeshow([0, 1, 0, 1], [0.1, 1.2, 0.3, 0.4])
    with pytest.raises(ValueError, match="method"):
        hosmer_lemeshow([0, 1, 0, 1], [0.1, 0.2, 0.3, 0.4], method="deciles")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="non-empty groups"):
        hosmer_lemeshow([0, 1, 0, 1], [0.1, 0.1, 0.3, 0.3])


def test_blorr_partition_warns_of_small_expected_counts(hsb2: pd.DataFrame) -> None:
    # blorr's printed race partition (BLORR_RACE): expected 1s of 0.29, 0.74, 1.05, 2.04, 2.93
    # and 4.47 and expected 0s of 4.78 are below 5, so 7 of the 10 groups are too small.
    fit = smf.glm("honcomp ~ C(race) + read + science", hsb2, family=sm.families.Binomial()).fit()
    result = hosmer_lemeshow(hsb2["honcomp"], fit.predict())
    assert result.df_rule == "development"
    assert len(result.warnings) == 1
    assert result.warnings[0].startswith("7 of 10 groups have fewer than 5 expected events")
    assert "smallest 0.29" in result.warnings[0]


def test_external_sample_uses_g_degrees_of_freedom(hsb2: pd.DataFrame) -> None:
    # Hosmer, Lemeshow & Sturdivant 2013: in a validation sample no parameter was estimated,
    # so the reference is chi-square with g (not g - 2) degrees of freedom; same statistic.
    fit = smf.glm("honcomp ~ C(race) + read + science", hsb2, family=sm.families.Binomial()).fit()
    development = hosmer_lemeshow(hsb2["honcomp"], fit.predict())
    external = hosmer_lemeshow(hsb2["honcomp"], fit.predict(), sample="external")
    assert external.chi2 == development.chi2
    assert (external.df, external.df_rule) == (10, "external")
    assert external.p == pytest.approx(chi2_dist.sf(5.8839, 10), abs=5e-5)
    assert external.p > development.p
    override = hosmer_lemeshow(hsb2["honcomp"], fit.predict(), sample="external", df=7)
    assert (override.df, override.df_rule) == (7, "override")
    assert override.p == pytest.approx(chi2_dist.sf(override.chi2, 7), rel=1e-12)
    rank = hosmer_lemeshow(hsb2["honcomp"], fit.predict(), method="rank", sample="external")
    assert rank.df == 10


def test_too_few_patients_per_group_warns() -> None:
    # 8 patients in 10 requested groups: 8 single-patient groups, every expected count < 5.
    prob = np.array([0.05, 0.15, 0.3, 0.45, 0.55, 0.7, 0.85, 0.95])
    y = np.array([0, 0, 1, 0, 1, 1, 0, 1])
    result = hosmer_lemeshow(y, prob)
    assert result.df == 6
    assert len(result.warnings) == 3
    only, per_group, small = result.warnings
    assert only.startswith("the predictions formed only 8 non-empty groups of the 10 requested")
    assert per_group.startswith("10 groups for 8 patients is more than n / 5 = 1.6")
    assert small.startswith("8 of 8 groups have fewer than 5 expected events or non-events")
    # 40 rows in 100 groups (the p = 1e-87 case) warns the same way.
    rng = np.random.default_rng(1)
    prob = rng.uniform(0.01, 0.99, 40)
    many = hosmer_lemeshow(rng.uniform(size=40) < prob, prob, groups=100)
    assert any(w.startswith("100 groups for 40 patients") for w in many.warnings)
    # 50 rows in 10 groups is exactly n / 5: no per-group warning.
    prob = np.linspace(0.3, 0.7, 50)
    assert not any("patients per group" in w for w in hosmer_lemeshow(prob > 0.5, prob).warnings)


def test_risks_of_exactly_zero_or_one_take_their_limit_not_nan() -> None:
    # Groups of 10 with risks all 0 and all 1 (observed 0 and 10 events), and three groups of
    # 10 at 0.2, 0.5, 0.8 with 2, 5 and 8 events: those groups fit exactly, the 0/1 groups add
    # their limit 0, so chi2 = 0; hoslem.test would return NaN (0 / 0).
    prob = np.repeat([0.0, 0.2, 0.5, 0.8, 1.0], 10)
    events = [0, 2, 5, 8, 10]
    y = np.concatenate([np.r_[np.ones(k), np.zeros(10 - k)] for k in events])
    result = hosmer_lemeshow(y, prob, groups=5)
    assert len(result.table) == 5
    assert result.chi2 == pytest.approx(0.0, abs=1e-20) and result.p == pytest.approx(1.0)
    assert any(w.startswith("2 group(s) have an expected count of 0") and "add 0" in w
               for w in result.warnings)
    # R's glm clamps risks to [DBL_EPSILON, 1 - DBL_EPSILON]: the same statistic to 1e-12.
    eps = np.finfo(np.float64).eps
    clamped = hosmer_lemeshow(y, np.clip(prob, eps, 1 - eps), groups=5)
    assert clamped.chi2 == pytest.approx(result.chi2, abs=1e-12)
    # An event at risk 0: the model ruled out what happened; chi2 is infinite, p = 0.
    y[0] = 1
    ruled_out = hosmer_lemeshow(y, prob, groups=5)
    assert ruled_out.chi2 == np.inf and ruled_out.p == 0.0
    assert any("chi2 is infinite" in w for w in ruled_out.warnings)


def test_bad_sample_and_df_raise() -> None:
    prob = np.linspace(0.1, 0.9, 30)
    with pytest.raises(ValueError, match="sample"):
        hosmer_lemeshow(prob > 0.5, prob, sample="test")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="df"):
        hosmer_lemeshow(prob > 0.5, prob, df=0)
