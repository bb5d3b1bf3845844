"""Messy manifests through the real `dtlr cohort add`: read when they can be, refused clearly.

Every refusal must exit 2 with the problem's line, column and fix, print no traceback, and leave
the store exactly as it was (a previous registration of the same cohort stays intact).
"""

from __future__ import annotations

import codecs
import gzip
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import SimpleITK as sitk

from dtlr.shared import manifest
from dtlr.shared.store import Store
from tests.snapshot import changed, leftovers, snapshot

BIN = Path(sys.executable).parent
N = 3
HEADER = "patient_id,image,mask,grade,age"


def rows(n: int = N, sep: str = ",", end: str = "") -> str:
    """Data lines for the module's images, one per patient."""
    return "".join(f"P{i}{sep}img/P{i}.nii.gz{sep}img/P{i}_mask.nii.gz{sep}{1 + i % 2}{sep}"
                   f"{50 + i}{end}\n" for i in range(1, n + 1))


GOOD = f"{HEADER}\n{rows()}"


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with small real NIfTI images and masks (img/P1.nii.gz, img/P1_mask.nii.gz, ...)."""
    root = tmp_path_factory.mktemp("data")
    (root / "img").mkdir()
    for i in range(1, N + 1):
        image = np.random.default_rng(i).normal(100, 10, (8, 16, 16)).astype(np.float32)
        mask = np.zeros((8, 16, 16), np.uint8)
        mask[3:6, 5:10, 5:10] = 1
        sitk.WriteImage(sitk.GetImageFromArray(image), str(root / "img" / f"P{i}.nii.gz"))
        sitk.WriteImage(sitk.GetImageFromArray(mask), str(root / "img" / f"P{i}_mask.nii.gz"))
    return root


def dtlr(*args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "dtlr"), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "COLUMNS": "200"}, encoding="utf-8")


def add(store: Path, name: str, file: Path, *extra: str | Path) -> subprocess.CompletedProcess:
    return dtlr("cohort", "add", name, file, "--store", store, *extra)


@pytest.fixture(scope="module")
def registered(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store where cohort 'h' is registered from a good manifest (copied by each test)."""
    store = tmp_path_factory.mktemp("registered") / "store"
    good = data / "good.csv"
    good.write_text(GOOD, encoding="utf-8")
    out = add(store, "h", good)
    assert out.returncode == 0, out.stderr
    return store


