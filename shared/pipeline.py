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
from functools import partial
from typing import Any

from celery import Celery

from services.extractor.io import InputError
from services.extractor.stage import PatientPlan, extract_patient, is_done, plan_patient
from shared import manifest
from shared.config import Settings, share_cores
from shared.distributed import Job, follow, patient_finished
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
    share_cores(threads)


def _extract_job(job: Job) -> list[StatusRecord]:
    """Run an extraction job here, from the same arguments a worker would receive."""
    root, row, settings, submission = job.args
    return [extract_patient(Store(root), row, Settings.model_validate(settings), submission)]


def _extracted(store: Store, plan: PatientPlan | None) -> bool:
    return plan is not None and is_done(store, plan)


class Dispatch:
    """Where stage work runs: here (``app`` None, the embedded default) or on Celery workers.

    Either way a stage builds the same jobs (task name + JSON arguments); locally they run in
    ``jobs`` processes (or in this one), remotely they are sent and followed through the store.
    """

    def __init__(self, app: Celery | None = None, broker: str | None = None,
                 jobs: int = 1) -> None:
        self.app = app
        self.broker = broker
        self.jobs = jobs

    def run(self, jobs: list[Job], local: Callable[[Job], list[StatusRecord]],
            parallel: bool = False) -> Iterator[StatusRecord]:
        """Each job's status records as jobs finish (``parallel``: in a local process pool)."""
        if self.app is not None:
            assert self.broker is not None
            yield from follow(self.app, jobs, self.broker)
        elif not parallel or self.jobs == 1 or len(jobs) < 2:
            for job in jobs:
                yield from local(job)
        else:
            workers = min(self.jobs, len(jobs))
            threads = max(1, (os.cpu_count() or 1) // workers)
            with ProcessPoolExecutor(workers, initializer=_init_worker,
                                     initargs=(threads,)) as pool:
                for fut in as_completed([pool.submit(local, job) for job in jobs]):
                    yield from fut.result()


def new_submission() -> str:
    """An identifier for one dtlr-submit run, recorded in every status it causes."""
    return f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"


def run_extraction(store: Store, cohorts: list[str], settings: Settings, submission: str,
                   dispatch: Dispatch, on_record: Callable[[StatusRecord], None] | None = None,
                   on_plan: Callable[[int, int], None] | None = None) -> StageSummary:
    """Extract every patient of ``cohorts`` whose results are missing; skip the rest."""
    t0 = time.perf_counter()
    work, skipped = extraction_work(store, cohorts, settings)
    if on_plan:
        on_plan(len(work), len(skipped))
    summary = StageSummary("extract", skipped=skipped)
    payload = settings.model_dump(mode="json")
    jobs = [Job("dtlr.extract", [str(store.root), row, payload, submission], "cpu",
                poll=partial(patient_finished, store, row["cohort"], row["patient_id"],
                             "extract", submission, partial(_extracted, store, plan)))
            for row, plan in work]
    return _collect(store, summary, dispatch.run(jobs, _extract_job, parallel=True), on_record,
                    t0)


def _collect(store: Store, summary: StageSummary, records: Iterable[StatusRecord],
             on_record: Callable[[StatusRecord], None] | None, t0: float) -> StageSummary:
    """Gather a stage's records as they arrive, then refresh the catalog (even if stopped)."""
    try:
        for record in records:
            summary.ran.append(record)
            if on_record:
                on_record(record)
    finally:
        store.refresh_catalog()
        summary.seconds = time.perf_counter() - t0
    return summary



def _stage_record(cohort: str, stage: str, state: str, message: str = "",
                  key: str = "", seconds: float = 0.0) -> StatusRecord:
    """A cohort-level status (fine-tuning), shaped like the per-patient ones."""
    return StatusRecord(cohort=cohort, patient_id="*", stage=stage, state=state, message=message,
                        key=key, seconds=round(seconds, 3),
                        finished_at=datetime.now(UTC).isoformat(timespec="seconds"))


def _finetune_outcome(store: Store, train: str, model_id: str) -> list[StatusRecord] | None:
    """The fine-tuning's outcome once the store has it (a finished model or a failure note)."""
    from services.gpu_worker.run import failure_path, is_trained

    if is_trained(store, model_id):
        return [_stage_record(train, "finetune", "done", key=model_id)]
    failure = failure_path(store, model_id)
    if failure.is_file():
        return [_stage_record(train, "finetune", "failed", json.loads(failure.read_text())
                              ["message"], key=model_id)]
    return None


def run_finetune(store: Store, train: str, cohorts: list[str], settings: Settings,
                 dispatch: Dispatch) -> tuple[str | None, StageSummary]:
    """Fine-tune the CNN on ``train`` (reused when an identical model exists)."""
    from services.gpu_worker import run as gpu

    t0 = time.perf_counter()
    summary = StageSummary("finetune")
    extra = [c for c in cohorts if c != train]
    try:
        plan = gpu.plan_finetune(store, train, settings, extra)
    except gpu.TrainingDataError as exc:
        summary.ran.append(_stage_record(train, "finetune", "failed", str(exc)))
        return None, summary
    if gpu.is_trained(store, plan.model_id):
        summary.skipped.append(_stage_record(train, "finetune", "done", key=plan.model_id))
        return plan.model_id, summary
    gpu.failure_path(store, plan.model_id).unlink(missing_ok=True)

    def local(_: Job) -> list[StatusRecord]:
        try:
            gpu.finetune(store, train, settings, extra)
        except gpu.TrainingDataError as exc:
            return [_stage_record(train, "finetune", "failed", str(exc), plan.model_id)]
        return [_stage_record(train, "finetune", "done", key=plan.model_id)]

    job = Job("dtlr.finetune", [str(store.root), train, settings.model_dump(mode="json"), extra],
              "gpu", poll=partial(_finetune_outcome, store, train, plan.model_id))
    summary.ran.extend(dispatch.run([job], local))
    for record in summary.ran:
        record.seconds = round(time.perf_counter() - t0, 3)
    summary.seconds = time.perf_counter() - t0
    return (plan.model_id if not summary.failed else None), summary


def run_embedding(store: Store, cohorts: list[str], model_id: str, settings: Settings,
                  submission: str, dispatch: Dispatch, batch_size: int = 64,
                  on_record: Callable[[StatusRecord], None] | None = None,
                  on_plan: Callable[[int, int], None] | None = None) -> StageSummary:
    """Embed every patient of ``cohorts`` not yet embedded with ``model_id``, in batches."""
    from services.gpu_worker import run as gpu
    from services.gpu_worker.embed import STAGE, is_embedded

    t0 = time.perf_counter()
    summary = StageSummary("embed")
    payload = settings.model_dump(mode="json")
    jobs: list[Job] = []
    for cohort in cohorts:
        todo = []
        for pid in manifest.load(store, cohort)["patient_id"]:
            if is_embedded(store, cohort, model_id, pid):
                status = store.read_status(cohort, pid, STAGE)
                assert status is not None
                summary.skipped.append(status)
            else:
                todo.append(pid)
        for i in range(0, len(todo), batch_size):
            batch = todo[i:i + batch_size]
            polls = [partial(patient_finished, store, cohort, pid, STAGE, submission,
                             partial(is_embedded, store, cohort, model_id, pid)) for pid in batch]
            jobs.append(Job("dtlr.embed", [str(store.root), cohort, model_id, payload, batch,
                                           submission], "gpu", poll=partial(_all_done, polls)))
    if on_plan:
        on_plan(sum(len(j.args[4]) for j in jobs), len(summary.skipped))

    def local(job: Job) -> list[StatusRecord]:
        _, cohort, _, _, batch, _ = job.args
        return gpu.embed(store, cohort, model_id, settings, batch, submission)

    return _collect(store, summary, dispatch.run(jobs, local), on_record, t0)


def _all_done(polls: list[Callable[[], list[StatusRecord] | None]]) -> list[StatusRecord] | None:
    """A batch is finished when every patient in it is."""
    out: list[StatusRecord] = []
    for poll in polls:
        records = poll()
        if records is None:
            return None
        out += records
    return out


def run_model(store: Store, train: str, tests: list[str], settings: Settings,
              model_id: str | None) -> Any:
    """Fit and evaluate the models; with the CNN ``model_id``'s DTL features and report
    section when there is one, without DTL features when there is none (a failed or skipped
    CNN stage never falls back on another CNN's features)."""
    from services.modeler.run import run_modeler

    def sections() -> list[Any]:
        if model_id is None:
            return []
        from services.gpu_worker.run import cnn_report_section

        return [cnn_report_section(store, model_id, [train, *tests], settings)]

    return run_modeler(store, train, tests, settings, dtl_model_id=model_id,
                       dtl=model_id is not None, extra_sections=sections)
