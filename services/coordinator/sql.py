"""``dtlr sql``: read-only SQL over the feature store's DuckDB catalog, confined to the store.

Queries run on :meth:`dtlr.shared.store.Store.sandboxed`: only the store's own files can be
read (no other file, no URL, no extension), and only SELECT-like statements are accepted.
"""

from __future__ import annotations

import json
import sys

import click
import duckdb
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


def run_query(store: Store, query: str) -> tuple[list[str], list[tuple]]:
    """Column names and rows of a read-only query on the catalog, confined to the store."""
    try:
        con = store.sandboxed()
    except StoreError as exc:
        hint = ("; another process holds it open for writing: close it, or open the catalog "
                "read-only (`duckdb -readonly`, `duckdb.connect(path, read_only=True)`)"
                if "lock" in str(exc).lower() else "")
        raise Refused(f"{exc}{hint}") from exc
    with con:
        check_read_only(con, query)
        try:
            cur = con.execute(query)
        except duckdb.PermissionException as exc:
            raise Refused(f"dtlr sql reads the store at {store.root} and nothing else: "
                          f"{str(exc).splitlines()[0]}") from exc
        except duckdb.Error as exc:
            raise Refused(f"query failed: {str(exc).splitlines()[0]}") from exc
        columns = [d[0] for d in cur.description] if cur.description else []
        return columns, cur.fetchall()


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("query")
@click.option("--csv", "fmt", flag_value="csv", help="Print CSV (all columns).")
@click.option("--json", "fmt", flag_value="json", help="Print a JSON list of row objects.")
@store_option
def sql(query: str, fmt: str | None, store: Store) -> None:
    """Run a read-only SQL QUERY on the store.

    Views: radiomics, dtl, clinical, manifest, status, metrics, features_long.

    \b
    Example:
      dtlr sql "SELECT cohort, count(*) FROM radiomics GROUP BY cohort"
    """
    columns, rows = run_query(store, query)
    if fmt == "csv":
        import csv

        writer = csv.writer(sys.stdout)
        writer.writerow(columns)
        writer.writerows(rows)
    elif fmt == "json":
        click.echo(json.dumps([dict(zip(columns, r, strict=True)) for r in rows], default=str))
    else:
        shown = columns[:MAX_SHOWN_COLUMNS]
        table = Table(*shown, show_lines=False)
        for r in rows:
            table.add_row(*("NULL" if v is None else str(v) for v in r[: len(shown)]))
        Console(highlight=False).print(table)
        if len(columns) > len(shown):
            console.print(f"[dim]showing {len(shown)} of {len(columns)} columns; "
                          "use --csv or --json for all[/dim]")
        console.print(f"[dim]{len(rows)} row(s)[/dim]")
