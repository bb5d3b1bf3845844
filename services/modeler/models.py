"""The four models of the paper as one sklearn estimator fitted on the training cohort.

Clinical model: SVM on the clinical features chosen by :class:`ClinicalSelector`.
Radiomics / DTL models: SVM on each family's LASSO-selected features (:mod:`selection`).
Nomogram: logistic regression on the selected clinical features in natural units + Rad score
(+ DTL score), the LASSO linear predictors. By default (``nomogram_scores="out-of-fold"``) it
is fitted on out-of-fold scores: each training patient's Rad/DTL score comes from the whole
selection pipeline (ICC, z-score, Spearman, LASSO) refitted without that patient's fold, so
the nomogram weighs each score by how well it predicts patients it has not seen (stacked
generalisation, Wolpert 1992). The paper fitted it on in-sample scores, which a LASSO fitted
on the same patients makes look better than they are (``"in-sample"`` reproduces that). New
patients always get the scores of the pipelines fitted on the whole training cohort. It is
fitted on z-scored predictors with an L2 penalty (``nomogram_c``, sklearn's default C = 1;
None = unpenalised MLE as rms::lrm), because scores can separate the grades and the
unpenalised MLE then does not exist; the coefficients are mapped back to natural units, so the
linear predictor stays ``intercept + sum(coef x predictor)`` and the nomogram reads in natural
units.
Each model's decision threshold is Youden's J on its out-of-fold training predictions: each
training patient predicted by the whole pipeline (selection, SVMs, nomogram) refitted without
its fold (``threshold_folds``), so a threshold is chosen where the model stands on patients it
has not seen rather than on the in-sample predictions a LASSO and an SVM make look better.

Input is one DataFrame per cohort, indexed by patient_id, with family-prefixed columns
(``clinical:age``, ``radiomics:original_shape_...``, ``dtl:dtl_0000``); see :mod:`data`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from joblib import Parallel, delayed
from numpy.typing import NDArray
from scipy.special import expit
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.calibration import CalibratedClassifierCV
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC
from sklearn.utils import Tags
from sklearn.utils.validation import check_is_fitted, validate_data

from dtlr.services.modeler.clinical import ClinicalSelector
from dtlr.services.modeler.selection import selection_pipeline
from dtlr.shared.config import Settings
from dtlr.shared.stage import InputError
from dtlr.shared.stats import youden_threshold
from dtlr.shared.stats.datadist import display_ranges

FAMILIES = ("clinical", "radiomics", "dtl")
SCORE_NAMES = {"radiomics": "rad_score", "dtl": "dtl_score"}
# Modeler settings that are not fit parameters (used by services/modeler/evaluate.py).
EVALUATION_SETTINGS = {"hosmer_lemeshow_groups", "calibration_bins", "prevalence",
                       "nomogram_axes", "optimism_bootstraps"}
MODEL_LABELS = {"clinical": "Clinical model", "radiomics": "Radiomics model",
                "dtl": "DTL model", "nomogram": "DTLR nomogram"}


def family_columns(X: pd.DataFrame, family: str) -> pd.DataFrame:
    """One family's columns of a model input, without the ``family:`` prefix."""
    prefix = f"{family}:"
    cols = [c for c in X.columns if c.startswith(prefix)]
    return X[cols].rename(columns=lambda c: c[len(prefix):])


def model_label(model: str, families: list[str]) -> str:
    """Display name; the nomogram is the DTLR nomogram only when the DTL score is in it."""
    if model == "nomogram" and "dtl" not in families:
        return "Clinical-radiomics nomogram"
    return MODEL_LABELS[model]


