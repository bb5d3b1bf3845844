"""The coordinator's plan: which patients need which stage, as jobs for a :class:`Dispatch`.

Each stage function decides what is missing from the store, builds one job per unit of work
(a validated message for the task of that stage), runs them on the embedded default or on
Celery workers, and gathers the status records into a :class:`StageSummary`. Stages meet
only through the store: extraction writes max slices, fine-tuning reads them, embedding reads
the checkpoint, the modeler reads the features.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from dtlr.services.coordinator.dispatch import Dispatch, Job
from dtlr.services.extractor import tasks as extractor_tasks
from dtlr.services.extractor.stage import PatientPlan, is_done, plan_patient
from dtlr.services.gpu_worker import tasks as gpu_tasks
from dtlr.shared import manifest
from dtlr.shared.config import Settings
from dtlr.shared.messages import TASKS, EmbedMessage, ExtractMessage, FinetuneMessage
from dtlr.shared.stage import COHORT, InputError, StageRun, Unit, failure_record
from dtlr.shared.store import StatusRecord, Store

DEMO = "demo"
DEMO_TRAIN = "demo-hospitalA"  # `--cohort demo` trains on hospital A, tests on hospital B
EMBED_BATCH = 64  # patients per embedding task


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
    from dtlr.services.coordinator.demo import DEMO_COHORTS, make_demo

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


def labelled(store: Store, cohort: str) -> bool:
    """Whether any patient of a registered cohort has a label (else it can only be scored)."""
    return bool(manifest.load(store, cohort)["label"].notna().any())


def manifest_rows(store: Store, cohort: str) -> list[dict[str, Any]]:
    """A cohort's patients as JSON-clean dicts."""
    return json.loads(manifest.load(store, cohort).to_json(orient="records"))


def new_submission() -> str:
    """An identifier for one dtlr-submit run, recorded in every status it causes."""
    return f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"


OnRecord = Callable[[StatusRecord], None] | None
OnPlan = Callable[[int, int], None] | None


def _collect(store: Store, summary: StageSummary, records: Iterable[StatusRecord],
             on_record: OnRecord, t0: float) -> StageSummary:
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


def extraction_jobs(store: Store, cohorts: Iterable[str], settings: Settings,
                    submission: str) -> tuple[list[Job], list[StatusRecord]]:
    """Jobs for the patients still to extract, and the records of those already in the store.

    A patient whose files are missing has no plan; it is still sent, and the stage records
    why it fails, like any other failure.
    """
    spec = TASKS["dtlr.extract"]
    jobs: list[Job] = []
    skipped: list[StatusRecord] = []
    for cohort in cohorts:
        for row in manifest_rows(store, cohort):
            plan: PatientPlan | None
            try:
                plan = plan_patient(row, settings)
            except InputError:
                plan = None
            if plan is not None and is_done(store, plan):
                status = store.read_status(plan.cohort, plan.patient_id, "extract")
                assert status is not None
                skipped.append(status)
                continue
            message = ExtractMessage(
                store_root=str(store.root), submission=submission, settings=settings,
                cohort=row["cohort"], patient_id=row["patient_id"], image=row["image"],
                mask=row["mask"], mask_reader2=row.get("mask_reader2"),
                mask_segment=row.get("mask_segment"),
                mask_segment_reader2=row.get("mask_segment_reader2"),
                mask_label=row.get("mask_label"))
            jobs.append(Job(spec, message, extractor_tasks.extract))
    return jobs, skipped


def run_extraction(store: Store, cohorts: list[str], settings: Settings, submission: str,
                   dispatch: Dispatch, on_record: OnRecord = None,
                   on_plan: OnPlan = None) -> StageSummary:
    """Extract every patient of ``cohorts`` whose results are missing; skip the rest."""
    t0 = time.perf_counter()
    jobs, skipped = extraction_jobs(store, cohorts, settings, submission)
    if on_plan:
        on_plan(len(jobs), len(skipped))
    summary = StageSummary("extract", skipped=skipped)
    return _collect(store, summary, dispatch.run(jobs, parallel=True), on_record, t0)


