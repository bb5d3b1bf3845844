"""The coordinator's plan: which patients need which stage, run on the embedded default.

The same task functions run in a local process pool (no broker: the embedded default) or on
Celery workers (``--broker``); this module decides what to run and reports what happened.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any

import SimpleITK as sitk

from services.extractor.io import InputError
from services.extractor.stage import extract_patient, is_done, plan_patient
from shared import manifest
from shared.config import Settings
from shared.store import StatusRecord, Store

DEMO = "demo"


@dataclass
class StageSummary:
    """What one stage did across the submitted cohorts."""

    stage: str
    ran: list[StatusRecord] = field(default_factory=list)
    skipped: list[StatusRecord] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def failed(self) -> list[StatusRecord]:
        return [r for r in self.ran if r.state == "failed"]

    @property
    def done(self) -> list[StatusRecord]:
        return [r for r in self.ran if r.state == "done"]


def demo_cohorts(store: Store, seed: int = 20250513) -> tuple[str, ...]:
    """Make and register the demo hospitals on first use; later calls reuse them."""
    from shared.demo import DEMO_COHORTS, make_demo

    if all(store.has_cohort(c) for c in DEMO_COHORTS):
        return DEMO_COHORTS
    manifests = make_demo(store.root / "demo-data", seed=seed)
    for cohort, path in manifests.items():
        manifest.register(store, cohort, path)
    return DEMO_COHORTS


def expand_cohorts(store: Store, cohorts: Iterable[str]) -> list[str]:
    """Cohort names with ``demo`` replaced by the two demo hospitals (registered on first use)."""
    out: list[str] = []
    for c in cohorts:
        for name in demo_cohorts(store) if c == DEMO else (c,):
            if name not in out:
                out.append(name)
    return out


def extraction_work(store: Store, cohorts: Iterable[str],
                    settings: Settings) -> tuple[list[dict[str, Any]], list[StatusRecord]]:
    """Rows still to extract, and the status records of patients whose results exist."""
    todo: list[dict[str, Any]] = []
    skipped: list[StatusRecord] = []
    for cohort in cohorts:
        for row in manifest.load(store, cohort).to_dict("records"):
            row = {k: (None if v is None or v != v else v) for k, v in row.items()}
            try:
                plan = plan_patient(row, settings)
            except InputError:
                todo.append(row)  # the stage records why it fails, like any other failure
                continue
            if is_done(store, plan):
                status = store.read_status(plan.cohort, plan.patient_id, "extract")
                assert status is not None
                skipped.append(status)
            else:
                todo.append(row)
    return todo, skipped


def _init_worker(threads: int) -> None:
    """Pool worker start-up: share the cores between processes instead of oversubscribing."""
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)


def _extract_in_worker(root: str, row: dict[str, Any], settings: Settings) -> StatusRecord:
    return extract_patient(Store(root), row, settings)


def run_local(store: Store, rows: list[dict[str, Any]], settings: Settings,
              jobs: int) -> Iterator[StatusRecord]:
    """Extract ``rows`` in a local process pool, yielding records as patients finish."""
    if not rows:
        return
    jobs = max(1, min(jobs, len(rows)))
    threads = max(1, (os.cpu_count() or 1) // jobs)
    with ProcessPoolExecutor(jobs, initializer=_init_worker, initargs=(threads,)) as pool:
        futures = [pool.submit(_extract_in_worker, str(store.root), r, settings) for r in rows]
        for fut in as_completed(futures):
            yield fut.result()


ExtractRunner = Callable[[Store, list[dict[str, Any]], Settings, int], Iterator[StatusRecord]]


def run_extraction(store: Store, cohorts: list[str], settings: Settings, jobs: int,
                   runner: ExtractRunner = run_local,
                   on_record: Callable[[StatusRecord], None] | None = None,
                   on_plan: Callable[[int, int], None] | None = None) -> StageSummary:
    """Extract every patient of ``cohorts`` whose results are missing; skip the rest."""
    t0 = time.perf_counter()
    rows, skipped = extraction_work(store, cohorts, settings)
    if on_plan:
        on_plan(len(rows), len(skipped))
    summary = StageSummary("extract", skipped=skipped)
    for record in runner(store, rows, settings, jobs):
        summary.ran.append(record)
        if on_record:
            on_record(record)
    store.refresh_catalog()
    summary.seconds = time.perf_counter() - t0
    return summary
