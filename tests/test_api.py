"""The Python API, used the way a notebook would: only what ``import dtlr`` offers.

Register two cohorts, run them end to end on the embedded default (tiny CNN settings), query
the store with SQL (pandas and DuckDB), fit the modeler again, score an unlabelled cohort,
and extract one case.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

import dtlr

pytestmark = pytest.mark.slow

TINY = {"cnn": {"weights": "random", "profile": "quick", "image_size": 32, "epochs": 1,
                "batch_size": 8, "device": "cpu", "threads": 1, "crossfit_folds": 2}}


def test_the_api_does_what_the_commands_do(tmp_path: Path) -> None:
    store = dtlr.open_store(tmp_path / "store")
    manifests = dtlr.make_demo(tmp_path / "demo", n_train=24, n_test=8)
    for name, path in manifests.items():
        table = dtlr.register_cohort(store, name, path)
        assert len(table) == {"demo-hospitalA": 24, "demo-hospitalB": 8}[name]
    settings = dtlr.settings(**TINY)
    run = dtlr.run(store, list(manifests), train="demo-hospitalA", config=settings, jobs=2)
    assert run.failed == [], [r.message for r in run.failed]
    assert [s.stage for s in run.stages] == ["extract", "finetune", "embed", "model"]
    assert run.model_id is not None and run.result is not None
    t3 = run.result.table3
    assert set(t3["cohort"]) == {"demo-hospitalA", "demo-hospitalB"}
    assert set(t3["model"]) == {"clinical", "radiomics", "dtl", "nomogram"}

    counts = dtlr.query(store, "SELECT cohort, count(*) AS n FROM radiomics WHERE reader = 1 "
                               "GROUP BY cohort ORDER BY cohort")
    assert counts.to_dict("records") == [{"cohort": "demo-hospitalA", "n": 24},
                                         {"cohort": "demo-hospitalB", "n": 8}]
    with dtlr.connect(store) as con:
        assert con.execute("SELECT count(DISTINCT patient_id) FROM dtl").fetchone() == (32,)

    again = dtlr.fit(store, "demo-hospitalA", ["demo-hospitalB"], config=settings,
                     dtl_model_id=run.model_id)
    assert again.run_id == run.result.run_id  # identical inputs: the stored run, reused

    # New patients to score: hospital B's manifest without its grades.
    rows = list(csv.DictReader(manifests["demo-hospitalB"].open(encoding="utf-8")))
    unlabelled = manifests["demo-hospitalB"].parent / "new_patients.csv"
    with unlabelled.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, [k for k in rows[0] if k not in ("grade", "label")])
        writer.writeheader()
        writer.writerows({k: v for k, v in r.items() if k in writer.fieldnames} for r in rows)
    dtlr.register_cohort(store, "new", unlabelled)
    scored_run = dtlr.run(store, ["new"], config=settings)  # extraction
    assert scored_run.failed == []
    from_b = dtlr.predict(store, run.result.run_id, "demo-hospitalB")
    # Without DTL features of the new cohort the nomogram cannot score it: embed it first.
    with pytest.raises(dtlr.InputError):
        dtlr.predict(store, run.result.run_id, "new")
    # ... which dtlr.run does when the cohort goes along with its training cohort.
    dtlr.run(store, ["demo-hospitalA", "new"], train="demo-hospitalA", config=settings)
    scored = dtlr.predict(store, run.result.run_id, "new")
    assert list(scored["patient_id"]) == list(from_b["patient_id"])
    assert list(scored["risk"]) == pytest.approx(list(from_b["risk"]))

    case = rows[0]
    base = manifests["demo-hospitalB"].parent
    features = dtlr.extract_case(base / case["image"], base / case["mask"], n4=False)
    assert len(features) == 1130 and "original_shape_MeshVolume" in features
