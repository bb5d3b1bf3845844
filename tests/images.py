"""Real MR volumes cut to small cases, and damaged copies of them (integrity and geometry tests).

The cases are crops of the real TCGA-LGG contrast-enhanced T1 volumes in
../shared/data/brain_tumour_mri (int16, 1 mm, identity direction) around one tumour label,
so a case extracts in about a second; every damage is done to a copy in a test's folder.
"""

from __future__ import annotations

import gzip
import os
import shutil
import struct
import subprocess
import sys
import tomllib
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from dtlr.shared.store import StatusRecord, Store, read_feature_files
from tests.snapshot import Snapshot, changed, leftovers, snapshot

REPO = Path(__file__).resolve().parents[1]
TCGA = ("brain_tumour_mri", "brainlesion_tutorials_tcga")
# (patient folder, tumour label used as the ROI): enhancing tumour, necrotic core
CASES = {"FG": ("TCGA-FG-6692", 4), "DU": ("TCGA-DU-7294", 1)}
MARGIN = 10  # voxels of brain around the ROI's bounding box (more than a 5 mm shift)

# A small pyradiomics parameter file with the paper's settings (binWidth, resampling,
# geometryTolerance, correctMask) and fewer features, so a case extracts in about a second.
TEST_PARAMS = """\
imageType:
  Original: {}
featureClass:
  shape:
  firstorder:
  glcm:
setting:
  binWidth: 25
  label: 1
  resampledPixelSpacing: [1, 1, 1]
  interpolator: sitkBSpline
  padDistance: 5
  geometryTolerance: 0.0001
  correctMask: true
"""


@dataclass(frozen=True)
class Case:
    """An image and its mask on disk."""

    image: Path
    mask: Path


def crop_case(data_dir: Path, name: str, out: Path) -> Case:
    """The real volume of ``name`` cropped to its ROI + MARGIN, as .nii.gz image and mask."""
    folder, label = CASES[name]
    src = data_dir.joinpath(*TCGA, folder)
    image = sitk.ReadImage(str(src / "t1c_bet.nii.gz"))
    seg = sitk.ReadImage(str(src / "seg_fusion_simple.nii.gz"))
    roi = sitk.GetArrayViewFromImage(seg) == label
    z, y, x = np.nonzero(roi)
    box = [slice(max(int(v.min()) - MARGIN, 0), int(v.max()) + MARGIN + 1) for v in (x, y, z)]
    mask = sitk.GetImageFromArray(roi.astype(np.uint8))
    mask.CopyInformation(seg)
    out.mkdir(parents=True, exist_ok=True)
    case = Case(out / f"{name}_t1c.nii.gz", out / f"{name}_mask.nii.gz")
    sitk.WriteImage(image[box[0], box[1], box[2]], str(case.image), useCompression=True)
    sitk.WriteImage(mask[box[0], box[1], box[2]], str(case.mask), useCompression=True)
    return case


# --- damage ---------------------------------------------------------------------------------


def cut(src: Path, dst: Path, n_bytes: int) -> Path:
    """A copy of ``src`` without its last ``n_bytes`` (a transfer cut short)."""
    data = src.read_bytes()
    dst.write_bytes(data[: len(data) - n_bytes])
    return dst


def flip_byte(src: Path, dst: Path, at: float = 0.5) -> Path:
    """A copy of ``src`` with one byte inverted at fraction ``at`` of its length."""
    data = bytearray(src.read_bytes())
    data[int(len(data) * at)] ^= 0xFF
    dst.write_bytes(bytes(data))
    return dst


def as_format(src: Path, dst: Path, compress: bool = False) -> Path:
    """``src`` written again in the format ``dst``'s name says."""
    sitk.WriteImage(sitk.ReadImage(str(src)), str(dst), useCompression=compress)
    return dst


def huge_header(src: Path, dst: Path, dims: Sequence[int] = (1000, 1000, 1000),
                keep: int = 1400) -> Path:
    """The first ``keep`` bytes of an uncompressed NIfTI-1 file, its header's dim fields
    rewritten to ``dims`` (a 1.4 KB file declaring 1000^3 voxels); gzipped if ``dst`` says."""
    raw = bytearray(src.read_bytes()[:keep])
    assert struct.unpack_from("<i", raw, 0)[0] == 348, "not a little-endian NIfTI-1 file"
    dim = list(struct.unpack_from("<8h", raw, 40))
    dim[0], dim[1:1 + len(dims)] = len(dims), list(dims)
    struct.pack_into("<8h", raw, 40, *dim)
    if dst.name.endswith(".gz"):
        with gzip.open(dst, "wb") as f:
            f.write(bytes(raw))
    else:
        dst.write_bytes(bytes(raw))
    return dst


