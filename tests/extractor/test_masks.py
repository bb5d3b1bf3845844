"""Masks as hospitals have them: DICOM SEG, DICOM RTSTRUCT and 3D Slicer .seg.nrrd.

A real TCGA case (DU: contrast-enhanced T1 and its tumour segmentation, cropped around the
tumour core) is written as a DICOM MR series; its core ("Tumour core") and the whole tumour
("Whole tumour", which contains the core: the segments overlap) are written as a DICOM SEG
(highdicom), an RTSTRUCT (contours through the boundary voxels' centres, as rt-utils writes
them) and a Slicer .seg.nrrd (two layers, cropped to the segments), each naming the series.

* SEG and .seg.nrrd encode the same voxels as the label map: the masks are equal voxel for
  voxel and the features equal to within 1e-12 (relative); measured: identical (0 difference).
* RTSTRUCT contours are rasterised: a voxel is in the ROI when its centre is inside a contour
  or on it. Contours through the boundary voxels' centres give the label map back voxel for
  voxel (Dice 1, features within 1e-12; measured identical). Smooth contours between voxel
  centres (the 50 % line of each slice blurred by a Gaussian of sigma 1 voxel, like smoothed
  planar contours of a planning system or 3D Slicer) change the mask: the test asks Dice
  >= 0.99 and voxel and mesh volumes within 1 % and 2 % of the label map's; measured for the
  core: Dice 0.9965, 28 voxels fewer of 9281 (-0.30 %).
* pydicom's public test structure set (pydicom.data "rtstruct.dcm", three 400 x 300 mm
  rectangles 10 mm apart) on a series of its frame of reference gives exactly the rectangles'
  volume.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.data import get_testdata_file

from dtlr.services.extractor.io import read_image, read_mask, read_mask_noted
from dtlr.services.extractor.stage import plan_patient
from dtlr.shared import manifest
from dtlr.shared.config import Settings
from dtlr.shared.messages import ExtractMessage
from dtlr.shared.stage import InputError
from dtlr.shared.store import Store
from tests.images import (
    CASES,
    TCGA,
    TEST_PARAMS,
    crop_case,
    dtlr,
    series_uids,
    stored_features,
    write_dicom_series,
)
from tests.segmentations import write_rtstruct, write_seg, write_seg_nrrd

CORE, WHOLE = "Tumour core", "Whole tumour"
TOLERANCE = 1e-4  # TEST_PARAMS' geometryTolerance
FEATURE_RTOL = 1e-12  # SEG and .seg.nrrd vs the label map
RT_DICE, RT_VOLUME = 0.99, 0.01  # smooth RTSTRUCT contours vs the label map: Dice, volume


@dataclass(frozen=True)
class Clinical:
    """One real case as a hospital's archive holds it (all under ``root``)."""

    root: Path
    series: Path  # the DICOM MR series (the image)
    labelmap: Path  # the core as a NIfTI label map (value 1), on the image's grid
    labelmap3: Path  # the same voxels with value 3
    seg: Path  # DICOM SEG of the series: "Tumour core", "Whole tumour" (overlapping)
    rtstruct: Path  # RTSTRUCT of the series: the same ROIs, contours through voxel centres
    rtstruct_smooth: Path  # the same ROIs as smooth contours between voxel centres
    seg_nrrd: Path  # Slicer .seg.nrrd: the same segments, two layers, cropped
    seg_other_frame: Path  # a SEG of another study's series (another frame of reference)
    rt_other_series: Path  # an RTSTRUCT drawn on another series of the same session
    core: np.ndarray
    whole: np.ndarray


