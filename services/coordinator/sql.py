"""``dtlr sql``: read-only SQL over the feature store's DuckDB catalog, confined to the store.

Queries run on :meth:`dtlr.shared.store.Store.sandboxed`: only the store's own files can be
read (no other file, no URL, no extension), and only SELECT-like statements are accepted.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path
from typing import Any

import click
import duckdb
import pyarrow.parquet as pq
from rich.console import Console
from rich.table import Table

from dtlr.shared.cli import Refused, console, store_option
from dtlr.shared.store import Store, StoreError

MAX_SHOWN_COLUMNS = 12


def check_read_only(con: duckdb.DuckDBPyConnection, query: str) -> None:
    """Refuse every statement that is not a plain read (SELECT, DESCRIBE, SHOW, SUMMARIZE)."""
    try:
        statements = con.extract_statements(query)
    except duckdb.Error as exc:
        raise Refused(f"cannot parse the query: {str(exc).splitlines()[0]}") from exc
    if not statements:
        raise Refused("empty query; give a SELECT statement")
    for st in statements:
        if st.type != duckdb.StatementType.SELECT:
            kind = st.type.name
            raise Refused(
                f"dtlr sql only reads the store: a {kind} statement is refused. Use SELECT "
                "(export with --csv or --json; the store is written by dtlr submit and dtlr model)"
            )


def _open(store: Store, query: str) -> duckdb.DuckDBPyConnection:
    """The sandboxed connection, the query checked to be a plain read."""
    try:
        con = store.sandboxed()
    except StoreError as exc:
        hint = ("; another process holds it open for writing: close it, or open the catalog "
                "read-only (`duckdb -readonly`, `duckdb.connect(path, read_only=True)`)"
                if "lock" in str(exc).lower() else "")
        raise Refused(f"{exc}{hint}") from exc
    try:
        check_read_only(con, query)
    except BaseException:
        con.close()
        raise
    return con


def _execute(con: duckdb.DuckDBPyConnection, store: Store, query: str) -> Any:
    try:
        return con.execute(query)
    except duckdb.PermissionException as exc:
        raise Refused(f"dtlr sql reads the store at {store.root} and nothing else: "
                      f"{str(exc).splitlines()[0]}") from exc
    except duckdb.Error as exc:
        raise Refused(f"query failed: {str(exc).splitlines()[0]}") from exc


def run_query(store: Store, query: str) -> tuple[list[str], list[tuple]]:
    """Column names and rows of a read-only query on the catalog, confined to the store."""
    with _open(store, query) as con:
        cur = _execute(con, store, query)
        columns = [d[0] for d in cur.description] if cur.description else []
        return columns, cur.fetchall()


def _json_value(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN or infinity
    return value


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("query")
@click.option("--csv", "fmt", flag_value="csv",
              help="Print CSV: every column, a header line, plain \\n line ends.")
@click.option("--json", "fmt", flag_value="json",
              help="Print JSON lines: one object per row (NaN and infinity as null).")
@click.option("--parquet", "parquet", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Write the result to this Parquet file.")
@store_option
def sql(query: str, fmt: str | None, parquet: Path | None, store: Store) -> None:
    """Run a read-only SQL QUERY on the store.

    Views: radiomics, dtl, clinical, manifest, status, metrics, features_long. The catalog
    (catalog.duckdb in the store) also opens without DTLR, read-only: `duckdb -readonly
    dtlr-data/catalog.duckdb`, or `duckdb.connect(path, read_only=True).sql(q).df()` (pandas)
    / `.pl()` (polars).

    \b
    Example:
      dtlr sql "SELECT cohort, count(*) FROM radiomics GROUP BY cohort"
      dtlr sql "SELECT * FROM radiomics" --parquet radiomics.parquet
    """
    with _open(store, query) as con:
        cur = _execute(con, store, query)
        if parquet is not None:
            table = cur.to_arrow_table()
            parquet.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(table, parquet)
            console.print(f"{table.num_rows} row(s), {table.num_columns} column(s) -> {parquet}")
            return
        columns = [d[0] for d in cur.description] if cur.description else []
        if fmt == "csv":
            writer = csv.writer(sys.stdout, lineterminator="\n")
            writer.writerow(columns)
            while rows := cur.fetchmany(10_000):
                writer.writerows(rows)
            return
        if fmt == "json":
            while rows := cur.fetchmany(10_000):
                for r in rows:
                    sys.stdout.write(json.dumps({c: _json_value(v) for c, v in
                                                 zip(columns, r, strict=True)}, default=str))
                    sys.stdout.write("\n")
            return
        rows = cur.fetchall()
    shown = columns[:MAX_SHOWN_COLUMNS]
    table = Table(*shown, show_lines=False)
    for r in rows:
        table.add_row(*("NULL" if v is None else str(v) for v in r[: len(shown)]))
    Console(highlight=False).print(table)
    if len(columns) > len(shown):
        console.print(f"[dim]showing {len(shown)} of {len(columns)} columns; "
                      "use --csv, --json or --parquet for all[/dim]")
    console.print(f"[dim]{len(rows)} row(s)[/dim]")