def run_finetune(store: Store, train: str, cohorts: list[str], settings: Settings,
                 submission: str, dispatch: Dispatch) -> tuple[str | None, StageSummary]:
    """Fine-tune the CNN on ``train`` and, leakage-safe, its cross-fitted fold CNNs.

    One task per CNN (``cnn.crossfit_folds`` + 1 of them; several GPUs, or local processes,
    train them at once); CNNs whose model id is finished in the store are reused without a
    task. The ids are planned here; a worker on other hardware may plan another id (another
    precision), which its record says and which is then used. When every CNN is done, the
    cross-fitting record (which fold CNN embeds which training patient) is written with the
    CNN's model.json. Returns the CNN's model id (None when any fine-tuning failed).
    """
    from dtlr.services.gpu_worker import run as gpu

    t0 = time.perf_counter()
    summary = StageSummary("finetune")
    extra = [c for c in cohorts if c != train]
    folds = gpu.crossfit_folds(settings)
    wanted: list[int | None] = [None, *range(folds)]
    ids: dict[int | None, str] = {}
    jobs = []
    for fold in wanted:
        try:
            plan = gpu.plan_finetune(store, train, settings, extra, fold)
        except gpu.TrainingDataError as exc:
            record = failure_record(Unit(train, COHORT, "finetune"), exc, submission)
            store.write_status(record)
            summary.ran.append(record)
            return None, summary
        if gpu.is_trained(store, plan.model_id):
            ids[fold] = plan.model_id
            record = store.read_status(train, COHORT, "finetune", plan.model_id)
            summary.skipped.append(record or StatusRecord(train, COHORT, "finetune", "done",
                                                          key=plan.model_id))
            continue
        message = FinetuneMessage(store_root=str(store.root), submission=submission,
                                  settings=settings, cohort=train, extra_cohorts=extra,
                                  fold=fold)
        jobs.append(Job(TASKS["dtlr.finetune"], message, gpu_tasks.finetune,
                        units=[Unit(train, COHORT, "finetune", plan.model_id)]))
    for record in dispatch.run(jobs, parallel=True):
        summary.ran.append(record)
        if record.state == "done":
            fold_text = record.inputs.get("fold", "")
            ids[int(fold_text) if fold_text else None] = record.key
    summary.seconds = time.perf_counter() - t0
    if summary.failed or any(f not in ids for f in wanted):
        return None, summary
    if folds:
        gpu.write_crossfit(store, ids[None], train, settings, [ids[f] for f in range(folds)])
    return ids[None], summary


def embedding_jobs(store: Store, cohorts: Sequence[str], model_id: str, settings: Settings,
                   submission: str,
                   batch_size: int = EMBED_BATCH) -> tuple[list[Job], list[StatusRecord]]:
    """Batches of patients not yet embedded with ``model_id``; records of those that are."""
    from dtlr.services.gpu_worker.embed import STAGE, is_embedded

    spec = TASKS["dtlr.embed"]
    jobs: list[Job] = []
    skipped: list[StatusRecord] = []
    for cohort in cohorts:
        todo = []
        for pid in manifest.load(store, cohort)["patient_id"]:
            if is_embedded(store, cohort, model_id, pid):
                status = store.read_status(cohort, pid, STAGE)
                assert status is not None
                skipped.append(status)
            else:
                todo.append(pid)
        for i in range(0, len(todo), batch_size):
            message = EmbedMessage(store_root=str(store.root), submission=submission,
                                   settings=settings, cohort=cohort, model_id=model_id,
                                   patient_ids=todo[i:i + batch_size])
            jobs.append(Job(spec, message, gpu_tasks.embed))
    return jobs, skipped


def run_embedding(store: Store, cohorts: list[str], model_id: str, settings: Settings,
                  submission: str, dispatch: Dispatch, on_record: OnRecord = None,
                  on_plan: OnPlan = None) -> StageSummary:
    """Embed every patient of ``cohorts`` not yet embedded with ``model_id``, in batches."""
    t0 = time.perf_counter()
    jobs, skipped = embedding_jobs(store, cohorts, model_id, settings, submission)
    if on_plan:
        on_plan(sum(len(j.units) for j in jobs), len(skipped))
    summary = StageSummary("embed", skipped=skipped)
    return _collect(store, summary, dispatch.run(jobs), on_record, t0)


def run_model(store: Store, train: str, tests: list[str], settings: Settings,
              model_id: str | None, submission: str = "") -> tuple[Any, StageSummary]:
    """Fit and evaluate the models (stage protocol: a cohort-level ``model`` record).

    With the CNN ``model_id``'s DTL features and report section when there is one, without
    DTL features when there is none (a failed or skipped CNN stage never falls back on
    another CNN's features). Returns the run's result (None when it failed) and the summary.
    """
    from dtlr.services.modeler.run import run_modeler

    def sections() -> list[Any]:
        if model_id is None:
            return []
        from dtlr.services.gpu_worker.run import cnn_report_section

        return [cnn_report_section(store, model_id, [train, *tests], settings)]

    t0 = time.perf_counter()
    result = None
    with StageRun(store, Unit(train, COHORT, "model"), submission) as run:
        result = run_modeler(store, train, tests, settings, dtl_model_id=model_id,
                             dtl=model_id is not None, extra_sections=sections,
                             on_run_id=lambda rid: setattr(run, "key", rid))
        run.inputs = {"dtl_model_id": model_id or "", "tests": ",".join(tests)}
        if "reused" in result.seconds:
            run.skip()  # an identical run's results (and record) are in the store already
    assert run.record is not None
    summary = StageSummary("model", ran=[run.record], seconds=time.perf_counter() - t0)
    return (result if run.record.state == "done" else None), summary
