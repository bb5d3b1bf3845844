"""The synthetic demo cohorts: determinism, manifest, Table 1 effects, geometry, masks and
image statistics that must move with grade the way the paper reports."""

from __future__ import annotations

import filecmp
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from scipy import ndimage
from scipy.stats import chi2_contingency, mannwhitneyu, spearmanr

from dtlr.services.coordinator.demo import (
    DEMO_COHORTS,
    DEMO_SCALE,
    FINDINGS,
    MANIFEST_COLUMNS,
    MIN_DIAMETER_MM,
    PAPER_COHORTS,
    demo_table,
    make_demo,
    plan_cohort,
    render_patient,
)
from dtlr.services.coordinator.phantom import BONE, DIPLOE, EDEMA, GREY, TUMOUR, WHITE, Phantom

SMALL = {"seed": 11, "n_train": 8, "n_test": 3, "n_reader2": 3}


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small demo written to disk."""
    out = tmp_path_factory.mktemp("demo")
    make_demo(out, **SMALL)
    return out


@pytest.fixture(scope="module")
def rendered() -> list[tuple[dict, Phantom]]:
    """40 training patients of the default seed rendered in memory, 10 with a second reader."""
    return [(p.row, render_patient(p, DEMO_COHORTS[0]))
            for p in plan_cohort(DEMO_COHORTS[0], 20250513, 40, n_reader2=10)]


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_same_seed_gives_byte_identical_files(small: Path, tmp_path: Path) -> None:
    """Every file, images included, is byte-identical for the same seed and sizes."""
    make_demo(tmp_path, **SMALL)
    files = _files(small)
    assert files == _files(tmp_path)
    assert len(files) == 2 * (8 + 3) + 3 + 2
    match, mismatch, errors = filecmp.cmpfiles(small, tmp_path, files, shallow=False)
    assert (len(match), mismatch, errors) == (len(files), [], [])


def test_another_seed_gives_other_data(small: Path, tmp_path: Path) -> None:
    """Another seed changes the manifest and the images."""
    make_demo(tmp_path, **{**SMALL, "seed": 12})
    for name in ("demo-hospitalA/manifest.csv", "demo-hospitalA/images/A001.nii.gz",
                 "demo-hospitalB/images/B001.nii.gz"):
        assert (small / name).read_bytes() != (tmp_path / name).read_bytes()


def test_manifest_columns_paths_and_encodings(small: Path) -> None:
    """Columns in order, relative paths that exist, the documented encodings."""
    for cohort, prefix, n, n2 in ((DEMO_COHORTS[0], "A", 8, 3), (DEMO_COHORTS[1], "B", 3, 0)):
        path = small / cohort / "manifest.csv"
        assert path.read_text(encoding="utf-8").splitlines()[0] == ",".join(MANIFEST_COLUMNS)
        m = pd.read_csv(path, keep_default_na=False, dtype=str)
        assert list(m["patient_id"]) == [f"{prefix}{i:03d}" for i in range(1, n + 1)]
        assert list(m["image"]) == [f"images/{p}.nii.gz" for p in m["patient_id"]]
        assert list(m["mask"]) == [f"masks/{p}.nii.gz" for p in m["patient_id"]]
        reader2 = m["mask_reader2"][m["mask_reader2"] != ""]
        assert len(reader2) == n2
        assert all(r == f"masks/{p}_reader2.nii.gz"
                   for p, r in zip(m["patient_id"][reader2.index], reader2, strict=True))
        for column in ("image", "mask"):
            assert all((path.parent / f).is_file() for f in m[column])
        assert all((path.parent / f).is_file() for f in reader2)
        assert set(m["grade"]) <= {"1", "2", "3"}
        assert (m["grade"] != "1").sum() == n // 2
        assert set(m["sex"]) <= {"female", "male"}
        assert set(m["location"]) <= {"non_skull_base", "skull_base"}
        assert set(m["shape"]) <= {"regular", "irregular"}
        for column in FINDINGS:
            assert set(m[column]) <= {"0", "1"}
        assert all(a.isdigit() and 18 <= int(a) <= 90 for a in m["age"])
        assert all(len(s.split(".")[1]) == 1 and 15 <= float(s) <= 100 for s in m["size_mm"])
        # the written rows are the cheap plan's rows
        table = demo_table(cohort, SMALL["seed"], n).astype(str)
        pd.testing.assert_frame_equal(m.drop(columns=["image", "mask", "mask_reader2"]), table)


def test_default_sizes_are_balanced() -> None:
    """120 + 40 patients by default, 1:1 high:low, 80-95 % of high grade WHO 2."""
    for cohort, prefix, n in ((DEMO_COHORTS[0], "A", 120), (DEMO_COHORTS[1], "B", 40)):
        t = demo_table(cohort)
        assert list(t.columns) == [c for c in MANIFEST_COLUMNS if c not in
                                   ("image", "mask", "mask_reader2")]
        assert len(t) == n and t["patient_id"].iloc[-1] == f"{prefix}{n:03d}"
        high = t["grade"] >= 2
        assert high.sum() == n // 2
        assert 0.8 <= (t["grade"][high] == 2).mean() <= 0.95


@pytest.mark.parametrize(("cohort", "significant"), [
    (DEMO_COHORTS[0], ("sex", "shape", "indistinct_margin", "peritumoral_edema")),
    (DEMO_COHORTS[1], ()),
])
def test_table1_effects_hold(cohort: str, significant: tuple[str, ...]) -> None:
    """Male sex, irregular shape, indistinct margin, oedema and size go with high grade in both
    hospitals (both drawn at Table 1's training rates), with chi-square p < 0.05 in the
    120-patient training cohort (40 test patients are too few for each finding alone);
    location does not differ (Table 1: p > 0.8)."""
    t = demo_table(cohort)
    high = t["grade"] >= 2
    for column, level in (("sex", "male"), ("shape", "irregular"), ("indistinct_margin", 1),
                          ("peritumoral_edema", 1)):
        present = t[column] == level
        assert present[high].mean() > present[~high].mean() + 0.15, column
        if column in significant:
            assert chi2_contingency(pd.crosstab(high, present))[1] < 0.05, column
    assert chi2_contingency(pd.crosstab(high, t["location"]))[1] > 0.5
    assert t["size_mm"][high].mean() - t["size_mm"][~high].mean() > 8.0
    if significant:
        assert mannwhitneyu(t["size_mm"][high], t["size_mm"][~high]).pvalue < 0.01
    rates = t[~high][list(FINDINGS)].mean()
    expected = np.array((45, 23, 105, 10, 59, 13)) / 170  # Table 1, training set, low grade
    np.testing.assert_allclose(rates, expected, atol=1.0 / len(t) * 2)


def test_image_and_mask_geometry(small: Path) -> None:
    """int16 image and uint8 mask on one grid: 0.8-1.0 mm in-plane, 5 mm slices, per hospital."""
    spacings = {}
    for cohort, pid in ((DEMO_COHORTS[0], "A001"), (DEMO_COHORTS[1], "B001")):
        image = sitk.ReadImage(str(small / cohort / "images" / f"{pid}.nii.gz"))
        mask = sitk.ReadImage(str(small / cohort / "masks" / f"{pid}.nii.gz"))
        assert image.GetPixelID() == sitk.sitkInt16 and mask.GetPixelID() == sitk.sitkUInt8
        sx, sy, sz = image.GetSpacing()
        assert 0.8 <= sx <= 1.0 and sy == pytest.approx(sx) and sz == pytest.approx(5.0)
        assert 160 <= image.GetSize()[0] <= 192 and 16 <= image.GetSize()[2] <= 24
        assert mask.GetSize() == image.GetSize()
        np.testing.assert_allclose(mask.GetSpacing(), image.GetSpacing())
        np.testing.assert_allclose(mask.GetOrigin(), image.GetOrigin(), atol=1e-4)
        np.testing.assert_allclose(mask.GetDirection(), image.GetDirection(), atol=1e-6)
        assert set(np.unique(sitk.GetArrayViewFromImage(mask))) == {0, 1}
        spacings[cohort] = sx
        # the head sits in the middle of the field of view, centred in physical space
        centre = image.TransformContinuousIndexToPhysicalPoint(
            [(s - 1) / 2 for s in image.GetSize()])
        assert abs(centre[0]) < 1e-3 and abs(centre[1]) < 1e-3
    assert spacings[DEMO_COHORTS[0]] != pytest.approx(spacings[DEMO_COHORTS[1]])


def test_files_are_the_rendered_patients(small: Path) -> None:
    """A patient renders the same alone as in its cohort (order independence)."""
    patient = plan_cohort(DEMO_COHORTS[0], SMALL["seed"], 8, 3)[6]
    phantom = render_patient(patient, DEMO_COHORTS[0])
    pid = patient.row["patient_id"]
    image = sitk.ReadImage(str(small / DEMO_COHORTS[0] / "images" / f"{pid}.nii.gz"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), phantom.image)
    mask = sitk.ReadImage(str(small / DEMO_COHORTS[0] / "masks" / f"{pid}.nii.gz"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(mask), phantom.mask)


def test_rerun_replaces_an_earlier_demo(tmp_path: Path) -> None:
    """A second call into the same folder leaves exactly its own files."""
    make_demo(tmp_path, seed=3, n_train=4, n_test=2, n_reader2=2)
    make_demo(tmp_path, seed=3, n_train=2, n_test=2, n_reader2=0)
    assert _files(tmp_path / DEMO_COHORTS[0]) == [
        "images/A001.nii.gz", "images/A002.nii.gz", "manifest.csv", "masks/A001.nii.gz",
        "masks/A002.nii.gz"]


def test_head_fills_but_fits_the_field_of_view(rendered: list[tuple[dict, Phantom]]) -> None:
    """No head is cut by the image border, and the head fills a good part of a slice."""
    for _, p in rendered:
        head = p.labels > 0
        assert not (head[:, 0].any() or head[:, -1].any() or head[:, :, 0].any()
                    or head[:, :, -1].any())
        assert head.mean(axis=(1, 2)).max() > 0.4


def test_intensities_suit_bin_width_25(rendered: list[tuple[dict, Phantom]]) -> None:
    """Inside the ROI the intensity range spans tens of 25-wide bins, as on real MR."""
    bins = [np.ptp(p.image[p.mask > 0]) / 25 for _, p in rendered]
    assert 30 <= np.median(bins) <= 100
    assert np.percentile(bins, 10) >= 20 and np.percentile(bins, 90) <= 140


def test_tumours_abut_the_inner_skull(rendered: list[tuple[dict, Phantom]]) -> None:
    """Every tumour is extra-axial: its mask touches bone within one voxel."""
    grow = ndimage.generate_binary_structure(3, 1)
    for row, p in rendered:
        assert (p.labels[p.mask > 0] == TUMOUR).all()
        ring = ndimage.binary_dilation(p.mask > 0, grow) & (p.mask == 0)
        assert np.isin(p.labels[ring], (BONE, DIPLOE)).any(), row["patient_id"]


def test_mask_volume_tracks_size(rendered: list[tuple[dict, Phantom]]) -> None:
    """Mask volume follows size_mm, at DEMO_SCALE: a dome of diameter size_mm * DEMO_SCALE
    (at least MIN_DIAMETER_MM)."""
    size = np.array([row["size_mm"] for row, _ in rendered])
    voxel = np.prod(rendered[0][1].spacing)
    volume = np.array([p.mask.sum() * voxel for _, p in rendered])
    assert spearmanr(size, volume).statistic > 0.9
    diameter = np.cbrt(6 * volume / np.pi)  # of the sphere of the same volume
    ratio = diameter / np.maximum(size * DEMO_SCALE, MIN_DIAMETER_MM)
    assert ratio.min() > 0.7 and ratio.max() < 1.35 and 0.85 < np.median(ratio) < 1.1


def test_second_reader_disagrees_realistically(rendered: list[tuple[dict, Phantom]]) -> None:
    """Reader 2 masks exist for exactly n_reader2 patients, with Dice 0.7-0.97 vs reader 1
    (small tumours disagree more, as in real inter-reader studies), median 0.85-0.93."""
    second = [(p.mask > 0, p.mask_reader2 > 0) for _, p in rendered if p.mask_reader2 is not None]
    assert len(second) == 10
    dice = np.array([2 * (a & b).sum() / (a.sum() + b.sum()) for a, b in second])
    assert dice.min() >= 0.7 and dice.max() <= 0.97
    assert 0.85 <= np.median(dice) <= 0.93


def test_image_statistics_follow_grade(rendered: list[tuple[dict, Phantom]]) -> None:
    """High grade: more heterogeneous enhancement (coefficient of variation inside the mask,
    away from its partial-volume rim) and darker, oedematous brain 3-8 voxels around the
    tumour relative to distant white matter (strongly with the oedema finding, in the median
    with grade, as oedema is commoner in high grade)."""
    high = np.array([row["grade"] >= 2 for row, _ in rendered])
    edema = np.array([row["peritumoral_edema"] == 1 for row, _ in rendered])
    cv, ring_ratio = [], []
    grow = ndimage.generate_binary_structure(3, 1)
    grow[0, :, :] = grow[2, :, :] = False  # in-plane
    for _, p in rendered:
        tumour = p.mask > 0
        inside = p.image[ndimage.binary_erosion(tumour, grow)].astype(float)
        cv.append(inside.std() / inside.mean())
        ring = ndimage.binary_dilation(tumour, grow, iterations=8)
        ring &= ~ndimage.binary_dilation(tumour, grow, iterations=3)
        brain = np.isin(p.labels, (GREY, WHITE, EDEMA))
        far = (p.labels == WHITE) & ~ndimage.binary_dilation(tumour, grow, iterations=25)
        ring_ratio.append(p.image[ring & brain].mean() / np.median(p.image[far]))
    cv, ring_ratio = np.array(cv), np.array(ring_ratio)
    assert np.median(cv[high]) > 1.3 * np.median(cv[~high])
    assert mannwhitneyu(cv[high], cv[~high], alternative="greater").pvalue < 0.05
    assert np.median(ring_ratio[edema]) < np.median(ring_ratio[~edema]) - 0.1
    assert mannwhitneyu(ring_ratio[edema], ring_ratio[~edema], alternative="less").pvalue < 1e-4
    assert np.median(ring_ratio[high]) < np.median(ring_ratio[~high])


def test_paper_geometry(tmp_path: Path) -> None:
    """geometry="paper": the paper's cohorts and grid (256 x 256 x 25, 0.94 / 0.70 mm x 5 mm),
    tumours at their recorded size, the head inside the field of view; the demo's clinical
    rows; the same files whether rendered in one process or several."""
    assert (len(demo_table(PAPER_COHORTS[0])), len(demo_table(PAPER_COHORTS[1]))) == (340, 102)
    pd.testing.assert_frame_equal(demo_table(PAPER_COHORTS[0], 11, 8),
                                  demo_table(DEMO_COHORTS[0], 11, 8))
    serial = make_demo(tmp_path / "serial", seed=11, n_train=4, n_test=2, n_reader2=1,
                       geometry="paper")
    assert list(serial) == list(PAPER_COHORTS)
    make_demo(tmp_path / "parallel", seed=11, n_train=4, n_test=2, n_reader2=1,
              geometry="paper", jobs=2)
    files = _files(tmp_path / "serial")
    assert files == _files(tmp_path / "parallel") and len(files) == 2 * 6 + 1 + 2
    assert filecmp.cmpfiles(tmp_path / "serial", tmp_path / "parallel", files,
                            shallow=False)[1:] == ([], [])
    for cohort, spacing in zip(PAPER_COHORTS, (0.94, 0.70), strict=True):
        image = sitk.ReadImage(str(serial[cohort].parent / "images" / f"{cohort[-1]}001.nii.gz"))
        assert image.GetSize() == (256, 256, 25)
        np.testing.assert_allclose(image.GetSpacing(), (spacing, spacing, 5.0))
    for patient in plan_cohort(PAPER_COHORTS[1], 11, 6)[:3]:
        p = render_patient(patient, PAPER_COHORTS[1])
        head = p.labels > 0
        assert not (head[:, 0].any() or head[:, -1].any() or head[:, :, 0].any()
                    or head[:, :, -1].any())
        diameter = np.cbrt(6 * p.mask.sum() * np.prod(p.spacing) / np.pi)
        assert 0.7 < diameter / max(patient.row["size_mm"], MIN_DIAMETER_MM) < 1.35
    with pytest.raises(ValueError, match="geometry"):
        make_demo(tmp_path, geometry="large")
