"""Cohort manifests (DESIGN.md section 4): reading, validation, normalisation and registration.

A manifest is a table, one row per patient, with paths relative to its folder: a CSV file
(comma, semicolon or tab separated; UTF-8 with or without a byte-order mark, UTF-16 with one,
or Windows-1252/Latin-1), an Excel workbook (.xlsx: its first sheet, or the one named) or a
Parquet file. Structural problems (a file that cannot be read, ragged lines, missing, duplicated
or reserved columns, duplicate IDs, values that cannot be read, images outside the allowed
folders) refuse the whole manifest, each message naming the line, the column and the fix, and
nothing is written. A problem with one patient's files is only a warning here: that patient
fails at submit and the rest of the cohort runs.
"""

from __future__ import annotations

import codecs
import csv
import io
import itertools
import math
import os
import re
import shutil
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import SimpleITK as sitk

from dtlr.shared.hashing import file_digest
from dtlr.shared.store import COHORT_RE, PATIENT_ID_RE, Store, StoreError, StoreWriteError

REQUIRED = ("patient_id", "image", "mask")
PATH_COLUMNS = ("image", "mask", "mask_reader2")
# Optional: the segment (ROI) of a DICOM SEG, RTSTRUCT or Slicer .seg.nrrd mask for each reader,
# and the patient's label value (overriding the parameter file's 'label').
MASK_COLUMNS = ("mask_segment", "mask_segment_reader2", "mask_label")
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
# Every column DTLR reads; a header spelling them in another case ('Grade', 'Patient ID') is
# read as them.
KNOWN = (*REQUIRED, "mask_reader2", *MASK_COLUMNS, "grade", "label", *CLINICAL)
# Columns the store adds to every manifest: a manifest may not bring its own.
RESERVED = ("cohort",)
_TRUE = {"1", "yes", "y", "true", "t", "present"}
_FALSE = {"0", "no", "n", "false", "f", "absent"}
_GRADES = {"1": 1, "2": 2, "3": 3, "i": 1, "ii": 2, "iii": 3}
_DELIMITERS = {",": "','", ";": "';'", "\t": "tab"}
_EMPTY = ("the file is empty; a manifest needs a header line naming its columns (patient_id, "
          "image, mask, ...) and one line per patient (see README, 'The manifest')")
_INDEX_COLUMN = re.compile(r"^__index_level_\d+__$")  # pandas' saved index in a Parquet file
_DECIMAL_COMMA = re.compile(r"^([+-]?\d+),(\d+)$")
_LIST_AT_MOST = 12  # line ranges shown in one message before "..."


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
    notes: list[str] = field(default_factory=list)  # how the file was read, what was assumed
    read_as: dict[str, str] = field(default_factory=dict)  # format, encoding, delimiter, sheet
    data_roots: list[str] = field(default_factory=list)  # folders its files may be in

    @property
    def labelled(self) -> bool:
        """Whether any patient has a label (an unlabelled cohort can only be scored)."""
        return bool(self.table["label"].notna().any())


@dataclass
class _Raw:
    """A manifest file read into a table, before any validation."""

    frame: pd.DataFrame  # index: the line (or row) each patient is on in the file
    unit: str  # what the index counts: "line" (text files) or "row" (Excel sheets, Parquet)
    read_as: dict[str, str]
    notes: list[str] = field(default_factory=list)
    decimal_comma: bool = False  # numbers may be written 61,5 (a ';' or tab separated file)


def no_labels_message(cohort: str) -> str:
    """Why an unlabelled cohort cannot train or test a model, and what to do instead."""
    return (f"cohort {cohort!r} has no labels (no patient has a 'grade' or 'label'), so it "
            "cannot be used to train or test a model; score it with `dtlr predict --model "
            f"RUN_ID --cohort {cohort}` (after `dtlr submit --cohort {cohort}`), or give each "
            "patient's grade or label in its manifest and register it again with "
            f"`dtlr cohort add {cohort} MANIFEST`")


def _where(df: pd.DataFrame, i: int, column: str) -> str:
    pid = df.at[i, "patient_id"] if "patient_id" in df.columns else "?"
    return f"{df.attrs.get('unit', 'line')} {i} (patient {pid}), column '{column}'"


def _spans(numbers: Iterable[int]) -> str:
    """2, 3, 4, 7 -> '2-4, 7' (at most _LIST_AT_MOST ranges, then '...')."""
    ranges: list[list[int]] = []
    for n in sorted(set(numbers)):
        if ranges and n == ranges[-1][1] + 1:
            ranges[-1][1] = n
        else:
            ranges.append([n, n])
    text = [str(a) if a == b else f"{a}-{b}" for a, b in ranges]
    if len(text) > _LIST_AT_MOST:
        text = [*text[:_LIST_AT_MOST], "..."]
    return ", ".join(text)


