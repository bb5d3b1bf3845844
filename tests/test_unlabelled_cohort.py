"""An unlabelled cohort (new patients to score), through the real commands.

It registers cleanly, is extracted by `dtlr submit --cohort X` and scored by `dtlr predict`, and
`dtlr model` / `dtlr submit --train` refuse to train or test on it, saying what to do instead.
One small demo (24 + 8 patients, no CNN) is extracted and modelled once for the module.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dtlr.services.coordinator.demo import make_demo
from dtlr.shared.store import Store
from tests.snapshot import changed, snapshot

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
A, B, U = "demo-hospitalA", "demo-hospitalB", "new-patients"
N_TRAIN, N_TEST = 24, 8


def dtlr(*args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess:
    out = subprocess.run([str(BIN / "dtlr"), *map(str, args)], capture_output=True, text=True,
                         timeout=timeout, env={**os.environ, "COLUMNS": "200"}, encoding="utf-8")
    assert "Traceback" not in out.stderr and "Traceback" not in out.stdout, out.stderr
    return out


def one_line(out: subprocess.CompletedProcess) -> str:
    return " ".join((out.stdout + out.stderr).split())


@dataclass
class Demo:
    store: Path
    run_id: str  # the model fitted on hospital A (radiomics + clinical, no CNN)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Demo:
    root = tmp_path_factory.mktemp("unlabelled")
    manifests = make_demo(root / "data", n_train=N_TRAIN, n_test=N_TEST, n_reader2=6)
    store = root / "store"
    for name, path in manifests.items():
        assert dtlr("cohort", "add", name, path, "--store", store).returncode == 0
    out = dtlr("submit", "--cohort", A, "--cohort", B, "--jobs", "2", "--no-cnn", "--train", A,
               "--store", store, timeout=1200)
    assert out.returncode == 0, out.stderr
    (run_id,) = [p.name for p in (store / "runs").iterdir()]
    # The same patients as hospital B, without their grades: new patients to score.
    table = pd.read_csv(manifests[B], dtype=str, keep_default_na=False)
    assert "grade" in table.columns
    unlabelled = manifests[B].with_name("unlabelled.csv")
    table.drop(columns=[c for c in ("grade", "label") if c in table.columns]).to_csv(
        unlabelled, index=False)
    out = dtlr("cohort", "add", U, unlabelled, "--store", store)
    assert out.returncode == 0, out.stderr
    assert f"registered {U}: {N_TEST} patients (high grade 0, low grade 0, unlabelled " \
           f"{N_TEST})" in one_line(out)
    return Demo(store, run_id)


def test_extracted_and_scored_like_the_same_patients_with_labels(demo: Demo,
                                                                 tmp_path: Path) -> None:
    out = dtlr("submit", "--cohort", U, "--jobs", "2", "--store", demo.store, timeout=600)
    assert out.returncode == 0, out.stderr
    records = [r for r in Store(demo.store).statuses(U) if r.stage == "extract"]
    assert len(records) == N_TEST and {r.state for r in records} == {"done"}
    scored = {}
    for cohort in (U, B):
        csv = tmp_path / f"{cohort}.csv"
        out = dtlr("predict", "--model", demo.run_id, "--cohort", cohort, "--out", csv,
                   "--store", demo.store)
        assert out.returncode == 0, out.stderr
        scored[cohort] = pd.read_csv(csv).set_index("patient_id").sort_index()
    new, known = scored[U], scored[B]
    assert len(new) == N_TEST and "label" not in new.columns and "label" in known.columns
    assert new["risk"].between(0, 1).all() and set(new["class"]) <= {"high", "low"}
    # Same images and clinical data: the same risks, whether or not the grades were given.
    assert list(new.index) == list(known.index)
    np.testing.assert_allclose(new["risk"], known["risk"], rtol=1e-9)
    assert (new["class"] == known["class"]).all()


def test_cannot_train_or_test(demo: Demo) -> None:
    for args in (("--train", U, "--test", B), ("--train", A, "--test", U)):
        out = dtlr("model", *args, "--store", demo.store)
        assert out.returncode != 0
        text = one_line(out)
        assert f"cohort '{U}' has no labels" in text, text
        assert "cannot be used to train or test a model" in text
        assert f"dtlr predict --model RUN_ID --cohort {U}" in text
        assert f"dtlr cohort add {U} MANIFEST" in text
    before = snapshot(demo.store)
    out = dtlr("submit", "--cohort", U, "--train", U, "--no-cnn", "--store", demo.store)
    assert out.returncode == 2, out.stderr
    text = one_line(out)
    assert "Invalid value for" in text and "--train" in text, text
    assert f"cohort '{U}' has no labels" in text and "dtlr predict --model RUN_ID" in text
    assert not {p for p in changed(before, snapshot(demo.store))
                if p.startswith(("status/", "runs/", "features/", "models/"))}


def test_beside_a_training_cohort_it_is_extracted_but_not_tested(demo: Demo) -> None:
    out = dtlr("submit", "--cohort", A, "--cohort", U, "--jobs", "2", "--no-cnn", "--train", A,
               "--store", demo.store, timeout=900)
    assert out.returncode == 0, out.stderr
    runs = {p.name for p in (demo.store / "runs").iterdir()} - {demo.run_id}
    assert len(runs) == 1
    (run_id,) = runs
    meta = json.loads((demo.store / "models" / run_id / "modeler.json").read_text(encoding="utf-8"))
    assert meta["train"] == A and meta["tests"] == []
    text = one_line(out)
    assert (f"note cohort {U} has no labels, so it is not a test cohort; score it with "
            f"`dtlr predict --model {run_id} --cohort {U}`") in text, text
