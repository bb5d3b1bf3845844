"""The coordinator's plan: which patients need which stage, run on the embedded default.

The same task functions run in a local process pool (no broker: the embedded default) or on
Celery workers (``--broker``); this module decides what to run and reports what happened.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import SimpleITK as sitk
from celery import Celery

from services.extractor.io import InputError
from services.extractor.stage import PatientPlan, extract_patient, is_done, plan_patient
from shared import manifest
from shared.config import Settings
from shared.distributed import Job, follow
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


def manifest_rows(store: Store, cohort: str) -> list[dict[str, Any]]:
    """A cohort's patients as JSON-clean dicts (what a task message carries)."""
    return json.loads(manifest.load(store, cohort).to_json(orient="records"))


Work = list[tuple[dict[str, Any], PatientPlan | None]]


def extraction_work(store: Store, cohorts: Iterable[str],
                    settings: Settings) -> tuple[Work, list[StatusRecord]]:
    """Patients still to extract (with their plan), and records of those already in the store.

    A patient whose files are missing has no plan; it is still sent, and the stage records
    why it fails, like any other failure.
    """
    todo: Work = []
    skipped: list[StatusRecord] = []
    for cohort in cohorts:
        for row in manifest_rows(store, cohort):
            try:
                plan = plan_patient(row, settings)
            except InputError:
                todo.append((row, None))
                continue
            if is_done(store, plan):
                status = store.read_status(plan.cohort, plan.patient_id, "extract")
                assert status is not None
                skipped.append(status)
            else:
                todo.append((row, plan))
    return todo, skipped


def _init_worker(threads: int) -> None:
    """Pool worker start-up: share the cores between processes instead of oversubscribing."""
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)


def _extract_in_worker(root: str, row: dict[str, Any], settings: Settings,
                       submission: str) -> StatusRecord:
    return extract_patient(Store(root), row, settings, submission)


def run_local(store: Store, work: Work, settings: Settings, jobs: int,
              submission: str) -> Iterator[StatusRecord]:
    """Extract in a local process pool (the embedded default), yielding records as they finish."""
    if not work:
        return
    jobs = max(1, min(jobs, len(work)))
    threads = max(1, (os.cpu_count() or 1) // jobs)
    with ProcessPoolExecutor(jobs, initializer=_init_worker, initargs=(threads,)) as pool:
        futures = [pool.submit(_extract_in_worker, str(store.root), row, settings, submission)
                   for row, _ in work]
        for fut in as_completed(futures):
            yield fut.result()


def celery_runner(app: Celery, broker: str) -> ExtractRunner:
    """Extract through the ``cpu`` queue of a Celery broker, following results in the store."""

    def run(store: Store, work: Work, settings: Settings, jobs: int,
            submission: str) -> Iterator[StatusRecord]:
        payload = settings.model_dump(mode="json")
        tasks = [
            Job(row["cohort"], row["patient_id"], "extract", "dtlr.extract",
                [str(store.root), row, payload, submission], "cpu",
                is_done=(lambda plan=plan: plan is not None and is_done(store, plan)))
            for row, plan in work
        ]
        yield from follow(app, store, tasks, submission, broker)

    return run


ExtractRunner = Callable[[Store, Work, Settings, int, str], Iterator[StatusRecord]]


def new_submission() -> str:
    """An identifier for one dtlr-submit run, recorded in every status it causes."""
    return f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"


def run_extraction(store: Store, cohorts: list[str], settings: Settings, jobs: int,
                   submission: str, runner: ExtractRunner = run_local,
                   on_record: Callable[[StatusRecord], None] | None = None,
                   on_plan: Callable[[int, int], None] | None = None) -> StageSummary:
    """Extract every patient of ``cohorts`` whose results are missing; skip the rest."""
    t0 = time.perf_counter()
    work, skipped = extraction_work(store, cohorts, settings)
    if on_plan:
        on_plan(len(work), len(skipped))
    summary = StageSummary("extract", skipped=skipped)
    try:
        for record in runner(store, work, settings, jobs, submission):
            summary.ran.append(record)
            if on_record:
                on_record(record)
    finally:
        store.refresh_catalog()
        summary.seconds = time.perf_counter() - t0
    return summary