def _lines(unit: str, numbers: Sequence[int]) -> str:
    """'line 4' or 'lines 2-4, 7' ('row'/'rows' for sheets and Parquet files)."""
    return f"{unit}{'s' if len(set(numbers)) > 1 else ''} {_spans(numbers)}"


def _show(v: object) -> str:
    """A cell's value in a message: text quoted, numbers as written."""
    return repr(v) if isinstance(v, str) else str(v)


def is_missing(v: object) -> bool:
    """An empty cell: None, NaN, NA, or only whitespace."""
    if isinstance(v, str):
        return v.strip() == ""
    try:
        return bool(pd.isna(v))
    except (TypeError, ValueError):
        return False


def _blank(v: object) -> bool:
    """An empty cell, or the text pandas writes for one ('nan', '<NA>'), in a text column."""
    return is_missing(v) or str(v).strip() in {"nan", "<NA>"}


def _canonical(name: str) -> str:
    """A header name as DTLR reads it: 'Patient ID' -> 'patient_id' for known columns."""
    key = re.sub(r"[\s-]+", "_", name.strip().lower())
    return key if key in KNOWN else name.strip()


# ---- reading the file -------------------------------------------------------------------------


def _header_problems(names: list[str], where: str, cohort: str, notes: list[str],
                     trailing: str | None = None) -> tuple[list[str], list[str]]:
    """Canonical column names and the problems of a header (``where``: 'line 1', 'row 3').

    ``trailing`` (the delimiter, as shown) is given for text files only.
    """
    problems = []
    canonical = []
    for k, name in enumerate(names, start=1):
        if name == "":
            last = k == len(names)
            problems.append(
                f"{where}: column {k} of the header has no name"
                + (f" (the header ends with {trailing}); remove the trailing {trailing}"
                   if last and trailing else "; name every column, or delete the empty one"))
            canonical.append("")
            continue
        canon = _canonical(name)
        if canon != name:
            notes.append(f"column {name!r} read as {canon!r}")
        canonical.append(canon)
    seen: dict[str, list[int]] = {}
    for k, name in enumerate(canonical, start=1):
        if name:
            seen.setdefault(name.lower(), []).append(k)
    for positions in seen.values():
        if len(positions) > 1:
            spelled = sorted({names[k - 1] for k in positions})
            case = (" (the names differ only in case or spacing, which the store's SQL views "
                    "do not tell apart)") if len(spelled) > 1 else ""
            problems.append(f"{where}: column {' / '.join(repr(s) for s in spelled)} appears "
                            f"{len(positions)} times (columns {', '.join(map(str, positions))})"
                            f"{case}; give each column one distinct name, or delete the copies")
    for k, name in enumerate(canonical, start=1):
        if name.lower() in RESERVED:
            problems.append(f"{where}, column {k} {names[k - 1]!r}: the name is reserved: DTLR "
                            f"adds the column '{name.lower()}' itself (the cohort's name, here "
                            f"{cohort!r}); rename your column (e.g. 'site') or delete it")
    missing = [c for c in REQUIRED if c not in canonical]
    if missing:
        found = ", ".join(repr(n) for n in names[:12] if n) or "none"
        hint = ""
        if len(names) == 1 and names[0] and trailing is not None:
            hint = ("; the header has a single column: separate columns with ',', ';' or a "
                    "tab")
        problems.append(f"missing column(s) {', '.join(missing)}: a manifest needs "
                        f"{', '.join(REQUIRED)} (see README, 'The manifest'); found columns "
                        f"{found}{hint}")
    return canonical, problems


def _decode(path: Path, data: bytes) -> tuple[str, str, list[str]]:
    """The file's text, the encoding it was read with, and a note when one was assumed."""
    boms = ((codecs.BOM_UTF32_LE, "utf-32", "UTF-32"), (codecs.BOM_UTF32_BE, "utf-32", "UTF-32"),
            (codecs.BOM_UTF8, "utf-8-sig", "UTF-8"), (codecs.BOM_UTF16_LE, "utf-16", "UTF-16"),
            (codecs.BOM_UTF16_BE, "utf-16", "UTF-16"))
    for bom, encoding, name in boms:
        if data.startswith(bom):
            try:
                return data.decode(encoding), encoding, []
            except UnicodeDecodeError as exc:
                raise ManifestError(path, [
                    f"the file starts with a {name} byte-order mark, but byte {exc.start} "
                    f"cannot be read as {name}; save it again as CSV UTF-8"]) from exc
    if b"\x00" in data:
        raise ManifestError(path, [
            "the file holds NUL bytes: it is not a text table (or it is UTF-16 without a "
            "byte-order mark); save it as CSV UTF-8, or give an Excel .xlsx or Parquet file"])
    try:
        return data.decode("utf-8"), "utf-8", []
    except UnicodeDecodeError as exc:
        first_bad = exc.start
    try:
        text, encoding, name = data.decode("cp1252"), "cp1252", "Windows-1252 (Latin-1)"
    except UnicodeDecodeError:
        text, encoding, name = data.decode("latin-1"), "latin-1", "Latin-1 (ISO-8859-1)"
    line = data[:first_bad].count(b"\n") + 1
    return text, encoding, [f"the file is not UTF-8 (line {line}); read it as {name}: check "
                            "accented names and paths in `dtlr cohort show`, or save it as CSV "
                            "UTF-8"]


