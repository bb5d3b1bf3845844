"""Cohort manifests (DESIGN.md section 4): validation, normalisation and registration.

A manifest is a CSV or Parquet table, one row per patient, with paths relative to its folder.
Structural problems (missing columns, duplicate IDs, values that cannot be read) refuse the whole
manifest, each message naming the line, the column and the fix. A problem with one patient's
files is only a warning here: that patient fails at submit and the rest of the cohort runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import SimpleITK as sitk

from dtlr.shared.hashing import file_digest
from dtlr.shared.store import COHORT_RE, PATIENT_ID_RE, Store

REQUIRED = ("patient_id", "image", "mask")
PATH_COLUMNS = ("image", "mask", "mask_reader2")
ID_RE = PATIENT_ID_RE

# Categorical clinical columns: canonical value -> accepted spellings (lower-cased, stripped).
CATEGORIES: dict[str, dict[str, set[str]]] = {
    "sex": {"female": {"female", "f", "woman", "w"}, "male": {"male", "m", "man"}},
    "location": {
        "non_skull_base": {"non_skull_base", "non-skull base", "non skull base", "nonskullbase",
                           "non-skull-base", "convexity", "0"},
        "skull_base": {"skull_base", "skull base", "skull-base", "skullbase", "1"},
    },
    "shape": {
        "regular": {"regular", "round", "round-like", "roundlike", "0"},
        "irregular": {"irregular", "unregular", "lobulated", "1"},
    },
}
# The level coded 1 when a categorical column enters a model.
POSITIVE_LEVEL = {"sex": "male", "location": "skull_base", "shape": "irregular"}
BINARY = ("heterogeneous_enhancement", "necrosis_cystic", "dural_tail", "indistinct_margin",
          "peritumoral_edema", "surrounding_invasion")
NUMERIC = ("age", "size_mm")
CLINICAL = ("age", "sex", "location", "size_mm", "shape", *BINARY)
_TRUE = {"1", "yes", "y", "true", "t", "present"}
_FALSE = {"0", "no", "n", "false", "f", "absent"}
_GRADES = {"1": 1, "2": 2, "3": 3, "i": 1, "ii": 2, "iii": 3}


class ManifestError(ValueError):
    """A manifest refused as a whole; ``problems`` lists every structural error found."""

    def __init__(self, source: Path, problems: list[str]) -> None:
        self.problems = problems
        listing = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"manifest {source} refused ({len(problems)} problem(s)):\n{listing}")


@dataclass
class Manifest:
    """A validated manifest: the normalised table plus per-patient file warnings."""

    table: pd.DataFrame
    warnings: list[str]
    source: Path
    digest: str


def _where(df: pd.DataFrame, i: int, column: str) -> str:
    pid = df.at[i, "patient_id"] if "patient_id" in df.columns else "?"
    return f"line {i + 2} (patient {pid}), column '{column}'"


def _normalise_grade_label(df: pd.DataFrame, problems: list[str]) -> None:
    """Fill ``grade`` (WHO 1-3, nullable) and ``label`` (1 = high grade, nullable)."""
    grades = pd.Series(pd.NA, index=df.index, dtype="Int8")
    labels = pd.Series(pd.NA, index=df.index, dtype="Int8")
    for i in df.index:
        if "grade" in df.columns and not _blank(df.at[i, "grade"]):
            raw = str(df.at[i, "grade"]).strip().lower().removeprefix("who").strip()
            raw = raw.removesuffix(".0")
            if raw not in _GRADES:
                problems.append(f"{_where(df, i, 'grade')}: {df.at[i, 'grade']!r} is not a WHO "
                                "grade; use 1, 2 or 3 (or leave it empty and give 'label' 0/1)")
                continue
            grades[i] = _GRADES[raw]
        if "label" in df.columns and not _blank(df.at[i, "label"]):
            raw = str(df.at[i, "label"]).strip().lower().removesuffix(".0")
            if raw not in {"0", "1"}:
                problems.append(f"{_where(df, i, 'label')}: {df.at[i, 'label']!r} is not a "
                                "label; use 1 for high grade (WHO 2-3) and 0 for low grade (WHO 1)")
                continue
            labels[i] = int(raw)
        if not pd.isna(grades[i]):
            implied = int(grades[i] >= 2)
            if not pd.isna(labels[i]) and labels[i] != implied:
                problems.append(f"{_where(df, i, 'label')}: label {labels[i]} contradicts grade "
                                f"{grades[i]}; high grade (2-3) is label 1, grade 1 is label 0")
            labels[i] = implied
    df["grade"] = grades
    df["label"] = labels


def _blank(v: object) -> bool:
    return v is None or (isinstance(v, float) and np.isnan(v)) or str(v).strip() in {"", "nan",
                                                                                     "<NA>"}


def _normalise_clinical(df: pd.DataFrame, problems: list[str]) -> None:
    """Canonical spellings for the known clinical columns; blanks become missing values."""
    for col, levels in CATEGORIES.items():
        if col not in df.columns:
            continue
        lookup = {alias: canon for canon, aliases in levels.items() for alias in aliases}
        out = []
        for i in df.index:
            v = df.at[i, col]
            if _blank(v):
                out.append(None)
                continue
            key = str(v).strip().lower().removesuffix(".0")
            if key not in lookup:
                problems.append(f"{_where(df, i, col)}: {v!r} is not understood; use one of "
                                f"{', '.join(sorted(levels))}")
                out.append(None)
            else:
                out.append(lookup[key])
        df[col] = pd.Series(out, index=df.index, dtype="string")
    for col in BINARY:
        if col not in df.columns:
            continue
        out = []
        for i in df.index:
            v = df.at[i, col]
            key = "" if _blank(v) else str(v).strip().lower().removesuffix(".0")
            if key == "":
                out.append(pd.NA)
            elif key in _TRUE:
                out.append(1)
            elif key in _FALSE:
                out.append(0)
            else:
                problems.append(f"{_where(df, i, col)}: {v!r} is not 0/1; use 1 (present) or "
                                "0 (absent)")
                out.append(pd.NA)
        df[col] = pd.Series(out, index=df.index, dtype="Int8")
    for col in NUMERIC:
        if col not in df.columns:
            continue
        values = pd.to_numeric(df[col], errors="coerce")
        for i in df.index[values.isna() & ~df[col].map(_blank)]:
            problems.append(f"{_where(df, i, col)}: {df.at[i, col]!r} is not a number; give "
                            f"{col} as a plain number")
        for i in df.index[values <= 0]:
            problems.append(f"{_where(df, i, col)}: {values[i]} must be positive")
        df[col] = values.astype("float64")


def check_image_file(path: str | None) -> str | None:
    """Why an image path cannot be used (None when SimpleITK can read its header)."""
    if path is None:
        return None
    p = Path(path)
    if not p.exists():
        return "file not found"
    try:
        if p.is_dir():
            if not sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(p)):
                return "folder holds no DICOM series"
        else:
            reader = sitk.ImageFileReader()
            reader.SetFileName(str(p))
            reader.ReadImageInformation()
    except RuntimeError as exc:
        return f"SimpleITK cannot read it ({str(exc).strip().splitlines()[-1][:160]})"
    return None


def file_problems(row: pd.Series) -> list[str]:
    """Messages for this patient's unusable files, each with the path and the fix."""
    out = []
    for col in PATH_COLUMNS:
        path = row.get(col)
        if path is None or pd.isna(path):
            continue
        why = check_image_file(path)
        if why:
            out.append(f"patient {row['patient_id']}: {col} {path}: {why}; fix the path in the "
                       "manifest or the file, then re-run")
    return out


