"""`dtlr sql` output that spreadsheets and other tools read, and the catalog without DTLR."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from dtlr.shared.store import Store, feature_table
from tests.cluster import BIN

KEYS = ("a" * 16, "b" * 16)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "store")
    for (pid, value), key in zip((("P1", 3.5), ("P2", float("nan"))), KEYS, strict=True):
        table = feature_table([{"cohort": "c", "patient_id": pid, "reader": 1}],
                              ["original_firstorder_Mean"], [[value]])
        s.write_table(table, s.radiomics_path("c", 1, pid, key), {})
    s.refresh_catalog()
    return s


QUERY = ("SELECT patient_id, original_firstorder_Mean AS mean FROM radiomics "
         "ORDER BY patient_id")


def dtlr_sql(store: Store, *args: str) -> subprocess.CompletedProcess:
    out = subprocess.run([str(BIN / "dtlr"), "sql", QUERY, "--store", str(store.root), *args],
                         capture_output=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out


def test_csv_has_plain_newlines(store: Store) -> None:
    out = dtlr_sql(store, "--csv")
    assert out.stdout == b"patient_id,mean\nP1,3.5\nP2,nan\n"


def test_json_lines_one_object_per_row(store: Store) -> None:
    lines = dtlr_sql(store, "--json").stdout.decode().splitlines()
    assert [json.loads(line) for line in lines] == [{"patient_id": "P1", "mean": 3.5},
                                                    {"patient_id": "P2", "mean": None}]


def test_parquet_file(store: Store, tmp_path: Path) -> None:
    target = tmp_path / "out" / "radiomics.parquet"
    out = dtlr_sql(store, "--parquet", str(target))
    assert b"2 row(s), 2 column(s)" in out.stderr
    table = pq.read_table(target)
    assert table.column_names == ["patient_id", "mean"]
    assert table.column("patient_id").to_pylist() == ["P1", "P2"]
    assert table.column("mean").to_pylist()[0] == 3.5


def test_the_catalog_opens_read_only_without_dtlr(store: Store) -> None:
    code = (f"import sys, duckdb; con = duckdb.connect({str(store.catalog_path)!r}, "
            "read_only=True); df = con.sql('SELECT patient_id FROM radiomics ORDER BY 1').df(); "
            "print(list(df['patient_id']), any(m.startswith('dtlr') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd="/", env={**os.environ, "PYTHONPATH": ""},
                         encoding="utf-8")
    assert out.stdout.strip() == "['P1', 'P2'] False"
