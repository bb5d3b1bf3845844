"""Damaged images are refused before extraction, each with the file, what is wrong and the fix.

Real volumes (crops of TCGA-LGG T1c, pyradiomics' brain1) are damaged in tmp_path. The first
tests record what SimpleITK does alone with each damage (the evidence for which checks DTLR
adds); every refusal is then tested through the commands a user runs: `dtlr cohort add` and
`dtlr submit --jobs 1` as subprocesses, with the exit code, the patient's status record, the
other patient done and nothing else in the store changed.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from dtlr.services.extractor import integrity
from dtlr.services.extractor.io import read_image
from dtlr.shared.stage import InputError
from tests.images import (
    Base,
    Case,
    as_format,
    assert_only_trial_changed,
    assert_refused,
    constant,
    copy_series,
    cut,
    flip_byte,
    huge_header,
    roi_voxel,
    stored_features,
    submit_trial,
    with_voxels,
    write_dicom_series,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def brain1(data_dir: Path) -> Path:
    return data_dir / "pyradiomics" / "brain1_image.nrrd"


def voxels(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


# --- what SimpleITK does alone (the evidence), and that DTLR refuses it -------------------

# name -> how to make the damaged file from brain1 in a folder, and what SimpleITK alone does
# with it: "refuses" (an exception), "wrong" (reads other voxels without a word) or
# "intact" (reads the right voxels from an incomplete file, without a word)
DAMAGE: dict[str, tuple[Callable[[Path, Path], Path], str]] = {
    "nii truncated": (lambda s, d: _cut(s, d, "a.nii", 600_000), "wrong"),
    "nii.gz truncated": (lambda s, d: _cut(s, d, "a.nii.gz", 200_000, True), "wrong"),
    "nii.gz end marker cut": (lambda s, d: _cut(s, d, "a.nii.gz", 4, True), "intact"),
    "nii.gz corrupted byte": (lambda s, d: _flip(s, d, "a.nii.gz"), "wrong"),
    "hdr/img truncated": (lambda s, d: _detached(s, d, "t.hdr", "t.img"), "wrong"),
    "nrrd raw truncated": (lambda s, d: _cut(s, d, "a.nrrd", 600_000), "refuses"),
    "nrrd gzip truncated": (lambda s, d: _cut(s, d, "a.nrrd", 200_000, True), "refuses"),
    "nrrd gzip end marker cut": (lambda s, d: _cut(s, d, "a.nrrd", 4, True), "intact"),
    "mha raw truncated": (lambda s, d: _cut(s, d, "a.mha", 600_000), "refuses"),
    "mha zlib truncated": (lambda s, d: _cut(s, d, "a.mha", 200_000, True), "refuses"),
    "mha zlib corrupted byte": (lambda s, d: _flip(s, d, "a.mha"), "wrong"),
    "mhd raw truncated": (lambda s, d: _detached(s, d, "t.mhd", "t.raw"), "refuses"),
}


def _cut(src: Path, folder: Path, name: str, n_bytes: int, compress: bool = False) -> Path:
    intact = as_format(src, folder / name, compress)
    return cut(intact, folder / f"t{intact.name[1:]}", n_bytes)


def _flip(src: Path, folder: Path, name: str) -> Path:
    intact = as_format(src, folder / name, True)
    return flip_byte(intact, folder / f"t{intact.name[1:]}")


def _detached(src: Path, folder: Path, header: str, data: str) -> Path:
    path = as_format(src, folder / header)
    cut(folder / data, folder / data, 600_000)
    return path


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_simpleitk_alone_and_dtlr(damage: str, brain1: Path, tmp_path: Path) -> None:
    make, alone = DAMAGE[damage]
    path = make(brain1, tmp_path)
    try:
        read = voxels(path)
    except RuntimeError:
        assert alone == "refuses", f"SimpleITK now refuses {damage} by itself"
    else:
        assert alone != "refuses", f"SimpleITK no longer refuses {damage}"
        assert read.shape == voxels(brain1).shape
        assert np.array_equal(read, voxels(brain1)) == (alone == "intact")
    with pytest.raises(InputError) as err:
        read_image(path)
    message = str(err.value)
    assert message.startswith(f"{path}"), message
    assert ("cut short" in message or "corrupted" in message or "fread got only" in message
            or "received" in message), message
    assert "copy it again from its source" in message.lower(), message


@pytest.mark.parametrize("name,compress", [
    ("a.nii", False), ("a.nii.gz", True), ("a.nrrd", False), ("a.nrrd", True), ("a.mha", False),
    ("a.mha", True), ("a.mhd", False), ("a.mhd", True), ("a.hdr", False)])
def test_intact_files_of_every_format_are_read(name: str, compress: bool, brain1: Path,
                                               tmp_path: Path) -> None:
    path = as_format(brain1, tmp_path / name, compress)
    image = read_image(path)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), voxels(brain1))


def test_compressed_stream_checks_are_exact(brain1: Path, tmp_path: Path) -> None:
    gz = as_format(brain1, tmp_path / "a.nii.gz", True)
    header = integrity.parse_nifti_header(integrity._read_head(gz, 540))
    assert header is not None and header.version == 1 and header.shape == (256, 256, 25)
    assert header.data_bytes == 256 * 256 * 25 * 2 and header.vox_offset == 352
    assert integrity._decompressed_length(gz, 0, "gzip") == 352 + header.data_bytes
    mha = as_format(brain1, tmp_path / "a.mha", True)
    _lines, offset = integrity._text_header(
        mha, lambda line: line.startswith("ElementDataFile"))
    assert integrity._decompressed_length(mha, offset, "zlib") == header.data_bytes


def test_nifti2_is_named(brain1: Path, tmp_path: Path) -> None:
    """SimpleITK 2.5 cannot read NIfTI-2 at all: the message says so and what to do."""
    one = as_format(brain1, tmp_path / "a.nii").read_bytes()
    h2 = bytearray(540)
    h2[0:4], h2[4:12] = (540).to_bytes(4, "little"), b"n+2\0\r\n\x1a\n"
    h2[12:16] = one[70:74]  # datatype, bitpix
    for i in range(8):
        h2[16 + 8 * i:24 + 8 * i] = int.from_bytes(one[40 + 2 * i:42 + 2 * i], "little",
                                                   signed=True).to_bytes(8, "little")
    h2[168:176] = (544).to_bytes(8, "little")
    path = tmp_path / "two.nii"
    path.write_bytes(bytes(h2) + bytes(4) + one[352:])
    assert integrity.nifti_version(path) == 2
    with pytest.raises(InputError, match="NIfTI-2, which this SimpleITK cannot read"):
        read_image(path)


def test_huge_header_is_refused_without_allocating(brain1: Path, tmp_path: Path) -> None:
    """A 1.4 KB NIfTI declaring 1000^3 voxels: refused from its header, fast, in flat memory
    (measured in a fresh process: its peak resident memory barely moves)."""
    for name in ("huge.nii", "huge.nii.gz"):
        path = huge_header(as_format(brain1, tmp_path / "a.nii"), tmp_path / name)
        assert path.stat().st_size < 1500
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        assert reader.GetSize() == (1000, 1000, 1000)
        script = (
            "import resource, sys, time\n"
            "from dtlr.services.extractor.io import read_image\n"
            "from dtlr.shared.stage import InputError\n"
            "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            "t0 = time.perf_counter()\n"
            "try:\n    read_image(sys.argv[1])\nexcept InputError as exc:\n    msg = str(exc)\n"
            "else:\n    msg = 'read'\n"
            "seconds = time.perf_counter() - t0\n"
            "grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before\n"
            "print(__import__('json').dumps([msg, seconds, grown]))\n")
        out = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True,
                             text=True, timeout=120, env=os.environ.copy(), cwd=REPO,
                             encoding="utf-8")
        message, seconds, grown_kb = json.loads(out.stdout.strip().splitlines()[-1])
        assert "1000 x 1000 x 1000 voxels" in message and "preprocess.max_voxels" in message
        assert str(path) in message
        assert seconds < 0.5
        assert grown_kb < 20_000  # < 20 MB, where reading it would take 2 GB


def test_voxel_cap_counts_components() -> None:
    integrity.check_voxel_cap(Path("x"), (100, 100, 10), 1, 100_000)
    with pytest.raises(InputError, match=r"100 x 100 x 10 x 3 components voxels"):
        integrity.check_voxel_cap(Path("x"), (100, 100, 10), 3, 100_000)


# --- voxel values -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["x.nrrd", "x.mha", "x.nii", "x.nii.gz"])
@pytest.mark.parametrize("value,words", [(math.nan, "1 NaN and 0 infinite"),
                                         (math.inf, "0 NaN and 1 infinite")])
def test_non_finite_voxels_are_refused(name: str, value: float, words: str, brain1: Path,
                                       tmp_path: Path) -> None:
    path = with_voxels(brain1, tmp_path / name, {(10, 20, 3): value})
    alone = voxels(path)
    if name.startswith("x.nii"):  # SimpleITK's NIfTI reader turns NaN and Inf into zeros
        assert np.isfinite(alone).all() and alone[3, 20, 10] == 0
    else:
        assert not np.isfinite(alone[3, 20, 10])
    with pytest.raises(InputError, match=words) as err:
        read_image(path)
    assert str(err.value).startswith(f"{path}: ")
    assert "first at voxel (10, 20, 3)" in str(err.value)
    read_image(with_voxels(brain1, tmp_path / f"ok_{name}", {}))  # float, all finite: read


def test_constant_image_is_refused(brain1: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"every voxel has the same value \(7"):
        read_image(constant(brain1, tmp_path / "c.nii.gz", 7.0))


# --- DICOM series -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def series(cases: dict[str, Case], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The FG case written as a DICOM series, and damaged copies of it."""
    root = tmp_path_factory.mktemp("dicom")
    good = write_dicom_series(cases["FG"].image, root / "good")
    files = sorted(good.iterdir())
    mid = len(files) // 2
    missing = copy_series(good, root / "missing")
    (missing / files[mid].name).unlink()
    duplicated = copy_series(good, root / "duplicated")
    (duplicated / f"copy_of_{files[mid].name}").write_bytes(files[mid].read_bytes())
    depth = len(files)
    uneven = write_dicom_series(cases["FG"].image, root / "uneven",
                                z_shift={i: 0.3 for i in range(mid, depth)})
    return {"good": good, "missing": missing, "duplicated": duplicated, "uneven": uneven,
            "mid": files[mid]}


