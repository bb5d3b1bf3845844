"""Cross-fitted DTL features: a training patient's features come from a CNN that never saw it.

Through the coordinator's own stage functions on the embedded default: fine-tuning trains the
CNN on the whole training cohort plus one CNN per fold (each its own task, content-keyed and
reused), the cross-fitting record says which fold CNN embeds which training patient, and the
embedding writes each training patient's features from that CNN, test patients' from the CNN
of the whole cohort. Protocol paper has one CNN and no cross-fitting.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet as pq

from dtlr.services.coordinator import pipeline
from dtlr.services.coordinator.dispatch import Dispatch
from dtlr.services.gpu_worker import run
from dtlr.services.gpu_worker.data import list_slices
from dtlr.services.gpu_worker.embed import read_crossfit
from dtlr.shared.config import Settings
from dtlr.shared.store import Store

FOLDS = 3


def _trained_on(store: Store, model_id: str) -> set[str]:
    info = json.loads((store.model_dir(model_id) / "model.json").read_text(encoding="utf-8"))
    slices = info["training_slices"]
    return {row[1] for row in slices["fit"] + slices["validation"]}


def test_training_patients_are_embedded_by_cnns_that_never_saw_them(
        tmp_path: Path, make_store: Callable[..., Store],
        tiny_settings: Callable[..., Settings]) -> None:
    store = make_store(tmp_path)
    settings = tiny_settings(epochs=1, crossfit_folds=FOLDS)
    dispatch = Dispatch(jobs=2)
    model_id, tuned = pipeline.run_finetune(store, "train", ["train", "test"], settings, "s1",
                                            dispatch)
    assert model_id is not None, [r.message for r in tuned.failed]
    assert len(tuned.done) == FOLDS + 1 and not tuned.skipped
    crossfit = read_crossfit(store, model_id)
    assert crossfit is not None and crossfit["folds"] == FOLDS
    labelled = [r for r in list_slices(store, "train") if r.label is not None]
    assert set(crossfit["assignment"]) == {r.patient_id for r in labelled}
    for fold in range(FOLDS):  # stratified: every fold holds both grades
        members = [r for r in labelled if crossfit["assignment"][r.patient_id] == fold]
        assert {r.label for r in members} == {0, 1}
    full = _trained_on(store, model_id)
    assert full == {r.patient_id for r in labelled}
    for fold, fold_id in enumerate(crossfit["fold_models"]):
        held_out = {p for p, f in crossfit["assignment"].items() if f == fold}
        assert _trained_on(store, fold_id).isdisjoint(held_out)
        assert _trained_on(store, fold_id) == full - held_out

    records = pipeline.run_embedding(store, ["train", "test"], model_id, settings, "s1",
                                     dispatch)
    assert not records.failed
    for cohort in ("train", "test"):
        for pid, _, path in Store.keyed_files(store.dtl_dir(cohort, model_id), ".parquet"):
            computed_by = json.loads(pq.read_schema(path).metadata[b"dtlr"])["computed_by"]
            if cohort == "train":
                assert computed_by == crossfit["fold_models"][crossfit["assignment"][pid]]
                assert pid not in _trained_on(store, computed_by)
            else:
                assert computed_by == model_id
            status = store.read_status(cohort, pid, "embed")
            assert status.inputs["computed_by"] == computed_by

    # Content-keyed: the same inputs reuse every CNN, no task runs, nothing is rewritten.
    crossfit_mtime = (store.model_dir(model_id) / "crossfit.json").stat().st_mtime_ns
    again_id, again = pipeline.run_finetune(store, "train", ["train", "test"], settings, "s2",
                                            dispatch)
    assert again_id == model_id and again.ran == [] and len(again.skipped) == FOLDS + 1
    assert (store.model_dir(model_id) / "crossfit.json").stat().st_mtime_ns == crossfit_mtime


def test_protocol_paper_has_one_cnn_trained_on_everything(
        tmp_path: Path, make_store: Callable[..., Store],
        tiny_settings: Callable[..., Settings]) -> None:
    store = make_store(tmp_path)
    settings = tiny_settings(epochs=1, protocol="paper", crossfit_folds=FOLDS)
    model_id, tuned = pipeline.run_finetune(store, "train", ["train", "test"], settings, "s1",
                                            Dispatch())
    assert model_id is not None and len(tuned.done) == 1
    assert read_crossfit(store, model_id) is None
    everyone = {r.patient_id for c in ("train", "test") for r in list_slices(store, c)
                if r.label is not None}
    assert _trained_on(store, model_id) == everyone
    assert run.crossfit_folds(settings) == 0
