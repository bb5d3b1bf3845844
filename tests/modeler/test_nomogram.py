"""Nomogram points: per-predictor points add up to totals that map affinely to log-odds."""

from __future__ import annotations

from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from dtlr.services.modeler.data import CohortData, load_cohort
from dtlr.services.modeler.models import DTLRModel
from dtlr.services.modeler.nomogram import (
    draw_nomogram,
    nomogram_scale,
    patient_points,
    predictor_label,
)
from dtlr.shared.config import Settings
from dtlr.shared.stats.datadist import display_limits, display_ranges
from tests.synthetic.cohorts import build_store


@dataclass
class Case:
    model: DTLRModel
    train: CohortData
    test: CohortData


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> Case:
    syn = build_store(tmp_path_factory.mktemp("nomogram"), {"A": 120, "B": 60}, n_radiomics=30,
                      seed=4)
    train, test = load_cohort(syn.store, "A", with_reader2=True), load_cohort(syn.store, "B")
    model = DTLRModel.from_settings(Settings()).fit(train.X, train.y, reader2=train.reader2)
    return Case(model, train, test)


def test_points_add_up_to_the_linear_predictor(case: Case) -> None:
    scale = nomogram_scale(case.model)
    for data in (case.train, case.test):
        pts = patient_points(case.model, data.X)
        per_predictor = pts[[f"points_{n}" for n in scale.names]]
        np.testing.assert_allclose(per_predictor.sum(axis=1), pts["total_points"], rtol=1e-12)
        lp = case.model.nomogram_linear_predictor(data.X)
        # Total points -> log-odds is affine: LP = b0 + sum(floor) + total / k.
        np.testing.assert_allclose(pts["linear_predictor"], lp, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(
            lp, scale.intercept + scale.floor.sum() + pts["total_points"] / scale.points_per_lp,
            rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(pts["risk"], case.model.predict_proba(data.X)[:, 1],
                                   rtol=1e-10)
        np.testing.assert_allclose(scale.total_points(lp), pts["total_points"], atol=1e-8)


def test_widest_predictor_spans_0_to_100_points_and_every_axis_starts_at_0(case: Case) -> None:
    scale = nomogram_scale(case.model)
    lows = pd.DataFrame([scale.low], columns=scale.names)
    highs = pd.DataFrame([scale.high], columns=scale.names)
    at_low, at_high = scale.points(lows).iloc[0], scale.points(highs).iloc[0]
    ends = np.column_stack([at_low, at_high])
    np.testing.assert_allclose(ends.min(axis=1), 0.0, atol=1e-10)
    assert ends.max() == pytest.approx(100.0)
    assert scale.max_total == pytest.approx(ends.max(axis=1).sum())
    # Training patients stay inside their axes.
    train = patient_points(case.model, case.train.X)
    assert train.filter(like="points_").to_numpy().min() >= -1e-9
    assert train["total_points"].max() <= scale.max_total + 1e-9


def test_binary_predictors_score_zero_or_their_full_span(case: Case) -> None:
    scale = nomogram_scale(case.model)
    pts = patient_points(case.model, case.test.X)
    design = case.model.nomogram_design(case.test.X)
    binary = [n for n in scale.names if set(np.unique(design[n])) <= {0.0, 1.0}]
    assert binary
    for n in binary:
        j = scale.names.index(n)
        full = abs(scale.coef[j]) * scale.points_per_lp
        present = design[n] == (1.0 if scale.coef[j] > 0 else 0.0)
        np.testing.assert_allclose(pts.loc[present, f"points_{n}"], full)
        np.testing.assert_allclose(pts.loc[~present, f"points_{n}"], 0.0, atol=1e-12)


def test_drawing_has_every_axis_rms_draws(case: Case) -> None:
    fig = draw_nomogram(case.model, "Nomogram")
    texts = {t.get_text() for ax in fig.axes for t in ax.texts}
    plt.close(fig)
    assert {"Points", "Total points", "Linear predictor", "Risk of high grade"} <= texts
    assert {predictor_label(n) for n in case.model.nomogram_features_} <= texts
    assert "Rad score" in texts and "0.5" in texts
    assert {"female", "male"} <= texts or "Sex" not in texts


def test_display_limits_follow_rms_datadist() -> None:
    # rms::datadist: q.display = 10 / max(n, 200), R type-7 quantiles at q and 1 - q; in R,
    # quantile(1:100, c(.05, .95)) = 5.95, 95.05, quantile(1:200, c(.05, .95)) = 10.95, 190.05
    # and quantile(1:300, c(1/30, 29/30)) = 10.96667, 290.03333 (index 1 + (n - 1) q).
    assert display_limits(np.arange(1, 101)) == pytest.approx((5.95, 95.05), rel=1e-12)
    assert display_limits(np.arange(1, 201)) == pytest.approx((10.95, 190.05), rel=1e-12)
    assert display_limits(np.arange(1, 301)) == pytest.approx((10 + 29 / 30, 290 + 1 / 30),
                                                              rel=1e-12)
    # Fewer than 4 distinct values (0/1 findings): the range.
    assert display_limits([0, 1, 1, 0, 1] * 50) == (0.0, 1.0)
    assert display_limits([1, 2, 3] * 30) == (1.0, 3.0)


class _TwoPredictors:
    """A fitted nomogram's attributes on a given design (age in years and a Rad score)."""

    def __init__(self, design: pd.DataFrame) -> None:
        self.nomogram_features_ = list(design.columns)
        self.nomogram_coef_ = np.array([0.04, 1.5])
        self.nomogram_intercept_ = -2.5
        self.nomogram_ranges_ = np.column_stack([design.min(), design.max()])
        self.nomogram_display_ranges_ = display_ranges(design)

    def nomogram_design(self, X: pd.DataFrame) -> pd.DataFrame:
        return X[self.nomogram_features_]


def test_an_outlier_does_not_squeeze_the_display_axes_and_points_stay_exact() -> None:
    rng = np.random.default_rng(5)
    design = pd.DataFrame({"age": rng.normal(55, 10, 250), "rad_score": rng.normal(0, 1, 250)})
    design.loc[7, "age"] = 900.0  # one mistyped age
    model = _TwoPredictors(design)
    full = nomogram_scale(model)  # type: ignore[arg-type]
    shown = nomogram_scale(model, axis="display")  # type: ignore[arg-type]
    age = np.sort(design["age"].to_numpy())
    assert full.high[0] == 900.0
    # n = 250 >= 200: the age axis runs from about the 10th smallest to the 10th largest age.
    assert age[9] <= shown.low[0] <= age[10] and age[-11] <= shown.high[0] <= age[-10]
    assert shown.high[0] < 100
    # With the full range the outlier stretches the age axis to 0-100 points and
    # squeeze the Rad score; with display limits the Rad score gets its share back.
    span = np.abs(shown.coef) * (shown.high - shown.low) * shown.points_per_lp
    assert span.max() == pytest.approx(100.0)
    full_span = np.abs(full.coef) * (full.high - full.low) * full.points_per_lp
    assert span[1] > 4 * full_span[1]  # here 100 points instead of 21
    # Points are exact for everyone, including beyond the displayed axis: same LP and risk.
    a = patient_points(model, design)  # type: ignore[arg-type]
    b = patient_points(model, design, axis="display")  # type: ignore[arg-type]
    lp = model.nomogram_intercept_ + design.to_numpy() @ model.nomogram_coef_
    for pts in (a, b):
        np.testing.assert_allclose(pts["linear_predictor"], lp, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(a["risk"], b["risk"], rtol=1e-12)
    assert b.loc[7, "points_age"] > 100  # past the end of its axis, computed exactly
    outlier = (900.0 * shown.coef[0] - shown.floor[0]) * shown.points_per_lp
    assert b.loc[7, "points_age"] == pytest.approx(outlier, rel=1e-12)
    fig = draw_nomogram(model, "Nomogram", axis="display")  # type: ignore[arg-type]
    texts = {t.get_text() for ax in fig.axes for t in ax.texts}
    plt.close(fig)
    assert {predictor_label("age"), "Rad score"} <= texts
    with pytest.raises(ValueError, match="axis"):
        nomogram_scale(model, axis="trimmed")  # type: ignore[arg-type]


def test_fitted_model_stores_display_ranges_and_binary_axes_keep_0_and_1(case: Case) -> None:
    model = case.model
    design = model.training_design(case.train.X, case.train.y, case.train.reader2)
    np.testing.assert_allclose(model.nomogram_display_ranges_, display_ranges(design))
    shown = nomogram_scale(model, axis="display")
    for j, name in enumerate(shown.names):
        if set(np.unique(design[name])) <= {0.0, 1.0}:
            assert (shown.low[j], shown.high[j]) == (0.0, 1.0)
        else:  # n = 120 < 200: the 5th and 95th percentiles
            assert (shown.low[j], shown.high[j]) == pytest.approx(
                tuple(np.percentile(design[name], [5, 95])), rel=1e-12)
    np.testing.assert_allclose(patient_points(model, case.test.X, axis="display")["risk"],
                               model.predict_proba(case.test.X)[:, 1], rtol=1e-10)


def test_the_datadist_axes_setting_reaches_the_saved_scale(tmp_path_factory: pytest.TempPathFactory
                                                           ) -> None:
    import json

    from dtlr.services.modeler.run import run_modeler

    syn = build_store(tmp_path_factory.mktemp("axes"), {"A": 80, "B": 30}, n_radiomics=20,
                      seed=9)
    runs = {}
    for axes in ("full", "datadist"):
        settings = Settings.model_validate({"modeler": {"nomogram_axes": axes}})
        result = run_modeler(syn.store, "A", ["B"], settings, dtl=False, run_id=f"axes-{axes}")
        meta = (result.model_dir / "modeler.json").read_text(encoding="utf-8")
        runs[axes] = json.loads(meta)["nomogram"]
    full, shown = runs["full"], runs["datadist"]
    assert full["predictors"] == shown["predictors"] and full["coef"] == shown["coef"]
    assert any(lo_s > lo_f for lo_s, lo_f in zip(shown["train_low"], full["train_low"],
                                                 strict=True))  # 5th percentile, not the min
