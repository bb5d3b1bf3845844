"""Manifest validation: structural errors refuse it, file problems only warn."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from dtlr.shared import manifest
from dtlr.shared.store import Store


def write_manifest(tmp_path: Path, rows: list[dict], name: str = "manifest.csv") -> Path:
    path = tmp_path / name
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


@pytest.fixture
def roots(data_dir: Path) -> list[Path]:
    """The folder the `images` symlinks point into, allowed as a data root."""
    return [data_dir / "pyradiomics"]


@pytest.fixture
def images(data_dir: Path, tmp_path: Path) -> tuple[str, str]:
    """Real image/mask files (symlinks into ../shared/data), relative to the manifest's folder."""
    src = data_dir / "pyradiomics"
    (tmp_path / "img").mkdir()
    for name in ("brain2_image.nrrd", "brain2_label.nrrd"):
        (tmp_path / "img" / name).symlink_to(src / name)
    return "img/brain2_image.nrrd", "img/brain2_label.nrrd"


def test_normalises_values_and_paths(tmp_path: Path, images: tuple[str, str],
                                     roots: list[Path]) -> None:
    img, msk = images
    path = write_manifest(tmp_path, [
        {"patient_id": "P1", "image": img, "mask": msk, "grade": "2", "sex": "M",
         "shape": "round-like", "peritumoral_edema": "yes", "age": "61"},
        {"patient_id": "P2", "image": img, "mask": msk, "grade": "I", "sex": "female",
         "shape": "lobulated", "peritumoral_edema": "0", "age": ""},
    ])
    m = manifest.read_manifest(path, "hospitalA", roots)
    t = m.table
    assert list(t.columns[:7]) == ["cohort", "patient_id", "image", "mask", "mask_reader2",
                                   "grade", "label"]
    assert t["label"].tolist() == [1, 0] and t["grade"].tolist() == [2, 1]
    assert t["sex"].tolist() == ["male", "female"]
    assert t["shape"].tolist() == ["regular", "irregular"]
    assert t["peritumoral_edema"].tolist() == [1, 0]
    assert t["age"].iloc[0] == 61 and pd.isna(t["age"].iloc[1])
    assert Path(t["image"].iloc[0]).is_absolute() and Path(t["image"].iloc[0]).exists()
    assert m.warnings == []
    enc = manifest.encode_clinical(t)
    assert enc["sex"].tolist() == [1.0, 0.0] and enc["shape"].tolist() == [0.0, 1.0]


def test_structural_errors_name_line_column_and_fix(tmp_path: Path, images: tuple[str, str],
                                                    roots: list[Path]) -> None:
    img, msk = images
    path = write_manifest(tmp_path, [
        {"patient_id": "P1", "image": img, "mask": msk, "grade": "4", "sex": "x"},
        {"patient_id": "P1", "image": img, "mask": "", "grade": "1", "sex": "f"},
        {"patient_id": "bad id", "image": img, "mask": msk, "grade": "2", "sex": "m",
         "label": "0"},
    ])
    with pytest.raises(manifest.ManifestError) as err:
        manifest.read_manifest(path, "h", roots)
    problems = err.value.problems
    text = "\n".join(problems)
    assert "line 2 (patient P1), column 'grade': '4' is not a WHO grade; use 1, 2 or 3" in text
    assert "'P1' appears on lines 2, 3; IDs must be unique" in text
    assert "line 3 (patient P1), column 'mask': empty" in text
    assert "line 4, column 'patient_id': 'bad id' is not a usable ID" in text
    assert "line 4 (patient bad id), column 'label': label 0 contradicts grade 2" in text
    assert "line 2 (patient P1), column 'sex': 'x' is not understood; use one of female, male" \
        in text
    assert len(problems) == 6


def test_missing_columns_refused(tmp_path: Path) -> None:
    path = write_manifest(tmp_path, [{"patient_id": "P1", "img": "a.nii"}])
    with pytest.raises(manifest.ManifestError, match=r"missing column.*image, mask"):
        manifest.read_manifest(path, "h")


def test_file_problems_warn_but_register(tmp_path: Path, images: tuple[str, str],
                                         roots: list[Path]) -> None:
    img, msk = images
    (tmp_path / "broken.nii.gz").write_bytes(b"not an image")
    path = write_manifest(tmp_path, [
        {"patient_id": "P1", "image": img, "mask": msk, "label": 1},
        {"patient_id": "P2", "image": "missing.nrrd", "mask": msk, "label": 0},
        {"patient_id": "P3", "image": img, "mask": "broken.nii.gz", "label": 0},
    ])
    store = Store(tmp_path / "store")
    m = manifest.register(store, "h", path, roots)
    assert len(m.warnings) == 2
    assert m.warnings[0].startswith("patient P2: image ") and "file not found" in m.warnings[0]
    assert m.warnings[1].startswith("patient P3: mask ") and "cannot read" in m.warnings[1]
    assert store.cohorts() == ["h"]
    assert manifest.load(store, "h")["patient_id"].tolist() == ["P1", "P2", "P3"]


def test_unregistered_cohort_message(tmp_path: Path) -> None:
    with pytest.raises(KeyError, match=r"dtlr cohort add nope manifest\.csv"):
        manifest.load(Store(tmp_path), "nope")
