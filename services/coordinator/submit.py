"""``dtlr-submit``: run a cohort through the pipeline and say what happened."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from typing import Any

import click
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from dtlr.services.coordinator import pipeline
from dtlr.services.coordinator.dispatch import Dispatch, coordinator_app
from dtlr.services.coordinator.follow import BrokerLostError, NoWorkerError
from dtlr.services.coordinator.preflight import PreflightError, preflight
from dtlr.shared.celery_app import broker_url
from dtlr.shared.cli import (
    EXIT_BROKER,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    console,
    say,
    settings_option,
    store_option,
)
from dtlr.shared.config import Settings
from dtlr.shared.store import StatusRecord, Store


@contextmanager
def progress_bar(label: str) -> Any:
    """A progress bar on stderr; yields (on_plan, on_record) callbacks for a stage."""
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=False,
                  disable=not console.is_terminal and "DTLR_PROGRESS" not in os.environ) as bar:
        task = bar.add_task(label, total=None)

        def on_plan(todo: int, skipped: int) -> None:
            bar.update(task, total=todo,
                       description=f"{label} ({skipped} already in the store)" if skipped
                       else label)

        def on_record(record: StatusRecord) -> None:
            bar.advance(task)

        yield on_plan, on_record


def print_summary(summaries: list[pipeline.StageSummary]) -> None:
    """Per stage: done, skipped, failed with reasons, and time."""
    table = Table("stage", "done", "skipped (in store)", "failed", "seconds")
    for s in summaries:
        table.add_row(s.stage, str(len(s.done)), str(len(s.skipped)),
                      f"[red]{len(s.failed)}[/red]" if s.failed else "0", f"{s.seconds:.1f}")
    console.print(table)
    for s in summaries:
        for r in sorted(s.failed, key=lambda r: (r.cohort, r.patient_id)):
            where = r.cohort if r.patient_id == "*" else f"{r.cohort}/{r.patient_id}"
            say(f"failed {s.stage} {escape(where)}", "red", r.message)


def run_stages(store: Store, names: list[str], train: str | None, cnn: bool,
               settings: Settings, dispatch: Dispatch, submission: str,
               summaries: list[pipeline.StageSummary]) -> str | None:
    """Extraction, then (with a training cohort) fine-tuning and embedding; the CNN's id."""
    with progress_bar("extract") as (on_plan, on_record):
        summaries.append(pipeline.run_extraction(store, names, settings, submission, dispatch,
                                                 on_record, on_plan))
    if train is None or not cnn:
        return None
    with progress_bar("fine-tune CNN") as (on_plan, on_record):
        on_plan(1, 0)
        model_id, tuned = pipeline.run_finetune(store, train, names, settings, submission,
                                                dispatch)
        on_record(tuned.ran[0] if tuned.ran else tuned.skipped[0])
    summaries.append(tuned)
    if model_id is None:
        return None
    with progress_bar("embed") as (on_plan, on_record):
        summaries.append(pipeline.run_embedding(store, names, model_id, settings, submission,
                                                dispatch, on_record=on_record, on_plan=on_plan))
    return model_id


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--cohort", "cohorts", multiple=True, required=True,
              help="Registered cohort to run (repeatable); 'demo' runs both demo hospitals.")
@click.option("--train", default=None,
              help="Training cohort: fine-tune the CNN and fit the models on it, test on the "
                   "others ('demo' trains on demo-hospitalA). Without it: extraction only.")
@click.option("--cnn/--no-cnn", default=True, show_default=True,
              help="Fine-tune the CNN and add DTL features (needs --train).")
@click.option("--weights", default=None,
              help="CNN start: 'imagenet' (torchvision's cache; the default), a local weights "
                   "file, or 'random' (recorded in the report).")
@click.option("--protocol", type=click.Choice(["leakage-safe", "paper"]), default=None,
              help="'paper' fine-tunes the CNN on training and test slices together, as the "
                   "paper did (the report says so); default leakage-safe.")