@pytest.fixture(scope="module")
def clinical(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Clinical:
    root = tmp_path_factory.mktemp("clinical")
    case = crop_case(data_dir, "DU", root)
    image = sitk.ReadImage(str(case.image))
    core_image = sitk.ReadImage(str(case.mask))
    core = sitk.GetArrayFromImage(core_image).astype(bool)
    full = sitk.ReadImage(str(data_dir.joinpath(*TCGA, CASES["DU"][0],
                                                "seg_fusion_simple.nii.gz")))
    start = full.TransformPhysicalPointToIndex(image.GetOrigin())
    box = [slice(s, s + n) for s, n in zip(start, image.GetSize(), strict=True)]
    whole = sitk.GetArrayFromImage(full[box[0], box[1], box[2]]) > 0
    assert (core & ~whole).sum() == 0 and whole.sum() > core.sum()
    labelmap3 = sitk.GetImageFromArray(core.astype(np.uint8) * 3)
    labelmap3.CopyInformation(core_image)
    sitk.WriteImage(labelmap3, str(root / "core_label3.nii.gz"), useCompression=True)
    series = write_dicom_series(case.image, root / "series-t1c")
    segments = {CORE: core, WHOLE: whole}
    other_study = write_dicom_series(case.image, root / "series-other-study")
    same_session = write_dicom_series(case.image, root / "series-t1c-repeat",
                                      frame_of_reference=series_uids(series)["frame_of_reference"])
    return Clinical(
        root=root, series=series, labelmap=case.mask, labelmap3=root / "core_label3.nii.gz",
        seg=write_seg(series, segments, root / "tumour.seg.dcm"),
        rtstruct=write_rtstruct(series, segments, root / "tumour.rtstruct.dcm"),
        rtstruct_smooth=write_rtstruct(series, segments, root / "smooth.rtstruct.dcm",
                                       smooth=1.0),
        seg_nrrd=write_seg_nrrd(image, segments, root / "tumour.seg.nrrd"),
        seg_other_frame=write_seg(other_study, segments, root / "other-study.seg.dcm"),
        rt_other_series=write_rtstruct(same_session, segments, root / "repeat.rtstruct.dcm"),
        core=core, whole=whole)


def _mask(path: Path, clinical: Clinical, segment: str | None = None, label: int = 1,
          **kw: object) -> np.ndarray:
    image = read_image(clinical.series)
    mask = read_mask(path, image, label, tolerance=TOLERANCE, segment=segment,
                     image_path=clinical.series, **kw)
    assert mask.GetSize() == image.GetSize() and mask.GetOrigin() == image.GetOrigin()
    return sitk.GetArrayFromImage(mask)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float((a & b).sum()) / float(a.sum() + b.sum())


# --- the readers ----------------------------------------------------------------------------


def test_seg_and_seg_nrrd_give_the_label_maps_voxels(clinical: Clinical, tmp_path: Path) -> None:
    for name, truth in ((CORE, clinical.core), (WHOLE, clinical.whole)):
        for path in (clinical.seg, clinical.seg_nrrd):
            got = _mask(path, clinical, name, label=2)
            assert set(np.unique(got)) == {0, 2}
            assert np.array_equal(got == 2, truth), (path, name)
    # names are matched as written, else in another case
    assert np.array_equal(_mask(clinical.seg, clinical, "tumour CORE") == 1, clinical.core)
    # Slicer files: uncropped, one layer, and Slicer 4.10's layout (no Layer/LabelValue fields)
    image = sitk.ReadImage(str(clinical.labelmap))
    for kw in ({"crop": False}, {"legacy": True}):
        path = write_seg_nrrd(image, {CORE: clinical.core, WHOLE: clinical.whole},
                              tmp_path / f"{next(iter(kw))}.seg.nrrd", **kw)
        assert np.array_equal(_mask(path, clinical, WHOLE) == 1, clinical.whole), kw
    single = write_seg_nrrd(image, {"only": clinical.core}, tmp_path / "single.seg.nrrd")
    assert np.array_equal(_mask(single, clinical) == 1, clinical.core)  # no name needed
    # a cropped Slicer file is a voxel-aligned crop of the image grid: placed, and said so
    _, note = read_mask_noted(clinical.seg_nrrd, read_image(clinical.series), 1,
                              tolerance=TOLERANCE, segment=CORE)
    assert "voxel-aligned crop" in note
    _, note = read_mask_noted(clinical.seg, read_image(clinical.series), 1, tolerance=TOLERANCE,
                              segment=CORE, image_path=clinical.series)
    assert note == ""


def test_rtstruct_contours_are_rasterised_close_to_the_label_map(clinical: Clinical) -> None:
    for name, truth in ((CORE, clinical.core), (WHOLE, clinical.whole)):
        assert np.array_equal(_mask(clinical.rtstruct, clinical, name) == 1, truth), name
        got = _mask(clinical.rtstruct_smooth, clinical, name) == 1
        d, volume = dice(got, truth), got.sum() / truth.sum() - 1
        print(f"smooth RTSTRUCT {name}: Dice {d:.4f}, voxels {got.sum()} vs {truth.sum()} "
              f"({volume:+.3%})")
        assert d >= RT_DICE and abs(volume) <= RT_VOLUME, (name, d, volume)


def test_public_rtstruct_on_its_frame_of_reference(tmp_path: Path) -> None:
    """pydicom's test structure set: ROI 'patient' is three 400 x 300 mm rectangles at
    z = -200, -190, -180 mm; on a 4 x 4 x 10 mm series of its frame of reference and series
    (voxel centres off the rectangles' edges) it is 100 x 75 voxels on each of 3 slices."""
    path = Path(get_testdata_file("rtstruct.dcm", download=False))
    ds = pydicom.dcmread(path, force=True)
    frame = ds.ReferencedFrameOfReferenceSequence[0]
    series_uid = frame.RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    grid = sitk.GetImageFromArray(np.random.default_rng(0).integers(
        0, 1000, (4, 85, 110)).astype(np.int16))
    grid.SetSpacing((4.0, 4.0, 10.0))
    grid.SetOrigin((-218.0, -168.0, -200.0))
    sitk.WriteImage(grid, str(tmp_path / "grid.nii.gz"))
    series = write_dicom_series(tmp_path / "grid.nii.gz", tmp_path / "phantom",
                                frame_of_reference=str(frame.FrameOfReferenceUID),
                                series_uid=str(series_uid.SeriesInstanceUID))
    image = read_image(series)
    mask = sitk.GetArrayFromImage(read_mask(path, image, 1, segment="patient",
                                            image_path=series))
    assert [int(n) for n in mask.reshape(4, -1).sum(axis=1)] == [7500, 7500, 7500, 0]
    assert mask.sum() * 4 * 4 * 10 == 3 * 400 * 300 * 10  # the rectangles' volume, 3600 cm3

    def refused(segment: str | None, image_path: Path = series) -> str:
        with pytest.raises(InputError) as info:
            read_mask(path, read_image(image_path), 1, segment=segment, image_path=image_path)
        message = str(info.value)
        assert message.startswith(f"{path}: "), message
        return message

    message = refused("Isocenter 1")
    assert "only POINT contours" in message and "no contour on the image" in message
    message = refused("body")
    assert "ROI 'body' not found" in message and "in the manifest's mask_segment" in message
    assert "'patient' (ROI 1), 'Isocenter 1' (ROI 2), 'Isocenter 2' (ROI 3)" in message
    assert "holds 3 ROIs" in refused(None)
    other = write_dicom_series(tmp_path / "grid.nii.gz", tmp_path / "other")
    message = refused("patient", other)
    assert str(frame.FrameOfReferenceUID) in message
    assert series_uids(other)["frame_of_reference"] in message


def test_refusals_name_the_file_the_problem_and_the_fix(clinical: Clinical,
                                                        tmp_path: Path) -> None:
    def refused(path: Path, segment: str | None, image_path: Path | None = clinical.series,
                **kw: object) -> str:
        image = read_image(image_path or clinical.labelmap)
        with pytest.raises(InputError) as info:
            read_mask(path, image, 1, tolerance=TOLERANCE, segment=segment,
                      image_path=image_path, **kw)
        message = str(info.value)
        assert message.startswith(f"{path}: "), message
        return message

    message = refused(clinical.seg, "Tumor")
    assert "segment 'Tumor' not found" in message
    assert f"'{CORE}' (segment 1), '{WHOLE}' (segment 2)" in message
    message = refused(clinical.seg_nrrd, "Tumor")
    assert f"'{CORE}' (segment 0), '{WHOLE}' (segment 1)" in message
    for path in (clinical.seg, clinical.rtstruct, clinical.seg_nrrd):
        assert "none is named; give the tumour's" in refused(path, None)
    uids, other = series_uids(clinical.series), series_uids(clinical.root / "series-other-study")
    message = refused(clinical.seg_other_frame, CORE)
    assert uids["frame_of_reference"] in message and other["frame_of_reference"] in message
    assert "frame of reference" in message and "drawn on this series" in message
    repeat = series_uids(clinical.root / "series-t1c-repeat")
    message = refused(clinical.rt_other_series, CORE)
    assert repeat["series"] in message and uids["series"] in message
    assert "drawn on another series" in message
    message = refused(clinical.seg, CORE, image_path=None)  # the image as a NIfTI file
    assert "not a DICOM series folder" in message
    assert "label map" in refused(clinical.labelmap, CORE) and "mask_label" in \
        refused(clinical.labelmap, CORE)
    # an RTSTRUCT whose contours lie between the image's slices (drawn on other slices)
    ds = pydicom.dcmread(clinical.rtstruct)
    for c in ds.ROIContourSequence[0].ContourSequence:
        points = np.asarray(c.ContourData, dtype=float).reshape(-1, 3)
        points[:, 2] += 0.5
        c.ContourData = [f"{v:.10g}" for v in points.ravel()]
    ds.save_as(tmp_path / "between.dcm")
    message = refused(tmp_path / "between.dcm", CORE)
    assert f"ROI '{CORE}' has no contour on the image" in message and "mm apart" in message


def test_a_seg_off_the_image_grid_goes_to_the_geometry_policy(clinical: Clinical,
                                                              tmp_path: Path) -> None:
    """A SEG whose frames have 2 mm pixels (drawn on a coarser copy of the series, with the
    series' own UIDs) is refused under strict geometry, resampled under resample."""
    image = sitk.ReadImage(str(clinical.root / "DU_t1c.nii.gz"))
    size = [image.GetWidth() // 2, image.GetHeight() // 2, image.GetDepth()]
    spacing = (2.0, 2.0, image.GetSpacing()[2])
    origin = image.TransformContinuousIndexToPhysicalPoint((0.5, 0.5, 0.0))
    coarse = sitk.Resample(image, size, sitk.Transform(), sitk.sitkLinear, origin, spacing,
                           image.GetDirection(), 0, image.GetPixelID())
    sitk.WriteImage(coarse, str(tmp_path / "coarse.nii.gz"))
    uids = series_uids(clinical.series)
    series = write_dicom_series(tmp_path / "coarse.nii.gz", tmp_path / "coarse",
                                frame_of_reference=uids["frame_of_reference"],
                                series_uid=uids["series"])
    core = sitk.GetImageFromArray(clinical.core.astype(np.uint8))
    core.CopyInformation(image)
    small = sitk.Resample(core, coarse, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    path = write_seg(series, {CORE: sitk.GetArrayFromImage(small) > 0}, tmp_path / "coarse.dcm")
    with pytest.raises(InputError, match="does not lie on the image's grid"):
        _mask(path, clinical)
    mask, note = read_mask_noted(path, read_image(clinical.series), 1, tolerance=TOLERANCE,
                                 image_path=clinical.series, policy="resample")
    assert "frames are not on the image's voxels" in note and "resampled" in note
    assert dice(sitk.GetArrayFromImage(mask) == 1, clinical.core) > 0.8


# --- the manifest, the key, the message -----------------------------------------------------


def test_manifest_columns_are_normalised_and_checked(clinical: Clinical, tmp_path: Path) -> None:
    def table(rows: list[dict[str, str]]) -> Path:
        path = clinical.root / f"manifest-{len(list(clinical.root.glob('manifest-*')))}.csv"
        pd.DataFrame(rows).to_csv(path, index=False)
        return path

    base = {"image": str(clinical.series), "mask": str(clinical.rtstruct), "label": "1"}
    path = table([{**base, "patient_id": "A", "Mask Segment": f"  {CORE} ", "mask_label": "3"},
                  {**base, "patient_id": "B", "Mask Segment": "", "mask_label": "2.0"}])
    m = manifest.read_manifest(path, "masks")
    assert m.warnings == []  # an RTSTRUCT is a mask SimpleITK cannot read, and no problem
    assert m.table["mask_segment"].tolist() == [CORE, None]
    assert m.table["mask_label"].tolist() == [3, 2]
    assert list(m.table.columns[:9]) == ["cohort", "patient_id", "image", "mask",
                                         "mask_reader2", "grade", "label", "mask_segment",
                                         "mask_label"]
    bad = table([{**base, "patient_id": "A", "mask_label": "0"},
                 {**base, "patient_id": "B", "mask_label": "1.5"},
                 {**base, "patient_id": "C", "mask_segment_reader2": "core"}])
    with pytest.raises(manifest.ManifestError) as info:
        manifest.read_manifest(bad, "masks")
    problems = {p.split("(patient ")[1][0]: p for p in info.value.problems}
    assert len(info.value.problems) == 3 and set(problems) == {"A", "B", "C"}, problems
    assert "line 2 (patient A), column 'mask_label': '0' is not a label value" in problems["A"]
    assert "'1.5' is not a label value" in problems["B"] and "whole number >= 1" in problems["B"]
    assert "column 'mask_segment_reader2'" in problems["C"] and "no mask_reader2" in problems["C"]


def test_the_key_holds_the_segment_and_the_label(clinical: Clinical, tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(TEST_PARAMS, encoding="utf-8")
    settings = Settings.model_validate({"radiomics": {"params": str(params)}})
    row = {"cohort": "c", "patient_id": "P", "image": str(clinical.series),
           "mask": str(clinical.seg), "mask_segment": CORE}
    key = plan_patient(row, settings).keys[1]
    assert plan_patient({**row, "mask_segment": WHOLE}, settings).keys[1] != key
    assert plan_patient({**row, "mask_label": 2}, settings).keys[1] != key
    assert plan_patient(dict(row), settings).keys[1] == key
    message = ExtractMessage(store_root=str(tmp_path), cohort="c", patient_id="P",
                             image=row["image"], mask=row["mask"], mask_segment=CORE,
                             mask_label=3)
    assert message.row()["mask_segment"] == CORE and message.row()["mask_label"] == 3
    with pytest.raises(ValueError, match="mask_label"):
        ExtractMessage(store_root=str(tmp_path), cohort="c", patient_id="P", image="i",
                       mask="m", mask_label=0)


# --- dtlr submit ----------------------------------------------------------------------------


@pytest.mark.slow
def test_submit_reads_every_format_and_refuses_mismatches(clinical: Clinical,
                                                          tmp_path: Path) -> None:
    """One cohort through `dtlr cohort add` and `dtlr submit`: the label map, the same voxels
    as value 3 (mask_label 3), the SEG, the .seg.nrrd and both RTSTRUCTs ("Tumour core"), and
    three patients refused on their input while the rest completes."""
    folder = clinical.root / "submit"
    folder.mkdir()
    params = folder / "params.yaml"
    params.write_text(TEST_PARAMS, encoding="utf-8")
    settings = folder / "settings.yaml"
    settings.write_text(f"preprocess: {{n4: false}}\nradiomics: {{params: {params}}}\n",
                        encoding="utf-8")
    c = clinical
    rows = {
        "LM": (c.labelmap, "", ""), "LM3": (c.labelmap3, "", "3"), "SEG": (c.seg, CORE, ""),
        "NRRD": (c.seg_nrrd, CORE, ""), "RT": (c.rtstruct, CORE, ""),
        "RTSMOOTH": (c.rtstruct_smooth, CORE, ""),
        "XFRAME": (c.seg_other_frame, CORE, ""), "XSERIES": (c.rt_other_series, CORE, ""),
        "XNAME": (c.seg, "Tumor", ""),
    }
    lines = ["patient_id,image,mask,mask_segment,mask_label,label"]
    lines += [f"{pid},{c.series},{mask},{segment},{label},{i % 2}"
              for i, (pid, (mask, segment, label)) in enumerate(rows.items())]
    (folder / "manifest.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    store = folder / "store"
    added = dtlr("cohort", "add", "masks", str(folder / "manifest.csv"), "--store", str(store),
                 "--data-root", str(c.root))
    assert added.returncode == 0, added.stdout + added.stderr
    run = dtlr("submit", "--cohort", "masks", "--store", str(store), "--jobs", "1",
               "--config", str(settings))
    output = run.stdout + run.stderr
    assert run.returncode == 1, output
    st = Store(store)
    records = {pid: st.read_status("masks", pid, "extract") for pid in rows}
    done = ("LM", "LM3", "SEG", "NRRD", "RT", "RTSMOOTH")
    for pid in done:
        assert records[pid] is not None and records[pid].state == "done", (pid, records[pid])

    def refused(pid: str, *words: str) -> None:
        record = records[pid]
        assert record is not None and (record.state, record.failure) == ("failed", "input")
        assert record.message.startswith(f"patient {pid}: reader 1 mask {rows[pid][0]}: "), \
            record.message
        for word in words:
            assert word in record.message, (word, record.message)

    uids = series_uids(c.series)
    refused("XFRAME", "frame of reference", uids["frame_of_reference"],
            series_uids(c.root / "series-other-study")["frame_of_reference"])
    refused("XSERIES", "drawn on another series", uids["series"],
            series_uids(c.root / "series-t1c-repeat")["series"])
    refused("XNAME", "segment 'Tumor' not found", f"'{CORE}' (segment 1)",
            "give one of them in the manifest's mask_segment")

    reference = stored_features(store, "masks", "LM")
    assert len(reference) == 56  # TEST_PARAMS: shape, first order, GLCM
    for pid in ("LM3", "SEG", "NRRD", "RT"):
        got = stored_features(store, "masks", pid)
        assert got.keys() == reference.keys()
        worst = max(abs(got[k] - v) / max(abs(v), 1e-12) for k, v in reference.items())
        print(f"{pid}: largest relative difference from the label map {worst:.3g}")
        assert worst <= FEATURE_RTOL, (pid, worst)
    rt = stored_features(store, "masks", "RTSMOOTH")
    volume = rt["original_shape_VoxelVolume"] / reference["original_shape_VoxelVolume"] - 1
    mesh = rt["original_shape_MeshVolume"] / reference["original_shape_MeshVolume"] - 1
    print(f"RTSMOOTH: voxel volume {volume:+.3%}, mesh volume {mesh:+.3%}")
    assert abs(volume) <= RT_VOLUME and abs(mesh) <= 2 * RT_VOLUME
    keys = {pid: records[pid].key for pid in done}
    assert len(set(keys.values())) == len(keys)
    shutil.rmtree(store)
