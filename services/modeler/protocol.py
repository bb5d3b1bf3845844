"""What a modeler run actually did, read from the records of the CNN behind its DTL features.

The protocol is not a label the user types: it is read from the fine-tuned CNN's
``models/<model_id>/model.json`` (what it was trained on, with or without a validation split)
and ``crossfit.json`` (whether the training patients' DTL features came from CNNs that did not
see them), and from the modeler's own settings (out-of-fold or in-sample nomogram scores). The
report's first line is :func:`describe`, and the same facts go into modeler.json.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from dtlr.shared.config import Settings
from dtlr.shared.store import Store


@dataclass(frozen=True)
class Protocol:
    """How the models of a run, and the CNN behind its DTL features, were fitted."""

    name: str  # "leakage-safe" or "paper"
    cnn: dict[str, Any] | None  # the CNN's model.json (None: no DTL features, or no record)
    crossfit: dict[str, Any] | None  # its crossfit.json (None: training features in-sample)
    nomogram_scores: str  # "out-of-fold" or "in-sample"

    def record(self) -> dict[str, Any]:
        """The facts for modeler.json."""
        cnn = self.cnn or {}
        return {"protocol": self.name, "nomogram_scores": self.nomogram_scores,
                "cnn_model_id": cnn.get("model_id"), "cnn_protocol": cnn.get("protocol"),
                "cnn_trained_on": cnn.get("n_trained"),
                "cnn_validation_slices": cnn.get("n_validation"),
                "crossfit_folds": self.crossfit["folds"] if self.crossfit else 0,
                "crossfit_models": self.crossfit["fold_models"] if self.crossfit else []}


def _json(store: Store, model_id: str, name: str) -> dict[str, Any] | None:
    path = store.model_dir(model_id) / name
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def resolve(store: Store, dtl_model_id: str | None, settings: Settings) -> Protocol:
    """The run's protocol: the CNN's when DTL features are used, else the settings'.

    Protocol "paper" fits the nomogram on in-sample scores, as Li et al. did.
    """
    cnn = _json(store, dtl_model_id, "model.json") if dtl_model_id else None
    crossfit = _json(store, dtl_model_id, "crossfit.json") if dtl_model_id else None
    name = str(cnn["protocol"]) if cnn else settings.cnn.protocol
    scores = "in-sample" if name == "paper" else settings.modeler.nomogram_scores
    return Protocol(name, cnn, crossfit, scores)


def describe(protocol: Protocol, train: str, tests: list[str], dtl_model_id: str | None) -> str:
    """The report's first line: what was actually done, from the records."""
    tested = ", ".join(tests) or "none"
    steps = ("every modeler step (ICC filter, z-score, Spearman filter, LASSO, SVMs, logistic "
             f"regressions, decision thresholds) saw the training cohort ({train}) only; test "
             f"cohorts ({tested}) were only scored; the nomogram was fitted on "
             f"{protocol.nomogram_scores} Rad/DTL scores")
    cnn = protocol.cnn
    if dtl_model_id is None:
        cnn_text = "No DTL features (no CNN)."
    elif cnn is None:
        cnn_text = (f"DTL features of model {dtl_model_id}, whose fine-tuning record is not in "
                    "the store: how that CNN was trained is unknown.")
    elif cnn["protocol"] == "paper":
        together = " and ".join([cnn["train_cohort"], *cnn.get("extra_cohorts", [])])
        cnn_text = (f"The CNN (model {dtl_model_id}) was fine-tuned on all "
                    f"{cnn.get('n_trained', '?')} labelled max slices of {together} together, "
                    f"without a validation split (the last of {cnn['profile']['epochs']} epochs "
                    "kept), and every patient's DTL features came from that one CNN, as Li et "
                    "al. did: test-cohort DTL results are therefore optimistic.")
    else:
        how = (f"came from {protocol.crossfit['folds']} cross-fitted CNNs, each fine-tuned "
               "without that patient's fold" if protocol.crossfit else
               "came from that same CNN (in-sample: it had seen them)")
        cnn_text = (f"The CNN (model {dtl_model_id}) was fine-tuned on "
                    f"{cnn.get('n_trained', '?')} max slices of {cnn['train_cohort']} only (epoch "
                    f"chosen on {cnn.get('n_validation', '?')} held-out training slices); the "
                    f"training patients' DTL features {how}; test cohorts were embedded by the "
                    "CNN fine-tuned on the whole training cohort.")
    return f"Protocol: {protocol.name}. {cnn_text} Then {steps}."