def _read_text(path: Path, data: bytes, cohort: str) -> _Raw:
    """A delimited text file: encoding and delimiter detected, every line's shape checked."""
    text, encoding, notes = _decode(path, data)
    if "\x00" in text:
        raise ManifestError(path, ["the text holds NUL characters: it is not a text table; save "
                                   "it as CSV UTF-8"])
    if not text.strip():
        raise ManifestError(path, [_EMPTY])
    buf = io.StringIO(text, newline="")
    consumed = 0
    delimiter = None
    header_line = ""
    for raw_line in buf:
        consumed += 1
        given = re.fullmatch(r"\s*sep=(.)\s*", raw_line)
        if given and consumed == 1:  # Excel's "sep=;" first line
            delimiter = given.group(1)
            continue
        if raw_line.strip():
            header_line = raw_line
            break
    if not header_line:
        raise ManifestError(path, [_EMPTY])
    offset = consumed - 1  # lines before the header

    def fields(d: str) -> list[str]:
        return next(csv.reader([header_line.rstrip("\r\n")], delimiter=d), [])

    if delimiter is None:
        order = list(_DELIMITERS)
        delimiter = max(order, key=lambda d: (sum(_canonical(f) in KNOWN for f in fields(d)),
                                              len(fields(d)), -order.index(d)))
    shown = _DELIMITERS.get(delimiter, repr(delimiter))
    reader = csv.reader(itertools.chain([header_line], buf), delimiter=delimiter,
                        skipinitialspace=True, strict=True)
    rows: list[tuple[int, list[str]]] = []
    start = offset + 1
    try:
        for row in reader:
            rows.append((start, row))
            start = offset + reader.line_num + 1
    except csv.Error as exc:
        raise ManifestError(path, [
            f"line {start}: {exc}: a value that starts with '\"' must end with '\"' right "
            f"before the next {shown} (write a '\"' inside a value as '\"\"'); fix the quotes "
            "on this line"]) from exc
    header_at, header = rows[0]
    names = [f.strip() for f in header]
    canonical, problems = _header_problems(names, f"line {header_at}", cohort, notes, shown)
    data_rows = [(n, row) for n, row in rows[1:] if any(f.strip() for f in row)]
    if not data_rows and not problems:
        raise ManifestError(path, [f"no patients: the file has a header (line {header_at}) but "
                                   "no lines after it; add one line per patient"])
    width = len(names)
    ragged: dict[tuple[str, int], list[int]] = {}
    for n, row in data_rows:
        if len(row) == width:
            continue
        if len(row) > width and not any(f.strip() for f in row[width:]):
            kind = "trailing"
        else:
            kind = "more" if len(row) > width else "fewer"
        ragged.setdefault((kind, len(row)), []).append(n)
    for (kind, count), lines in sorted(ragged.items(), key=lambda kv: min(kv[1])):
        where = _lines("line", lines)
        extra = count - width
        if kind == "trailing":
            problems.append(
                f"{where}: {count} fields where the header (line {header_at}) has {width}: "
                f"the line ends with {extra if extra > 1 else 'an'} extra {shown}"
                f"{'s' if extra > 1 else ''} after the last column; remove the trailing "
                f"{shown} (or name the extra column in the header)")
        elif kind == "more":
            problems.append(
                f"{where}: {count} fields where the header (line {header_at}) has {width}: a "
                f"value holds an unquoted {shown}, or a column has no name in the header; put "
                f"values that contain {shown} in double quotes")
        else:
            problems.append(
                f"{where}: {count} fields where the header (line {header_at}) has {width}: a "
                f"value or a {shown} is missing; every line needs {width} fields (empty cells "
                f"keep their {shown})")
    if problems:
        raise ManifestError(path, problems)
    frame = pd.DataFrame([row for _, row in data_rows], columns=canonical,
                         index=[n for n, _ in data_rows], dtype=str)
    read_as = {"format": "csv", "encoding": encoding, "delimiter": delimiter}
    return _Raw(frame, "line", read_as, notes, decimal_comma=delimiter != ",")


