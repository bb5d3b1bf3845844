"""Embeddings: bit-identical for a checkpoint and after reloading it; files, view, statuses."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from dtlr.services.gpu_worker import embed, run, tasks
from dtlr.services.gpu_worker.data import list_slices, load_images
from dtlr.services.gpu_worker.model import load_checkpoint
from dtlr.services.gpu_worker.profiles import resolve
from dtlr.shared import manifest
from dtlr.shared.config import Settings
from dtlr.shared.messages import EmbedMessage, FinetuneMessage
from dtlr.shared.store import Store, read_feature_files

N_TRAIN, N_TEST, N_READER2 = 24, 12, 4  # as written by conftest's make_store


def test_embeddings_are_deterministic_and_survive_reloading(
        trained: tuple[Store, str, Settings]) -> None:
    store, model_id, settings = trained
    runtime = resolve(settings.cnn)
    loaded = embed.load_model(store, model_id, runtime)
    refs = list_slices(store, "train", readers=(1, 2))
    images, problems = load_images(refs, loaded.image_size, runtime.device)
    assert not any(problems)
    first = embed.embed_images(loaded.net, images, runtime)
    assert first.shape == (N_TRAIN + N_READER2, 2048) and first.dtype == np.float32
    assert np.array_equal(first, embed.embed_images(loaded.net, images, runtime))
    embed._load.cache_clear()  # force a fresh read of the checkpoint file
    reloaded = embed.load_model(store, model_id, runtime)
    assert reloaded.net is not loaded.net
    assert np.array_equal(first, embed.embed_images(reloaded.net, images, runtime))
    info = loaded.info
    independent = load_checkpoint(store.model_dir(model_id) / "checkpoint.pt", info["dropout"])
    independent = independent.to(memory_format=torch.channels_last)
    assert np.array_equal(first, embed.embed_images(independent, images, runtime))


def test_embed_writes_the_store_and_the_dtl_view(trained: tuple[Store, str, Settings]) -> None:
    store, model_id, settings = trained
    records = run.embed(store, "train", model_id, settings, submission="s1")
    records += run.embed(store, "test", model_id, settings, submission="s1")
    assert len(records) == N_TRAIN + N_TEST
    assert {r.state for r in records} == {"done"} and {r.stage for r in records} == {"embed"}
    assert all(embed.is_embedded(store, r.cohort, model_id, r.patient_id) for r in records)
    files = sorted(store.dtl_dir("train", model_id).glob("*.parquet"))
    assert len(files) == N_TRAIN
    wide = read_feature_files(files[:1])
    assert list(wide.columns[:4]) == ["cohort", "patient_id", "reader", "model_id"]
    assert list(wide.columns[4:]) == [f"dtl_{i:04d}" for i in range(2048)]
    meta = Store.read_metadata(files[0])
    assert meta["model_id"] == model_id and meta["checkpoint_sha256"]

    store.refresh_catalog()
    with store.connect() as con:
        described = con.execute("DESCRIBE dtl").fetchall()
        assert sum(name.startswith("dtl_") for name, *_ in described) == 2048
        rows = con.execute("SELECT cohort, reader, count(*) FROM dtl WHERE model_id = ? "
                           "GROUP BY ALL ORDER BY ALL", [model_id]).fetchall()
    assert rows == [("test", 1, N_TEST), ("train", 1, N_TRAIN), ("train", 2, N_READER2)]

    # A second run skips every patient: same records, files untouched.
    mtimes = [f.stat().st_mtime_ns for f in files]
    again = run.embed(store, "train", model_id, settings, submission="s2")
    assert {r.submission for r in again} == {"s1"}
    assert [f.stat().st_mtime_ns for f in files] == mtimes


def test_embed_a_batch_of_patients_and_report_missing_ones(
        trained: tuple[Store, str, Settings]) -> None:
    store, model_id, settings = trained
    ids = [r.patient_id for r in list_slices(store, "test")][:3]
    records = run.embed(store, "test", model_id, settings, patient_ids=[*ids, "nobody"])
    by_id = {r.patient_id: r for r in records}
    assert set(by_id) == {*ids, "nobody"}
    assert by_id["nobody"].state == "failed" and "not in cohort" in by_id["nobody"].message
    assert all(by_id[i].state == "done" for i in ids)
    # A patient whose max slice is missing fails with a message; the others are unaffected.
    victim = list_slices(store, "test")[5]
    content = victim.path.read_bytes()
    victim.path.unlink()
    try:
        records = run.embed(store, "test", model_id, settings, patient_ids=[victim.patient_id])
        assert records[0].state == "failed" and "no max slice" in records[0].message
        assert store.read_status("test", victim.patient_id, "embed").state == "failed"
    finally:
        victim.path.write_bytes(content)


def test_task_functions_take_validated_messages(trained: tuple[Store, str, Settings]) -> None:
    store, model_id, settings = trained
    [record] = tasks.finetune(FinetuneMessage(store_root=str(store.root), settings=settings,
                                              cohort="train", extra_cohorts=["test"]))
    assert record.state == "done" and record.key == model_id  # reused, not retrained
    ids = sorted(manifest.load(store, "test")["patient_id"])
    records = tasks.embed(EmbedMessage(store_root=str(store.root), settings=settings,
                                       cohort="test", model_id=model_id, patient_ids=ids,
                                       submission="sub"))
    assert sorted(r.patient_id for r in records) == ids
    assert {(r.stage, r.state) for r in records} == {("embed", "done")}
    for bad in (["../../etc"], ["P/1"], []):
        with pytest.raises(ValidationError):
            EmbedMessage(store_root=str(store.root), cohort="test", model_id=model_id,
                         patient_ids=bad)
    with pytest.raises(ValidationError):
        EmbedMessage(store_root=str(store.root), cohort="test", model_id="../x",
                     patient_ids=ids)
