"""A real brain-tumour MR volume through N4, resampling, extraction and the max slice."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from dtlr.services.extractor import features as rad
from dtlr.services.extractor.io import read_image, read_mask
from dtlr.services.extractor.maxslice import max_slice
from dtlr.services.extractor.preprocess import n4_correct, shrink_factors
from dtlr.services.extractor.stage import extract_patient
from dtlr.shared.config import PreprocessSettings, Settings
from dtlr.shared.store import Store, read_feature_files


@pytest.fixture(scope="module")
def brats(data_dir: Path) -> tuple[Path, Path]:
    case = data_dir / "brain_tumour_mri" / "deepvoxnet2_brats2018" / "case_9"
    return case / "T1.nii.gz", case / "GT_W.nii.gz"


def test_shrink_factors_spare_thick_slices() -> None:
    assert shrink_factors((0.78125, 0.78125, 6.5), 8) == [8, 8, 1]
    assert shrink_factors((1.0, 1.0, 1.0), 4) == [4, 4, 4]
    assert shrink_factors((0.9, 0.9, 5.0), 8) == [8, 8, 1]


def test_n4_removes_a_known_bias_field(data_dir: Path) -> None:
    image = read_image(data_dir / "pyradiomics" / "brain1_image.nrrd")
    arr = sitk.GetArrayFromImage(image).astype(np.float32)
    _z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in arr.shape], indexing="ij")
    field = np.exp(0.25 * x + 0.15 * y - 0.1 * x * y)  # smooth, about +-30 %
    original = sitk.GetImageFromArray(arr + 1.0)
    original.CopyInformation(image)
    biased = sitk.GetImageFromArray((arr + 1.0) * field)
    biased.CopyInformation(image)
    _, own_bias = n4_correct(original, PreprocessSettings())
    corrected, log_bias = n4_correct(biased, PreprocessSettings())
    head = sitk.GetArrayFromImage(sitk.OtsuThreshold(original, 0, 1, 200)) > 0
    # The scan has a bias of its own: what N4 adds for the biased copy is the planted field.
    est = (sitk.GetArrayFromImage(log_bias) - sitk.GetArrayFromImage(own_bias))[head]
    truth = np.log(field)[head]
    residual = (est - est.mean()) - (truth - truth.mean())
    assert np.corrcoef(est, truth)[0, 1] > 0.8
    assert residual.var() < 0.4 * truth.var()  # most of the planted field is removed
    assert np.isfinite(sitk.GetArrayFromImage(corrected)).all()


def test_real_volume_end_to_end(brats: tuple[Path, Path], tmp_path: Path) -> None:
    image_path, mask_path = brats
    store = Store(tmp_path / "store")
    settings = Settings()
    row = {"cohort": "brats", "patient_id": "case_9", "image": str(image_path),
           "mask": str(mask_path), "mask_reader2": None}
    record = extract_patient(store, row, settings)
    assert record.state == "done", record.message
    (_pid, key, path), = Store.keyed_files(store.radiomics_dir("brats", 1), ".parquet")
    wide = read_feature_files([path])
    assert list(wide.columns[:3]) == ["cohort", "patient_id", "reader"]
    assert wide.shape == (1, 3 + 1130)
    assert wide["original_shape_VoxelVolume"].iloc[0] == pytest.approx(90740, rel=0.01)
    slice_ = np.load(store.maxslice_path("brats", 1, "case_9", key))
    assert slice_.shape == (2, 224, 224) and slice_.dtype == np.float32
    assert set(np.unique(slice_[1])) == {0.0, 1.0}

    # Recompute the resampled grid independently and check the chosen slice is the largest.
    extractor = rad.make_extractor(settings.radiomics.params_path())
    corrected, _ = n4_correct(read_image(image_path), settings.preprocess)
    mask = read_mask(mask_path, corrected, 1)
    res_img, res_mask = rad.resample_like_pyradiomics(extractor, corrected, mask, 10.0)
    assert res_img.GetSpacing() == pytest.approx((1.0, 1.0, 1.0))
    areas = (sitk.GetArrayFromImage(res_mask) == 1).sum(axis=(1, 2))
    ms = max_slice(res_img, res_mask, 224, 10.0)
    assert ms.slice_index == int(np.argmax(areas))
    assert areas[ms.slice_index] == areas.max() > areas[ms.slice_index - 3]
    assert Store.read_metadata(path)["max_slice_index"] == ms.slice_index
    np.testing.assert_array_equal(ms.array, slice_)
    # The ROI fills the crop except the margin: its area in the resized slice matches.
    pixel_mm = (np.ptp(np.nonzero(ms.array[1])[0]) + 1) / 224
    assert pixel_mm > 0


def test_max_slice_geometry_on_a_synthetic_volume() -> None:
    arr = np.zeros((20, 60, 80), np.float32)
    mask = np.zeros_like(arr, np.uint8)
    mask[5, 20:30, 30:50] = 1  # 200 px
    mask[12, 10:40, 20:60] = 1  # 1200 px: the largest
    mask[13, 15:35, 25:55] = 1
    arr[mask > 0] = 100
    img = sitk.GetImageFromArray(arr)
    msk = sitk.GetImageFromArray(mask)
    ms = max_slice(img, msk, 64, margin_mm=0.0)
    assert ms.slice_index == 12
    assert ms.areas_mm2[12] == 1200
    # A 30 x 40 box in a square crop of side 40 with no margin: rows 3/4 covered, columns all.
    covered_rows = np.nonzero(ms.array[1].any(axis=1))[0]
    covered_cols = np.nonzero(ms.array[1].any(axis=0))[0]
    assert len(covered_cols) == 64
    assert abs(len(covered_rows) - 48) <= 1
    assert ms.array[0][32, 32] == pytest.approx(100)  # the ROI centre maps to the crop centre