def _cell(v: Any) -> str:
    """An Excel cell as the text a CSV export would hold."""
    if v is None:
        return ""
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, float):
        return str(int(v)) if v.is_integer() else repr(v)
    if isinstance(v, datetime | date | time):
        return v.isoformat()
    return str(v)


def _read_xlsx(path: Path, sheet: str | None, cohort: str) -> _Raw:
    """The first (or the named) sheet of an .xlsx workbook; its header is its first row."""
    try:
        import openpyxl
        from openpyxl.utils import get_column_letter
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise ManifestError(path, ["reading .xlsx needs openpyxl (pip install openpyxl); or "
                                   "save the sheet as CSV UTF-8"]) from exc
    try:
        book = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except Exception as exc:  # zipfile.BadZipFile, KeyError, InvalidFileException, ...
        raise ManifestError(path, [
            f"cannot be read as an Excel workbook ({type(exc).__name__}: {exc}); save it again "
            "from Excel as .xlsx, or as CSV UTF-8"]) from exc
    notes = []
    try:
        names_of_sheets = book.sheetnames
        if sheet is not None and sheet not in names_of_sheets:
            raise ManifestError(path, [f"--sheet {sheet!r}: the workbook has no such sheet; its "
                                       f"sheets: {', '.join(map(repr, names_of_sheets))}"])
        chosen = sheet if sheet is not None else names_of_sheets[0]
        ws = book[chosen]
        if not hasattr(ws, "iter_rows"):
            raise ManifestError(path, [f"sheet {chosen!r} is a chart, not a table; choose the "
                                       "sheet with --sheet NAME"])
        if sheet is None and len(names_of_sheets) > 1:
            notes.append(f"read the first sheet, {chosen!r}, of "
                         f"{', '.join(map(repr, names_of_sheets))}; choose another with "
                         "--sheet NAME")
        try:
            cells = [(r, [_cell(v) for v in values])
                     for r, values in enumerate(ws.iter_rows(values_only=True), start=1)]
        except Exception as exc:  # a damaged sheet: openpyxl raises many kinds
            raise ManifestError(path, [
                f"sheet {chosen!r} cannot be read ({type(exc).__name__}: {exc}); save the "
                "workbook again from Excel as .xlsx, or as CSV UTF-8"]) from exc
    finally:
        book.close()
    cells = [(r, row) for r, row in cells if any(c.strip() for c in row)]
    if not cells:
        raise ManifestError(path, [f"sheet {chosen!r} is empty; a manifest needs a header row "
                                   "naming its columns (patient_id, image, mask, ...) and one row "
                                   "per patient (see README, 'The manifest')"])
    header_at, header = cells[0]
    width = max(len(row) for _, row in cells)
    grid = [(r, row + [""] * (width - len(row))) for r, row in cells]
    header = header + [""] * (width - len(header))
    problems = []
    keep = []
    for k in range(width):
        name = header[k].strip()
        if name:
            keep.append(k)
        elif any(row[k].strip() for _, row in grid[1:]):
            problems.append(f"row {header_at}, column {get_column_letter(k + 1)}: the column "
                            "holds values but has no name in the header row; name it or delete "
                            "it")
    names = [header[k].strip() for k in keep]
    canonical, more = _header_problems(names, f"row {header_at}", cohort, notes)
    problems += more
    if problems and sheet is None and len(names_of_sheets) > 1:
        sheets = ", ".join(map(repr, names_of_sheets))
        problems.append(f"read the first sheet, {chosen!r}, of {sheets}; if the manifest is on "
                        "another sheet, choose it with --sheet NAME")
    rows = [(r, [row[k] for k in keep]) for r, row in grid[1:]]
    if not rows and not problems:
        raise ManifestError(path, [f"no patients: sheet {chosen!r} has a header (row "
                                   f"{header_at}) but no rows after it; add one row per patient"])
    if problems:
        raise ManifestError(path, problems)
    frame = pd.DataFrame([row for _, row in rows], columns=canonical,
                         index=[r for r, _ in rows], dtype=str)
    return _Raw(frame, "row", {"format": "xlsx", "sheet": chosen}, notes)