def with_voxels(src: Path, dst: Path, values: dict[tuple[int, int, int], float],
                dtype: type = np.float32) -> Path:
    """``src`` as ``dtype`` with some voxels (x, y, z index) set (NaN, Inf, ...)."""
    image = sitk.ReadImage(str(src))
    arr = sitk.GetArrayFromImage(image).astype(dtype)
    for (x, y, z), v in values.items():
        arr[z, y, x] = v
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(image)
    sitk.WriteImage(out, str(dst), useCompression=dst.name.endswith(".gz"))
    return dst


def constant(src: Path, dst: Path, value: float = 0.0) -> Path:
    """An image on ``src``'s grid with one value everywhere (an empty export)."""
    image = sitk.ReadImage(str(src))
    out = sitk.Image(image.GetSize(), image.GetPixelID()) + value
    out.CopyInformation(image)
    sitk.WriteImage(out, str(dst), useCompression=True)
    return dst


def roi_voxel(mask: Path, inside: bool) -> tuple[int, int, int]:
    """An (x, y, z) index inside the ROI (its central voxel) or outside it (a corner)."""
    arr = sitk.GetArrayFromImage(sitk.ReadImage(str(mask)))
    if not inside:
        assert arr[0, 0, 0] == 0
        return (0, 0, 0)
    z, y, x = np.nonzero(arr)
    i = len(z) // 2
    return int(x[i]), int(y[i]), int(z[i])


def shifted(mask: Path, dst: Path, mm: Sequence[float] = (0.0, 0.0, 5.0)) -> Path:
    """The same mask voxels with the origin moved by ``mm`` (a mask shifted in space)."""
    image = sitk.ReadImage(str(mask))
    image.SetOrigin([o + d for o, d in zip(image.GetOrigin(), mm, strict=True)])
    sitk.WriteImage(image, str(dst), useCompression=True)
    return dst


def respaced(mask: Path, dst: Path, spacing: Sequence[float] = (1.0, 1.0, 2.0)) -> Path:
    """The mask resampled (nearest neighbour) onto a grid of another spacing, same extent."""
    image = sitk.ReadImage(str(mask))
    size = [round(n * s / t) for n, s, t in zip(image.GetSize(), image.GetSpacing(), spacing,
                                                strict=True)]
    out = sitk.Resample(image, size, sitk.Transform(), sitk.sitkNearestNeighbor,
                        image.GetOrigin(), spacing, image.GetDirection(), 0, image.GetPixelID())
    sitk.WriteImage(out, str(dst), useCompression=True)
    return dst


def reoriented(mask: Path, dst: Path) -> Path:
    """The same physical mask on a grid whose first axis runs the other way (direction
    (-1, 0, 0, ...)): every voxel stays where it was, only the grid's direction differs."""
    image = sitk.ReadImage(str(mask))
    direction = list(image.GetDirection())
    direction[0] = -direction[0]
    far = image.TransformIndexToPhysicalPoint((image.GetSize()[0] - 1, 0, 0))
    origin = (far[0], *image.GetOrigin()[1:])
    out = sitk.Resample(image, image.GetSize(), sitk.Transform(), sitk.sitkNearestNeighbor,
                        origin, image.GetSpacing(), direction, 0, image.GetPixelID())
    assert sitk.GetArrayViewFromImage(out).sum() == sitk.GetArrayViewFromImage(image).sum()
    sitk.WriteImage(out, str(dst), useCompression=True)
    return dst


def cropped(mask: Path, dst: Path, margin: int = 3) -> Path:
    """The mask cut to its ROI's bounding box + ``margin`` voxels (an exact voxel-aligned crop
    of the image grid: SimpleITK's slicing keeps every voxel's physical position)."""
    image = sitk.ReadImage(str(mask))
    z, y, x = np.nonzero(sitk.GetArrayViewFromImage(image))
    box = [slice(max(int(v.min()) - margin, 0), int(v.max()) + margin + 1) for v in (x, y, z)]
    out = image[box[0], box[1], box[2]]
    assert out.GetSize() != image.GetSize()
    sitk.WriteImage(out, str(dst), useCompression=True)
    return dst


