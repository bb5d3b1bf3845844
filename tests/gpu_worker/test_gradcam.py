"""A brief fine-tune lowers the loss; its Grad-CAM maps fit the slice and sit on the tumour."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from scipy import ndimage

from dtlr.services.gpu_worker import run
from dtlr.services.gpu_worker.data import scale_to_uint8
from dtlr.services.gpu_worker.gradcam import cam_mass_inside, clearest_cases, gradcam_maps
from dtlr.services.gpu_worker.model import DTLNet, build_model
from dtlr.services.gpu_worker.profiles import resolve
from dtlr.services.gpu_worker.train import FitResult, fit
from dtlr.shared.config import CNNSettings, Settings
from dtlr.shared.store import Store

SIZE = 128  # layer4 is 4x4 here: the coarsest grid on which a tumour can hold most of a map


def _slice(rng: np.random.Generator, tumour: bool) -> np.ndarray:
    """(2, SIZE, SIZE): grey background, a bright textured blob (tumour) in the positives.

    Dark and bright corner patches fix the percentile window in every slice, and the
    background sits at the ImageNet mean grey once scaled, like the zero padding the network
    sees at the borders, so only the blob tells the classes apart.
    """
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    cy, cx = rng.uniform(0.46, 0.54, 2)
    mask = (np.hypot(yy - cy, xx - cx) < rng.uniform(0.32, 0.36)) & tumour
    image = np.full((SIZE, SIZE), 700.0)
    k = SIZE // 10
    image[:k, :k], image[:k, -k:] = 0.0, 1500.0
    texture = np.where(ndimage.gaussian_filter(rng.standard_normal((SIZE, SIZE)), 1.0) > 0,
                       250.0, -250.0)
    image = np.where(mask, 1150 + texture, image) + rng.normal(0, 20, (SIZE, SIZE))
    return np.stack([image, mask]).astype(np.float32)


@dataclass
class BlobFit:
    """A ResNet50 trained briefly (random init) on textured-blob slices, and its data."""

    model: DTLNet
    raw: np.ndarray
    images: torch.Tensor
    labels: np.ndarray
    result: FitResult


@pytest.fixture(scope="module")
def blob_fit() -> BlobFit:
    """16 slices (12 trained, 4 validation), 2 epochs of batch 8 on the CPU."""
    rng = np.random.default_rng(0)
    labels = np.arange(16) % 2
    raw = np.stack([_slice(rng, bool(lab)) for lab in labels])
    images = scale_to_uint8(torch.from_numpy(raw), SIZE)
    y = torch.tensor(labels, dtype=torch.float32)
    cnn = CNNSettings(weights="random", profile="quick", image_size=SIZE, epochs=2, batch_size=8,
                      device="cpu", threads=1)
    model = build_model("random", 0.5, seed=0)
    result = fit(model, images[:12], y[:12], images[12:], y[12:], resolve(cnn), cnn, seed=0)
    return BlobFit(model, raw, images, labels, result)


def test_tiny_finetune_lowers_training_loss(blob_fit: BlobFit) -> None:
    losses = [e.train_loss for e in blob_fit.result.log]
    # The zero-initialised head starts every fine-tune at log(2).
    assert losses[-1] < losses[0] < np.log(2) + 0.05
    assert losses[-1] < 0.6


def test_gradcam_has_the_slice_shape_and_most_mass_inside_the_tumour(blob_fit: BlobFit) -> None:
    positives = [i for i in range(12, 16) if blob_fit.labels[i] == 1]
    maps = gradcam_maps(blob_fit.model, blob_fit.images[positives], (SIZE, SIZE),
                        [1] * len(positives))
    assert maps.shape == (len(positives), SIZE, SIZE)
    assert maps.min() >= 0 and maps.max() <= 1
    for cam, i in zip(maps, positives, strict=True):
        area = blob_fit.raw[i, 1].mean()
        assert 0.3 < area < 0.45
        assert cam_mass_inside(cam, blob_fit.raw[i]) > 0.5


def test_cam_mass_inside_reads_the_mask_channel() -> None:
    max_slice = np.zeros((2, 8, 8), np.float32)
    max_slice[1, :4] = 1
    cam = np.zeros((8, 8), np.float32)
    cam[:4] = 1.0
    cam[4:] = 1 / 3
    assert cam_mass_inside(cam, max_slice) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="does not match"):
        cam_mass_inside(np.ones((4, 4)), max_slice)


def test_clearest_cases_pick_the_surest_of_each_grade() -> None:
    ids = ["a", "b", "c", "d", "e"]
    chosen = clearest_cases(ids, [1, 1, 0, 0, None], [0.9, 0.6, 0.1, 0.4, 0.99], 1)
    assert chosen == ["a", "c"]


def test_cnn_report(trained: tuple[Store, str, Settings]) -> None:
    store, model_id, settings = trained
    settings = settings.model_copy(update={"cnn": settings.cnn.model_copy(
        update={"gradcam_cases": 1})})
    for cohort in ("train", "test"):
        run.embed(store, cohort, model_id, settings)
    report = run.cnn_report(store, model_id, ["train", "test"], settings)
    assert set(report["metrics"]) == {"train", "test"}
    assert report["metrics"]["train"]["role"] == "training (in-sample)"  # no cross-fit here
    assert report["metrics"]["test"]["role"] == "test"
    for m in report["metrics"].values():
        assert {"accuracy", "sensitivity", "specificity", "auc"} <= set(m)
        assert 0 <= m["auc"]["value"] <= 1
    assert report["metrics"]["test"]["n"] == 12
    assert len(report["gradcam"]) == 4
    assert report["html"].count('src="data:image/png;base64,') == 4
    assert "RANDOM weights" in report["html"]
    assert len(list(store.model_dir(model_id).joinpath("gradcam").rglob("*.png"))) == 4
    assert '<table class="cnn-metrics">' in report["html"]
    section = run.cnn_report_section(store, model_id, ["train", "test"], settings)
    assert model_id in section.title and section.html.count("<figure") == 4
    assert len(section.figures) == 1
