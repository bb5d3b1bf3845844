"""The modeler's entry points: fit on one cohort, evaluate on others, report; and predict.

:func:`run_modeler` is what ``dtlr-model`` and the coordinator call. It reads the store through
DuckDB, fits :class:`DTLRModel` on the training cohort only, evaluates every cohort, and writes
``runs/<run_id>/`` (report.html, metrics.parquet, predictions.parquet, table3.csv) and
``models/<run_id>/`` (modeler.skops + modeler.json). :func:`predict_cohort` applies it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
from rich.console import Console
from rich.table import Table

from dtlr.services.modeler.data import CohortData, load_cohort, resolve_dtl_model
from dtlr.services.modeler.evaluate import CohortEvaluation, evaluate_cohort, table3
from dtlr.services.modeler.models import SCORE_NAMES, DTLRModel
from dtlr.services.modeler.nomogram import nomogram_scale, patient_points
from dtlr.services.modeler.optimism import Optimism, bootstrap_optimism
from dtlr.services.modeler.persist import load_model, save_model
from dtlr.services.modeler.protocol import Protocol
from dtlr.services.modeler.protocol import describe as describe_protocol
from dtlr.services.modeler.protocol import resolve as resolve_protocol
from dtlr.services.modeler.report import ReportInputs, render_report
from dtlr.shared.config import Settings
from dtlr.shared.hashing import content_key
from dtlr.shared.provenance import versions
from dtlr.shared.report import ReportSection
from dtlr.shared.stage import InputError
from dtlr.shared.store import Store

CODE_VERSION = "modeler-2"


@dataclass
class RunResult:
    """What a modeler run produced."""

    run_id: str
    report_path: Path
    model_dir: Path
    table3: pd.DataFrame  # one row per (cohort, model): value and CI of each metric
    metrics: pd.DataFrame  # the long table written to runs/<run_id>/metrics.parquet
    model: DTLRModel
    seconds: dict[str, float]  # wall time per phase: load, fit, optimism, evaluate, save, report,
    # total


def _model_description(model: DTLRModel, train: CohortData, tests: list[CohortData],
                       settings: Settings, protocol: Protocol, run_id: str,
                       created: str, optimism: Optimism | None) -> dict:
    """modeler.json: everything needed to understand (not to execute) the fitted model."""
    families = {}
    for family in model.families_:
        pipe = model.family_models_[family]
        sp, lasso, z = (pipe.named_steps[s] for s in ("spearman", "lasso", "zscore"))
        idx = np.flatnonzero(sp.support_)[lasso.support_]
        families[family] = {
            "score": SCORE_NAMES[family],
            "lambda": lasso.alpha_,
            "intercept": lasso.intercept_,
            "icc": pipe.named_steps["icc"].note_,
            "features": [{"name": n, "coef": float(c), "train_mean": float(m),
                          "train_sd": float(s)} for n, c, m, s in
                         zip(pipe[:-1].get_feature_names_out(), lasso.coef_[lasso.support_],
                             z.mean_[idx], z.scale_[idx], strict=True)],
        }
    scale = nomogram_scale(model, "display" if settings.modeler.nomogram_axes == "datadist"
                           else "full")
    return {
        "run_id": run_id, "created": created, "code_version": CODE_VERSION,
        "protocol": protocol.name, "protocol_record": protocol.record(),
        "protocol_text": describe_protocol(protocol, train.cohort, [t.cohort for t in tests],
                                           train.dtl_model_id),
        "train": train.cohort, "tests": [t.cohort for t in tests],
        "dtl_model_id": train.dtl_model_id, "settings": settings.model_dump(mode="json"),
        "versions": versions("model"),
        "inputs": {d.cohort: d.input_keys for d in [train, *tests]},
        "models": model.model_names, "thresholds": model.thresholds_,
        "thresholds_from": model.thresholds_from_,
        "optimism": None if optimism is None else {
            "bootstraps": optimism.bootstraps, "used": optimism.used, "seed": optimism.seed,
            "auc_optimism": optimism.optimism},
        "clinical_features": list(model.clinical_.named_steps["select"]
                                  .get_feature_names_out()),
        "families": families,
        "nomogram": {"predictors": scale.names, "coef": scale.coef.tolist(),
                     "intercept": scale.intercept, "train_low": scale.low.tolist(),
                     "train_high": scale.high.tolist(), "points_per_logit": scale.points_per_lp},
    }


def run_modeler(
    store: Store,
    train: str,
    tests: list[str],
    settings: Settings,
    dtl_model_id: str | None = None,
    run_id: str | None = None,
    *,
    dtl: bool = True,
    extra_sections: Callable[[], Sequence[ReportSection]] = tuple,
    on_run_id: Callable[[str], None] | None = None,
) -> RunResult:
    """Fit every model on ``train``, evaluate on it and on each of ``tests``, write the report.

    DTL features come from ``dtl_model_id``, or from the one CNN with features in the store;
    ``dtl=False`` leaves them out. The protocol is read from the CNN's records (what it was
    fine-tuned on, cross-fitted or not; :mod:`.protocol`), or from ``settings.cnn.protocol``
    without DTL features; the report's first line states it, and protocol "paper" fits the
    nomogram on in-sample scores, as the paper did.
    ``extra_sections`` builds the sections appended under "Deep transfer learning" (the GPU
    stage's CNN metrics and Grad-CAM); it is only called when a report is written.
    ``on_run_id`` learns the run id as soon as it is known (the coordinator's status record is
    keyed by it). The run id defaults to a content key of the inputs and settings, so an
    identical re-run finds its results in the store and returns them without fitting or
    writing anything.
    """
    if train in tests:
        raise InputError(f"cohort {train!r} is both the training and a test cohort")
    run_id_given = run_id
    clock = _Clock()
    store.refresh_catalog()
    dtl_id = resolve_dtl_model(store, train, dtl_model_id) if dtl else None
    train_data = load_cohort(store, train, dtl_id, with_reader2=True)
    test_data = [load_cohort(store, c, dtl_id) for c in tests]
    if dtl_id is not None:
        for d in test_data:
            if not any(c.startswith("dtl:") for c in d.X.columns):
                raise InputError(f"test cohort {d.cohort!r} has no DTL features of {dtl_id!r}")
    protocol = resolve_protocol(store, dtl_id, settings)
    settings = settings.model_copy(update={"modeler": settings.modeler.model_copy(
        update={"nomogram_scores": protocol.nomogram_scores})})
    run_id = run_id or f"{train}-" + content_key(
        CODE_VERSION, train, tests, dtl_id, protocol.record(), settings.model_dump(mode="json"),
        {d.cohort: d.input_keys for d in [train_data, *test_data]}, length=12)
    if on_run_id is not None:
        on_run_id(run_id)
    created = datetime.now(UTC).isoformat(timespec="seconds")
    clock.lap("load")
    if run_id_given is None and _finished(store, run_id):
        return _stored_result(store, run_id, clock)

    model = DTLRModel.from_settings(settings).fit(train_data.X, train_data.y,
                                                  reader2=train_data.reader2)
    clock.lap("fit")
    m = settings.modeler
    optimism = (bootstrap_optimism(model, train_data.X, train_data.y, train_data.reader2,
                                   m.optimism_bootstraps, settings.seed)
                if m.optimism_bootstraps else None)
    clock.lap("optimism")
    evaluations = [evaluate_cohort(model, d.X, d.y, d.cohort, role, m.hosmer_lemeshow_groups,
                                   m.calibration_bins, m.prevalence,
                                   optimism if role == "train" else None)
                   for d, role in [(train_data, "train"), *[(t, "test") for t in test_data]]]
    t3 = table3(evaluations)
    metrics = pd.concat([e.metrics for e in evaluations], ignore_index=True)
    lambdas = [{"cohort": train, "role": "train", "model": f, "metric": "lasso_lambda",
                "value": model.family_models_[f].named_steps["lasso"].alpha_}
               for f in model.families_]
    metrics = pd.concat([metrics, pd.DataFrame(lambdas)], ignore_index=True)
    metrics.insert(0, "run_id", run_id)
    for col in ("ci_low", "ci_high", "numerator", "denominator"):
        metrics[col] = metrics[col].astype("float64")
    metrics["note"] = metrics["note"].fillna("").astype(str)
    clock.lap("evaluate")

    model_dir = save_model(store, run_id, model, _model_description(
        model, train_data, test_data, settings, protocol, run_id, created, optimism))
    run_dir = store.run_dir(run_id)
    meta = {"run_id": run_id, "train": train, "tests": tests, "code_version": CODE_VERSION}
    store.write_table(pa.Table.from_pandas(metrics, preserve_index=False),
                      run_dir / "metrics.parquet", meta)
    store.write_table(pa.Table.from_pandas(_predictions(evaluations), preserve_index=False),
                      run_dir / "predictions.parquet", meta)
    store.write_text(t3.to_csv(index=False), run_dir / "table3.csv")
    store.refresh_catalog()
    clock.lap("save")
    html = render_report(ReportInputs(
        run_id=run_id, created=created,
        protocol=describe_protocol(protocol, train, tests, dtl_id), model=model, train=train_data,
        tests=test_data, evaluations=evaluations, table3=t3,
        settings={"seed": settings.seed, **settings.modeler.model_dump(mode="json")},
        versions=versions("model"), extra_sections=extra_sections()))
    report_path = run_dir / "report.html"
    store.write_text(html, report_path)
    clock.lap("report")
    return RunResult(run_id, report_path, model_dir, t3, metrics, model, clock.seconds())


def _finished(store: Store, run_id: str) -> bool:
    """Whether a run with this id wrote everything (the report is written last)."""
    run_dir = store.run_dir(run_id)
    return all((run_dir / name).is_file() for name in
               ("metrics.parquet", "predictions.parquet", "table3.csv", "report.html"))


def _stored_result(store: Store, run_id: str, clock: _Clock) -> RunResult:
    """The RunResult of a finished run, read back from the store."""
    run_dir = store.run_dir(run_id)
    model, _ = load_model(store, run_id)
    result = RunResult(run_id, run_dir / "report.html", store.model_dir(run_id),
                       pd.read_csv(run_dir / "table3.csv"),
                       pd.read_parquet(run_dir / "metrics.parquet"), model, {})
    clock.lap("reused")
    result.seconds.update(clock.seconds())
    return result


class _Clock:
    """Wall time per phase of a run."""

    def __init__(self) -> None:
        self.start = self.last = time.perf_counter()
        self.laps: dict[str, float] = {}

    def lap(self, name: str) -> None:
        """Record the time since the previous lap under ``name``."""
        now = time.perf_counter()
        self.laps[name] = round(now - self.last, 3)
        self.last = now

    def seconds(self) -> dict[str, float]:
        """Every lap and the total, in seconds."""
        return {**self.laps, "total": round(self.last - self.start, 3)}


def _predictions(evaluations: list[CohortEvaluation]) -> pd.DataFrame:
    """Per patient per cohort: label and every model's P(high grade)."""
    parts = []
    for ev in evaluations:
        df = ev.probs.reset_index()
        df.insert(0, "cohort", ev.cohort)
        df.insert(2, "label", ev.y)
        parts.append(df)
    return pd.concat(parts, ignore_index=True)


def render_table3(t3: pd.DataFrame, console: Console | None = None) -> list[Table]:
    """Print the Table-3-style summary with rich, one table per cohort (and return them).

    Compact enough for an 80-column terminal: AUC with its 95% CI, the other metrics as
    values (every CI is in the report and the ``metrics`` view).
    """
    console = console or Console()
    names = {"clinical": "Clinical", "radiomics": "Radiomics", "dtl": "DTL",
             "nomogram": "Nomogram"}
    tables = []
    for (cohort, role), rows in t3.groupby(["cohort", "role"], sort=False):
        table = Table(title=f"Table 3, {cohort} "
                            f"({'training, apparent' if role == 'train' else 'test'})",
                      title_justify="left")
        table.add_column("Model", no_wrap=True)
        table.add_column("AUC (95% CI)", justify="right", no_wrap=True)
        for col in ("Acc", "Sens", "Spec", "PPV", "NPV"):
            table.add_column(col, justify="right", no_wrap=True)
        for r in rows.itertuples():
            auc = (f"{r.auc:.3f} ({r.auc_ci_low:.3f}-{r.auc_ci_high:.3f})"
                   if np.isfinite(r.auc) else "-")
            cells = [f"{v:.3f}" if np.isfinite(v) else "-"
                     for v in (r.accuracy, r.sensitivity, r.specificity, r.ppv, r.npv)]
            table.add_row(names.get(r.model, r.model), auc, *cells)
        console.print(table)
        corrected = [f"{names.get(r.model, r.model)} {r.auc_corrected:.3f}"
                     for r in rows.itertuples() if np.isfinite(r.auc_corrected)]
        if role == "train" and corrected:
            console.print("optimism-corrected AUC (bootstrap): " + ", ".join(corrected))
        tables.append(table)
    return tables


def predict_cohort(store: Store, run_id: str, cohort: str) -> pd.DataFrame:
    """Each patient's nomogram risk, class, points per predictor, and every model's risk.

    Works on cohorts without labels. ``class`` is high grade when the risk reaches the
    nomogram's training Youden threshold.
    """
    model, meta = load_model(store, run_id)
    store.refresh_catalog()
    data = load_cohort(store, cohort, meta.get("dtl_model_id"), require_labels=False)
    axes = meta.get("settings", {}).get("modeler", {}).get("nomogram_axes", "full")
    pts = patient_points(model, data.X, "display" if axes == "datadist" else "full")
    probs = model.predict_proba_models(data.X).add_suffix("_risk")
    threshold = model.thresholds_["nomogram"]
    out = pd.DataFrame({"risk": pts["risk"],
                        "class": np.where(pts["risk"] >= threshold, "high", "low")},
                       index=data.X.index)
    out = pd.concat([out, pts.drop(columns="risk"), probs], axis=1).reset_index()
    out.insert(0, "cohort", cohort)
    if data.y is not None:
        out.insert(2, "label", data.y)
    return out