# --- DICOM --------------------------------------------------------------------------------


def series_uids(folder: Path) -> dict[str, str]:
    """The UIDs :func:`write_dicom_series` gives the series it writes into ``folder``."""
    uid = "1.2.826.0.1.3680043.2.1125.7." + str(zlib.crc32(folder.name.encode()))
    return {"study": uid + ".1", "series": uid + ".2", "frame_of_reference": uid + ".4",
            "instance_prefix": uid + ".3."}


def write_dicom_series(image_path: Path, folder: Path, *, z_shift: dict[int, float] | None = None,
                       frame_of_reference: str | None = None, series_uid: str | None = None
                       ) -> Path:
    """``image_path`` as a DICOM MR series, one file per slice, as SimpleITK's "DICOM series
    from array" example writes it: shared series tags (study, series and frame of reference
    UIDs from :func:`series_uids`), and per slice ImagePositionPatient, InstanceNumber,
    SOPInstanceUID. ``z_shift`` moves given slices along z (uneven spacing);
    ``frame_of_reference`` gives another series' frame of reference UID (a series acquired in
    the same session), ``series_uid`` a given series UID."""
    image = sitk.Cast(sitk.ReadImage(str(image_path)), sitk.sitkInt16)
    folder.mkdir(parents=True)
    d = image.GetDirection()
    uids = series_uids(folder)
    tags = {
        "0008|0008": "DERIVED\\SECONDARY", "0008|0060": "MR", "0008|103e": "DTLR test series",
        "0010|0020": "DTLR-TEST", "0020|000d": uids["study"],
        "0020|000e": series_uid or uids["series"],
        "0020|0052": frame_of_reference or uids["frame_of_reference"],
        "0020|0037": "\\".join(f"{v:.6f}" for v in (d[0], d[3], d[6], d[1], d[4], d[7])),
        "0018|0050": f"{image.GetSpacing()[2]:.6f}",  # SliceThickness
        "0018|0088": f"{image.GetSpacing()[2]:.6f}",  # SpacingBetweenSlices
    }
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for i in range(image.GetDepth()):
        plane = image[:, :, i]
        for tag, value in tags.items():
            plane.SetMetaData(tag, value)
        position = list(image.TransformIndexToPhysicalPoint((0, 0, i)))
        position[2] += (z_shift or {}).get(i, 0.0)
        plane.SetMetaData("0020|0032", "\\".join(f"{v:.6f}" for v in position))
        plane.SetMetaData("0020|0013", str(i + 1))
        plane.SetMetaData("0008|0018", f"{uids['instance_prefix']}{i + 1}")
        writer.SetFileName(str(folder / f"slice{i:03d}.dcm"))
        writer.Execute(plane)
    return folder


