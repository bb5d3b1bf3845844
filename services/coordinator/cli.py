"""``dtlr``: the one command line; every DTLR command is a subcommand of it.

``dtlr submit``, ``dtlr extract``, ``dtlr sql``, ``dtlr model``, ``dtlr predict``,
``dtlr stats``, ``dtlr worker`` come from the services that implement them (the former
``dtlr-*`` scripts remain as aliases); ``dtlr cohort``, ``dtlr status`` and ``dtlr demo-data``
are defined here.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

import dtlr
from dtlr.services.coordinator import pipeline
from dtlr.shared import manifest
from dtlr.shared.cli import (
    DEBUG_ENV,
    EXIT_REFUSED,
    EXIT_STORE,
    console,
    run_command,
    store_option,
)
from dtlr.shared.stage import COHORT
from dtlr.shared.store import Store, StoreError

out = Console(highlight=False, soft_wrap=True)


# Subcommands defined by the services: imported only when used, so `dtlr -h` is instant
# (the modeler alone imports scikit-learn, statsmodels and matplotlib).
LAZY: dict[str, tuple[str, str]] = {
    "submit": ("dtlr.services.coordinator.submit:submit",
               "Run cohorts through the pipeline: extraction, CNN, models, report."),
    "extract": ("dtlr.services.extractor.cli:extract",
                "Extract radiomics features for one image and mask."),
    "sql": ("dtlr.services.coordinator.sql:sql", "Run a read-only SQL query on the store."),
    "model": ("dtlr.services.modeler.cli:model",
              "Fit and evaluate the models and the nomogram; write the report."),
    "predict": ("dtlr.services.modeler.cli:predict",
                "Score a cohort with a fitted model (risk, class, nomogram points)."),
    "stats": ("dtlr.services.modeler.stats_cli:stats",
              "ROC/DeLong, decision curves and Hosmer-Lemeshow on your own predictions."),
    "worker": ("dtlr.services.coordinator.worker:worker",
               "Serve a task queue (cpu or gpu) as a Celery worker."),
    "weights": ("dtlr.services.gpu_worker.cli:weights_group",
                "Install or check the ImageNet weights for offline workstations."),
}


class LazyGroup(click.Group):
    """A group whose service subcommands are imported when invoked, not when listed."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *LAZY])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in LAZY:
            return _command(cmd_name)
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, LAZY[name][1] if name in LAZY
                 else (self.commands[name].get_short_help_str(limit=70)))
                for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(dtlr.__version__, prog_name="dtlr")
@click.option("--debug", is_flag=True, help="Show the traceback of an error (or DTLR_DEBUG=1).")
def cli(debug: bool) -> None:
    """DTLR: deep-transfer-learning radiomics nomograms from MRI cohorts.

    \b
    dtlr cohort add hospitalA manifest.csv
    dtlr submit --cohort hospitalA --cohort hospitalB --train hospitalA
    dtlr sql "SELECT cohort, count(*) FROM radiomics GROUP BY cohort"
    """
    if debug:
        os.environ[DEBUG_ENV] = "1"


@cli.group()
def cohort() -> None:
    """Register and inspect cohorts."""


@cohort.command("add")
@click.argument("name")
@click.argument("manifest_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--data-root", "data_roots", multiple=True,
              type=click.Path(file_okay=False, path_type=Path),
              help="Another folder the images and masks may be in (repeatable); by default "
                   "they must be under the manifest's folder (symlinks followed).")
@click.option("--sheet", default=None,
              help="The sheet of an Excel workbook to read (default: its first).")
@store_option
def cohort_add(name: str, manifest_file: Path, data_roots: tuple[Path, ...], sheet: str | None,
               store: Store) -> None:
    """Register cohort NAME from MANIFEST_FILE (CSV, Excel .xlsx or Parquet; paths relative
    to it). A refused manifest registers nothing and exits 2."""
    try:
        m = manifest.register(store, name, manifest_file, data_roots, sheet)
    except manifest.ManifestError as exc:
        console.print(f"[red]refused[/red]: {escape(str(exc))}")
        console.print(f"nothing was registered; fix the manifest and run `dtlr cohort add "
                      f"{escape(name)} {escape(str(manifest_file))}` again")
        sys.exit(EXIT_REFUSED)
    except StoreError as exc:
        console.print(f"[red]store error[/red]: {escape(str(exc))}")
        sys.exit(EXIT_STORE)
    labels = m.table["label"]
    console.print(f"registered [bold]{escape(name)}[/bold]: {len(m.table)} patients "
                  f"(high grade {int((labels == 1).sum())}, low grade {int((labels == 0).sum())}, "
                  f"unlabelled {int(labels.isna().sum())}), "
                  f"{int(m.table['mask_reader2'].notna().sum())} with a second reader's mask")
    for note in m.notes:
        console.print(f"[cyan]note[/cyan] {escape(note)}")
    for w in m.warnings:
        console.print(f"[yellow]warning[/yellow] {escape(w)}")


