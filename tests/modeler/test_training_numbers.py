"""Honest training-set numbers and statistics that say when they cannot be computed.

- thresholds come from out-of-fold predictions of the whole pipeline, not in-sample ones;
- training AUCs are apparent, with Harrell's bootstrap optimism-corrected AUC beside them;
- calibration intercept and slope (with CIs) for every model and cohort;
- a test cohort with one grade, or a single patient of a grade, completes with the undefined
  statistics reported as undefined and why (`dtlr model` exits 0).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.special import expit
from sklearn.linear_model import LogisticRegression

from dtlr.services.modeler.data import load_cohort
from dtlr.services.modeler.models import DTLRModel
from dtlr.services.modeler.optimism import bootstrap_optimism
from dtlr.services.modeler.run import run_modeler
from dtlr.shared.config import Settings
from dtlr.shared.manifest import register
from dtlr.shared.stage import InputError
from dtlr.shared.stats import roc_auc_delong, youden_threshold
from dtlr.shared.stats.calibration import calibration_intercept_slope
from dtlr.shared.store import Store
from tests.cluster import BIN
from tests.synthetic.cohorts import DATA_ROOTS, build_store

FEW_BOOTSTRAPS = {"modeler": {"optimism_bootstraps": 8, "n_jobs": 1}}


# ---- calibration intercept and slope ------------------------------------------------------

def test_calibration_of_an_in_sample_logistic_fit_is_exactly_ideal() -> None:
    """Maximum likelihood's score equations make an unpenalised logistic model's in-sample
    calibration intercept 0 and slope 1, whatever the data."""
    rng = np.random.default_rng(4)
    X = rng.normal(size=(300, 3))
    y = (rng.random(300) < expit(X @ [1.0, -0.5, 0.3])).astype(int)
    p = LogisticRegression(C=np.inf, tol=1e-12, max_iter=1000).fit(X, y).predict_proba(X)[:, 1]
    c = calibration_intercept_slope(y, p)
    assert c.slope == pytest.approx(1.0, abs=1e-5)
    assert c.intercept == pytest.approx(0.0, abs=1e-5)
    assert c.slope_ci_low < 1 < c.slope_ci_high and c.reason == ""


def test_calibration_detects_overfitted_and_shifted_risks() -> None:
    rng = np.random.default_rng(5)
    lp = rng.normal(size=20000)
    y = rng.random(lp.size) < expit(lp)
    too_extreme = calibration_intercept_slope(y, expit(2 * lp))
    assert too_extreme.slope == pytest.approx(0.5, abs=0.03)
    assert too_extreme.slope_ci_high < 0.6
    too_low = calibration_intercept_slope(y, expit(lp - 1))
    assert too_low.intercept == pytest.approx(1.0, abs=0.05)
    assert too_low.slope == pytest.approx(1.0, abs=0.05)


@pytest.mark.parametrize("y,p,words", [
    ([1, 1, 1], [0.2, 0.5, 0.7], "only high-grade patients"),
    ([0, 1, 0, 1], [0.1, 0.2, 0.3, 1.0], "exactly 0 or 1"),
    ([0, 0, 1, 1], [0.1, 0.3, 0.3, 0.8], "separate the grades"),
    ([0, 1, 0, 1], [0.4, 0.4, 0.4, 0.4], "same predicted risk"),
])
def test_calibration_says_why_it_is_undefined(y: list[int], p: list[float], words: str) -> None:
    c = calibration_intercept_slope(y, p)
    assert np.isnan(c.slope) and np.isnan(c.slope_ci_low)
    assert words in c.reason


# ---- out-of-fold thresholds and optimism ---------------------------------------------------

@pytest.fixture(scope="module")
def noise(tmp_path_factory: pytest.TempPathFactory) -> tuple[pd.DataFrame, np.ndarray, dict]:
    """A training cohort whose radiomics features carry no signal: any apparent radiomics AUC
    above 0.5 is memorisation."""
    syn = build_store(tmp_path_factory.mktemp("noise"), {"A": 60, "B": 20}, n_radiomics=200,
                      seed=3, radiomics_strength=0.0)
    data = load_cohort(syn.store, "A", None, with_reader2=True)
    return data.X, data.y, data.reader2


def test_thresholds_are_youden_on_out_of_fold_predictions(noise: tuple) -> None:
    X, y, reader2 = noise
    model = DTLRModel(threshold_folds=4, n_jobs=1).fit(X, y, reader2=reader2)
    oof = pd.DataFrame(model.oof_proba_, index=X.index, columns=model.model_names)
    apparent = model.predict_proba_models(X)
    for m in model.model_names:
        assert model.thresholds_[m] == youden_threshold(y, oof[m])
    # The out-of-fold predictions are those of pipelines that never saw the patient: on noise
    # they rank patients no better than chance, while the in-sample SVM memorised them.
    assert roc_auc_delong(y, apparent["radiomics"]).auc > 0.8
    assert roc_auc_delong(y, oof["radiomics"]).auc < 0.7
    assert model.thresholds_["radiomics"] != youden_threshold(y, apparent["radiomics"])


def test_optimism_correction_removes_memorisation_and_is_seeded(noise: tuple) -> None:
    X, y, reader2 = noise
    model = DTLRModel(threshold_folds=3, n_jobs=1).fit(X, y, reader2=reader2)
    first = bootstrap_optimism(model, X, y, reader2, bootstraps=6, seed=3)
    assert first == bootstrap_optimism(model, X, y, reader2, bootstraps=6, seed=3)
    assert first.used == 6
    apparent = roc_auc_delong(y, model.predict_proba_models(X)["radiomics"]).auc
    corrected = apparent - first.optimism["radiomics"]
    assert apparent > 0.9
    assert first.optimism["radiomics"] > 0.1  # noise: the corrected AUC falls back towards 0.5
    assert corrected < apparent - 0.1


# ---- the run: report and metrics -----------------------------------------------------------

@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Training A; test B as usual; C with high-grade patients only; D with one low grade."""
    syn = build_store(tmp_path_factory.mktemp("cohorts"), {"A": 100, "B": 40, "C": 30, "D": 30},
                      n_radiomics=40, seed=21)
    for name, keep_low in (("C", 0), ("D", 1)):
        csv = syn.store.root / "manifests" / f"{name}.csv"
        rows = pd.read_csv(csv, dtype=str, keep_default_na=False)
        rows = pd.concat([rows[rows.label == "1"], rows[rows.label == "0"].head(keep_low)])
        rows.to_csv(csv.with_name(f"{name}-subset.csv"), index=False)
        register(syn.store, name, csv.with_name(f"{name}-subset.csv"), DATA_ROOTS)
    syn.store.refresh_catalog()
    return syn.store.root


