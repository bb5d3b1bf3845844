"""The four models: families, explicit scores, the nomogram's fit, thresholds, persistence."""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import skops.io as sio
import statsmodels.api as sm
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from dtlr.services.modeler.data import CohortData, load_cohort
from dtlr.services.modeler.models import DTLRModel, family_columns
from dtlr.services.modeler.persist import MODEL_FILE, ModelFileError, load_model, save_model
from dtlr.shared.config import Settings
from dtlr.shared.stats import youden_threshold
from dtlr.shared.store import Store
from tests.synthetic.cohorts import build_store


@dataclass
class Fitted:
    store: Store
    train: CohortData
    test: CohortData
    model: DTLRModel


def _with_dtl(data: CohortData, seed: int, n_reader2: int = 0) -> CohortData:
    """Add 40 DTL-like columns (8 carry the label) and a second reader's table in memory."""
    rng = np.random.default_rng(seed)
    n = data.n
    latent = rng.normal(size=(n, 40)) + np.outer(data.y - 0.5, np.r_[np.full(8, 1.0),
                                                                     np.zeros(32)])
    names = [f"dtl_{j:04d}" for j in range(40)]
    dtl = pd.DataFrame(np.logaddexp(0, latent), index=data.X.index, columns=names)
    X = pd.concat([data.X, dtl.add_prefix("dtl:")], axis=1)
    reader2 = dict(data.reader2)
    if n_reader2:
        reader2["dtl"] = dtl.iloc[:n_reader2] + rng.normal(0, 0.05, (n_reader2, 40))
    return CohortData(data.cohort, X, data.y, data.clinical, reader2, "in-memory", [], {})


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> Fitted:
    syn = build_store(tmp_path_factory.mktemp("models"), {"A": 140, "B": 70}, n_radiomics=40)
    train = _with_dtl(load_cohort(syn.store, "A", with_reader2=True), 1, n_reader2=20)
    test = _with_dtl(load_cohort(syn.store, "B"), 2)
    model = DTLRModel.from_settings(Settings()).fit(train.X, train.y, reader2=train.reader2)
    return Fitted(syn.store, train, test, model)


def test_every_family_is_modelled_and_thresholds_are_out_of_fold_youden(fitted: Fitted) -> None:
    m = fitted.model
    assert m.model_names == ["clinical", "radiomics", "dtl", "nomogram"]
    assert m.nomogram_features_[-2:] == ["rad_score", "dtl_score"]
    assert m.oof_proba_.shape == (fitted.train.n, 4) and np.isfinite(m.oof_proba_).all()
    for j, name in enumerate(m.model_names):
        assert m.thresholds_[name] == youden_threshold(fitted.train.y, m.oof_proba_[:, j])
    icc = m.family_models_["dtl"].named_steps["icc"]
    assert icc.n_pairs_ == 20


def test_rad_and_dtl_scores_are_intercept_plus_coefficients_times_z_scores(
        fitted: Fitted) -> None:
    m, X = fitted.model, fitted.test.X
    scores = m.scores(X)
    for family, score in (("radiomics", "rad_score"), ("dtl", "dtl_score")):
        pipe = m.family_models_[family]
        z, sp, lasso = (pipe.named_steps[s] for s in ("zscore", "spearman", "lasso"))
        names = list(pipe[:-1].get_feature_names_out())
        idx = np.flatnonzero(sp.support_)[lasso.support_]
        raw = family_columns(X, family)[names].to_numpy()
        by_hand = lasso.intercept_ + ((raw - z.mean_[idx]) / z.scale_[idx]) @ lasso.coef_[
            lasso.support_]
        np.testing.assert_allclose(scores[score], by_hand, rtol=1e-10, atol=1e-12)
        assert 0 < len(names) < family_columns(X, family).shape[1]