def test_intact_dicom_series_reads_like_the_nifti(series: dict[str, Path],
                                                  cases: dict[str, Case]) -> None:
    image = read_image(series["good"])
    nifti = sitk.ReadImage(str(cases["FG"].image))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(nifti))
    assert image.GetOrigin() == pytest.approx(nifti.GetOrigin())
    assert image.GetSpacing() == pytest.approx(nifti.GetSpacing())


@pytest.mark.parametrize("kind,words", [
    ("missing", ("missing slice: 2.000 mm between", "1.000 mm apart", "about 1 slice missing",
                 "re-export the whole series")),
    ("duplicated", ("duplicated slice", "both lie at", "remove the duplicate")),
    ("uneven", ("unevenly spaced slices: gaps from 1.000 to 1.300 mm", "dcm2niix")),
])
def test_damaged_dicom_series_is_refused_with_positions(kind: str, words: tuple[str, ...],
                                                        series: dict[str, Path]) -> None:
    # SimpleITK alone reads each of them, with only a warning on stderr.
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(series[kind])))
    assert reader.Execute().GetDepth() > 1
    with pytest.raises(InputError) as err:
        read_image(series[kind])
    message = str(err.value)
    assert message.startswith(f"{series[kind]}: "), message
    assert "slice positions along the slice normal (mm" in message, message
    for word in words:
        assert word in message, message