def read_manifest(path: str | Path, cohort: str) -> Manifest:
    """Validate and normalise a manifest file; raises :class:`ManifestError` on structure."""
    path = Path(path).resolve()
    if not COHORT_RE.match(cohort):
        raise ManifestError(path, [f"cohort name {cohort!r}: use letters, digits, '-' and '_'"])
    if not path.is_file():
        raise ManifestError(path, [f"no such file: {path}"])
    if path.suffix.lower() == ".parquet":
        df = pd.read_parquet(path)
    else:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    df.columns = [str(c).strip() for c in df.columns]
    df = df.reset_index(drop=True)
    problems: list[str] = []
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise ManifestError(path, [f"missing column(s) {', '.join(missing)}: a manifest needs "
                                   f"{', '.join(REQUIRED)} (see README, 'The manifest')"])
    df["patient_id"] = df["patient_id"].astype(str).str.strip()
    for i in df.index:
        pid = df.at[i, "patient_id"]
        if not ID_RE.match(pid):
            problems.append(f"line {i + 2}, column 'patient_id': {pid!r} is not a usable ID; use "
                            "letters, digits, '.', '-' and '_' (starting with a letter or digit)")
    dupes = df["patient_id"][df["patient_id"].duplicated(keep=False)]
    for pid in sorted(set(dupes)):
        lines = ", ".join(str(i + 2) for i in df.index[df["patient_id"] == pid])
        problems.append(f"column 'patient_id': {pid!r} appears on lines {lines}; IDs must be "
                        "unique, so give each patient one row")
    base = path.parent
    for col in PATH_COLUMNS:
        if col not in df.columns:
            df[col] = None
            continue
        resolved = []
        for i in df.index:
            v = df.at[i, col]
            if _blank(v):
                if col != "mask_reader2":
                    problems.append(f"{_where(df, i, col)}: empty; give the path of the "
                                    f"patient's {col} (relative to the manifest's folder)")
                resolved.append(None)
            else:
                p = Path(str(v).strip()).expanduser()
                resolved.append(str((base / p).resolve() if not p.is_absolute() else p))
        df[col] = pd.Series(resolved, index=df.index, dtype="object")
    _normalise_grade_label(df, problems)
    _normalise_clinical(df, problems)
    if problems:
        raise ManifestError(path, problems)
    df.insert(0, "cohort", cohort)
    first = ["cohort", "patient_id", *PATH_COLUMNS, "grade", "label"]
    known = [c for c in CLINICAL if c in df.columns]
    rest = [c for c in df.columns if c not in first and c not in known]
    table = df[first + known + rest]
    warnings = [msg for _, row in table.iterrows() for msg in file_problems(row)]
    return Manifest(table=table, warnings=warnings, source=path, digest=file_digest(path))


