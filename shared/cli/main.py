"""``dtlr``: cohorts, demo data and status of the feature store."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from shared import manifest, pipeline
from shared.cli.common import console, store_option
from shared.store import Store

out = Console(highlight=False, soft_wrap=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """DTLR: deep-transfer-learning radiomics nomograms from MRI cohorts."""


@cli.group()
def cohort() -> None:
    """Register and inspect cohorts."""


@cohort.command("add")
@click.argument("name")
@click.argument("manifest_file", type=click.Path(dir_okay=False, path_type=Path))
@store_option
def cohort_add(name: str, manifest_file: Path, store: Store) -> None:
    """Register cohort NAME from MANIFEST_FILE (CSV or Parquet; paths relative to it)."""
    try:
        m = manifest.register(store, name, manifest_file)
    except manifest.ManifestError as exc:
        raise click.ClickException(str(exc)) from exc
    store.refresh_catalog()
    labels = m.table["label"].value_counts(dropna=False).to_dict()
    console.print(f"registered [bold]{name}[/bold]: {len(m.table)} patients "
                  f"(high grade {labels.get(1, 0)}, low grade {labels.get(0, 0)}, "
                  f"unlabelled {sum(v for k, v in labels.items() if k not in (0, 1))}), "
                  f"{int(m.table['mask_reader2'].notna().sum())} with a second reader's mask")
    for w in m.warnings:
        console.print(f"[yellow]warning[/yellow] {w}")


@cohort.command("list")
@store_option
def cohort_list(store: Store) -> None:
    """List registered cohorts with their sizes."""
    table = Table("cohort", "patients", "high grade", "low grade", "reader 2")
    for name in store.cohorts():
        t = manifest.load(store, name)
        table.add_row(name, str(len(t)), str(int((t["label"] == 1).sum())),
                      str(int((t["label"] == 0).sum())), str(int(t["mask_reader2"].notna().sum())))
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
    table = Table(*t.columns)
    for row in t.itertuples(index=False):
        table.add_row(*("" if v is None or v != v else str(v) for v in row))
    out.print(table)


@cli.command("demo-data")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--seed", type=int, default=20250513, show_default=True)
@click.option("--train", "n_train", type=click.IntRange(min=10), default=120, show_default=True)
@click.option("--test", "n_test", type=click.IntRange(min=4), default=40, show_default=True)
def demo_data(out_dir: Path, seed: int, n_train: int, n_test: int) -> None:
    """Write the synthetic demo hospitals (images, masks, manifests) to OUT_DIR."""
    from shared.demo import make_demo

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
    table = Table("cohort", "patients", "stage", "done", "failed", "not run")
    failures = []
    for name in names:
        try:
            n = len(manifest.load(store, name))
        except KeyError as exc:
            raise click.ClickException(exc.args[0]) from exc
        records = store.statuses(name)
        for stage in sorted({r.stage for r in records} or {"extract"}):
            counts = Counter(r.state for r in records if r.stage == stage)
            table.add_row(name, str(n), stage, str(counts["done"]), str(counts["failed"]),
                          str(n - counts["done"] - counts["failed"]))
        failures += [r for r in records if r.state == "failed"]
    out.print(table)
    for r in failures:
        out.print(f"[red]failed[/red] {r.stage} {r.cohort}/{r.patient_id}: {r.message}")
