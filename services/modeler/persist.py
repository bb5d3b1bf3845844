"""Save and load a fitted model without running arbitrary code: skops + a JSON description.

``models/<run_id>/modeler.skops`` holds the fitted :class:`DTLRModel`; skops rebuilds it only
from the types listed in :data:`TRUSTED_TYPES` and refuses a file that needs any other type (no
pickle is ever executed). ``modeler.json`` describes the model for people and other tools:
settings, library versions, input content keys, selected features, formulas, thresholds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import skops.io as sio

from dtlr.services.modeler.models import DTLRModel
from dtlr.shared.store import Store

MODEL_FILE = "modeler.skops"
META_FILE = "modeler.json"

# Every type a fitted DTLRModel contains beyond skops' defaults (numpy, builtins, sklearn's
# own default-trusted estimators). Listed explicitly: a file needing anything else is refused.
TRUSTED_TYPES = [
    "dtlr.services.modeler.clinical.ClinicalSelector",
    "dtlr.services.modeler.icc.ICCFilter",
    "dtlr.services.modeler.models.DTLRModel",
    "dtlr.services.modeler.selection.FiniteColumns",
    "dtlr.services.modeler.selection.LassoSelector",
    "dtlr.services.modeler.selection.SpearmanFilter",
    "numpy.dtype",  # SimpleImputer's recorded input dtype
    "sklearn.calibration._CalibratedClassifier",
    "sklearn.calibration._SigmoidCalibration",
    "sklearn.model_selection._split.StratifiedKFold",
]


class ModelFileError(RuntimeError):
    """A saved model that cannot be loaded safely or is missing."""


def save_model(store: Store, run_id: str, model: DTLRModel, metadata: dict[str, Any]) -> Path:
    """Write modeler.skops and modeler.json under models/<run_id>/ atomically; returns it."""
    folder = store.model_dir(run_id)

    def dump(tmp: Path) -> None:
        sio.dump(model, tmp)
        untrusted = set(sio.get_untrusted_types(file=tmp)) - set(TRUSTED_TYPES)
        if untrusted:
            raise ModelFileError(f"model contains types outside TRUSTED_TYPES: {sorted(untrusted)}")

    store.write_file(folder / MODEL_FILE, dump)
    store.write_json({**metadata, "trusted_types": TRUSTED_TYPES}, folder / META_FILE)
    return folder


def load_model(store: Store, run_id: str) -> tuple[DTLRModel, dict[str, Any]]:
    """The fitted model and its description; only :data:`TRUSTED_TYPES` are instantiated."""
    folder = store.model_dir(run_id)
    path = folder / MODEL_FILE
    if not path.is_file():
        runs = sorted(p.parent.name for p in (store.root / "models").glob(f"*/{MODEL_FILE}"))
        raise ModelFileError(f"no fitted model for run {run_id!r} under {folder} (fitted runs: "
                             f"{', '.join(runs) or 'none'}); fit one with dtlr-model")
    untrusted = set(sio.get_untrusted_types(file=path)) - set(TRUSTED_TYPES)
    if untrusted:
        raise ModelFileError(f"{path} needs types that are not trusted: {sorted(untrusted)}; "
                             "refusing to load it")
    model = sio.load(path, trusted=TRUSTED_TYPES)
    if not isinstance(model, DTLRModel):
        raise ModelFileError(f"{path} does not hold a DTLRModel")
    return model, json.loads((folder / META_FILE).read_text(encoding="utf-8"))