def _read_parquet(path: Path, cohort: str) -> _Raw:
    """A Parquet file, its values kept as typed (row 1 is its first row)."""
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise ManifestError(path, [f"cannot be read as Parquet ({exc}); the file may be "
                                   "damaged or incomplete: write it again"]) from exc
    index_columns = [n for n in table.column_names if _INDEX_COLUMN.match(n)]
    table = table.drop_columns(index_columns)
    notes: list[str] = []
    names = [str(n).strip() for n in table.column_names]
    canonical, problems = _header_problems(names, "the file's column names", cohort, notes)
    if problems:
        raise ManifestError(path, problems)
    if table.num_rows == 0:
        raise ManifestError(path, ["no patients: the Parquet file has columns but no rows; add "
                                   "one row per patient"])
    try:
        frame = table.rename_columns(canonical).to_pandas(ignore_metadata=True)
    except (pa.ArrowException, ValueError, TypeError) as exc:
        raise ManifestError(path, [f"the Parquet file's columns cannot be read as a table "
                                   f"({exc}); write plain columns (text and numbers)"]) from exc
    frame.index = pd.RangeIndex(1, len(frame) + 1)
    return _Raw(frame, "row", {"format": "parquet"}, notes)


_MAGIC = {b"PAR1": "parquet", b"PK\x03\x04": "zip", b"\xd0\xcf\x11\xe0": "ole2",
          b"\x1f\x8b": "gzip"}


