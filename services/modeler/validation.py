"""Input checks shared by the modeler's estimators (on top of sklearn's ``validate_data``)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from numpy.typing import NDArray
from sklearn.feature_selection import SelectorMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import column_or_1d


def binary_target(y: object) -> NDArray[np.int64]:
    """A two-class label as 0/1 (the larger label is 1); ValueError for any other target."""
    y = column_or_1d(y, warn=True)
    check_classification_targets(y)
    classes = np.unique(y)
    if classes.size != 2:
        raise ValueError(f"y must hold exactly two classes (low and high grade), got "
                         f"{classes.size} class{'es' if classes.size != 1 else ''}")
    return (y == classes[1]).astype(np.int64)


def in_fitted_order(estimator: SelectorMixin, X: object) -> object:
    """A DataFrame's columns seen in ``fit``, in fit order, looked up by name; other X as is.

    A test cohort's table may order its columns differently or carry more of them. Only the
    features the selector keeps must be there: one it dropped may be absent too (it comes
    back as NaN and is never used).
    """
    names = getattr(estimator, "feature_names_in_", None)
    if names is None or not isinstance(X, pd.DataFrame):
        return X
    missing = [n for n in names[estimator.get_support()] if n not in X.columns]
    if missing:
        raise ValueError(f"{len(missing)} feature(s) the model was fitted on are missing "
                         f"(e.g. {', '.join(map(str, missing[:3]))}); extract features with the "
                         "same settings as the training cohort")
    return X.reindex(columns=names)
