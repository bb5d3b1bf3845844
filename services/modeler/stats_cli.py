"""dtlr-stats: DeLong ROC, decision curve and Hosmer-Lemeshow statistics from a CSV file."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click
import numpy as np
import pandas as pd
from numpy.typing import NDArray
from rich.console import Console
from rich.table import Table

from dtlr.shared.stats import (
    decision_curve,
    delong_test,
    hosmer_lemeshow,
    risk_from_score,
    roc_auc_delong,
)

T = TypeVar("T")


def _read_csv(csv: Path) -> pd.DataFrame:
    """Read the input table, turning I/O and parse failures into click errors that name the file."""
    if not csv.is_file():
        raise click.ClickException(f"CSV file '{csv}' not found; check the path given to --csv.")
    try:
        return pd.read_csv(csv)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise click.ClickException(f"could not read CSV file '{csv}': {exc}") from exc


def _column(frame: pd.DataFrame, name: str, csv: Path) -> pd.Series:
    """Fetch a column, or fail with the list of columns that do exist."""
    if name not in frame.columns:
        available = ", ".join(map(str, frame.columns))
        raise click.ClickException(
            f"column '{name}' not found in '{csv}'; available columns: {available}."
        )
    return frame[name]


def _no_missing(series: pd.Series, csv: Path) -> None:
    """Reject NaNs, naming the column, how many rows and the first one (1-based data row)."""
    missing = series.isna().to_numpy()
    if missing.any():
        first = int(np.flatnonzero(missing)[0]) + 1
        raise click.ClickException(
            f"column '{series.name}' in '{csv}' has {int(missing.sum())} missing value(s) "
            f"(first at data row {first}); drop or impute those rows before running dtlr-stats."
        )


def _outcome(frame: pd.DataFrame, label: str, positive: str, csv: Path) -> NDArray[np.bool_]:
    """Binary outcome: True where the label equals --positive (text, number or case-insensitive)."""
    series = _column(frame, label, csv)
    _no_missing(series, csv)
    as_text = series.astype(str)
    levels = sorted(as_text.unique())
    if len(levels) != 2:
        shown = ", ".join(levels[:10])
        raise click.ClickException(
            f"column '{label}' in '{csv}' has {len(levels)} distinct value(s) ({shown}); "
            "the outcome must have exactly two."
        )
    if positive in levels:
        return (as_text == positive).to_numpy()
    numeric = pd.to_numeric(series, errors="coerce")
    try:
        wanted = float(positive)
    except ValueError:
        wanted = math.nan
    if numeric.notna().all() and (numeric == wanted).any():
        return (numeric == wanted).to_numpy()
    folded = [level for level in levels if level.casefold() == positive.casefold()]
    if len(folded) == 1:
        return (as_text == folded[0]).to_numpy()
    raise click.ClickException(
        f"--positive '{positive}' does not occur in column '{label}' of '{csv}'; "
        f"its values are: {', '.join(levels)}."
    )


def _numeric(frame: pd.DataFrame, name: str, csv: Path) -> NDArray[np.float64]:
    """A numeric column without NaNs; text cells are reported with their row and value."""
    series = _column(frame, name, csv)
    _no_missing(series, csv)
    numeric = pd.to_numeric(series, errors="coerce")
    bad = numeric.isna().to_numpy()
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise click.ClickException(
            f"column '{name}' in '{csv}' is not numeric (data row {first + 1} holds "
            f"{series.iloc[first]!r}); pass a numeric score column."
        )
    values = numeric.to_numpy(dtype=np.float64)
    if not np.isfinite(values).all():
        raise click.ClickException(
            f"column '{name}' in '{csv}' has infinite values; remove or cap those rows."
        )
    return values


def _number(value: Any) -> float | int | None:
    """JSON-safe number: NaN and infinities become null, numpy scalars plain Python numbers."""
    if isinstance(value, (int, np.integer)):
        return int(value)
    value = float(value)
    return value if math.isfinite(value) else None


def _emit(as_json: bool, payload: Any, render: Callable[[Console], None]) -> None:
    """Print the JSON payload, or the human-readable rich table."""
    if as_json:
        click.echo(json.dumps(payload, indent=2, allow_nan=False))
    else:
        render(Console())


def _fmt(value: float | int | None, spec: str = ".4f") -> str:
    """Table cell text; missing/non-finite values print as NA."""
    return "NA" if value is None else format(value, spec)


def _library_call(func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a statistics function, turning its input errors into click errors."""
    try:
        return func(*args, **kwargs)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc


def _source_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """The --csv/--label/--positive/--json options shared by every subcommand."""
    options = [
        click.option(
            "--csv",
            "csv",
            required=True,
            type=click.Path(path_type=Path),
            help="Input CSV file with a header row.",
        ),
        click.option("--label", required=True, help="Outcome column."),
        click.option("--positive", required=True, help="Outcome value that marks a case."),
        click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


@click.group(name="stats")
def stats() -> None:
    """ROC/DeLong, decision-curve and Hosmer-Lemeshow statistics for a binary outcome."""


@stats.command()
@_source_options
@click.option(
    "--score",
    "scores",
    required=True,
    multiple=True,
    help="Score column (higher = more likely a case); give two for a paired DeLong test.",
)
def roc(csv: Path, label: str, positive: str, as_json: bool, scores: Sequence[str]) -> None:
    """AUC with DeLong 95% CI (pROC); with two scores, the paired DeLong test."""
    if len(scores) > 2:
        raise click.UsageError("give one or two --score columns.")
    if len(set(scores)) != len(scores):
        raise click.UsageError("the two --score columns must differ.")
    frame = _read_csv(csv)
    y = _outcome(frame, label, positive, csv)
    values = {name: _numeric(frame, name, csv) for name in scores}
    results = {name: _library_call(roc_auc_delong, y, v) for name, v in values.items()}
    payload: dict[str, Any] = {
        "scores": {
            name: {key: _number(getattr(r, key)) for key in ("auc", "ci_low", "ci_high", "var")}
            for name, r in results.items()
        }
    }
    if len(scores) == 2:
        test = _library_call(delong_test, y, *values.values())
        payload["delong"] = {
            key: _number(getattr(test, key))
            for key in ("z", "p", "cov", "diff_ci_low", "diff_ci_high")
        }

    def render(console: Console) -> None:
        table = Table(title=f"ROC AUC (DeLong 95% CI), cases: {label} = {positive}")
        for column in ("score", "AUC", "95% CI", "variance"):
            table.add_column(column)
        for name, row in payload["scores"].items():
            ci = f"{_fmt(row['ci_low'])} - {_fmt(row['ci_high'])}"
            table.add_row(name, _fmt(row["auc"]), ci, _fmt(row["var"], ".3g"))
        console.print(table)
        if "delong" in payload:
            d = payload["delong"]
            console.print(
                f"Paired DeLong test {scores[0]} vs {scores[1]}: Z = {_fmt(d['z'])}, "
                f"p = {_fmt(d['p'], '.4g')}, AUC difference 95% CI "
                f"{_fmt(d['diff_ci_low'])} - {_fmt(d['diff_ci_high'])}"
            )

    _emit(as_json, payload, render)


def _thresholds(text: str) -> NDArray[np.float64]:
    """Parse --thresholds '0.1,0.25' into floats in [0, 1)."""
    try:
        values = np.array([float(part) for part in text.split(",") if part.strip()])
    except ValueError as exc:
        raise click.BadParameter(
            f"'{text}' is not a comma-separated list of numbers, e.g. 0.1,0.25.",
            param_hint="--thresholds",
        ) from exc
    if values.size == 0 or not ((values >= 0) & (values < 1)).all():
        raise click.BadParameter(
            f"'{text}': give one or more thresholds in [0, 1), e.g. 0.1,0.25.",
            param_hint="--thresholds",
        )
    return values


@stats.command()
@_source_options
@click.option("--score", required=True, help="Predicted-risk column (probabilities in [0, 1]).")
@click.option(
    "--thresholds",
    "thresholds_text",
    required=True,
    help="Comma-separated threshold probabilities, e.g. 0.1,0.25.",
)
@click.option(
    "--prevalence",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    help="Population prevalence for case-control data (dcurves' prevalence).",
)
@click.option(
    "--harm",
    type=float,
    default=0.0,
    show_default=True,
    help="Harm of the test, subtracted from the model's net benefit.",
)
@click.option(
    "--as-probability",
    is_flag=True,
    help="Convert the score to a risk with a logistic regression of the label on it.",
)
@click.option(
    "--nper",
    type=click.FloatRange(min=0, min_open=True),
    default=1.0,
    show_default=True,
    help="Report net interventions avoided per this many patients.",
)
def dca(
    csv: Path,
    label: str,
    positive: str,
    as_json: bool,
    score: str,
    thresholds_text: str,
    prevalence: float | None,
    harm: float,
    as_probability: bool,
    nper: float,
) -> None:
    """Decision curve: net benefit of the model, treat all, treat none (dcurves)."""
    thresholds = _thresholds(thresholds_text)
    frame = _read_csv(csv)
    y = _outcome(frame, label, positive, csv)
    values = _numeric(frame, score, csv)
    if as_probability:
        if prevalence is not None:
            raise click.UsageError(
                "--as-probability cannot be combined with --prevalence: a logistic fit on "
                "case-control data does not give population risks (as in dcurves)."
            )
        values = _library_call(risk_from_score, y, values)
    elif ((values < 0) | (values > 1)).any():
        raise click.ClickException(
            f"column '{score}' in '{csv}' has values outside [0, 1] (min {values.min():g}, "
            f"max {values.max():g}), so it is not a predicted risk; pass --as-probability to "
            f"convert it with a logistic regression of '{label}' on '{score}'."
        )
    curve = _library_call(
        decision_curve, y, values, thresholds, prevalence=prevalence, harm=harm, nper=nper
    )
    payload = [
        {key: _number(value) for key, value in row.items()}
        for row in curve.to_dict(orient="records")
    ]

    def render(console: Console) -> None:
        table = Table(title=f"Decision curve for {score} (cases: {label} = {positive})")
        for column in curve.columns:
            table.add_column(column.replace("_", " "))
        for row in payload:
            table.add_row(*(_fmt(value) for value in row.values()))
        console.print(table)

    _emit(as_json, payload, render)


@stats.command()
@_source_options
@click.option("--prob", required=True, help="Predicted-probability column.")
@click.option(
    "--groups", type=click.IntRange(min=3), default=10, show_default=True, help="Number of groups."
)
@click.option(
    "--method",
    type=click.Choice(["quantile", "rank"]),
    default="quantile",
    show_default=True,
    help="quantile: hoslem.test decile cut points; rank: equal-count groups by rank.",
)
@click.option(
    "--sample",
    type=click.Choice(["development", "external"]),
    default="development",
    show_default=True,
    help="development: the model was fitted on these rows (df = groups - 2, as hoslem.test); "
    "external: a validation cohort (df = groups; Hosmer, Lemeshow & Sturdivant 2013).",
)
@click.option(
    "--df",
    "df",
    type=click.IntRange(min=1),
    help="Degrees of freedom of the chi-square reference, overriding --sample's rule.",
)
def hl(
    csv: Path,
    label: str,
    positive: str,
    as_json: bool,
    prob: str,
    groups: int,
    method: str,
    sample: str,
    df: int | None,
) -> None:
    """Hosmer-Lemeshow goodness-of-fit test (ResourceSelection::hoslem.test grouping).

    Warnings (printed, and under "warnings" in --json) flag groups with fewer than 5 expected
    events or non-events, more groups than n / 5, and risks of exactly 0 or 1.
    """
    frame = _read_csv(csv)
    y = _outcome(frame, label, positive, csv)
    values = _numeric(frame, prob, csv)
    if ((values < 0) | (values > 1)).any():
        raise click.ClickException(
            f"column '{prob}' in '{csv}' has values outside [0, 1] (min {values.min():g}, "
            f"max {values.max():g}); --prob needs predicted probabilities."
        )
    result = _library_call(
        hosmer_lemeshow, y, values, groups=groups, method=method, sample=sample, df=df
    )
    rows = [
        {key: _number(value) for key, value in row.items()}
        for row in result.table.to_dict(orient="records")
    ]
    payload = {
        "chi2": _number(result.chi2),  # null when infinite (see warnings)
        "df": result.df,
        "df_rule": result.df_rule,
        "p": _number(result.p),
        "warnings": list(result.warnings),
        "groups": rows,
    }

    def render(console: Console) -> None:
        table = Table(title=f"Hosmer-Lemeshow partition for {prob} (cases: {label} = {positive})")
        for column in result.table.columns:
            table.add_column(column.replace("_", " "))
        for row in rows:
            table.add_row(*(_fmt(v, "d" if isinstance(v, int) else ".4g") for v in row.values()))
        console.print(table)
        rule = {"development": "groups - 2", "external": "groups, external sample"}
        console.print(
            f"Chi-square = {_fmt(payload['chi2']) if math.isfinite(result.chi2) else 'inf'}, "
            f"df = {result.df} ({rule.get(result.df_rule, 'given by --df')}), "
            f"p = {_fmt(result.p, '.4g')}"
        )
        for warning in result.warnings:
            console.print(f"Warning: {warning}.", style="yellow", markup=False)

    _emit(as_json, payload, render)