@pytest.fixture
def store(registered: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "store"
    shutil.copytree(registered, copy)
    return copy


def assert_refused(out: subprocess.CompletedProcess, *keywords: str) -> str:
    assert out.returncode == 2, out.stdout + out.stderr
    assert "Traceback" not in out.stderr and "Traceback" not in out.stdout, out.stderr
    text = " ".join(out.stderr.split())  # one line, whatever the terminal wrapping
    assert "refused" in text and "nothing was registered" in text, text
    for k in keywords:
        assert k in text, f"{k!r} not in:\n{out.stderr}"
    return text


def text_file(content: str, encoding: str = "utf-8") -> Callable[[Path], None]:
    return lambda p: p.write_bytes(content.encode(encoding))


def parquet_file(frame: dict) -> Callable[[Path], None]:
    return lambda p: pd.DataFrame(frame).to_parquet(p)


BAD_IMAGES = {"patient_id": ["P1", "P2"], "image": ["img/P1.nii.gz", "img/P2.nii.gz"],
              "mask": ["img/P1_mask.nii.gz", "img/P2_mask.nii.gz"]}
# (case, file name, how to write it, key words the message must hold)
REFUSED = [
    ("trailing-delimiter", "m.csv", text_file(f"{HEADER}\n{rows(end=',')}"),
     ["lines 2-4:", "6 fields where the header (line 1) has 5", "ends with an extra ','",
      "remove the trailing ','"]),
    ("trailing-delimiters-semicolon", "m.csv",
     text_file(f"{HEADER.replace(',', ';')}\n{rows(sep=';', end=';;')}"),
     ["lines 2-4:", "ends with 2 extra ';'s", "remove the trailing ';'"]),
    ("header-ends-with-delimiter", "m.csv", text_file(f"{HEADER},\n{rows(end=',')}"),
     ["line 1: column 6 of the header has no name", "(the header ends with ',')",
      "remove the trailing ','"]),
    ("too-few-fields", "m.csv",
     text_file(f"{HEADER}\n{rows()}P4,img/P1.nii.gz,img/P1_mask.nii.gz,1\n"),
     ["line 5:", "4 fields where the header (line 1) has 5", "a value or a ',' is missing"]),
    ("unquoted-delimiter", "m.csv",
     text_file(f"{HEADER}\n{rows()}P4,img/P1.nii.gz,img/P1_mask.nii.gz,1,5,5\n"),
     ["line 5:", "6 fields", "unquoted ','", "double quotes"]),
    ("unclosed-quote", "m.csv",
     text_file(f'{HEADER}\nP1,"img/P1.nii.gz,img/P1_mask.nii.gz,1,51\n{rows()}'),
     ["line 2:", "fix the quotes on this line"]),
    ("empty", "m.csv", text_file(""), ["the file is empty", "header line"]),
    ("blank-lines-only", "m.csv", text_file("\n  \n\n"), ["the file is empty"]),
    ("utf16-bom-only", "m.csv", lambda p: p.write_bytes(codecs.BOM_UTF16_LE),
     ["the file is empty"]),
    ("header-only", "m.csv", text_file(f"{HEADER}\n"),
     ["no patients", "header (line 1)", "add one line per patient"]),
    ("duplicated-column", "m.csv", text_file(f"{HEADER},grade\n{rows(end=',2')}"),
     ["line 1: column 'grade' appears 2 times (columns 4, 6)", "one distinct name"]),
    ("columns-differ-in-case", "m.csv", text_file(f"{HEADER},AGE\n{rows(end=',3')}"),
     ["'AGE' / 'age' appears 2 times", "differ only in case"]),
    ("reserved-cohort-column", "m.csv", text_file(f"{HEADER},cohort\n{rows(end=',x')}"),
     ["line 1, column 6 'cohort': the name is reserved", "DTLR adds the column 'cohort'",
      "rename your column"]),
    ("missing-columns", "m.csv", text_file("patient_id,img,msk\nP1,a,b\n"),
     ["missing column(s) image, mask", "found columns 'patient_id', 'img', 'msk'"]),
    ("unknown-delimiter", "m.csv", text_file("patient_id|image|mask\nP1|a|b\n"),
     ["missing column(s)", "single column", "separate columns with ',', ';' or a tab"]),
    ("non-finite-numbers", "m.csv",
     text_file("patient_id,image,mask,age,size_mm\n"
               "P1,img/P1.nii.gz,img/P1_mask.nii.gz,inf,30\n"
               "P2,img/P2.nii.gz,img/P2_mask.nii.gz,nan,-inf\n"
               "P3,img/P3.nii.gz,img/P3_mask.nii.gz,40,1e400\n"),
     ["4 problem(s)", "line 2 (patient P1), column 'age': 'inf' is not a finite number",
      "line 3 (patient P2), column 'age': 'nan' is not a finite number",
      "line 3 (patient P2), column 'size_mm': '-inf' is not a finite number",
      "line 4 (patient P3), column 'size_mm': '1e400' is not a finite number",
      "leave the cell empty when unknown"]),
    ("every-problem-at-once", "m.csv",
     text_file("patient_id,image,mask,grade,age,sex\n"
               "P1,img/P1.nii.gz,img/P1_mask.nii.gz,4,61,f\n"
               "P2,img/P2.nii.gz,,2,-inf,m\n"
               "P2,/nonexistent/dtlr-test/P9.nii.gz,img/P3_mask.nii.gz,1,40,x\n"),
     ["6 problem(s)", "line 2 (patient P1), column 'grade': '4' is not a WHO grade",
      "line 3 (patient P2), column 'mask': empty", "'P2' appears on lines 3, 4",
      "line 3 (patient P2), column 'age': '-inf' is not a finite number",
      "line 4 (patient P2), column 'image': /nonexistent/dtlr-test/P9.nii.gz is outside the "
      "manifest's folder",
      "line 4 (patient P2), column 'sex': 'x' is not understood"]),
    ("utf16-without-bom", "m.csv", lambda p: p.write_bytes(GOOD.encode("utf-16-le")),
     ["NUL bytes", "UTF-16 without a byte-order mark", "save it as CSV UTF-8"]),
    ("legacy-xls", "m.xls", lambda p: p.write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" * 64),
     ["old-style Excel .xls", "save it as .xlsx"]),
    ("csv-named-xlsx", "m.xlsx", text_file(GOOD), ["not an Excel workbook"]),
    ("broken-xlsx", "m.xlsx", lambda p: p.write_bytes(b"PK\x03\x04" + b"\0" * 100),
     ["cannot be read as an Excel workbook"]),
    ("gzip", "m.csv.gz", lambda p: p.write_bytes(gzip.compress(GOOD.encode())),
     ["gzip-compressed", "decompress it"]),
    ("broken-parquet", "m.parquet", lambda p: p.write_bytes(b"PAR1" + b"\1" * 64),
     ["cannot be read as Parquet", "write it again"]),
    ("parquet-inf", "m.parquet", parquet_file({**BAD_IMAGES, "age": [61.0, np.inf]}),
     ["row 2 (patient P2), column 'age': inf is not a finite number"]),
    ("parquet-reserved", "m.parquet", parquet_file({**BAD_IMAGES, "Cohort": ["a", "b"]}),
     ["column 4 'Cohort': the name is reserved"]),
    ("parquet-no-rows", "m.parquet", parquet_file({k: [] for k in BAD_IMAGES}),
     ["no patients", "no rows"]),
    ("xlsx-inf-text", "m.xlsx",
     lambda p: pd.DataFrame({**BAD_IMAGES, "age": ["61", "-inf"]}).to_excel(p, index=False),
     ["row 3 (patient P2), column 'age': '-inf' is not a finite number"]),
]


@pytest.mark.parametrize("case", REFUSED, ids=[c[0] for c in REFUSED])
def test_refused_manifest_changes_nothing(case: tuple, data: Path, store: Path) -> None:
    name, filename, write, keywords = case
    path = data / f"{name}-{filename}"
    write(path)
    before = snapshot(store)
    out = add(store, "h", path)
    assert_refused(out, *keywords)
    assert changed(before, snapshot(store)) == set() and leftovers(store) == []
    assert manifest.load(Store(store), "h")["patient_id"].tolist() == ["P1", "P2", "P3"]


def test_refused_new_cohort_leaves_no_trace(data: Path, tmp_path: Path) -> None:
    path = data / "trailing-new.csv"
    path.write_text(f"{HEADER}\n{rows(end=',')}", encoding="utf-8")
    out = add(tmp_path / "store", "new", path)
    assert_refused(out, "lines 2-4:")
    assert not (tmp_path / "store").exists()


def test_missing_file_bad_cohort_name_and_unknown_sheet(data: Path, store: Path) -> None:
    before = snapshot(store)
    assert_refused(add(store, "h", data / "nope.csv"), "no such file")
    assert_refused(add(store, "bad name", data / "good.csv"), "cohort name 'bad name'")
    assert_refused(add(store, "h", data / "good.csv", "--sheet", "S"), "not an Excel workbook",
                   "leave --sheet out")
    assert changed(before, snapshot(store)) == set()


def write_workbook(path: Path, sheets: dict[str, pd.DataFrame]) -> None:
    with pd.ExcelWriter(path) as writer:
        for sheet, frame in sheets.items():
            frame.to_excel(writer, sheet_name=sheet, index=False)


def good_frame(**extra: list) -> pd.DataFrame:
    return pd.DataFrame({"patient_id": [f"P{i}" for i in range(1, N + 1)],
                         "image": [f"img/P{i}.nii.gz" for i in range(1, N + 1)],
                         "mask": [f"img/P{i}_mask.nii.gz" for i in range(1, N + 1)],
                         "grade": ["1", "2", "3"], **extra})


def test_excel_sheet_is_chosen_or_named(data: Path, store: Path) -> None:
    book = data / "book.xlsx"
    write_workbook(book, {"README": pd.DataFrame({"about": ["the patients are on sheet 2"]}),
                          "patients": good_frame(age=[61, 55.5, 40])})
    before = snapshot(store)
    assert_refused(add(store, "h", book), "read the first sheet, 'README', of 'README', "
                   "'patients'", "choose it with --sheet NAME")
    assert_refused(add(store, "h", book, "--sheet", "Patients"),
                   "--sheet 'Patients': the workbook has no such sheet",
                   "its sheets: 'README', 'patients'")
    assert changed(before, snapshot(store)) == set()
    out = add(store, "x", book, "--sheet", "patients")
    assert out.returncode == 0, out.stderr
    t = manifest.load(Store(store), "x")
    assert t["age"].tolist() == [61.0, 55.5, 40.0] and t["label"].tolist() == [0, 1, 1]
    meta = Store.read_metadata(Store(store).manifest_path("x"))
    assert meta["read_as"] == {"format": "xlsx", "sheet": "patients"}


REMARK = "Gómez – façade ✓"
ACCEPTED = [  # (case, file name, content, expected read_as)
    ("utf-8", "m.csv", GOOD.encode(), {"encoding": "utf-8", "delimiter": ","}),
    ("utf-8-bom", "m.csv", codecs.BOM_UTF8 + GOOD.encode(),
     {"encoding": "utf-8-sig", "delimiter": ","}),
    ("utf-16-le-bom", "m.csv", GOOD.encode("utf-16"), {"encoding": "utf-16", "delimiter": ","}),
    ("utf-16-be-bom", "m.csv", codecs.BOM_UTF16_BE + GOOD.encode("utf-16-be"),
     {"encoding": "utf-16", "delimiter": ","}),
    ("semicolon-crlf", "m.csv", GOOD.replace(",", ";").replace("\n", "\r\n").encode(),
     {"encoding": "utf-8", "delimiter": ";"}),
    ("tab", "m.tsv", GOOD.replace(",", "\t").encode(), {"encoding": "utf-8", "delimiter": "\t"}),
    ("excel-sep-line", "m.csv", ("sep=;\n" + GOOD.replace(",", ";")).encode(),
     {"encoding": "utf-8", "delimiter": ";"}),
]


@pytest.mark.parametrize("case", ACCEPTED, ids=[c[0] for c in ACCEPTED])
def test_encodings_and_delimiters_are_read(case: tuple, data: Path, tmp_path: Path) -> None:
    name, filename, content, read_as = case
    path = data / f"{name}-{filename}"
    path.write_bytes(content)
    out = add(tmp_path / "store", "c", path)
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    assert "registered c: 3 patients (high grade 2, low grade 1, unlabelled 0)" in out.stderr
    t = manifest.load(Store(tmp_path / "store"), "c")
    assert t["patient_id"].tolist() == ["P1", "P2", "P3"]
    assert t["age"].tolist() == [51.0, 52.0, 53.0] and t["grade"].tolist() == [2, 1, 2]
    assert all(Path(p).is_file() for p in [*t["image"], *t["mask"]])
    meta = Store.read_metadata(Store(tmp_path / "store").manifest_path("c"))
    assert meta["read_as"] == {"format": "csv", **read_as}


@pytest.mark.parametrize("encoding,sep,delimiter", [("cp1252", ";", ";"), ("utf-16", "\t", "\t"),
                                                     ("utf-8-sig", ",", ",")])
def test_accents_decimal_commas_and_header_spellings(encoding: str, sep: str, delimiter: str,
                                                     data: Path, tmp_path: Path) -> None:
    """Windows-1252 is read as such (and said so), ';' files may write 61,5, 'Grade' is grade."""
    age = "61,5" if sep == ";" else "61.5"
    text = (sep.join(["Patient ID", "Image", "Mask", "Grade", "Age", "remark"]) + "\n"
            + sep.join(["P1", "img/P1.nii.gz", "img/P1_mask.nii.gz", "II", age, REMARK]) + "\n")
    if encoding == "cp1252":
        text = text.replace(" ✓", "")
    path = data / f"accents-{encoding}.csv"
    path.write_bytes(text.encode(encoding))
    out = add(tmp_path / "store", "c", path)
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    assert "column 'Patient ID' read as 'patient_id'" in out.stderr
    assert ("read it as Windows-1252" in out.stderr) == (encoding == "cp1252")
    t = manifest.load(Store(tmp_path / "store"), "c")
    assert t["grade"].tolist() == [2] and t["age"].tolist() == [61.5]
    assert t["remark"].tolist() == [text.split(sep)[-1].strip()]
    meta = Store.read_metadata(Store(tmp_path / "store").manifest_path("c"))
    assert meta["read_as"]["delimiter"] == delimiter


def test_comma_decimal_in_a_comma_file_is_refused(data: Path, store: Path) -> None:
    path = data / "decimal.csv"
    path.write_text('patient_id,image,mask,age\nP1,img/P1.nii.gz,img/P1_mask.nii.gz,"61,5"\n',
                    encoding="utf-8")
    assert_refused(add(store, "h", path), "line 2 (patient P1), column 'age': '61,5' is not a "
                   "number", "with '.' as the decimal separator")


def test_parquet_as_today(data: Path, tmp_path: Path) -> None:
    path = data / "good.parquet"
    good_frame(age=[61.0, np.nan, 40.0]).set_index("patient_id").to_parquet(path)
    out = add(tmp_path / "store", "p", path)
    assert out.returncode == 0, out.stderr
    t = manifest.load(Store(tmp_path / "store"), "p")
    assert t["patient_id"].tolist() == ["P1", "P2", "P3"]  # a saved index is a column again
    assert t["age"].iloc[0] == 61.0 and pd.isna(t["age"].iloc[1])  # NaN: missing, as in pandas


def test_images_outside_the_manifest_folder(data: Path, tmp_path: Path) -> None:
    """Paths (after following symlinks) must be under the manifest's folder or a --data-root."""
    sub = data / "elsewhere"
    sub.mkdir()
    (sub / "link.nii.gz").symlink_to(data / "img" / "P3.nii.gz")
    path = sub / "m.csv"
    path.write_text("patient_id,image,mask\n"
                    "P1,../img/P1.nii.gz,../img/P1_mask.nii.gz\n"
                    f"P2,{data}/img/P2.nii.gz,{data}/img/P2_mask.nii.gz\n"
                    "P3,link.nii.gz,../img/P3_mask.nii.gz\n", encoding="utf-8")
    store = tmp_path / "store"
    text = assert_refused(add(store, "o", path), "6 problem(s)",
                          f"line 4 (patient P3), column 'image': {data}/img/P3.nii.gz is outside "
                          f"the manifest's folder {sub} (symlinks followed)",
                          f"line 2 (patient P1), column 'mask': {data}/img/P1_mask.nii.gz",
                          f"`dtlr cohort add o {path} --data-root {data}/img`")
    assert text.count("is outside") == 6
    assert not store.exists()
    out = add(store, "o", path, "--data-root", data / "img")
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    t = manifest.load(Store(store), "o")
    assert t["image"].tolist() == [str(data / "img" / f"P{i}.nii.gz") for i in (1, 2, 3)]
    assert manifest.allowed_roots(Store(store), "o") == [str(sub), str(data / "img")]
    assert_refused(add(store, "o2", path, "--data-root", data / "missing"),
                   f"--data-root {data}/missing: no such folder")


def test_many_outside_paths_are_grouped(data: Path, tmp_path: Path) -> None:
    sub = data / "grouped"
    sub.mkdir()
    path = sub / "m.csv"
    path.write_text("patient_id,image,mask\n" + "".join(
        f"Q{k},../img/P{1 + k % 3}.nii.gz,../img/P{1 + k % 3}_mask.nii.gz\n" for k in range(9)),
                    encoding="utf-8")
    text = assert_refused(add(tmp_path / "store", "g", path), "2 problem(s)",
                          "lines 2-10, column 'image': 9 paths are outside",
                          "lines 2-10, column 'mask': 9 paths are outside",
                          f"`dtlr cohort add g {path} --data-root {data}/img`")
    assert text.count("is outside") == 0


def test_unlabelled_cohort_registers_cleanly(data: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    path = data / "unlabelled.csv"
    path.write_text("patient_id,image,mask,WHO_grade_estimate,age\n" + "".join(
        f"P{i},img/P{i}.nii.gz,img/P{i}_mask.nii.gz,,{60 + i}\n" for i in range(1, N + 1)),
                    encoding="utf-8")
    out = add(store, "new", path)
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    text = " ".join(out.stderr.split())
    assert "registered new: 3 patients (high grade 0, low grade 0, unlabelled 3)" in text
    assert "new is an unlabelled cohort" in text and "dtlr predict --model RUN_ID" in text
    assert "column 'WHO_grade_estimate' is not read as the grade" in text
    path = data / "partial.csv"
    path.write_text(f"{HEADER}\n{rows()}P4,img/P1.nii.gz,img/P1_mask.nii.gz,,\n", encoding="utf-8")
    out = add(store, "part", path)
    assert out.returncode == 0, out.stderr
    assert "4 patients (high grade 2, low grade 1, unlabelled 1)" in out.stderr
    listing = dtlr("cohort", "list", "--store", store)
    assert listing.returncode == 0, listing.stderr
    lines = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]]
             for line in listing.stdout.splitlines() if line.count("│") > 2}
    assert lines["new"] == ["3", "0", "0", "3", "0"]
    assert lines["part"] == ["4", "2", "1", "1", "0"]
    shown = dtlr("cohort", "show", "new", "--store", store)
    assert shown.returncode == 0 and "Traceback" not in shown.stderr, shown.stderr
    assert shown.stdout.count("P") >= 3


def test_a_failed_catalog_update_keeps_the_previous_registration(data: Path,
                                                                 store: Path) -> None:
    """Registration is all or nothing: a failure after the copy is written puts it back."""
    (store / "catalog.duckdb").unlink()
    (store / "catalog.duckdb").mkdir()  # the catalog cannot be written
    path = data / "changed.csv"
    path.write_text(f"{HEADER}\n{rows(n=2)}", encoding="utf-8")
    before = snapshot(store)
    for name in ("h", "fresh"):
        out = add(store, name, path)
        assert out.returncode == 4, out.stderr
        assert "Traceback" not in out.stderr, out.stderr
        text = " ".join(out.stderr.split())
        assert f"cohort '{name}' not registered" in text
        assert ("previous registration is kept" if name == "h" else "nothing was written") in text
        assert changed(before, snapshot(store)) == set() and leftovers(store) == []
    assert pq.read_table(Store(store).manifest_path("h")).num_rows == 3
    assert not (store / "cohorts" / "fresh").exists()
