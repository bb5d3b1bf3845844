"""ICC against Shrout & Fleiss (1979) and an independent ANOVA; the ICC filter as a transformer."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from statsmodels.stats.anova import anova_lm

from dtlr.services.modeler.icc import ICCFilter, icc, mean_squares

# Shrout & Fleiss (1979), Table 2: 6 targets rated by 4 judges.
SHROUT_FLEISS = np.array([[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9],
                          [6, 2, 4, 7]], dtype=float)


def test_shrout_fleiss_table_2_mean_squares_and_published_iccs() -> None:
    ms = mean_squares(SHROUT_FLEISS)
    # Their Table 3: BMS 11.24, WMS 6.26, JMS 32.49, EMS 1.02.
    assert ms.between_targets[0] == pytest.approx(11.24, abs=0.005)
    assert ms.within_targets[0] == pytest.approx(6.26, abs=0.005)
    assert ms.between_raters[0] == pytest.approx(32.49, abs=0.005)
    assert ms.residual[0] == pytest.approx(1.02, abs=0.005)
    # Their Table 4, single-rater forms: ICC(1,1) .17, ICC(2,1) .29, ICC(3,1) .71.
    assert icc(SHROUT_FLEISS, "ICC1")[0] == pytest.approx(0.17, abs=0.005)
    assert icc(SHROUT_FLEISS, "ICC2")[0] == pytest.approx(0.29, abs=0.005)
    assert icc(SHROUT_FLEISS, "ICC3")[0] == pytest.approx(0.71, abs=0.005)


def _icc_from_anova(x: np.ndarray) -> dict[str, float]:
    """ICC forms from statsmodels' two-way ANOVA table (an independent computation)."""
    n, k = x.shape
    long = pd.DataFrame({"v": x.ravel(), "t": np.repeat(np.arange(n), k).astype(str),
                         "r": np.tile(np.arange(k), n).astype(str)})
    table = anova_lm(smf.ols("v ~ C(t) + C(r)", data=long).fit())
    bms, jms, ems = table["mean_sq"][["C(t)", "C(r)", "Residual"]]
    wms = (table["sum_sq"]["C(r)"] + table["sum_sq"]["Residual"]) / (n * (k - 1))
    return {"ICC1": (bms - wms) / (bms + (k - 1) * wms),
            "ICC2": (bms - ems) / (bms + (k - 1) * ems + k * (jms - ems) / n),
            "ICC3": (bms - ems) / (bms + (k - 1) * ems)}


def test_vectorised_icc_equals_anova_per_feature() -> None:
    rng = np.random.default_rng(3)
    truth = rng.normal(size=(20, 1, 5))
    ratings = truth + rng.normal(scale=[0.1, 0.3, 0.6, 1.0, 2.0], size=(20, 2, 5))
    ratings[:, 1, :] += 0.4  # a systematic reader offset: ICC2 and ICC3 differ
    for form in ("ICC1", "ICC2", "ICC3"):
        got = icc(ratings, form)
        want = [_icc_from_anova(ratings[:, :, j])[form] for j in range(5)]
        np.testing.assert_allclose(got, want, rtol=1e-10)
    # More reader noise means lower agreement.
    assert np.all(np.diff(icc(ratings, "ICC2")) < 0)


def test_consistency_ignores_reader_offset_agreement_does_not() -> None:
    rng = np.random.default_rng(0)
    first = rng.normal(size=30)
    ratings = np.column_stack([first, first + 3.0])
    assert icc(ratings, "ICC3")[0] == pytest.approx(1.0)
    assert icc(ratings, "ICC2")[0] < 0.5
    constant = np.ones((10, 2))
    assert np.isnan(icc(constant, "ICC2")[0])
    with pytest.raises(ValueError, match="ICC form"):
        icc(ratings, "ICC4")  # type: ignore[arg-type]


def _reader_tables() -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(1)
    ids = [f"P{i:03d}" for i in range(60)]
    reader1 = pd.DataFrame(rng.normal(size=(60, 6)), index=ids, columns=list("abcdef"))
    noise = np.array([0.05, 0.1, 0.2, 1.5, 2.0, 0.05])
    second = reader1.iloc[:20] + rng.normal(size=(20, 6)) * noise
    second.iloc[:, 5] = np.nan  # a feature the second reader lacks
    return reader1, second, noise


def test_icc_filter_keeps_stable_features_on_the_paired_patients() -> None:
    reader1, reader2, _ = _reader_tables()
    f = ICCFilter(form="ICC2", threshold=0.8).fit(reader1, reader2=reader2)
    assert f.n_pairs_ == 20
    np.testing.assert_array_equal(f.support_, [True, True, True, False, False, False])
    expected = icc(np.stack([reader1.iloc[:20].to_numpy(), reader2.to_numpy()], axis=1), "ICC2")
    np.testing.assert_allclose(f.icc_, expected, equal_nan=True)
    assert list(f.get_feature_names_out()) == ["a", "b", "c"]
    np.testing.assert_array_equal(f.transform(reader1), reader1[["a", "b", "c"]].to_numpy())
    assert "20 patients" in f.note_ and "3 of 6" in f.note_


def test_icc_filter_reader2_through_a_pipeline_fit_param() -> None:
    reader1, reader2, _ = _reader_tables()
    pipe = Pipeline([("icc", ICCFilter()), ("zscore", StandardScaler())])
    out = pipe.fit_transform(reader1, icc__reader2=reader2)
    assert out.shape == (60, 3)
    assert list(pipe.get_feature_names_out()) == ["a", "b", "c"]
    assert "reader2" not in pipe.named_steps["icc"].get_params()


def test_icc_filter_without_second_reader_keeps_everything_and_says_so() -> None:
    reader1, reader2, _ = _reader_tables()
    for table in (None, reader2.iloc[:2]):
        f = ICCFilter().fit(reader1, reader2=table)
        assert f.support_.all()
        assert "skipped" in f.note_
    with pytest.raises(TypeError, match="DataFrame"):
        ICCFilter().fit(reader1.to_numpy(), reader2=reader2)
    with pytest.raises(ValueError, match="1 feature"):
        ICCFilter().fit(reader1, reader2=reader2).transform(reader1.drop(columns="a"))