class DTLRModel(ClassifierMixin, BaseEstimator):
    """Clinical, radiomics and DTL SVMs plus the nomogram; ``predict_proba`` is the nomogram's.

    ``fit(X, y, reader2={"radiomics": table, "dtl": table})`` passes each family's second-reader
    table (unprefixed columns, indexed by patient_id) to that family's ICC filter. Families
    without columns in X are left out (the DTL family until the GPU stage has run).

    X must be a DataFrame (an array has no family prefixes: TypeError); y holds 0 and 1. NaN
    is accepted (the ``allow_nan`` tag): missing clinical values are imputed with training
    medians, non-finite features are dropped or imputed by each family's FiniteColumns step.
    Every method that needs the fitted models raises NotFittedError before ``fit``. The
    constructor takes plain values only; :meth:`from_settings` maps the settings onto them.
    """

    def __init__(self, icc_form: str = "ICC2", icc_threshold: float = 0.8,
                 spearman_threshold: float = 0.9, lasso_cv_folds: int = 10,
                 lasso_max_steps: int = 100,
                 clinical_p_threshold: float = 0.05,
                 svm_kernel: str = "rbf", svm_c: float = 1.0, platt_cv_folds: int = 5,
                 nomogram_c: float | None = 1.0, nomogram_scores: str = "out-of-fold",
                 nomogram_folds: int = 5, threshold_folds: int = 5, n_jobs: int | None = None,
                 random_state: int = 0) -> None:
        self.icc_form = icc_form
        self.icc_threshold = icc_threshold
        self.spearman_threshold = spearman_threshold
        self.lasso_cv_folds = lasso_cv_folds
        self.lasso_max_steps = lasso_max_steps
        self.clinical_p_threshold = clinical_p_threshold
        self.svm_kernel = svm_kernel
        self.svm_c = svm_c
        self.platt_cv_folds = platt_cv_folds
        self.nomogram_c = nomogram_c
        self.nomogram_scores = nomogram_scores
        self.nomogram_folds = nomogram_folds
        self.threshold_folds = threshold_folds
        self.n_jobs = n_jobs
        self.random_state = random_state

    @classmethod
    def from_settings(cls, settings: Settings) -> DTLRModel:
        """An unfitted model with the settings' modeler section and seed."""
        # Every modeler setting except the evaluation ones is an estimator parameter: a new
        # setting without its parameter fails here instead of being silently ignored.
        params = settings.modeler.model_dump(exclude=EVALUATION_SETTINGS)
        return cls(**params, random_state=settings.seed)

    def _folds(self, n_folds: int) -> StratifiedKFold:
        """Seeded stratified folds, at most as many as the smaller grade has patients."""
        return StratifiedKFold(min(n_folds, self.minority_), shuffle=True,
                               random_state=self.random_state)

    def _svm(self) -> CalibratedClassifierCV:
        """SVM with Platt-scaled probabilities from seeded stratified CV (sklearn's replacement
        for SVC(probability=True)); the final SVM is refit on all training rows."""
        cv = self._folds(self.platt_cv_folds)
        svc = SVC(kernel=self.svm_kernel, C=self.svm_c, random_state=self.random_state)
        return CalibratedClassifierCV(svc, method="sigmoid", cv=cv, ensemble=False)

    def _selection_pipeline(self) -> Pipeline:
        """One family's unfitted selection pipeline with this estimator's parameters."""
        return selection_pipeline(icc_form=self.icc_form, icc_threshold=self.icc_threshold,
                                  spearman_threshold=self.spearman_threshold,
                                  lasso_cv_folds=self.lasso_cv_folds,
                                  lasso_max_steps=self.lasso_max_steps,
                                  random_state=self.random_state)

    @staticmethod
    def _check_frame(X: object) -> pd.DataFrame:
        """X must be a DataFrame: the families are told apart by their column prefixes."""
        if not isinstance(X, pd.DataFrame):
            raise TypeError(f"DTLRModel needs a DataFrame with family-prefixed columns "
                            f"(clinical:..., radiomics:..., dtl:...), not {type(X).__name__}")
        return X

    def fit(self, X: pd.DataFrame, y: NDArray[np.int_],
            reader2: dict[str, pd.DataFrame] | None = None) -> DTLRModel:
        """Fit every model on the training cohort only, then each model's Youden threshold on
        out-of-fold predictions (``threshold_folds``; 0: on the in-sample predictions, as the
        refits inside :meth:`out_of_fold_proba` and the bootstrap, whose thresholds are unused).
        """
        # Numeric, 2-D, as many labels as rows, labels 1-D and finite; sets n_features_in_ and
        # feature_names_in_. NaN and inf are left to the families' steps (see the tags).
        _, y = validate_data(self, self._check_frame(X), y, dtype=np.float64,
                             ensure_all_finite=False)
        if set(np.unique(y)) != {0, 1}:
            raise InputError("training labels must contain both 0 (low grade) and 1 (high grade)")
        y = y.astype(np.int64)
        self.minority_ = int(min(y.sum(), y.size - y.sum()))
        # Out-of-fold nomogram scores refit LASSO on folds, each of which needs 2 of a grade.
        need = 3 if self.nomogram_scores == "out-of-fold" else 2
        if self.minority_ < need:
            raise InputError(f"the training cohort has {self.minority_} patient(s) of one grade; "
                             f"the models' cross-validation needs at least {need} of each grade")
        reader2 = reader2 or {}
        self.classes_ = np.array([0, 1])
        self.families_ = [f for f in FAMILIES[1:] if not family_columns(X, f).empty]
        if "radiomics" not in self.families_:
            raise InputError("the training cohort has no radiomics features")
        self.clinical_ = Pipeline([
            ("select", ClinicalSelector(p_threshold=self.clinical_p_threshold)),
            ("impute", SimpleImputer(strategy="median")),
            ("zscore", StandardScaler()),
            ("svm", self._svm()),
        ]).fit(family_columns(X, "clinical"), y)
        self.family_models_ = {}
        for family in self.families_:
            pipe = self._selection_pipeline()
            pipe.steps.append(("svm", self._svm()))
            self.family_models_[family] = pipe.fit(family_columns(X, family), y,
                                                   icc__reader2=reader2.get(family))
        design = self.training_design(X, y, reader2)
        self.nomogram_features_ = list(design.columns)
        self._fit_nomogram(design.to_numpy(np.float64), y)
        self.nomogram_ranges_ = np.column_stack([design.min().to_numpy(),
                                                 design.max().to_numpy()])
        self.nomogram_display_ranges_ = display_ranges(design)  # rms datadist's q.display
        train, self.thresholds_from_ = None, "in-sample predictions"
        if self.threshold_folds:
            try:
                train = self.out_of_fold_proba(X, y, reader2)
                self.oof_proba_ = train.to_numpy()
                self.thresholds_from_ = (f"out-of-fold predictions, "
                                         f"{min(self.threshold_folds, self.minority_)} folds")
            except (InputError, ValueError) as exc:  # a fold too small for the pipeline
                self.thresholds_from_ = (f"in-sample predictions: the out-of-fold refits "
                                         f"could not be fitted ({exc})")
        if train is None:
            train = self.predict_proba_models(X)
        self.thresholds_ = {m: youden_threshold(y, train[m]) for m in train.columns}
        return self

    def refit(self, X: pd.DataFrame, y: NDArray[np.int64],
              reader2: dict[str, pd.DataFrame]) -> DTLRModel:
        """The same pipeline fitted on other rows (a fold or a bootstrap sample), with
        in-sample thresholds: the pipeline of an internal validation loop."""
        return clone(self).set_params(threshold_folds=0, n_jobs=None).fit(X, y, reader2=reader2)

    def out_of_fold_proba(self, X: pd.DataFrame, y: NDArray[np.int64],
                          reader2: dict[str, pd.DataFrame] | None = None) -> pd.DataFrame:
        """Every model's P(high grade) for each training patient from the whole pipeline
        refitted without that patient's fold (``threshold_folds`` seeded stratified folds)."""
        check_is_fitted(self)
        y = np.asarray(y).astype(np.int64)
        splits = list(self._folds(self.threshold_folds).split(X, y))
        fold_probs = Parallel(n_jobs=self.n_jobs)(
            delayed(_fold_proba)(self, X, y, reader2 or {}, fit_rows, held_out)
            for fit_rows, held_out in splits)
        out = pd.DataFrame(np.nan, index=X.index, columns=self.model_names)
        for (_, held_out), probs in zip(splits, fold_probs, strict=True):
            out.iloc[held_out] = probs.to_numpy()
        return out

    def training_design(self, X: pd.DataFrame, y: NDArray[np.int64],
                        reader2: dict[str, pd.DataFrame]) -> pd.DataFrame:
        """The nomogram's design on the training cohort: out-of-fold scores by default."""
        check_is_fitted(self)
        design = self.nomogram_design(X)
        if self.nomogram_scores == "out-of-fold":
            design[[SCORE_NAMES[f] for f in self.families_]] = self._out_of_fold_scores(
                X, y, reader2)
        return design

    def _out_of_fold_scores(self, X: pd.DataFrame, y: NDArray[np.int64],
                            reader2: dict[str, pd.DataFrame]) -> NDArray[np.float64]:
        """Each training patient's scores from selection pipelines fitted without its fold."""
        folds = self._folds(self.nomogram_folds)
        out = np.empty((len(X), len(self.families_)))
        for fit_rows, held_out in folds.split(X, y):
            for j, family in enumerate(self.families_):
                columns = family_columns(X, family)
                pipe = self._selection_pipeline()
                pipe.fit(columns.iloc[fit_rows], y[fit_rows], icc__reader2=reader2.get(family))
                selected = pipe.transform(columns.iloc[held_out])
                out[held_out, j] = pipe.named_steps["lasso"].linear_score(selected)
        return out

    def _fit_nomogram(self, design: NDArray[np.float64], y: NDArray[np.int64]) -> None:
        """Logistic regression on z-scored predictors, coefficients back in natural units."""
        mean, sd = design.mean(axis=0), design.std(axis=0)
        sd = np.where(sd > 0, sd, 1.0)
        c = np.inf if self.nomogram_c is None else self.nomogram_c
        lr = LogisticRegression(C=c, solver="newton-cholesky", tol=1e-10, max_iter=200)
        lr.fit((design - mean) / sd, y)
        self.nomogram_coef_ = lr.coef_[0] / sd
        self.nomogram_intercept_ = float(lr.intercept_[0] - self.nomogram_coef_ @ mean)

    @property
    def model_names(self) -> list[str]:
        """Models in the paper's order: clinical, radiomics, (DTL), nomogram."""
        check_is_fitted(self)
        return ["clinical", *self.families_, "nomogram"]

    def scores(self, X: pd.DataFrame) -> pd.DataFrame:
        """Rad score (and DTL score) per patient: the LASSO intercept + coef x z-scored feature."""
        check_is_fitted(self)
        X = self._check_frame(X)
        out = {}
        for family in self.families_:
            pipe = self.family_models_[family]
            selected = pipe[:-1].transform(family_columns(X, family))
            out[SCORE_NAMES[family]] = pipe.named_steps["lasso"].linear_score(selected)
        return pd.DataFrame(out, index=X.index)

    def nomogram_design(self, X: pd.DataFrame) -> pd.DataFrame:
        """Nomogram predictors: selected clinical features (training-median imputed) + scores."""
        check_is_fitted(self)
        X = self._check_frame(X)
        clinical = self.clinical_[:2].transform(family_columns(X, "clinical"))
        names = list(self.clinical_.named_steps["select"].get_feature_names_out())
        design = pd.DataFrame(clinical, columns=names, index=X.index)
        return pd.concat([design, self.scores(X)], axis=1)

    def nomogram_linear_predictor(self, X: pd.DataFrame) -> NDArray[np.float64]:
        """The nomogram's log-odds: intercept + sum(coef x predictor)."""
        check_is_fitted(self)
        design = self.nomogram_design(X).to_numpy(np.float64)
        return self.nomogram_intercept_ + design @ self.nomogram_coef_

    def predict_proba_models(self, X: pd.DataFrame) -> pd.DataFrame:
        """P(high grade) from every model, one column per model."""
        check_is_fitted(self)
        X = self._check_frame(X)
        out = {"clinical": self.clinical_.predict_proba(family_columns(X, "clinical"))[:, 1]}
        for family in self.families_:
            out[family] = self.family_models_[family].predict_proba(
                family_columns(X, family))[:, 1]
        out["nomogram"] = expit(self.nomogram_linear_predictor(X))
        return pd.DataFrame(out, index=X.index)

    def predict_proba(self, X: pd.DataFrame) -> NDArray[np.float64]:
        """The nomogram's class probabilities, (n, 2)."""
        check_is_fitted(self)
        risk = expit(self.nomogram_linear_predictor(X))
        return np.column_stack([1 - risk, risk])

    def predict(self, X: pd.DataFrame) -> NDArray[np.int64]:
        """High grade (1) when the nomogram's risk reaches its Youden threshold."""
        check_is_fitted(self)
        return (self.predict_proba(X)[:, 1] >= self.thresholds_["nomogram"]).astype(np.int64)

    def __sklearn_tags__(self) -> Tags:
        tags = super().__sklearn_tags__()
        # Missing clinical values are imputed, non-finite features dropped or imputed.
        tags.input_tags.allow_nan = True
        tags.classifier_tags.multi_class = False  # low (0) vs high (1) grade
        return tags


def _fold_proba(model: DTLRModel, X: pd.DataFrame, y: NDArray[np.int64],
                reader2: dict[str, pd.DataFrame], fit_rows: NDArray[np.intp],
                held_out: NDArray[np.intp]) -> pd.DataFrame:
    """One fold of :meth:`DTLRModel.out_of_fold_proba`: refit without it, predict it."""
    fitted = model.refit(X.iloc[fit_rows], y[fit_rows], reader2)
    return fitted.predict_proba_models(X.iloc[held_out])