def test_dtlr_model_completes_with_undefined_statistics_explained(store: Path,
                                                                  tmp_path: Path) -> None:
    config = tmp_path / "few.yaml"
    config.write_text(json.dumps(FEW_BOOTSTRAPS), encoding="utf-8")
    out = subprocess.run([str(BIN / "dtlr"), "model", "--train", "A", "--test", "B", "--test",
                          "C", "--test", "D", "--run-id", "edge", "--config", str(config),
                          "--store", str(store)], capture_output=True, encoding="utf-8",
                         timeout=600, env={**os.environ, "COLUMNS": "160"})
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Traceback" not in out.stdout + out.stderr
    assert "Table 3, A (training, apparent)" in out.stdout
    assert "optimism-corrected AUC (bootstrap): Clinical" in out.stdout
    m = pd.read_parquet(store / "runs" / "edge" / "metrics.parquet").set_index(
        ["cohort", "model", "metric"])

    # B: everything defined; calibration for every model.
    for model in ("clinical", "radiomics", "nomogram"):
        for metric in ("auc", "calibration_intercept", "calibration_slope"):
            row = m.loc[("B", model, metric)]
            assert np.isfinite(row.value) and row.ci_low < row.value < row.ci_high
            assert row.note == ""
    # A: apparent AUC, optimism over 8 bootstrap samples, corrected = apparent - optimism.
    for model in ("clinical", "radiomics", "nomogram"):
        apparent = m.loc[("A", model, "auc"), "value"]
        optimism = m.loc[("A", model, "auc_optimism")]
        assert optimism.denominator == 8 and optimism.numerator == 8
        assert m.loc[("A", model, "auc_corrected"), "value"] == pytest.approx(
            apparent - optimism.value)
        assert ("B", model, "auc_corrected") not in m.index

    # C: one grade. Defined: accuracy, sensitivity; undefined with the reason: the rest.
    auc = m.loc[("C", "nomogram", "auc")]
    assert np.isnan(auc.value) and "only high-grade patients (15)" in auc.note
    assert np.isfinite(m.loc[("C", "nomogram", "sensitivity"), "value"])
    assert np.isfinite(m.loc[("C", "nomogram", "accuracy"), "value"])
    spec = m.loc[("C", "nomogram", "specificity")]
    assert np.isnan(spec.value) and "denominator of specificity" in spec.note
    slope = m.loc[("C", "nomogram", "calibration_slope")]
    assert np.isnan(slope.value) and "need both grades" in slope.note
    assert ("C", "nomogram", "hosmer_lemeshow_p") not in m.index
    assert np.isnan(m.loc[("C", "nomogram", "delong_p_vs_clinical"), "value"])

    # D: one low-grade patient. AUC defined, its DeLong CI and the DeLong tests are not.
    auc = m.loc[("D", "nomogram", "auc")]
    assert np.isfinite(auc.value) and np.isnan(auc.ci_low) and "no DeLong CI" in auc.note
    assert "no DeLong variance" in m.loc[("D", "nomogram", "delong_p_vs_clinical"), "note"]

    report = (store / "runs" / "edge" / "report.html").read_text(encoding="utf-8")
    assert "Training set (A), apparent" in report
    assert "AUC, optimism-corrected" in report and "Harrell" in report
    assert "Calibration intercept and slope" in report
    assert "Test set (C): undefined (-) where only high-grade patients (15)" in report
    meta = json.loads((store / "models" / "edge" / "modeler.json").read_text(encoding="utf-8"))
    assert meta["thresholds_from"] == "out-of-fold predictions, 5 folds"
    assert meta["optimism"]["bootstraps"] == 8 and meta["optimism"]["seed"] == Settings().seed