def register(store: Store, cohort: str, path: str | Path) -> Manifest:
    """Validate a manifest and keep its normalised copy in the store."""
    manifest = read_manifest(path, cohort)
    table = pa.Table.from_pandas(manifest.table, preserve_index=False)
    store.write_table(table, store.manifest_path(cohort),
                      {"source": str(manifest.source), "source_sha256": manifest.digest})
    return manifest


def load(store: Store, cohort: str) -> pd.DataFrame:
    """The normalised manifest of a registered cohort."""
    path = store.manifest_path(cohort)
    if not path.is_file():
        known = ", ".join(store.cohorts()) or "none yet"
        raise KeyError(f"cohort {cohort!r} is not registered (registered: {known}); register it "
                       f"with `dtlr cohort add {cohort} manifest.csv`")
    return pd.read_parquet(path)


def encode_clinical(table: pd.DataFrame) -> pd.DataFrame:
    """Numeric clinical design columns: categoricals as 0/1 (POSITIVE_LEVEL = 1), numbers kept."""
    out = pd.DataFrame(index=table.index)
    for col in CLINICAL:
        if col not in table.columns:
            continue
        if col in POSITIVE_LEVEL:
            values = table[col]
            out[col] = (values == POSITIVE_LEVEL[col]).astype("float64").where(values.notna())
        else:
            out[col] = table[col].astype("float64")
    return out
