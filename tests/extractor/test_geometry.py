"""Image/mask geometry is an explicit policy: same grid or an exact crop, else refused (strict)
or resampled and recorded (``preprocess.mask_geometry: resample``).

On crops of real TCGA-LGG T1c volumes: a mask shifted by 5 mm, on another spacing, on another
direction, a voxel-aligned crop, and the opt-in resampling; through the pure functions, through
`dtlr submit` (exit code, status records, nothing else changed) and through `dtlr extract`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from click.testing import CliRunner

from dtlr.services.extractor import features as rad
from dtlr.services.extractor.cli import extract
from dtlr.services.extractor.geometry import (
    SITK_DEFAULT_TOLERANCE,
    Geometry,
    crop_offset,
    fit_mask,
    same_grid,
    tolerance_of,
)
from dtlr.services.extractor.stage import stage_parameters
from dtlr.shared.config import Settings
from dtlr.shared.stage import InputError
from tests.images import (
    TEST_PARAMS,
    Base,
    Case,
    assert_only_trial_changed,
    assert_refused,
    cropped,
    cut,
    reoriented,
    respaced,
    shifted,
    stored_features,
    submit_trial,
)


def load(path: Path) -> sitk.Image:
    return sitk.ReadImage(str(path))


def array(image: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(image)


@pytest.fixture(scope="module")
def fg(cases: dict[str, Case]) -> tuple[sitk.Image, sitk.Image]:
    return load(cases["FG"].image), sitk.Cast(load(cases["FG"].mask), sitk.sitkUInt8)


TOL = 1e-4  # the shipped parameter file's geometryTolerance


# --- the pure policy ----------------------------------------------------------------------


def test_tolerance_comes_from_the_parameter_file() -> None:
    paper = rad.make_extractor(Settings().radiomics.params_path())
    assert tolerance_of(paper.settings) == 1e-4 == paper.settings["geometryTolerance"]
    assert tolerance_of({}) == SITK_DEFAULT_TOLERANCE == 1e-6


def test_same_grid_within_tolerance_is_put_on_the_exact_grid(fg: tuple[sitk.Image, sitk.Image]
                                                              ) -> None:
    image, mask = fg
    nudged = sitk.Image(mask)
    nudged.SetOrigin([o + 0.5e-4 for o in mask.GetOrigin()])  # < 1e-4 x 1 mm
    out, note = fit_mask(nudged, image, policy="strict", tolerance=TOL, label=1, path="m")
    assert note == "" and Geometry.of(out) == Geometry.of(image)
    np.testing.assert_array_equal(array(out), array(mask))
    nudged.SetOrigin([o + 2e-4 for o in mask.GetOrigin()])  # beyond the tolerance
    assert not same_grid(Geometry.of(image), Geometry.of(nudged), TOL)
    with pytest.raises(InputError, match="origin differed by"):
        fit_mask(nudged, image, policy="strict", tolerance=TOL, label=1, path="m")


def test_voxel_aligned_crop_is_placed_into_the_image_grid(
        fg: tuple[sitk.Image, sitk.Image], tmp_path: Path, cases: dict[str, Case]) -> None:
    image, mask = fg
    crop = load(cropped(cases["FG"].mask, tmp_path / "crop.nii.gz"))
    offset = crop_offset(image, Geometry.of(crop), TOL)
    assert offset is not None and crop.GetSize() != image.GetSize()
    out, note = fit_mask(sitk.Cast(crop, sitk.sitkUInt8), image, policy="strict", tolerance=TOL,
                         label=1, path="m")
    assert f"voxel-aligned crop of the image grid ({' x '.join(map(str, crop.GetSize()))} " \
           f"voxels at voxel {offset})" in note
    assert Geometry.of(out) == Geometry.of(image)
    np.testing.assert_array_equal(array(out), array(mask))


def test_crop_that_is_off_by_half_a_voxel_or_leaves_the_image_is_no_crop(
        fg: tuple[sitk.Image, sitk.Image]) -> None:
    image, mask = fg
    crop = mask[5:20, 5:20, 5:20]
    assert crop_offset(image, Geometry.of(crop), TOL) == (5, 5, 5)
    half = sitk.Image(crop)
    half.SetOrigin([o + 0.5 for o in crop.GetOrigin()])
    assert crop_offset(image, Geometry.of(half), TOL) is None
    outside = sitk.Image(crop)
    outside.SetOrigin(image.TransformIndexToPhysicalPoint((-2, 5, 5)))
    assert crop_offset(image, Geometry.of(outside), TOL) is None


@pytest.mark.parametrize("make,words", [
    (lambda m, d: shifted(m, d / "s.nii.gz"), ("origin differed by (0, 0, 5) mm",)),
    (lambda m, d: respaced(m, d / "s.nii.gz"), ("spacing (1, 1, 2) mm vs the image's (1, 1, 1)",
                                                "size")),
    (lambda m, d: reoriented(m, d / "s.nii.gz"), ("direction (-1, 0, 0, 0, 1, 0, 0, 0, 1) vs "
                                                  "the image's (1, 0, 0, 0, 1, 0, 0, 0, 1)",)),
], ids=["shift 5 mm", "spacing", "direction"])
def test_other_grids_are_refused_with_both_geometries(
        make: Callable[[Path, Path], Path], words: tuple[str, ...],
        fg: tuple[sitk.Image, sitk.Image], cases: dict[str, Case], tmp_path: Path) -> None:
    image, _ = fg
    other = sitk.Cast(load(make(cases["FG"].mask, tmp_path)), sitk.sitkUInt8)
    with pytest.raises(InputError) as err:
        fit_mask(other, image, policy="strict", tolerance=TOL, label=1, path="m.nii.gz")
    message = str(err.value)
    assert message.startswith("m.nii.gz: the mask does not lie on the image's grid")
    assert f"image {Geometry.of(image).describe()}; mask {Geometry.of(other).describe()}" \
        in message
    assert "preprocess.mask_geometry: resample" in message
    for word in words:
        assert word in message, message


def test_resampling_a_reoriented_mask_gives_the_original_back(
        fg: tuple[sitk.Image, sitk.Image], cases: dict[str, Case], tmp_path: Path) -> None:
    image, mask = fg
    other = sitk.Cast(load(reoriented(cases["FG"].mask, tmp_path / "r.nii.gz")), sitk.sitkUInt8)
    out, note = fit_mask(other, image, policy="resample", tolerance=TOL, label=1, path="m")
    assert note.startswith("resampled onto the image grid (") and "direction" in note
    np.testing.assert_array_equal(array(out), array(mask))  # same voxels: exact


def test_resampling_refuses_an_roi_outside_the_image(fg: tuple[sitk.Image, sitk.Image]) -> None:
    image, mask = fg
    far = sitk.Image(mask)
    far.SetOrigin([o + 200 for o in mask.GetOrigin()])
    with pytest.raises(InputError, match=r"ROI \(label 1\) lies partly or wholly outside"):
        fit_mask(far, image, policy="resample", tolerance=TOL, label=1, path="m")


def test_mask_policy_is_part_of_the_key_and_the_voxel_cap_is_not() -> None:
    strict, resample = Settings(), Settings(preprocess={"mask_geometry": "resample"})
    capped = Settings(preprocess={"max_voxels": 1000})
    assert stage_parameters(strict) != stage_parameters(resample)
    assert stage_parameters(strict) == stage_parameters(capped)


# --- through `dtlr submit` ----------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("make,words", [
    (lambda m, d: shifted(m, d / "FG_mask_shift.nii.gz"), ("origin differed by (0, 0, 5) mm",)),
    (lambda m, d: respaced(m, d / "FG_mask_2mm.nii.gz"), ("spacing (1, 1, 2) mm",)),
    (lambda m, d: reoriented(m, d / "FG_mask_flip.nii.gz"), ("direction (-1, 0, 0",)),
], ids=["shift 5 mm", "spacing", "direction"])
def test_mismatched_mask_fails_only_its_patient(make: Callable[[Path, Path], Path],
                                                words: tuple[str, ...], base: Base,
                                                tmp_path: Path) -> None:
    mask = make(base.cases["FG"].mask, tmp_path)
    trial = submit_trial(base, tmp_path, {"BAD": Case(base.cases["FG"].image, mask)})
    message = assert_refused(trial, "BAD", mask, f"reader 1 mask {mask}",
                             "does not lie on the image's grid", *words,
                             f"image {Geometry.of(load(base.cases['FG'].image)).describe()}",
                             "preprocess.mask_geometry: resample")
    assert f"mask {Geometry.of(load(mask)).describe()}" in message


@pytest.mark.slow
def test_cropped_mask_gives_the_features_of_the_whole_mask(base: Base, tmp_path: Path) -> None:
    mask = cropped(base.cases["FG"].mask, tmp_path / "FG_mask_crop.nii.gz")
    trial = submit_trial(base, tmp_path, {"FG": Case(base.cases["FG"].image, mask)})
    assert trial.proc.returncode == 0, trial.output
    record = trial.record("FG")
    assert record.state == "done"
    assert record.message.startswith("reader 1 mask is a voxel-aligned crop of the image grid")
    assert stored_features(trial.store, "trial", "FG") == stored_features(trial.store, "base",
                                                                          "FG")
    assert_only_trial_changed(trial, {"FG", "G"})


@pytest.mark.slow
def test_opt_in_resampling_is_done_and_recorded(base: Base, tmp_path: Path) -> None:
    mask = shifted(base.cases["FG"].mask, tmp_path / "FG_mask_shift.nii.gz", (0.0, 0.0, 5.0))
    settings = base.settings_with(tmp_path, mask_geometry="resample")
    trial = submit_trial(base, tmp_path, {"FG": Case(base.cases["FG"].image, mask)}, settings)
    assert trial.proc.returncode == 0, trial.output
    record = trial.record("FG")
    assert record.state == "done"
    assert record.message == ("reader 1 mask resampled onto the image grid (origin differed by "
                              "(0, 0, 5) mm)")
    assert trial.record("G").message == ""
    moved = stored_features(trial.store, "trial", "FG")
    original = stored_features(trial.store, "base", "FG")
    # The ROI (inside the image with its margin) moved 5 mm: same shape, other voxels.
    assert moved["original_shape_VoxelVolume"] == original["original_shape_VoxelVolume"]
    assert moved["original_firstorder_Mean"] != pytest.approx(original["original_firstorder_Mean"])
    assert_only_trial_changed(trial, {"FG", "G"})


# --- through `dtlr extract` ---------------------------------------------------------------


def test_extract_command_refuses_then_resamples_when_asked(cases: dict[str, Case],
                                                          tmp_path: Path) -> None:
    mask = shifted(cases["FG"].mask, tmp_path / "shift.nii.gz")
    params = tmp_path / "params.yaml"
    params.write_text(TEST_PARAMS, encoding="utf-8")
    args = ["--image", str(cases["FG"].image), "--mask", str(mask), "--no-n4",
            "--params", str(params), "--out", str(tmp_path / "f.csv")]
    refused = CliRunner().invoke(extract, args)
    assert refused.exit_code == 2, refused.output  # nothing ran: refused
    assert "does not lie on the image's grid (origin differed by (0, 0, 5) mm" in refused.output
    assert "--mask-geometry resample" in refused.output and not (tmp_path / "f.csv").exists()
    done = CliRunner().invoke(extract, [*args, "--mask-geometry", "resample"])
    assert done.exit_code == 0, done.output
    assert "mask resampled onto the image grid (origin differed by (0, 0, 5) mm)" in done.output
    assert len(pd.read_csv(tmp_path / "f.csv").columns) == 2 + 56


def test_extract_command_refuses_damaged_files(cases: dict[str, Case], tmp_path: Path) -> None:
    image = cut(cases["FG"].image, tmp_path / "cut.nii.gz", 1000)
    result = CliRunner().invoke(extract, ["--image", str(image), "--mask",
                                          str(cases["FG"].mask), "--no-n4"])
    assert result.exit_code == 2, result.output  # nothing ran: refused
    assert f"{image}: the compressed data stops before its end marker" in result.output
