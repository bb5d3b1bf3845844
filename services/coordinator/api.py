"""DTLR's Python API (``import dtlr``): what the command line does, as functions.

Register a cohort, run it (here, or on Celery workers with ``broker=``), open the store as
DuckDB or pandas, fit and evaluate the models, score new patients, extract one case. Errors
are exceptions with the same messages the commands print (``dtlr.InputError`` for bad input,
``PreflightError`` when a run cannot start, ...). Every function takes the store as a
:class:`~dtlr.shared.store.Store` or a folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from dtlr.services.coordinator import pipeline
from dtlr.services.coordinator.dispatch import Dispatch, coordinator_app
from dtlr.services.coordinator.preflight import preflight
from dtlr.shared import manifest
from dtlr.shared.celery_app import broker_url
from dtlr.shared.config import Settings, load_settings
from dtlr.shared.stage import InputError
from dtlr.shared.store import StatusRecord, Store

StoreLike = Store | str | Path


def open_store(root: StoreLike | None = None) -> Store:
    """The store at ``root`` (default ``$DTLR_HOME`` or ``./dtlr-data``)."""
    return root if isinstance(root, Store) else Store(root)


def settings(path: str | Path | None = None, **sections: Any) -> Settings:
    """Settings from a YAML file and/or sections given as dicts (``cnn={"weights": ...}``)."""
    base = load_settings(path).model_dump(mode="json")
    for name, values in sections.items():
        base[name] = {**base.get(name, {}), **values} if isinstance(values, dict) else values
    return Settings.model_validate(base)


def register_cohort(store: StoreLike, name: str, manifest_file: str | Path,
                    data_roots: list[str | Path] | None = None) -> pd.DataFrame:
    """Validate and register a manifest as cohort ``name``; its normalised table.

    Raises ``manifest.ManifestError`` listing every problem (nothing is registered then).
    """
    s = open_store(store)
    registered = manifest.register(s, name, manifest_file, data_roots=list(data_roots or []))
    s.refresh_catalog()
    return registered.table


def make_demo(folder: str | Path, n_train: int = 120, n_test: int = 40,
              seed: int = 20250513) -> dict[str, Path]:
    """Write the synthetic demo hospitals; cohort name -> manifest file."""
    from dtlr.services.coordinator.demo import make_demo as generate

    return generate(Path(folder), seed=seed, n_train=n_train, n_test=n_test)


@dataclass
class Run:
    """What :func:`run` did: each stage's records, and the modeler's result (with a train)."""

    submission: str
    stages: list[pipeline.StageSummary] = field(default_factory=list)
    model_id: str | None = None  # the CNN behind the DTL features
    result: Any = None  # services.modeler.run.RunResult, or None

    @property
    def failed(self) -> list[StatusRecord]:
        """Every failed record of the run (patients, fine-tunings, the modeler)."""
        return [r for s in self.stages for r in s.failed]


def run(store: StoreLike, cohorts: list[str], train: str | None = None, *,
        config: Settings | None = None, cnn: bool = True, broker: str | None = None,
        jobs: int | None = None) -> Run:
    """Run cohorts through the pipeline, as ``dtlr submit`` does (work in the store is reused).

    Extraction always; with ``train``: the CNN (unless ``cnn=False``), its embeddings, and
    the models fitted on ``train`` and evaluated on the other labelled cohorts (unlabelled
    ones are embedded, to be scored with :func:`predict`). ``broker`` (or
    ``$DTLR_BROKER_URL``) runs the work on Celery workers; without it, here in ``jobs``
    processes. Raises ``PreflightError`` when the run cannot start.
    """
    s = open_store(store)
    settings_ = config or Settings()
    url = broker_url(broker)
    app = None if url is None else coordinator_app(url)
    preflight(s, settings_, cnn=train is not None and cnn, app=app, broker=url)
    names = pipeline.expand_cohorts(s, cohorts)
    if train is not None and train not in names:
        raise InputError(f"training cohort {train!r} is not among {names}")
    unlabelled = [n for n in names if train is not None and not pipeline.labelled(s, n)]
    if train in unlabelled:
        raise InputError(manifest.no_labels_message(train))
    dispatch = Dispatch(app, url, jobs or os.cpu_count() or 1)
    out = Run(pipeline.new_submission())
    out.stages.append(pipeline.run_extraction(s, names, settings_, out.submission, dispatch))
    if train is None:
        return out
    if cnn:
        out.model_id, tuned = pipeline.run_finetune(s, train, names, settings_, out.submission,
                                                    dispatch)
        out.stages.append(tuned)
        if out.model_id is not None:
            out.stages.append(pipeline.run_embedding(s, names, out.model_id, settings_,
                                                     out.submission, dispatch))
    tests = [n for n in names if n != train and n not in unlabelled]  # scored, not tested
    out.result, modelled = pipeline.run_model(s, train, tests, settings_, out.model_id,
                                              out.submission)
    out.stages.append(modelled)
    return out


def connect(store: StoreLike) -> Any:
    """A read-only DuckDB connection on the store's catalog, confined to the store."""
    return open_store(store).sandboxed()


def query(store: StoreLike, sql: str) -> pd.DataFrame:
    """A read-only SQL query on the store's views as a pandas DataFrame."""
    from dtlr.services.coordinator.sql import run_query

    columns, rows = run_query(open_store(store), sql)
    return pd.DataFrame.from_records(rows, columns=columns)


def fit(store: StoreLike, train: str, tests: list[str], config: Settings | None = None,
        dtl_model_id: str | None = None, dtl: bool = True) -> Any:
    """Fit every model on ``train``, evaluate on ``tests``, write the report (``dtlr model``)."""
    from dtlr.services.modeler.run import run_modeler

    return run_modeler(open_store(store), train, tests, config or Settings(), dtl_model_id,
                       dtl=dtl)


def predict(store: StoreLike, run_id: str, cohort: str) -> pd.DataFrame:
    """Score a cohort (labels optional) with a fitted run: risk, class, nomogram points."""
    from dtlr.services.modeler.run import predict_cohort

    return predict_cohort(open_store(store), run_id, cohort)


def extract_case(image: str | Path, mask: str | Path, params: str = "paper", n4: bool = True,
                 label: int | None = None, segment: str | None = None) -> dict[str, float]:
    """pyradiomics features of one image and mask (a label map, or a ``segment`` of a DICOM
    SEG, RTSTRUCT or Slicer .seg.nrrd), as ``dtlr extract`` computes them."""
    from dtlr.services.extractor.single import extract_one

    return extract_one(Path(image), Path(mask), params=params, n4=n4, label=label,
                       segment=segment)