@click.option("--jobs", type=click.IntRange(min=1), default=os.cpu_count() or 1,
              show_default="number of cores", help="Local worker processes.")
@click.option("--broker", default=None,
              help="Run on Celery workers through this broker (or set DTLR_BROKER_URL); "
                   "without it everything runs here (the embedded default).")
@store_option
@settings_option
def submit(cohorts: tuple[str, ...], train: str | None, cnn: bool, weights: str | None,
           protocol: str | None, jobs: int, broker: str | None, store: Store,
           settings: Settings) -> None:
    """Run cohorts through the pipeline: extraction, CNN, models and report.

    Work already in the store is skipped, so re-running resumes. Exits 1 when any patient
    failed (the other patients complete), 2 when the run cannot start, 3 when the broker or
    its workers went away, 130 when interrupted.
    """
    if train is None and pipeline.DEMO in cohorts:
        train = pipeline.DEMO_TRAIN
    overrides = {k: v for k, v in (("weights", weights), ("protocol", protocol)) if v}
    if overrides:
        settings = settings.model_copy(update={"cnn": settings.cnn.model_copy(update=overrides)})
    url = broker_url(broker)
    app = None if url is None else coordinator_app(url)
    try:
        # Before the first patient (and before the demo's data are generated): a run that
        # cannot finish stops now, in seconds, with every reason and its fix.
        preflight(store, settings, cnn=train is not None and cnn, app=app, broker=url)
    except PreflightError as exc:
        say("refused", "red", exc)
        sys.exit(exc.exit_code)
    try:
        names = pipeline.expand_cohorts(store, cohorts)
        for name in names:
            pipeline.manifest.load(store, name)
    except KeyError as exc:
        raise click.ClickException(exc.args[0]) from exc
    if train is not None and train not in names:
        raise click.BadParameter(f"{train!r} is not among the submitted cohorts "
                                 f"({', '.join(names)})", param_hint="--train")
    # Cohorts without any label (patients to score) are extracted and embedded, never tested.
    unlabelled = [n for n in names if train is not None and not pipeline.labelled(store, n)]
    if train in unlabelled:
        raise click.BadParameter(pipeline.manifest.no_labels_message(train),
                                 param_hint="--train")
    dispatch = Dispatch(app, url, jobs)
    submission = pipeline.new_submission()
    summaries: list[pipeline.StageSummary] = []
    try:
        model_id = run_stages(store, names, train, cnn, settings, dispatch, submission,
                              summaries)
    except (BrokerLostError, NoWorkerError) as exc:
        print_summary(summaries)
        say("stopped", "red", exc)
        sys.exit(EXIT_BROKER)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/yellow]: finished work is in the store and "
                      "nothing half-written is left; run the same command again to resume"
                      + ("" if url is None else " (tasks already queued still run on the "
                         "workers)"))
        sys.exit(EXIT_INTERRUPTED)
    if train is not None:
        from dtlr.services.modeler.run import render_table3

        if model_id is None:
            console.print("[yellow]the models run without DTL features[/yellow] (no CNN"
                          + (": see the fine-tuning failure below)" if cnn else ", --no-cnn)"))
        tests = [n for n in names if n != train and n not in unlabelled]
        result, modelled = pipeline.run_model(store, train, tests, settings, model_id,
                                              submission)
        summaries.append(modelled)
        print_summary(summaries)
        if result is not None:
            render_table3(result.table3, console)
            console.print(f"report: {result.report_path}")
        for name in unlabelled:
            run = result.run_id if result is not None else "RUN_ID"
            console.print(f"[cyan]note[/cyan] cohort {name} has no labels, so it is not a "
                          f"test cohort; score it with `dtlr predict --model {run} --cohort "
                          f"{name}`")
    else:
        print_summary(summaries)
    if any(s.failed for s in summaries):
        sys.exit(EXIT_FAILED)