def test_dicom_voxel_cap_is_checked_from_headers(series: dict[str, Path]) -> None:
    with pytest.raises(InputError, match=r"DICOM files declare .* than preprocess\.max_voxels"):
        read_image(series["good"], max_voxels=1000)


# --- through the real commands ------------------------------------------------------------


def _nii(case: Case, folder: Path) -> Path:
    return as_format(case.image, folder / "FG_t1c.nii")


# name -> (damaged case from the FG case and a folder, the damaged file, words of the message)
SUBMIT_CASES: dict[str, Callable[[Base, Path], tuple[Case, Path, tuple[str, ...]]]] = {
    "nii.gz cut short": lambda b, d: _image(b, cut(b.cases["FG"].image, d / "FG_cut.nii.gz",
                                                   b.cases["FG"].image.stat().st_size // 3),
                                            "compressed data stops before its end marker",
                                            "copy it again from its source"),
    "nii cut short": lambda b, d: _image(b, cut(_nii(b.cases["FG"], d), d / "FG_cut.nii",
                                                20_000),
                                         "the file is cut short", "read the missing voxels as "
                                         "zeros", "copy it again from its source"),
    "header declares 1000^3": lambda b, d: _image(b, huge_header(_nii(b.cases["FG"], d),
                                                                 d / "FG_huge.nii"),
                                                  "1000 x 1000 x 1000 voxels",
                                                  "preprocess.max_voxels"),
    "NaN inside the ROI": lambda b, d: _image(b, with_voxels(
        b.cases["FG"].image, d / "FG_nan.nii.gz", {roi_voxel(b.cases["FG"].mask, True): np.nan}),
        "1 NaN and 0 infinite voxels", "re-export the image without NaN/Inf"),
    "NaN outside the ROI": lambda b, d: _image(b, with_voxels(
        b.cases["FG"].image, d / "FG_nan.nii.gz", {roi_voxel(b.cases["FG"].mask, False): np.nan}),
        "1 NaN and 0 infinite voxels", "first at voxel (0, 0, 0)", "re-export the image"),
    "constant image": lambda b, d: _image(b, constant(b.cases["FG"].image, d / "FG_c.nii.gz"),
                                          "every voxel has the same value", "re-export"),
    "mask cut short": lambda b, d: _mask(b, cut(b.cases["FG"].mask, d / "FG_mask_cut.nii.gz",
                                                b.cases["FG"].mask.stat().st_size // 2),
                                         "compressed data stops before its end marker"),
}


def _image(b: Base, path: Path, *words: str) -> tuple[Case, Path, tuple[str, ...]]:
    return Case(path, b.cases["FG"].mask), path, (f"image {path}", *words)


def _mask(b: Base, path: Path, *words: str) -> tuple[Case, Path, tuple[str, ...]]:
    return Case(b.cases["FG"].image, path), path, (f"reader 1 mask {path}", *words)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SUBMIT_CASES))
