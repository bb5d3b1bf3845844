"""scikit-learn's estimator contract, for every estimator of the modeler.

The five selectors (ICCFilter, FiniteColumns, SpearmanFilter, LassoSelector, ClinicalSelector)
run all of sklearn's common checks (``parametrize_with_checks``, legacy checks included) on
plain arrays, plus the public feature-name and set_output checks that
``parametrize_with_checks`` leaves out. They pass all but one, listed in
:data:`SELECTOR_EXPECTED_FAILURES` with its reason.

DTLRModel cannot be fitted on the arrays the common checks generate: it tells its feature
families apart by column prefix (``clinical:age``, ``radiomics:...``, ``dtl:...``) in one
DataFrame per cohort, and an array has no families, so it refuses arrays with a TypeError. It
runs the API checks (``legacy=False``): those that do not fit pass (repr, tags, nothing set in
``__init__``, NotFittedError before fit, mixin order...), those that fit are listed in
:data:`DTLR_EXPECTED_FAILURES`; the legacy checks that do not fit run too. What the fitting
checks verify (fit returns self, leaves its parameters alone, sets ``n_features_in_``, checks
X against y) is tested below on a small prefixed DataFrame instead.

Expected failures are strict: one that starts passing fails the suite, so the lists stay true.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest
from sklearn.base import BaseEstimator, clone
from sklearn.exceptions import NotFittedError
from sklearn.utils import estimator_checks as ec
from sklearn.utils import get_tags
from sklearn.utils.estimator_checks import parametrize_with_checks

from dtlr.services.modeler.clinical import ClinicalSelector
from dtlr.services.modeler.icc import ICCFilter
from dtlr.services.modeler.models import EVALUATION_SETTINGS, DTLRModel
from dtlr.services.modeler.selection import (
    FiniteColumns,
    LassoSelector,
    SpearmanFilter,
    selection_pipeline,
)
from dtlr.shared.config import Settings

# Small CV fold counts keep the checks fast; every other parameter is the default.
SELECTORS = [ICCFilter(), FiniteColumns(), SpearmanFilter(), LassoSelector(cv_folds=3),
             ClinicalSelector()]
SMALL_DTLR = {"lasso_cv_folds": 3, "platt_cv_folds": 3, "nomogram_folds": 3}
ESTIMATORS = [*SELECTORS, DTLRModel(**SMALL_DTLR)]

BY_NAME = ("looks a DataFrame's columns up by name, so transform accepts them reordered or with "
           "extra ones (a test cohort's feature table may list them in another order); only a "
           "missing kept one is a ValueError: test_dataframe_columns_are_looked_up_by_name")
SELECTOR_EXPECTED_FAILURES = {
    "ICCFilter": {"check_dataframe_column_names_consistency": BY_NAME},
    "ClinicalSelector": {"check_dataframe_column_names_consistency": BY_NAME},
}

ARRAY = ("fits on a plain array; DTLRModel needs a DataFrame with family-prefixed columns and "
         "raises TypeError for an array")
DTLR_EXPECTED_FAILURES = {
    "check_fit_score_takes_y": f"{ARRAY} (signature: test_dtlr_model_fit_contract)",
    "check_estimators_overwrite_params": f"{ARRAY} (test_dtlr_model_fit_contract)",
    "check_dont_overwrite_parameters": f"{ARRAY} (test_dtlr_model_fit_contract)",
    "check_estimators_fit_returns_self": f"{ARRAY} (test_dtlr_model_fit_contract)",
    "check_n_features_in_after_fitting": f"{ARRAY} (test_dtlr_model_fit_contract)",
    "check_readonly_memmap_input": ARRAY,
    "check_positive_only_tag_during_fit": ARRAY,
}


def _expected_failures(estimator: BaseEstimator) -> dict[str, str]:
    if isinstance(estimator, DTLRModel):
        return DTLR_EXPECTED_FAILURES
    return SELECTOR_EXPECTED_FAILURES.get(type(estimator).__name__, {})


@parametrize_with_checks(SELECTORS, expected_failed_checks=_expected_failures,
                         xfail_strict=True)
def test_selectors_pass_sklearn_common_checks(estimator: BaseEstimator,
                                              check: Callable) -> None:
    check(estimator)


@parametrize_with_checks([DTLRModel(**SMALL_DTLR)], legacy=False,
                         expected_failed_checks=_expected_failures, xfail_strict=True)
def test_dtlr_model_passes_sklearn_api_checks(estimator: BaseEstimator,
                                              check: Callable) -> None:
    check(estimator)


@pytest.mark.parametrize("check", [ec.check_parameters_default_constructible,
                                   ec.check_get_params_invariance, ec.check_set_params],
                         ids=lambda c: c.__name__)
def test_dtlr_model_passes_the_legacy_checks_that_do_not_fit(check: Callable) -> None:
    check("DTLRModel", DTLRModel(**SMALL_DTLR))


_NAME_CHECKS = [ec.check_dataframe_column_names_consistency,
                ec.check_transformer_get_feature_names_out,
                ec.check_transformer_get_feature_names_out_pandas,
                ec.check_get_feature_names_out_error, ec.check_set_output_transform,
                ec.check_set_output_transform_pandas]


def _name_check_params() -> list:
    params = []
    for est in SELECTORS:
        name = type(est).__name__
        for check in _NAME_CHECKS:
            reason = SELECTOR_EXPECTED_FAILURES.get(name, {}).get(check.__name__)
            marks = [pytest.mark.xfail(reason=reason, strict=True)] if reason else []
            params.append(pytest.param(est, check, marks=marks, id=f"{name}-{check.__name__}"))
    return params


@pytest.mark.parametrize(("estimator", "check"), _name_check_params())
@pytest.mark.filterwarnings("ignore:X has feature names, but")  # the set_output checks mix
@pytest.mark.filterwarnings("ignore:X does not have valid feature names")  # frames and arrays
def test_selectors_pass_feature_name_and_set_output_checks(estimator: BaseEstimator,
                                                           check: Callable) -> None:
    check(type(estimator).__name__, clone(estimator))


# --- the contract, stated directly -------------------------------------------------------


def _binary(n: int = 80, p: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Columns 0-1 carry the label; the rest is noise."""
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.repeat([0, 1], n // 2))
    X = rng.normal(size=(n, p))
    X[:, :2] += y[:, None]
    return X, y


def _cohort(n: int = 60, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """A model input as data.load_cohort builds it: clinical and radiomics columns, prefixed."""
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.repeat([0, 1], n // 2))
    radiomics = rng.normal(size=(n, 12)) + np.outer(y, np.r_[np.full(4, 1.0), np.zeros(8)])
    X = pd.DataFrame({
        "clinical:age": rng.normal(55, 10, n) + 6 * y,
        "clinical:sex": (rng.random(n) < 0.3 + 0.4 * y).astype(float),
        "clinical:shape": rng.integers(0, 2, n).astype(float),
        **{f"radiomics:f{j:02d}": radiomics[:, j] for j in range(12)},
    }, index=pd.Index([f"P{i:03d}" for i in range(n)], name="patient_id"))
    return X, y


@pytest.fixture(scope="module")
def cohort() -> tuple[pd.DataFrame, np.ndarray]:
    """A training cohort with a missing age and a radiomics feature missing for one patient."""
    X, y = _cohort()
    X.iloc[3, X.columns.get_loc("clinical:age")] = np.nan
    X.iloc[5, X.columns.get_loc("radiomics:f11")] = np.nan
    return X, y


@pytest.fixture(scope="module")
def fitted_model(cohort: tuple[pd.DataFrame, np.ndarray]) -> DTLRModel:
    X, y = cohort
    return DTLRModel(**SMALL_DTLR).fit(X, y)


@pytest.mark.parametrize("estimator", ESTIMATORS, ids=lambda e: type(e).__name__)
def test_every_use_before_fit_raises_not_fitted_error(estimator: BaseEstimator) -> None:
    X, _ = _binary()
    est = clone(estimator)
    if isinstance(est, DTLRModel):
        frame, _ = _cohort()
        uses = [lambda: est.predict(frame), lambda: est.predict_proba(frame),
                lambda: est.predict_proba_models(frame), lambda: est.scores(frame),
                lambda: est.nomogram_design(frame), lambda: est.nomogram_linear_predictor(frame),
                lambda: est.training_design(frame, np.zeros(len(frame)), {}),
                lambda: est.model_names, lambda: est.score(frame, np.zeros(len(frame)))]
    else:
        uses = [lambda: est.transform(X), lambda: est.get_support(),
                lambda: est.get_feature_names_out(), lambda: est.inverse_transform(X)]
        if isinstance(est, LassoSelector):
            uses.append(lambda: est.linear_score(X))
        if isinstance(est, ClinicalSelector):
            uses.append(est.table)
    for use in uses:
        with pytest.raises(NotFittedError):
            use()


ALLOW_NAN = {"ICCFilter": True, "FiniteColumns": True, "SpearmanFilter": False,
             "LassoSelector": False, "ClinicalSelector": True, "DTLRModel": True}


@pytest.mark.parametrize("estimator", ESTIMATORS, ids=lambda e: type(e).__name__)
def test_nan_tag_says_which_steps_accept_missing_values(estimator: BaseEstimator) -> None:
    assert get_tags(estimator).input_tags.allow_nan is ALLOW_NAN[type(estimator).__name__]


def test_steps_that_accept_nan_handle_it() -> None:
    X, y = _binary()
    X[4, 1] = np.nan
    # FiniteColumns drops the column with a NaN in training; later NaNs take training medians.
    finite = FiniteColumns().fit(X)
    np.testing.assert_array_equal(finite.support_, [True, False, True, True, True, True])
    test = X[:3].copy()
    test[0, 0] = np.nan
    assert finite.transform(test)[0, 0] == np.median(X[:, 0])
    # ClinicalSelector fits each regression on complete cases and keeps NaN for the imputer.
    clinical = ClinicalSelector().fit(X, y)
    assert clinical.support_[1] and np.isnan(clinical.transform(X)[4]).any()
    # ICCFilter passes a NaN feature on when it has no second reader, drops it when it has one.
    assert ICCFilter().fit(X).support_[1]
    ids = [f"P{i}" for i in range(len(X))]
    frame = pd.DataFrame(X, index=ids, columns=[f"f{j}" for j in range(X.shape[1])])
    second = (frame.iloc[:10] + 0.01).fillna(0.0)
    assert list(ICCFilter().fit(frame, reader2=second).support_) == [True, False, *[True] * 4]


@pytest.mark.parametrize("estimator", [SpearmanFilter(), LassoSelector(cv_folds=3)],
                         ids=lambda e: type(e).__name__)
def test_steps_after_finite_columns_refuse_nan(estimator: BaseEstimator) -> None:
    X, y = _binary()
    bad = X.copy()
    bad[4, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        clone(estimator).fit(bad, y)
    with pytest.raises(ValueError, match="NaN"):
        clone(estimator).fit(X, y).transform(bad)


PLAIN = (str, int, float, bool, type(None))


@pytest.mark.parametrize("estimator", ESTIMATORS, ids=lambda e: type(e).__name__)
def test_constructors_store_only_their_plain_parameters(estimator: BaseEstimator) -> None:
    cls = type(estimator)
    params = estimator.get_params()
    assert list(params) == sorted(inspect.signature(cls).parameters)
    assert all(isinstance(v, PLAIN) for v in params.values()), params
    assert cls(**params).get_params() == params
    assert clone(estimator).get_params() == params
    # set_params round trip: changed values are stored as given, nothing else moves.
    numbers = {k: v + 1 for k, v in params.items() if type(v) in (int, float)}
    assert clone(estimator).set_params(**numbers).get_params() == {**params, **numbers}


def test_settings_become_plain_constructor_values() -> None:
    settings = Settings(seed=7, modeler={"lasso_cv_folds": 4, "icc_form": "ICC3"})
    model = DTLRModel.from_settings(settings)
    expected = settings.modeler.model_dump(exclude=EVALUATION_SETTINGS) | {"random_state": 7}
    assert model.get_params() == expected
    pipe = selection_pipeline(icc_form="ICC3", icc_threshold=0.7, spearman_threshold=0.8,
                              lasso_cv_folds=4, lasso_max_steps=50, random_state=7)
    assert pipe.get_params()["icc__form"] == "ICC3"
    assert pipe.get_params()["icc__threshold"] == 0.7
    assert pipe.get_params()["spearman__threshold"] == 0.8
    assert pipe.named_steps["lasso"].get_params() == {"cv_folds": 4, "max_steps": 50,
                                                       "random_state": 7}
    with pytest.raises(TypeError):
        selection_pipeline(settings.modeler, 7)  # type: ignore[misc]


@pytest.mark.parametrize("estimator", [SpearmanFilter(), LassoSelector(cv_folds=3),
                                       ClinicalSelector()], ids=lambda e: type(e).__name__)
def test_supervised_selectors_take_a_binary_label(estimator: BaseEstimator) -> None:
    X, y = _binary()
    assert get_tags(estimator).target_tags.required
    with pytest.raises(ValueError, match="3 classes"):
        clone(estimator).fit(X, np.arange(len(y)) % 3)
    with pytest.raises(ValueError, match="1 class"):
        clone(estimator).fit(X, np.zeros(len(y)))
    with pytest.raises(ValueError, match="requires y"):
        clone(estimator).fit(X, None)
    # Any two labels: the larger is the positive class, as 1 is for 0/1.
    a, b = clone(estimator).fit(X, y), clone(estimator).fit(X, np.where(y == 1, 5, 2))
    np.testing.assert_array_equal(a.get_support(), b.get_support())


@pytest.mark.filterwarnings("ignore:X does not have valid feature names")
def test_dataframe_columns_are_looked_up_by_name() -> None:
    X, y = _binary()
    frame = pd.DataFrame(X, columns=[f"f{j}" for j in range(X.shape[1])])
    for est in (ICCFilter(), ClinicalSelector()):
        est.fit(frame, y)
        expected = est.transform(frame)
        shuffled = frame[frame.columns[::-1]].assign(extra=1.0)
        np.testing.assert_array_equal(est.transform(shuffled), expected)
        with pytest.raises(ValueError, match=r"1 feature.*f0"):
            est.transform(frame.drop(columns="f0"))
        # A feature the selector dropped may be absent.
        dropped = frame.columns[~est.get_support()]
        np.testing.assert_array_equal(est.transform(frame.drop(columns=dropped)), expected)
        # An array is checked by position and width, as sklearn does.
        np.testing.assert_array_equal(est.transform(X), expected)
        with pytest.raises(ValueError, match="expecting 6 features"):
            est.transform(X[:, :5])


def test_dtlr_model_fit_contract(cohort: tuple[pd.DataFrame, np.ndarray],
                                 fitted_model: DTLRModel) -> None:
    X, y = cohort
    unfitted = DTLRModel(**SMALL_DTLR)
    assert list(inspect.signature(unfitted.fit).parameters)[:2] == ["X", "y"]
    assert list(inspect.signature(unfitted.score).parameters)[:2] == ["X", "y"]
    # fit returns self and leaves the parameters as they were; it adds fitted attributes only.
    model = clone(unfitted)
    before = model.get_params()
    assert model.fit(X, y) is model
    assert model.get_params() == before
    public = {k for k in vars(model) if not k.startswith("_")}
    assert public - set(before) and all(k.endswith("_") for k in public - set(before))
    assert model.n_features_in_ == X.shape[1]
    np.testing.assert_array_equal(model.feature_names_in_, X.columns)
    # NaN in a clinical value and in a radiomics feature (the allow_nan tag) is handled.
    assert "f11" not in model.family_models_["radiomics"][:-1].get_feature_names_out()
    assert np.isfinite(fitted_model.predict_proba(X)).all()
    np.testing.assert_array_equal(fitted_model.classes_, [0, 1])
    assert set(fitted_model.predict(X)) <= {0, 1}


def test_dtlr_model_refuses_arrays_and_bad_labels(cohort: tuple[pd.DataFrame, np.ndarray],
                                                  fitted_model: DTLRModel) -> None:
    X, y = cohort
    with pytest.raises(TypeError, match="family-prefixed"):
        DTLRModel().fit(X.to_numpy(), y)
    with pytest.raises(TypeError, match="family-prefixed"):
        fitted_model.predict(X.to_numpy())
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        DTLRModel().fit(X, y[:-1])
    with pytest.raises(ValueError, match="NaN"):
        DTLRModel().fit(X, np.where(np.arange(len(y)) == 0, np.nan, y))
    with pytest.raises(ValueError, match="both 0"):
        DTLRModel().fit(X, np.where(y == 1, 2, 0))
    with pytest.raises(ValueError, match="requires y"):
        DTLRModel().fit(X, None)