def _read_source(path: Path, cohort: str, sheet: str | None) -> _Raw:
    """The manifest file as a table; its format recognised from its first bytes."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ManifestError(path, [f"cannot read the file ({exc.strerror or exc}); check that "
                                   "it exists and that you may read it"]) from exc
    if not data:
        raise ManifestError(path, [_EMPTY])
    kind = next((k for magic, k in _MAGIC.items() if data.startswith(magic)), "text")
    suffix = path.suffix.lower()
    if sheet is not None and kind != "zip":
        raise ManifestError(path, [f"--sheet {sheet!r}: {path.name} is not an Excel workbook; "
                                   "leave --sheet out"])
    if kind == "parquet":
        return _read_parquet(path, cohort)
    if kind == "zip":
        if suffix in (".ods", ".numbers"):
            raise ManifestError(path, [f"{suffix} spreadsheets are not read; save the sheet as "
                                       ".xlsx or as CSV UTF-8"])
        return _read_xlsx(path, sheet, cohort)
    if kind == "ole2":
        raise ManifestError(path, ["an old-style Excel .xls workbook (or another binary "
                                   "format); save it as .xlsx, or as CSV UTF-8"])
    if kind == "gzip":
        raise ManifestError(path, ["the file is gzip-compressed; decompress it (gunzip) and "
                                   "register the table inside"])
    if suffix == ".parquet":
        raise ManifestError(path, ["named .parquet but not a Parquet file (it does not start "
                                   "with 'PAR1'); write it again, or name it for what it is"])
    if suffix in (".xlsx", ".xlsm"):
        raise ManifestError(path, [f"named {suffix} but not an Excel workbook; save it again "
                                   "from Excel as .xlsx, or as CSV UTF-8"])
    return _read_text(path, data, cohort)


# ---- values -----------------------------------------------------------------------------------


def _normalise_grade_label(df: pd.DataFrame, problems: list[str]) -> None:
    """Fill ``grade`` (WHO 1-3, nullable) and ``label`` (1 = high grade, nullable)."""
    grades = pd.Series(pd.NA, index=df.index, dtype="Int8")
    labels = pd.Series(pd.NA, index=df.index, dtype="Int8")
    for i in df.index:
        if "grade" in df.columns and not _blank(df.at[i, "grade"]):
            raw = str(df.at[i, "grade"]).strip().lower().removeprefix("who").strip()
            raw = raw.removesuffix(".0")
            if raw not in _GRADES:
                problems.append(f"{_where(df, i, 'grade')}: {_show(df.at[i, 'grade'])} is not a "
                                "WHO grade; use 1, 2 or 3 (or leave it empty and give 'label' "
                                "0/1)")
                continue
            grades[i] = _GRADES[raw]
        if "label" in df.columns and not _blank(df.at[i, "label"]):
            raw = str(df.at[i, "label"]).strip().lower().removesuffix(".0")
            if raw not in {"0", "1"}:
                problems.append(f"{_where(df, i, 'label')}: {_show(df.at[i, 'label'])} is not a "
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


def _number(df: pd.DataFrame, i: int, col: str, decimal_comma: bool,
            problems: list[str]) -> float:
    """One cell of a numeric column: a finite positive number, or NaN when empty."""
    v = df.at[i, col]
    if is_missing(v):
        return math.nan
    text = str(v).strip()
    if decimal_comma:
        text = _DECIMAL_COMMA.sub(r"\1.\2", text)
    try:
        x = float(text)
    except ValueError:
        sep = (", with '.' as the decimal separator" if "," in text and not decimal_comma
               else "")
        problems.append(f"{_where(df, i, col)}: {_show(v)} is not a number; give {col} as a plain "
                        f"number (e.g. 61 or 61.5{sep}), or leave the cell empty when unknown")
        return math.nan
    if not math.isfinite(x):
        problems.append(f"{_where(df, i, col)}: {_show(v)} is not a finite number; give {col} as a "
                        "plain number, or leave the cell empty when unknown")
        return math.nan
    if x <= 0:
        problems.append(f"{_where(df, i, col)}: {x:g} must be positive")
        return math.nan
    return x


def _normalise_mask_columns(df: pd.DataFrame, problems: list[str]) -> None:
    """Segment names as text (None when empty), label values as whole numbers >= 1."""
    for col in ("mask_segment", "mask_segment_reader2"):
        if col not in df.columns:
            continue
        out: list[str | None] = []
        for i in df.index:
            v = df.at[i, col]
            name = None if _blank(v) else str(v).strip()
            if name is not None and any(ord(ch) < 32 for ch in name):
                problems.append(f"{_where(df, i, col)}: the segment name holds a line break or "
                                "another control character; give the name as the segmentation "
                                "shows it, on one line")
            out.append(name)
        df[col] = pd.Series(out, index=df.index, dtype="object")
        if col == "mask_segment_reader2" and "mask_reader2" in df.columns:
            for i in df.index:
                if out[df.index.get_loc(i)] is not None and _blank(df.at[i, "mask_reader2"]):
                    problems.append(f"{_where(df, i, col)}: names a segment of the second "
                                    "reader's mask, but the row has no mask_reader2; give "
                                    "mask_reader2, or leave mask_segment_reader2 empty")
    if "mask_label" in df.columns:
        labels = pd.Series(pd.NA, index=df.index, dtype="Int64")
        for i in df.index:
            v = df.at[i, "mask_label"]
            if _blank(v):
                continue
            whole = re.fullmatch(r"\+?0*(\d{1,10})(?:\.0*)?", str(v).strip())
            if whole is None or not 1 <= int(whole.group(1)) <= 2**31 - 1:
                problems.append(f"{_where(df, i, 'mask_label')}: {_show(v)} is not a label "
                                "value; give the ROI's value in the label map as a whole number "
                                ">= 1 (e.g. 1), or leave it empty to use the parameter file's "
                                "label")
                continue
            labels[i] = int(whole.group(1))
        df["mask_label"] = labels


def _normalise_clinical(df: pd.DataFrame, problems: list[str],
                        decimal_comma: bool = False) -> None:
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
                problems.append(f"{_where(df, i, col)}: {_show(v)} is not understood; use one of "
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
                problems.append(f"{_where(df, i, col)}: {_show(v)} is not 0/1; use 1 (present) or "
                                "0 (absent)")
                out.append(pd.NA)
        df[col] = pd.Series(out, index=df.index, dtype="Int8")
    for col in NUMERIC:
        if col in df.columns:
            df[col] = pd.Series([_number(df, i, col, decimal_comma, problems) for i in df.index],
                                index=df.index, dtype="float64")


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


# DICOM objects a mask may be that SimpleITK does not read: RT Structure Set Storage, and
# Segmentation Storage (SimpleITK reads a SEG's frames, not its segments).
_SEGMENTATION_CLASSES = ("1.2.840.10008.5.1.4.1.1.481.3", "1.2.840.10008.5.1.4.1.1.66.4",
                         "1.2.840.10008.5.1.4.1.1.66.7")


def is_dicom_segmentation(path: str | Path) -> bool:
    """Whether a file is a DICOM RTSTRUCT or SEG (read from its header only)."""
    import pydicom

    p = Path(path)
    if not p.is_file():
        return False
    try:
        with p.open("rb") as f:
            preamble = f.read(132)[128:] == b"DICM"
        ds = pydicom.dcmread(p, stop_before_pixels=True, force=not preamble,
                             specific_tags=["SOPClassUID"])
        return str(ds.get("SOPClassUID", "")) in _SEGMENTATION_CLASSES
    except Exception:  # not DICOM, or damaged: pydicom raises many kinds
        return False


def file_problems(row: pd.Series) -> list[str]:
    """Messages for this patient's unusable files, each with the path and the fix."""
    out = []
    for col in PATH_COLUMNS:
        path = row.get(col)
        if path is None or pd.isna(path):
            continue
        why = check_image_file(path)
        if why and col != "image" and is_dicom_segmentation(path):
            why = None
        if why:
            out.append(f"patient {row['patient_id']}: {col} {path}: {why}; fix the path in the "
                       "manifest or the file, then re-run")
    return out



# ---- paths ------------------------------------------------------------------------------------