def test_damaged_file_fails_only_its_patient(name: str, base: Base, tmp_path: Path) -> None:
    case, path, words = SUBMIT_CASES[name](base, tmp_path)
    trial = submit_trial(base, tmp_path, {"BAD": case})
    assert_refused(trial, "BAD", path, *words)
    assert "BAD" in trial.output  # the summary names the failed patient


@pytest.mark.slow
@pytest.mark.parametrize("kind,words", [
    ("missing", ("missing slice", "about 1 slice missing")),
    ("duplicated", ("duplicated slice", "copy_of_")),
    ("uneven", ("unevenly spaced slices",)),
])
def test_damaged_dicom_series_fails_only_its_patient(kind: str, words: tuple[str, ...],
                                                     series: dict[str, Path], base: Base,
                                                     tmp_path: Path) -> None:
    case = Case(series[kind], base.cases["FG"].mask)
    trial = submit_trial(base, tmp_path, {"BAD": case})
    assert_refused(trial, "BAD", series[kind], f"image {series[kind]}", *words,
                   "slice positions along the slice normal")


@pytest.mark.slow
def test_intact_dicom_series_is_extracted_like_its_nifti(series: dict[str, Path], base: Base,
                                                         tmp_path: Path) -> None:
    trial = submit_trial(base, tmp_path, {"FG": Case(series["good"], base.cases["FG"].mask)})
    assert trial.proc.returncode == 0, trial.output

    assert_only_trial_changed(trial, {"FG", "G"})
    dicom = stored_features(trial.store, "trial", "FG")
    nifti = stored_features(trial.store, "base", "FG")
    assert dicom.keys() == nifti.keys() and len(dicom) == 14 + 18 + 24  # shape, firstorder, glcm
    for k, v in nifti.items():
        assert dicom[k] == pytest.approx(v, rel=1e-6, abs=1e-9), k


def test_non_finite_scan_across_pieces() -> None:
    """The NIfTI data scan finds the first NaN/Inf whatever the pieces' boundaries."""
    values = np.arange(1000, dtype="<f4")
    values[[3, 517, 998]] = [np.inf, np.nan, np.nan]
    stream = bytes(11) + values.tobytes() + bytes(5)  # header before, padding after
    for piece in (1, 3, 7, 64, 4096):
        scan = integrity._NonFinite(np.dtype("<f4"), 11, values.nbytes)
        for i in range(0, len(stream), piece):
            scan(stream[i:i + piece])
        assert (scan.nan, scan.inf, scan.first) == (2, 1, 3), piece
