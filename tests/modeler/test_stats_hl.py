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