def test_nomogram_is_logistic_regression_in_natural_units(fitted: Fitted) -> None:
    m = fitted.model
    training = m.training_design(fitted.train.X, fitted.train.y, fitted.train.reader2)
    design = training.to_numpy()
    # Fitted on out-of-fold scores: the clinical columns are the patients' own, the scores
    # differ from (and are less optimistic than) the final pipelines' in-sample scores.
    in_sample = m.nomogram_design(fitted.train.X)
    clinical = [c for c in in_sample.columns if not c.endswith("_score")]
    pd.testing.assert_frame_equal(training[clinical], in_sample[clinical])
    for score in ("rad_score", "dtl_score"):
        assert not np.allclose(training[score], in_sample[score])
        assert roc_auc_score(fitted.train.y, training[score]) < roc_auc_score(
            fitted.train.y, in_sample[score])
    # Default: sklearn's L2 logistic regression (C = 1) on z-scored predictors, mapped back.
    mean, sd = design.mean(axis=0), design.std(axis=0)
    ref = LogisticRegression(C=1.0, solver="newton-cholesky", tol=1e-10).fit((design - mean) / sd,
                                                                  fitted.train.y)
    np.testing.assert_allclose(m.nomogram_coef_, ref.coef_[0] / sd, rtol=1e-8)
    lp = m.nomogram_linear_predictor(fitted.test.X)
    test_design = m.nomogram_design(fitted.test.X).to_numpy()
    np.testing.assert_allclose(lp, ref.decision_function((test_design - mean) / sd), rtol=1e-8)
    np.testing.assert_allclose(lp, m.nomogram_intercept_ + test_design @ m.nomogram_coef_)
    risk = m.predict_proba(fitted.test.X)[:, 1]
    np.testing.assert_allclose(risk, 1 / (1 + np.exp(-lp)), rtol=1e-12)
    np.testing.assert_allclose(m.predict_proba(fitted.test.X).sum(axis=1), 1.0)
    np.testing.assert_array_equal(m.predict(fitted.test.X),
                                  (risk >= m.thresholds_["nomogram"]).astype(int))


def test_unpenalised_nomogram_is_the_logistic_mle(fitted: Fitted) -> None:
    X = fitted.train.X.drop(columns=[c for c in fitted.train.X.columns if c.startswith("dtl:")])
    settings = Settings(modeler={"nomogram_c": None, "nomogram_scores": "in-sample"})
    m = DTLRModel.from_settings(settings).fit(X, fitted.train.y)
    pd.testing.assert_frame_equal(m.training_design(X, fitted.train.y, {}),
                                  m.nomogram_design(X))
    ref = sm.Logit(fitted.train.y, sm.add_constant(m.nomogram_design(X).to_numpy())).fit(disp=0)
    params = np.asarray(ref.params)
    np.testing.assert_allclose(m.nomogram_intercept_, params[0], rtol=1e-5)
    np.testing.assert_allclose(m.nomogram_coef_, params[1:], rtol=1e-5)


def test_clinical_model_reads_only_the_selected_clinical_features(fitted: Fitted) -> None:
    m = fitted.model
    chosen = set(m.clinical_.named_steps["select"].get_feature_names_out())
    others = [c for c in family_columns(fitted.test.X, "clinical").columns if c not in chosen]
    assert others
    changed = fitted.test.X.copy()
    for c in others:
        changed[f"clinical:{c}"] = 99.0
    before = m.predict_proba_models(fitted.test.X)
    after = m.predict_proba_models(changed)
    pd.testing.assert_frame_equal(before, after)


def test_without_dtl_columns_the_model_runs_clinical_radiomics_and_nomogram(
        fitted: Fitted) -> None:
    X = fitted.train.X.drop(columns=[c for c in fitted.train.X.columns if c.startswith("dtl:")])
    m = DTLRModel.from_settings(Settings()).fit(X, fitted.train.y,
                                                reader2={"radiomics":
                                                         fitted.train.reader2["radiomics"]})
    assert m.model_names == ["clinical", "radiomics", "nomogram"]
    assert "dtl_score" not in m.nomogram_features_
    with pytest.raises(ValueError, match="both 0"):
        DTLRModel().fit(X, np.ones(len(X), dtype=int))


def test_saved_model_loads_without_pickle_and_predicts_identically(fitted: Fitted) -> None:
    folder = save_model(fitted.store, "unit-run", fitted.model, {"note": "test"})
    with zipfile.ZipFile(folder / MODEL_FILE) as z:
        names = z.namelist()
    assert "schema.json" in names
    assert not any(n.endswith((".pkl", ".pickle")) for n in names)
    loaded, meta = load_model(fitted.store, "unit-run")
    assert meta["note"] == "test"
    assert "dtlr.services.modeler.models.DTLRModel" in meta["trusted_types"]
    pd.testing.assert_frame_equal(loaded.predict_proba_models(fitted.test.X),
                                  fitted.model.predict_proba_models(fitted.test.X))
    assert loaded.thresholds_ == fitted.model.thresholds_


class Untrusted:
    """A type no model file may contain."""


def test_loading_refuses_a_file_with_untrusted_types(fitted: Fitted, tmp_path: Path) -> None:
    folder = fitted.store.model_dir("evil-run")
    folder.mkdir(parents=True, exist_ok=True)
    sio.dump({"model": Untrusted()}, folder / MODEL_FILE)
    with pytest.raises(ModelFileError, match="not trusted"):
        load_model(fitted.store, "evil-run")
    with pytest.raises(ModelFileError, match="no fitted model"):
        load_model(fitted.store, "missing-run")
