"""`dtlr sql` reads the store and nothing else, and never blocks or breaks a running submit.

Through the real command: queries that read other files (/etc/passwd, the process's
environment with the broker password), URLs, or extensions are refused with exit code 2 and
print nothing of what they tried to read; the catalog is replaced atomically, so a reader
holding it open sees the old views while a writer refreshes it, and the next reader the new.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from dtlr.shared.store import Store, feature_table
from tests.cluster import BIN
from tests.snapshot import changed, leftovers, snapshot

KEY_A, KEY_B = "a" * 16, "b" * 16


def write_patient(store: Store, pid: str, value: float, key: str = KEY_A) -> None:
    table: pa.Table = feature_table([{"cohort": "c", "patient_id": pid, "reader": 1}],
                                    ["original_firstorder_Mean"], [[value]])
    store.write_table(table, store.radiomics_path("c", 1, pid, key), {})


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "store")
    write_patient(s, "P1", 3.5)
    s.refresh_catalog()
    return s


def dtlr_sql(store: Store, query: str, *extra: str,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "dtlr"), "sql", query, "--store", str(store.root), *extra],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})}, encoding="utf-8")


@pytest.mark.parametrize("query", [
    "SELECT * FROM read_text('/etc/passwd')",
    "SELECT * FROM read_csv('/proc/self/environ', header = false)",
    "SELECT * FROM read_blob('{store}/../secret.txt')",
    "SELECT * FROM read_parquet('https://example.com/x.parquet')",
    "SELECT * FROM glob('/etc/*')",
])
def test_queries_outside_the_store_are_refused(store: Store, query: str) -> None:
    secret = store.root.parent / "secret.txt"
    secret.write_text("TOP-SECRET-CONTENT", encoding="utf-8")
    before = snapshot(store.root)
    out = dtlr_sql(store, query.format(store=store.root),
                   env={"DTLR_BROKER_URL": "redis://:hunter2-password@broker:6379/0"})
    assert out.returncode == 2, out.stdout + out.stderr
    text = out.stdout + out.stderr
    assert "reads the store" in text and "Traceback" not in text
    for leaked in ("root:", "TOP-SECRET-CONTENT", "hunter2-password"):
        assert leaked not in text
    assert changed(before, snapshot(store.root)) == set()


@pytest.mark.parametrize("query", ["INSTALL httpfs", "LOAD httpfs",
                                   "SET enable_external_access = true",
                                   "SELECT 1; SET allowed_directories = ['/']"])
def test_configuration_and_extensions_cannot_be_changed(store: Store, query: str) -> None:
    out = dtlr_sql(store, query)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "only reads the store" in out.stderr


def test_the_store_itself_is_readable(store: Store) -> None:
    out = dtlr_sql(store, "SELECT patient_id, original_firstorder_Mean AS m FROM radiomics",
                   "--json")
    assert out.returncode == 0, out.stderr
    assert [json.loads(line) for line in out.stdout.splitlines()] == [
        {"patient_id": "P1", "m": 3.5}]
    files = dtlr_sql(store, f"SELECT count(*) AS n FROM glob('{store.root}/features/**')",
                     "--json")
    assert json.loads(files.stdout) == {"n": 1}


def test_a_reader_holding_the_catalog_never_blocks_a_refresh(store: Store) -> None:
    reader = store.sandboxed()  # a long dtlr sql query holds this connection
    assert reader.execute("SELECT count(*) FROM radiomics").fetchone() == (1,)
    write_patient(store, "P2", 4.5)
    write_patient(store, "P3", 5.5)
    # Another process (as dtlr submit does) refreshes the catalog while the reader holds it.
    code = textwrap.dedent(f"""
        from dtlr.shared.store import Store
        import dtlr.shared.store as s
        store = Store({str(store.root)!r})
        store._feature_names = lambda glob, f=store._feature_names: f(glob) + ['extra']
        assert store.refresh_catalog()
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, encoding="utf-8")
    assert done.returncode == 0, done.stderr
    # The reader still sees the old views (the old file), never none ...
    assert reader.execute("SELECT count(*) FROM radiomics").fetchone() == (3,)
    assert "extra" not in [c[0] for c in reader.execute("DESCRIBE radiomics").fetchall()]
    reader.close()
    # ... and the next reader sees the new ones.
    out = dtlr_sql(store, "SELECT column_name FROM (DESCRIBE radiomics)", "--json")
    assert {"column_name": "extra"} in [json.loads(line) for line in out.stdout.splitlines()]
    assert leftovers(store.root) == []


def test_a_writer_holding_the_catalog_gives_a_clear_message(store: Store) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", f"import duckdb, time; con = duckdb.connect("
                               f"{str(store.catalog_path)!r}); print('open', flush=True); "
                               "time.sleep(60)"], stdout=subprocess.PIPE, encoding="utf-8")
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        out = dtlr_sql(store, "SELECT 1")
        assert out.returncode == 2, out.stdout + out.stderr
        assert "open for writing" in out.stderr and "Traceback" not in out.stderr
        # A refresh does not need that lock: it replaces the file.
        write_patient(store, "P4", 1.0)
        assert store.refresh_catalog()
    finally:
        holder.kill()
        holder.wait()
    with duckdb.connect(str(store.catalog_path), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM radiomics").fetchone() == (2,)