def copy_series(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# --- the real commands --------------------------------------------------------------------


def console_script(name: str = "dtlr") -> list[str]:
    """The command line of this checkout's console script ``name``, as pip's wrapper runs it.

    Read from this checkout's pyproject.toml rather than taken from the environment's bin/,
    whose wrappers are generated by whichever checkout was installed last.
    """
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    scripts = pyproject["project"]["scripts"]
    module, func = scripts[name].split(":")
    code = (f"import sys; from {module} import {func} as main; sys.argv[0] = {name!r}; "
            "sys.exit(main())")
    return [sys.executable, "-c", code]


def dtlr(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run ``dtlr ARGS`` in a fresh process, as a user would."""
    return subprocess.run([*console_script(), *args], capture_output=True, encoding="utf-8",
                          timeout=timeout, env={**os.environ, "COLUMNS": "200"})


def write_manifest(path: Path, rows: dict[str, Case]) -> Path:
    """A manifest of these patients (absolute paths; every patient labelled)."""
    lines = ["patient_id,image,mask,label"]
    lines += [f"{pid},{c.image},{c.mask},{i % 2}" for i, (pid, c) in enumerate(rows.items())]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# --- a submit beside the base store ---------------------------------------------------

GOOD = "DU"  # the good patient beside each damaged one


@dataclass(frozen=True)
class Base:
    """Two real cases, the settings of the tests, and a store where both are extracted."""

    root: Path
    cases: dict[str, Case]
    params: Path
    settings: Path
    store: Path

    def settings_with(self, folder: Path, **preprocess: str) -> Path:
        """A settings file like the tests' own with more ``preprocess`` keys."""
        extra = "".join(f", {k}: {v}" for k, v in preprocess.items())
        path = folder / "settings.yaml"
        path.write_text(f"preprocess: {{n4: false{extra}}}\nradiomics: {{params: {self.params}}}\n",
                        encoding="utf-8")
        return path


@dataclass
class Trial:
    """One `dtlr submit` of a cohort "trial" in a copy of the base store."""

    store: Path
    proc: subprocess.CompletedProcess[str]
    before: Snapshot
    after: Snapshot
    patients: list[str] = field(default_factory=list)

    @property
    def output(self) -> str:
        return self.proc.stdout + self.proc.stderr

    def record(self, patient_id: str) -> StatusRecord:
        record = Store(self.store).read_status("trial", patient_id, "extract")
        assert record is not None, f"no status record for {patient_id}\n{self.output}"
        return record

    def changed(self) -> set[str]:
        return changed(self.before, self.after)


def submit_trial(base: Base, folder: Path, patients: dict[str, Case],
                 settings: Path | None = None) -> Trial:
    """Register ``patients`` and the good patient as cohort "trial" in a copy of the base store,
    run `dtlr submit --cohort trial --jobs 1` (extraction only) and snapshot around it."""
    store = folder / "store"
    shutil.copytree(base.store, store)  # copy2: sizes and modification times are kept
    before = snapshot(store)
    rows = {**patients, "G": base.cases[GOOD]}
    manifest = write_manifest(folder / "manifest.csv", rows)
    files = [str(p) for c in rows.values() for p in (c.image, c.mask)]
    root = os.path.commonpath([str(folder), *files])  # the cases lie beside the trial's folder
    added = dtlr("cohort", "add", "trial", str(manifest), "--store", str(store),
                 "--data-root", root)
    assert added.returncode == 0, added.stdout + added.stderr
    proc = dtlr("submit", "--cohort", "trial", "--store", str(store), "--jobs", "1",
                "--config", str(settings or base.settings))
    return Trial(store, proc, before, snapshot(store), list(rows))


def assert_only_trial_changed(trial: Trial, done: set[str]) -> None:
    """Nothing but the trial's manifest, its patients' status records, the outputs of its
    ``done`` patients and the catalog changed; no temporary file is left."""
    diff = trial.changed()
    features = {p for p in diff if p.startswith("features/")}
    expected = {"cohorts/trial/manifest.parquet"} | {
        f"status/cohort=trial/{pid}.extract.json" for pid in trial.patients}
    assert diff - features - {"catalog.duckdb"} == expected, sorted(diff)
    assert {p.split("/")[1] for p in features} == ({"maxslice", "radiomics"} if done else set())
    for p in features:
        assert "/cohort=trial/reader=1/" in p and p.rsplit("/", 1)[1].split(".")[0] in done, p
    assert {p.rsplit("/", 1)[1].split(".")[0] for p in features} == done
    assert leftovers(trial.store) == []


def assert_refused(trial: Trial, patient_id: str, path: Path, *words: str) -> str:
    """The trial exited 1; ``patient_id`` failed on its input with a message naming it, the
    file and ``words`` (what is wrong, the fix); every other patient is done."""
    assert trial.proc.returncode == 1, trial.output
    record = trial.record(patient_id)
    assert (record.state, record.failure) == ("failed", "input"), record
    message = record.message
    assert message.startswith(f"patient {patient_id}: "), message
    assert str(path) in message, message
    for word in words:
        assert word in message, f"{word!r} not in: {message}"
    for other in trial.patients:
        if other != patient_id:
            assert trial.record(other).state == "done", trial.record(other).message
    assert_only_trial_changed(trial, {p for p in trial.patients if p != patient_id})
    return message


def stored_features(store: Path, cohort: str, patient_id: str) -> dict[str, float]:
    """The reader-1 radiomics features of one patient in a store."""
    st = Store(store)
    paths = [p for pid, _key, p in Store.keyed_files(st.radiomics_dir(cohort, 1), ".parquet")
             if pid == patient_id]
    assert len(paths) == 1, paths
    row = read_feature_files(paths).iloc[0]
    return {k: float(v) for k, v in row.items() if k not in ("cohort", "patient_id", "reader")}