def _allowed_roots(base: Path, data_roots: Sequence[str | Path],
                   problems: list[str]) -> list[Path]:
    """The manifest's folder and every ``--data-root``, symlinks resolved."""
    roots = [base]
    for given in data_roots:
        try:
            root = Path(given).expanduser().resolve()
        except (OSError, RuntimeError, ValueError) as exc:
            problems.append(f"--data-root {given}: not a usable folder ({exc})")
            continue
        if not root.is_dir():
            problems.append(f"--data-root {given}: no such folder; give an existing folder that "
                            "holds the cohort's images and masks")
        elif root not in roots:
            roots.append(root)
    return roots


def _outside_problems(df: pd.DataFrame, col: str, items: list[tuple[int, str]],
                      roots: list[Path], command: str) -> list[str]:
    """One message per path outside every allowed folder (grouped when there are many)."""
    if len(roots) == 1:
        allowed = f"the manifest's folder {roots[0]}"
    else:
        allowed = f"the allowed folders ({', '.join(map(str, roots))})"
    parents = sorted({str(Path(p).parent) for _, p in items})
    common = os.path.commonpath(parents)
    folders = parents if len(parents) <= 3 or Path(common) == Path(common).parent else [common]
    flags = " ".join(f"--data-root {f}" for f in folders)
    fix = (f"move the files under {'it' if len(roots) == 1 else 'one of them'}, or allow "
           f"{'their folder' if len(folders) == 1 else 'their folders'} explicitly: "
           f"`{command} {flags}`")
    if len(items) <= 3:
        return [f"{_where(df, i, col)}: {p} is outside {allowed} (symlinks followed); {fix}"
                for i, p in items]
    i, p = items[0]
    return [f"{_lines(df.attrs['unit'], [i for i, _ in items])}, column '{col}': {len(items)} "
            f"paths are outside {allowed} (symlinks followed), e.g. {p} (patient "
            f"{df.at[i, 'patient_id']}); {fix}"]


def _resolve_paths(df: pd.DataFrame, base: Path, roots: list[Path], command: str,
                   problems: list[str]) -> None:
    """Absolute, symlink-free paths in the path columns; each must lie under an allowed root."""
    for col in PATH_COLUMNS:
        if col not in df.columns:
            df[col] = None
            continue
        resolved: list[str | None] = []
        outside: list[tuple[int, str]] = []
        for i in df.index:
            v = df.at[i, col]
            if _blank(v):
                if col != "mask_reader2":
                    problems.append(f"{_where(df, i, col)}: empty; give the path of the "
                                    f"patient's {col} (relative to the manifest's folder)")
                resolved.append(None)
                continue
            try:
                p = Path(str(v).strip()).expanduser()
                full = (p if p.is_absolute() else base / p).resolve()
            except (OSError, RuntimeError, ValueError) as exc:
                problems.append(f"{_where(df, i, col)}: {_show(v)} is not a usable path ({exc}); "
                                "fix it in the manifest")
                resolved.append(None)
                continue
            if not any(full.is_relative_to(root) for root in roots):
                outside.append((i, str(full)))
            resolved.append(str(full))
        df[col] = pd.Series(resolved, index=df.index, dtype="object")
        if outside:
            problems += _outside_problems(df, col, outside, roots, command)


# ---- the manifest -----------------------------------------------------------------------------