@cohort.command("list")
@store_option
def cohort_list(store: Store) -> None:
    """List registered cohorts with their sizes."""
    table = Table("cohort", "patients", "high grade", "low grade", "unlabelled", "reader 2")
    for name in store.cohorts():
        t = manifest.load(store, name)
        table.add_row(name, str(len(t)), str(int((t["label"] == 1).sum())),
                      str(int((t["label"] == 0).sum())), str(int(t["label"].isna().sum())),
                      str(int(t["mask_reader2"].notna().sum())))
    out.print(table)


@cohort.command("show")
@click.argument("name")
@store_option
def cohort_show(name: str, store: Store) -> None:
    """Show the normalised manifest of cohort NAME."""
    try:
        t = manifest.load(store, name)
    except KeyError as exc:
        raise click.ClickException(exc.args[0]) from exc
    table = Table(*(escape(str(c)) for c in t.columns))
    for row in t.itertuples(index=False):
        table.add_row(*("" if manifest.is_missing(v) else escape(str(v)) for v in row))
    out.print(table)


@cli.command("demo-data")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--seed", type=int, default=20250513, show_default=True)
@click.option("--train", "n_train", type=click.IntRange(min=10), default=120, show_default=True)
@click.option("--test", "n_test", type=click.IntRange(min=4), default=40, show_default=True)
def demo_data(out_dir: Path, seed: int, n_train: int, n_test: int) -> None:
    """Write the synthetic demo hospitals (images, masks, manifests) to OUT_DIR."""
    from dtlr.services.coordinator.demo import make_demo

    for name, path in make_demo(out_dir, seed=seed, n_train=n_train, n_test=n_test).items():
        console.print(f"{name}: {path}  (register: dtlr cohort add {name} {path})")


@cli.command("status")
@click.option("--cohort", "cohorts", multiple=True, help="Cohort (repeatable; default all).")
@store_option
def status(cohorts: tuple[str, ...], store: Store) -> None:
    """Per-stage counts and failures, read from the store (local or distributed runs alike)."""
    names = list(cohorts) or store.cohorts()
    if pipeline.DEMO in names:
        names = pipeline.expand_cohorts(store, names)
    table = Table("cohort", "patients", "stage", "done", "failed", "running", "not run")
    failures = []
    cohort_level = []
    for name in names:
        try:
            n = len(manifest.load(store, name))
        except KeyError as exc:
            raise click.ClickException(exc.args[0]) from exc
        records = store.statuses(name)
        per_patient = [r for r in records if r.patient_id != COHORT]
        cohort_level += [r for r in records if r.patient_id == COHORT]
        for stage in sorted({r.stage for r in per_patient} or {"extract"}):
            counts = Counter(r.state for r in per_patient if r.stage == stage)
            table.add_row(name, str(n), stage, str(counts["done"]), str(counts["failed"]),
                          str(counts["running"]),
                          str(n - counts["done"] - counts["failed"] - counts["running"]))
        failures += [r for r in per_patient if r.state == "failed"]
    out.print(table)
    if cohort_level:
        runs = Table("cohort", "stage", "key", "state", "finished")
        for r in sorted(cohort_level, key=lambda r: (r.cohort, r.stage, r.finished_at)):
            runs.add_row(r.cohort, r.stage, r.key, r.state, r.finished_at)
            if r.state == "failed":
                failures.append(r)
        out.print(runs)
    for r in failures:
        where = r.cohort if r.patient_id == COHORT else f"{r.cohort}/{r.patient_id}"
        out.print(f"[red]failed[/red] {r.stage} {where}: {r.message}")


def _command(name: str) -> click.Command:
    module, _, attr = LAZY[name][0].partition(":")
    return getattr(importlib.import_module(module), attr)


def main() -> None:
    """The `dtlr` program: every subcommand behind the one top-level error handler."""
    run_command(cli, "dtlr")


def alias(name: str) -> Callable[[], None]:
    """The entry point of a former `dtlr-<name>` script (same command, same handler)."""

    def entry() -> None:
        run_command(_command(name), f"dtlr-{name}")

    entry.__name__ = f"{name}_main"
    return entry


submit_main, extract_main, sql_main = alias("submit"), alias("extract"), alias("sql")
model_main, predict_main, stats_main = alias("model"), alias("predict"), alias("stats")
worker_main = alias("worker")
