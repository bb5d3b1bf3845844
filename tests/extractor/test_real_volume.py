"""A real brain-tumour MR volume through N4, extraction and the max slice (1 mm and 5 mm)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from dtlr.services.extractor.io import read_image, read_mask
from dtlr.services.extractor.maxslice import choose_slice, max_slice
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

    # The chosen slice is the largest ROI slice on the image's own grid (BraTS: 1 mm).
    corrected, _ = n4_correct(read_image(image_path), settings.preprocess)
    mask = read_mask(mask_path, corrected, 1)
    areas = (sitk.GetArrayFromImage(mask) == 1).sum(axis=(1, 2))
    ms = max_slice(corrected, mask, 224, 10.0)
    assert areas[ms.slice_index] == areas.max()
    meta = Store.read_metadata(path)
    assert meta["max_slice_index"] == ms.slice_index and meta["max_slice_grid"] == "acquired"
    np.testing.assert_array_equal(ms.array, slice_)


def test_max_slice_of_a_5_mm_volume_is_an_acquired_slice(brats: tuple[Path, Path],
                                                         tmp_path: Path) -> None:
    """5 mm slices (the paper's acquisition): the max slice is an acquired one, unchanged.

    Chosen after 1 mm resampling, each acquired slice becomes five tied copies; the first was
    taken, 2 mm off the acquired slice, on interpolated data. Now the slice comes from the
    acquired grid: its image channel is exactly the acquired slice cropped and resized.
    """
    image_path, mask_path = brats
    image, mask = sitk.ReadImage(str(image_path)), sitk.ReadImage(str(mask_path))
    step = 5  # every 5th 1 mm slice: a 5 mm acquisition of the same head
    thick = [img[:, :, ::step] for img in (image, mask)]
    assert thick[0].GetSpacing()[2] == pytest.approx(5.0)
    paths = [tmp_path / "t1_5mm.nii.gz", tmp_path / "mask_5mm.nii.gz"]
    for img, p in zip(thick, paths, strict=True):
        sitk.WriteImage(img, str(p))
    store = Store(tmp_path / "store")
    settings = Settings.model_validate({"preprocess": {"n4": False}})
    row = {"cohort": "thick", "patient_id": "case_9", "image": str(paths[0]),
           "mask": str(paths[1]), "mask_reader2": None}
    record = extract_patient(store, row, settings)
    assert record.state == "done", record.message
    (_pid, key, path), = Store.keyed_files(store.radiomics_dir("thick", 1), ".parquet")
    meta = Store.read_metadata(path)
    areas = (sitk.GetArrayFromImage(thick[1]) > 0).sum(axis=(1, 2))
    index = meta["max_slice_index"]
    assert areas[index] == areas.max() and 0 < index < len(areas) - 1
    # The stored position is that acquired slice's centre on the original 5 mm grid.
    z = thick[0].TransformIndexToPhysicalPoint([0, 0, index])[2]
    assert meta["max_slice_position_mm"][2] == pytest.approx(z)
    stored = np.load(store.maxslice_path("thick", 1, "case_9", key))
    direct = max_slice(sitk.Cast(thick[0], sitk.sitkFloat32), sitk.Cast(thick[1], sitk.sitkUInt8),
                       settings.maxslice.size, settings.maxslice.margin_mm)
    assert direct.slice_index == index
    np.testing.assert_allclose(stored, direct.array, rtol=1e-6)


def test_ties_take_the_middle_of_the_run() -> None:
    assert choose_slice(np.array([1.0, 5, 5, 5, 5, 5, 2])) == 3
    assert choose_slice(np.array([5.0, 5, 1, 5])) == 0
    assert choose_slice(np.array([0.0, 2, 9])) == 2


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