def read_manifest(path: str | Path, cohort: str, data_roots: Sequence[str | Path] = (),
                  sheet: str | None = None) -> Manifest:
    """Validate and normalise a manifest file; raises :class:`ManifestError` on structure.

    Image and mask paths must lie under the manifest's folder or one of ``data_roots`` (after
    following symlinks). ``sheet`` names the sheet of an Excel workbook (default: its first).
    """
    path = Path(path).expanduser().resolve()
    if not COHORT_RE.match(cohort):
        raise ManifestError(path, [f"cohort name {cohort!r}: use letters, digits, '-' and '_'"])
    if not path.is_file():
        raise ManifestError(path, [f"no such file: {path}"])
    raw = _read_source(path, cohort, sheet)
    df = raw.frame
    df.attrs["unit"] = raw.unit
    notes = list(raw.notes)
    problems: list[str] = []
    roots = _allowed_roots(path.parent, data_roots, problems)
    df["patient_id"] = [("" if is_missing(v) else str(v).strip()) for v in df["patient_id"]]
    for i in df.index:
        pid = df.at[i, "patient_id"]
        if not ID_RE.match(pid):
            problems.append(f"{raw.unit} {i}, column 'patient_id': {pid!r} is not a usable ID; "
                            "use letters, digits, '.', '-' and '_' (starting with a letter or "
                            "digit)")
    ids = df["patient_id"]
    for pid in sorted(set(ids[ids.duplicated(keep=False) & (ids != "")])):
        lines = ", ".join(str(i) for i in df.index[ids == pid])
        problems.append(f"column 'patient_id': {pid!r} appears on {raw.unit}s {lines}; IDs must "
                        "be unique, so give each patient one row")
    command = " ".join([f"dtlr cohort add {cohort} {path}",
                        *(f"--data-root {r}" for r in roots[1:])])
    _resolve_paths(df, path.parent, roots, command, problems)
    _normalise_mask_columns(df, problems)
    _normalise_grade_label(df, problems)
    _normalise_clinical(df, problems, raw.decimal_comma)
    if problems:
        raise ManifestError(path, problems)
    unlabelled = int(df["label"].isna().sum())
    if unlabelled == len(df):
        lookalike = [c for c in df.columns
                     if c not in KNOWN and re.search(r"grade|label|who", str(c), re.IGNORECASE)]
        notes.append(f"no patient has a grade or label: {cohort} is an unlabelled cohort "
                     f"(patients to score): `dtlr submit --cohort {cohort}` extracts it and "
                     f"`dtlr predict --model RUN_ID --cohort {cohort}` scores it; it cannot "
                     "train or test a model"
                     + "".join(f"; column {c!r} is not read as the grade: name it 'grade' (WHO "
                               "1-3) or 'label' (0/1) if it holds them" for c in lookalike))
    elif unlabelled:
        notes.append(f"{unlabelled} of {len(df)} patients have no grade or label: the cohort "
                     "can be scored, but training or testing on it needs every extracted "
                     "patient's label")
    df = df.reset_index(drop=True)
    df.insert(0, "cohort", cohort)
    first = ["cohort", "patient_id", *PATH_COLUMNS, "grade", "label",
             *(c for c in MASK_COLUMNS if c in df.columns)]
    known = [c for c in CLINICAL if c in df.columns]
    rest = [c for c in df.columns if c not in first and c not in known]
    table = df[first + known + rest]
    table.attrs = {}
    warnings = [msg for _, row in table.iterrows() for msg in file_problems(row)]
    return Manifest(table=table, warnings=warnings, source=path, digest=file_digest(path),
                    notes=notes, read_as=raw.read_as, data_roots=[str(r) for r in roots])


def register(store: Store, cohort: str, path: str | Path,
             data_roots: Sequence[str | Path] = (), sheet: str | None = None) -> Manifest:
    """Validate a manifest and keep its normalised copy in the store, all or nothing.

    Nothing is written unless the whole manifest is accepted; if updating the catalog fails
    after the copy is written, the previous registration (or none) is put back and a
    :class:`~dtlr.shared.store.StoreError` says why.
    """
    manifest = read_manifest(path, cohort, data_roots, sheet)
    try:
        table = pa.Table.from_pandas(manifest.table, preserve_index=False)
    except (pa.ArrowException, TypeError, ValueError) as exc:
        raise ManifestError(manifest.source, [
            f"the table cannot be stored ({exc}); give each column one kind of value (text "
            "or numbers)"]) from exc
    target = store.manifest_path(cohort)
    backup = target.with_name(f".{target.name}.tmp-previous-{uuid.uuid4().hex}")
    had_previous = target.is_file()
    if had_previous:
        try:
            os.link(target, backup)  # the same file, so putting it back changes nothing
        except OSError:
            shutil.copy2(target, backup)
    try:
        store.write_table(table, target, {
            "source": str(manifest.source), "source_sha256": manifest.digest,
            "data_roots": manifest.data_roots, "read_as": manifest.read_as})
        store.refresh_catalog()
    except BaseException as exc:
        if had_previous:
            os.replace(backup, target)
        else:
            target.unlink(missing_ok=True)
            for d in (target.parent, target.parent.parent):
                try:
                    d.rmdir()
                except OSError:
                    break
        if not isinstance(exc, Exception):
            raise
        kept = "its previous registration is kept" if had_previous else "nothing was written"
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if not isinstance(exc, StoreError):
            reason = f"{type(exc).__name__}: {reason}"
        error = StoreWriteError if isinstance(exc, StoreWriteError | OSError) else StoreError
        raise error(
            f"cohort {cohort!r} not registered ({kept}): the store could not be updated "
            f"({reason}). Check that its disk has space and that you may write to "
            f"{store.root}; if another dtlr command is updating this store, let it finish and "
            f"retry; a damaged {store.catalog_path.name} may be deleted (DTLR rebuilds it)"
        ) from exc
    finally:
        backup.unlink(missing_ok=True)
    return manifest


def allowed_roots(store: Store, cohort: str) -> list[str]:
    """The folders a registered cohort's images and masks were allowed in (its manifest's
    folder first, then each ``--data-root``), from the store's copy of the manifest."""
    meta = Store.read_metadata(store.manifest_path(cohort))
    if "data_roots" in meta:
        return list(meta["data_roots"])
    return [str(Path(meta["source"]).parent)] if "source" in meta else []


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
