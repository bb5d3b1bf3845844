"""Fine-tuning through the store: provenance, the model-id cache, and no test-slice leakage.

(That a fine-tune lowers the loss is tested with the Grad-CAM model, in test_gradcam.py.)
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from dtlr.services.gpu_worker import run
from dtlr.services.gpu_worker.data import list_slices, split_validation
from dtlr.services.gpu_worker.model import WeightsError, build_model, weights_identity
from dtlr.shared.config import Settings
from dtlr.shared.store import Store


def _state(store: Store, model_id: str) -> dict[str, torch.Tensor]:
    return torch.load(store.model_dir(model_id) / "checkpoint.pt", weights_only=True)


def test_model_files_and_provenance(trained: tuple[Store, str, Settings]) -> None:
    store, model_id, _ = trained
    directory = store.model_dir(model_id)
    state = _state(store, model_id)
    assert state["head.1.weight"].shape == (1, 2048)
    info = json.loads((directory / "model.json").read_text(encoding="utf-8"))
    assert info["weights"] == {"source": "random"}
    assert any("RANDOM weights" in n for n in info["notes"])
    assert info["protocol"] == "leakage-safe"
    assert info["profile"]["image_size"] == 32
    assert info["runtime"]["device"] == "cpu"
    log = json.loads((directory / "train_log.json").read_text(encoding="utf-8"))
    assert [e["epoch"] for e in log["epochs"]] == [1, 2]
    assert {"train_loss", "val_loss", "val_auc", "seconds"} <= set(log["epochs"][0])


def test_rerun_with_same_inputs_skips_training(trained: tuple[Store, str, Settings],
                                               tiny_settings: Callable[..., Settings]) -> None:
    store, model_id, settings = trained
    checkpoint = store.model_dir(model_id) / "checkpoint.pt"
    before = checkpoint.stat().st_mtime_ns
    assert run.finetune(store, "train", settings, ["test"]).key == model_id
    assert checkpoint.stat().st_mtime_ns == before
    # A change that matters for the weights gives another model id.
    assert run.plan_finetune(store, "train", tiny_settings(epochs=3)).model_id != model_id


def test_validation_split_is_stratified_and_from_the_training_cohort(
        tmp_path: Path, make_store: Callable[..., Store],
        tiny_settings: Callable[..., Settings]) -> None:
    store = make_store(tmp_path)
    refs = list_slices(store, "train")
    fit, val = split_validation(refs, 0.2, seed=7)
    assert {r.patient_id for r in fit}.isdisjoint(r.patient_id for r in val)
    assert len(fit) + len(val) == len(refs)
    assert {r.label for r in val} == {0, 1}
    assert split_validation(refs, 0.2, seed=7) == (fit, val)
    # Protocol paper, as Li et al.: every labelled slice of every cohort, no validation split.
    plan = run.plan_finetune(store, "train", tiny_settings(protocol="paper"), ["test"])
    assert plan.val == []
    assert len(plan.fit) == len(refs) + len(list_slices(store, "test"))


def test_test_slices_reach_training_only_with_protocol_paper(
        tmp_path: Path, make_store: Callable[..., Store],
        tiny_settings: Callable[..., Settings]) -> None:
    """Changing the test cohort's slices changes no weight unless protocol is 'paper'."""
    stores = [make_store(tmp_path / "a", test_seed=2), make_store(tmp_path / "b", test_seed=3)]
    a, b = (list_slices(s, "test") for s in stores)
    assert [r.key for r in a] != [r.key for r in b]
    safe = tiny_settings(epochs=1)
    ids = [run.finetune(s, "train", safe, ["test"]).key for s in stores]
    assert ids[0] == ids[1]
    first, second = _state(stores[0], ids[0]), _state(stores[1], ids[1])
    assert first.keys() == second.keys()
    for key, tensor in first.items():
        assert torch.equal(tensor, second[key]), key
    paper = tiny_settings(epochs=1, protocol="paper")
    pids = [run.finetune(s, "train", paper, ["test"]).key for s in stores]
    assert pids[0] != pids[1] and ids[0] not in pids
    weights = [_state(s, m)["backbone.conv1.weight"] for s, m in zip(stores, pids, strict=True)]
    assert not torch.equal(*weights)
    info = json.loads((stores[0].model_dir(pids[0]) / "model.json").read_text(encoding="utf-8"))
    assert info["extra_cohorts"] == ["test"]
    assert any("Protocol 'paper'" in n for n in info["notes"])
    fit_cohorts = np.array([row[0] for row in info["training_slices"]["fit"]])
    assert (fit_cohorts == "test").sum() == 12 and (fit_cohorts == "train").sum() == 24
    assert info["training_slices"]["validation"] == [] and info["validation"] is False
    log = json.loads((stores[0].model_dir(pids[0]) / "train_log.json").read_text(encoding="utf-8"))
    assert log["chosen_epoch"] == 1 and np.isnan(log["epochs"][0]["val_auc"])


def test_unusable_inputs_fail_with_a_message(tmp_path: Path, make_store: Callable[..., Store],
                                             tiny_settings: Callable[..., Settings]) -> None:
    store = make_store(tmp_path)
    missing = tmp_path / "missing.pth"
    with pytest.raises(run.TrainingDataError, match="no such file"):
        run.plan_finetune(store, "train", tiny_settings(weights=str(missing)))
    refs = list_slices(store, "train")
    refs[0].path.write_bytes(b"not a numpy file")
    settings = tiny_settings()
    record = run.finetune(store, "train", settings)
    model_id = run.plan_finetune(store, "train", settings).model_id
    assert record.state == "failed" and record.failure == "input" and record.key == model_id
    assert record.message.startswith("cohort train: cannot fine-tune") and "cannot read" in \
        record.message
    assert store.read_status("train", "*", "finetune", model_id) == record
    assert not run.is_trained(store, model_id)


def test_initial_weights_from_a_state_dict_file(tmp_path: Path) -> None:
    source = torchvision.models.resnet50()
    path = tmp_path / "resnet50.pth"
    torch.save(source.state_dict(), path)
    model = build_model(str(path), dropout=0.5, seed=0)
    assert torch.equal(model.backbone.conv1.weight, source.conv1.weight)
    assert torch.equal(model.backbone.layer4[2].bn3.weight, source.layer4[2].bn3.weight)
    identity = weights_identity(str(path))
    assert identity["source"] == "file" and len(identity["sha256"]) == 64
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(WeightsError, match="not a ResNet50 state dict"):
        build_model(str(tmp_path / "bad.pth"), dropout=0.5, seed=0)
