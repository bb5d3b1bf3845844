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