def test_a_training_cohort_too_small_for_cross_validation_is_refused(store: Path) -> None:
    data = load_cohort(Store(store), "D", None)
    with pytest.raises(InputError, match="at least 3 of each grade"):
        DTLRModel(n_jobs=1).fit(data.X, data.y)


def test_run_modeler_without_bootstrap_says_so(store: Path) -> None:
    settings = Settings(modeler={"optimism_bootstraps": 0, "n_jobs": 1})
    result = run_modeler(Store(store), "A",
                         ["B"], settings, run_id="no-boot")
    html = result.report_path.read_text(encoding="utf-8")
    assert "no bootstrap optimism correction was run" in html
    assert "auc_corrected" not in set(result.metrics["metric"])


def test_a_cohort_too_small_for_out_of_fold_refits_says_its_thresholds_are_in_sample(
        store: Path) -> None:
    data = load_cohort(Store(store), "A", None)
    rows = np.r_[np.flatnonzero(data.y == 0)[:3], np.flatnonzero(data.y == 1)[:20]]
    model = DTLRModel(n_jobs=1).fit(data.X.iloc[rows], data.y[rows])
    assert model.thresholds_from_.startswith("in-sample predictions: the out-of-fold refits "
                                             "could not be fitted (the training cohort has 2")
    apparent = model.predict_proba_models(data.X.iloc[rows])
    assert model.thresholds_["nomogram"] == youden_threshold(data.y[rows], apparent["nomogram"])
    assert not hasattr(model, "oof_proba_")
