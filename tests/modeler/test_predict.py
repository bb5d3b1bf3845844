"""dtlr-model and dtlr-predict: fit from the CLI, then score an unlabelled cohort."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from dtlr.services.modeler.cli import model, predict
from dtlr.services.modeler.data import load_cohort
from dtlr.services.modeler.persist import load_model
from dtlr.shared.manifest import register
from tests.synthetic.cohorts import DATA_ROOTS, SyntheticStore, build_store


@dataclass
class Fitted:
    syn: SyntheticStore
    run_id: str
    output: str


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> Fitted:
    syn = build_store(tmp_path_factory.mktemp("predict"), {"A": 120, "B": 50, "C": 30},
                      n_radiomics=40, seed=8)
    csv = syn.store.root / "manifests" / "C.csv"
    manifest = pd.read_csv(csv, dtype=str, keep_default_na=False).assign(label="")
    manifest.to_csv(csv.with_name("C-unlabelled.csv"), index=False)
    register(syn.store, "C", csv.with_name("C-unlabelled.csv"), DATA_ROOTS)
    result = CliRunner().invoke(model, ["--train", "A", "--test", "B", "--run-id", "cli-run",
                                        "--store", str(syn.store.root)],
                                env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    return Fitted(syn, "cli-run", result.output)


def test_dtlr_model_prints_table3_and_saves_the_run(fitted: Fitted) -> None:
    assert "Table 3" in fitted.output
    assert "│ Nomogram " in fitted.output and "Table 3, B (test)" in fitted.output
    assert "dtlr-predict --model cli-run" in fitted.output
    root = fitted.syn.store.root
    assert (root / "runs" / "cli-run" / "report.html").is_file()
    meta = json.loads((root / "models" / "cli-run" / "modeler.json").read_text(encoding="utf-8"))
    assert meta["train"] == "A" and meta["tests"] == ["B"]
    assert meta["settings"]["seed"] == 2025
    assert set(meta["inputs"]) == {"A", "B"} and "radiomics" in meta["inputs"]["A"]
    assert {"scikit-learn", "numpy", "skops"} <= set(meta["versions"])
    assert meta["families"]["radiomics"]["lambda"] > 0


def test_predict_an_unlabelled_cohort_with_points_per_predictor(fitted: Fitted,
                                                                tmp_path: Path) -> None:
    out = tmp_path / "pred" / "C.csv"
    result = CliRunner().invoke(predict, ["--model", fitted.run_id, "--cohort", "C", "--out",
                                          str(out), "--store", str(fitted.syn.store.root)])
    assert result.exit_code == 0, result.output
    assert "30 patients written" in result.output
    df = pd.read_csv(out)
    assert len(df) == 30 and "label" not in df.columns
    loaded, meta = load_model(fitted.syn.store, fitted.run_id)
    points = [f"points_{n}" for n in loaded.nomogram_features_]
    assert points[-1] == "points_rad_score"
    np.testing.assert_allclose(df[points].sum(axis=1), df["total_points"], rtol=1e-9)
    np.testing.assert_allclose(df["risk"], 1 / (1 + np.exp(-df["linear_predictor"])),
                               rtol=1e-9)
    threshold = meta["thresholds"]["nomogram"]
    assert ((df["risk"] >= threshold) == (df["class"] == "high")).all()
    data = load_cohort(fitted.syn.store, "C", require_labels=False)
    assert data.y is None
    np.testing.assert_allclose(df["risk"], loaded.predict_proba(data.X)[:, 1], rtol=1e-9)
    np.testing.assert_allclose(df["clinical_risk"],
                               loaded.predict_proba_models(data.X)["clinical"], rtol=1e-9)
    assert list(df["patient_id"]) == list(data.X.index)


def test_clear_errors_for_unknown_runs_cohorts_and_unlabelled_training(fitted: Fitted) -> None:
    root = str(fitted.syn.store.root)
    runner = CliRunner()
    r = runner.invoke(predict, ["--model", "nope", "--cohort", "C", "--store", root])
    assert r.exit_code == 1 and "no fitted model for run 'nope'" in r.output
    r = runner.invoke(model, ["--train", "Z", "--test", "B", "--store", root])
    assert r.exit_code == 1 and "not registered" in r.output
    r = runner.invoke(model, ["--train", "C", "--test", "B", "--store", root])
    assert r.exit_code == 1 and "cohort 'C' has no labels" in r.output
    r = runner.invoke(model, ["--train", "A", "--test", "A", "--store", root])
    assert r.exit_code == 1 and "both the training and a test cohort" in r.output
