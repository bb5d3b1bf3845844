"""``dtlr-model`` (fit, evaluate, report) and ``dtlr-predict`` (apply a saved model).

Results (Table 3, predictions) go to stdout; where files were written goes to stderr.
"""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from dtlr.services.modeler.persist import ModelFileError
from dtlr.services.modeler.run import predict_cohort, render_table3, run_modeler
from dtlr.shared.cli import console, settings_option, store_option
from dtlr.shared.config import Settings
from dtlr.shared.store import Store, StoreError


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--train", required=True, help="Training cohort: every model is fitted on it.")
@click.option("--test", "tests", multiple=True, help="Test cohort (repeatable); only scored.")
@click.option("--dtl-model", default=None,
              help="CNN model id whose DTL features to use (needed only when several exist).")
@click.option("--run-id", default=None, help="Run id (default: a content key of the inputs).")
@store_option
@settings_option
def model(train: str, tests: tuple[str, ...], dtl_model: str | None, run_id: str | None,
          store: Store, settings: Settings) -> None:
    """Fit the clinical, radiomics, DTL models and nomogram on TRAIN; evaluate; report."""
    try:
        result = run_modeler(store, train, list(tests), settings, dtl_model, run_id)
    except (KeyError, ValueError, StoreError) as exc:
        raise click.ClickException(str(exc.args[0] if exc.args else exc)) from exc
    render_table3(result.table3, Console())
    console.print(f"run {result.run_id}: report {result.report_path}")
    console.print(f"model saved in {result.model_dir} (dtlr-predict --model {result.run_id})")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--model", "run_id", required=True, help="Run id of a fitted model (dtlr-model).")
@click.option("--cohort", required=True, help="Registered cohort to score (labels optional).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write every column to this CSV file.")
@store_option
def predict(run_id: str, cohort: str, out: Path | None, store: Store) -> None:
    """Each patient's risk of high grade, class and nomogram points per predictor."""
    try:
        result = predict_cohort(store, run_id, cohort)
    except (KeyError, ValueError, StoreError, ModelFileError) as exc:
        raise click.ClickException(str(exc.args[0] if exc.args else exc)) from exc
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        result.to_csv(out, index=False)
    points = [c for c in result.columns if c.startswith("points_")]
    table = Table(title=f"Nomogram of run {run_id} on cohort {cohort}", title_justify="left")
    for col in ["patient_id", "risk", "class", *points, "total_points"]:
        table.add_column(col.removeprefix("points_"),
                         justify="left" if col in ("patient_id", "class") else "right")
    for row in result.to_dict("records"):
        table.add_row(str(row["patient_id"]), f"{row['risk']:.3f}", str(row["class"]),
                      *[f"{row[c]:.1f}" for c in points], f"{row['total_points']:.1f}")
    Console().print(table)
    if out is not None:
        console.print(f"{len(result)} patients written to {out}")
