"""A trivial stage for benchmarking the coordinator (``dtlr worker --include`` loads it).

Test-only: it does no work beyond the stage protocol itself (a "running" and a "done" status
record through the store), so a run of many of its tasks measures what following costs.
"""

from __future__ import annotations

from dtlr.shared.celery_app import stage_task
from dtlr.shared.messages import CohortName, PatientId, TaskMessage, TaskSpec
from dtlr.shared.stage import StageRun, Unit
from dtlr.shared.store import StatusRecord, Store

STAGE = "follow-bench"


class NoopMessage(TaskMessage):
    """One patient of the benchmark's cohort."""

    cohort: CohortName
    patient_id: PatientId

    def units(self) -> list[Unit]:
        return [Unit(self.cohort, self.patient_id, STAGE)]


SPEC = TaskSpec("dtlr.bench.noop", "cpu", NoopMessage)


def noop(message: NoopMessage) -> list[StatusRecord]:
    """Record the patient running, then done: the protocol's two writes and nothing else."""
    store = Store(message.store_root)
    with StageRun(store, message.units()[0], message.submission) as run:
        run.start()
    assert run.record is not None
    return [run.record]


noop_task = stage_task(SPEC)(noop)
