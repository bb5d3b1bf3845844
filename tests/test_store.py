"""The store: atomic keyed files, one row per patient, a catalog rewritten only on change."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
from click.testing import CliRunner

from dtlr.services.coordinator.sql import sql
from dtlr.shared.store import (
    StatusRecord,
    Store,
    feature_table,
    read_feature_files,
    split_keyed_name,
)

KEY_A, KEY_B = "a" * 16, "b" * 16


def row(pid: str, value: float) -> pa.Table:
    return feature_table([{"cohort": "c", "patient_id": pid, "reader": 1}],
                         ["original_firstorder_Mean"], [[value]])


def test_keyed_names_parse_even_with_dots() -> None:
    assert split_keyed_name(f"P.01.{KEY_A}.parquet", ".parquet") == ("P.01", KEY_A)
    assert split_keyed_name("manifest.parquet", ".parquet") is None
    assert split_keyed_name(f".P1.{KEY_A}.parquet.tmp-123", ".parquet") is None


def test_new_key_supersedes_old_file_of_same_patient(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.write_table(row("P1", 1.0), store.radiomics_path("c", 1, "P1", KEY_A), {"key": KEY_A})
    store.write_table(row("P1.5", 9.0), store.radiomics_path("c", 1, "P1.5", KEY_A), {})
    store.write_table(row("P1", 2.0), store.radiomics_path("c", 1, "P1", KEY_B), {"key": KEY_B})
    names = sorted(p.name for p in store.radiomics_dir("c", 1).iterdir())
    assert names == [f"P1.5.{KEY_A}.parquet", f"P1.{KEY_B}.parquet"]
    assert Store.read_metadata(store.radiomics_path("c", 1, "P1", KEY_B)) == {"key": KEY_B}
    store.refresh_catalog()
    with store.connect() as con:
        got = con.execute("SELECT patient_id, original_firstorder_Mean FROM radiomics "
                          "ORDER BY patient_id").fetchall()
    assert got == [("P1", 2.0), ("P1.5", 9.0)]


def test_catalog_is_rewritten_only_when_views_change(tmp_path: Path) -> None:
    store = Store(tmp_path)
    assert store.refresh_catalog() is True
    mtime = store.catalog_path.stat().st_mtime_ns
    assert store.refresh_catalog() is False
    assert store.catalog_path.stat().st_mtime_ns == mtime
    store.write_table(row("P1", 1.0), store.radiomics_path("c", 1, "P1", KEY_A), {})
    assert store.refresh_catalog() is True  # the radiomics view now reads files
    store.write_table(row("P2", 1.0), store.radiomics_path("c", 1, "P2", KEY_A), {})
    assert store.refresh_catalog() is False  # a new file needs no new view


def test_status_view_and_features_long(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.write_table(row("P1", 3.5), store.radiomics_path("c", 1, "P1", KEY_A), {})
    store.write_status(StatusRecord("c", "P1", "extract", "done", seconds=1.5, key=KEY_A))
    store.write_status(StatusRecord("c", "P2", "extract", "failed", message="no mask"))
    store.refresh_catalog()
    with store.connect() as con:
        assert con.execute("SELECT patient_id, state, message FROM status ORDER BY 1").fetchall() \
            == [("P1", "done", ""), ("P2", "failed", "no mask")]
        assert con.execute("SELECT * FROM features_long").fetchall() == [
            ("c", "P1", "radiomics", "original_firstorder_Mean", 3.5)]
        assert con.execute("SELECT count(*) FROM dtl").fetchone() == (0,)


@pytest.mark.parametrize("query,kind", [
    ("DROP VIEW radiomics", "DROP"), ("CREATE TABLE t AS SELECT 1", "CREATE"),
    ("COPY (SELECT 1) TO 'x.csv'", "COPY"), ("ATTACH 'other.db'", "ATTACH"),
    ("SELECT 1; DELETE FROM radiomics", "DELETE")])
def test_sql_refuses_anything_but_reading(tmp_path: Path, query: str, kind: str) -> None:
    store = Store(tmp_path)
    store.refresh_catalog()
    result = CliRunner().invoke(sql, [query, "--store", str(tmp_path)])
    assert result.exit_code == 2
    assert f"dtlr sql only reads the store: a {kind} statement is refused" in result.output
    assert not (tmp_path / "x.csv").exists()


def test_sql_outputs_json_and_csv(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.write_table(row("P1", 3.5), store.radiomics_path("c", 1, "P1", KEY_A), {})
    store.refresh_catalog()
    q = "SELECT patient_id, original_firstorder_Mean AS m FROM radiomics"
    out = CliRunner().invoke(sql, [q, "--json", "--store", str(tmp_path)])
    assert out.exit_code == 0 and out.output == '{"patient_id": "P1", "m": 3.5}\n'
    out = CliRunner().invoke(sql, [q, "--csv", "--store", str(tmp_path)])
    assert out.output == "patient_id,m\nP1,3.5\n"  # plain \n line ends


def test_sql_without_a_store_says_how_to_make_one(tmp_path: Path) -> None:
    result = CliRunner().invoke(sql, ["SELECT 1", "--store", str(tmp_path / "none")])
    assert result.exit_code == 2
    assert "run `dtlr submit` or `dtlr cohort add` first" in result.output


def test_long_files_read_back_wide_in_file_order(tmp_path: Path) -> None:
    store = Store(tmp_path)
    names = ["z_first", "a_second", "m_third"]
    ids = [{"cohort": "c", "patient_id": "P1", "reader": 1},
           {"cohort": "c", "patient_id": "P1", "reader": 2}]
    store.write_table(feature_table(ids, names, [[1, 2, 3], [4, 5, 6]]),
                      store.radiomics_path("c", 1, "P1", KEY_A), {})
    wide = read_feature_files([store.radiomics_path("c", 1, "P1", KEY_A)])
    assert list(wide.columns) == ["cohort", "patient_id", "reader", *names]
    assert wide[names].to_numpy().tolist() == [[1, 2, 3], [4, 5, 6]]
    store.refresh_catalog()
    with store.connect() as con:
        view = con.execute("SELECT * FROM radiomics ORDER BY reader").df()
    assert list(view.columns) == ["cohort", "patient_id", "reader", *names]
    assert view[names].to_numpy().tolist() == [[1, 2, 3], [4, 5, 6]]
